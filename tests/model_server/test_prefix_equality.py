"""Greedy token ids with the prefix cache equal those without, on the real SmolLM2 (fp32, CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmcache.model_server import generate as gen
from llmcache.model_server import loader
from llmcache.model_server import request as rq
from llmcache.model_server.radix import RadixCache

pytestmark = pytest.mark.slow

GREEDY = rq.SamplingParams(max_tokens=10, temperature=0.0)
SYSTEM = ("You are the support assistant of Acme Cloud. Answer in one short sentence. Acme Cloud offers "
          "object storage, managed Postgres, serverless functions and a CDN. Plans: Free, Team, Enterprise. ")


@pytest.fixture(scope="module")
def engine(default_model: loader.LoadedModel) -> Iterator[gen.Engine]:
    e = gen.Engine(default_model, prefix_cache=RadixCache(1 << 30))
    e.start()
    yield e
    e.stop()


def chat_ids(model: loader.LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def text_ids(model: loader.LoadedModel, text: str) -> list[int]:
    return list(model.tokenizer(text)["input_ids"])


def both(engine: gen.Engine, prompt: list[int]) -> tuple[rq.GenerationResult, rq.GenerationResult]:
    cached = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=GREEDY), timeout_s=300)
    plain = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=GREEDY, enable_prefix_cache=False),
                            timeout_s=300)
    return cached, plain


def test_shared_system_prompt(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    system = {"role": "system", "content": SYSTEM}
    p1 = chat_ids(default_model, [system, {"role": "user", "content": "Do you have a CDN?"}])
    p2 = chat_ids(default_model, [system, {"role": "user", "content": "What plans exist?"}])
    engine.generate(rq.GenerationRequest(prompt_ids=p1, sampling=GREEDY))
    cached, plain = both(engine, p2)
    assert cached.cached_tokens >= len(chat_ids(default_model, [{"role": "system", "content": SYSTEM}])) - 5
    assert cached.token_ids == plain.token_ids


def test_few_shot(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    shots = ("Classify the sentiment.\nText: I love it. Sentiment: positive\nText: This is awful. Sentiment: "
             "negative\nText: Works as expected. Sentiment: positive\n")
    broke = text_ids(default_model, shots + "Text: Broke in a day. Sentiment:")
    engine.generate(rq.GenerationRequest(prompt_ids=broke, sampling=GREEDY))
    cached, plain = both(engine, text_ids(default_model, shots + "Text: Best purchase ever. Sentiment:"))
    assert cached.cached_tokens >= len(text_ids(default_model, shots)) - 2
    assert cached.token_ids == plain.token_ids


def test_multi_turn_reuses_generated_tokens(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    p1 = chat_ids(default_model, turn1)
    r1 = engine.generate(rq.GenerationRequest(prompt_ids=p1, sampling=GREEDY))
    turn2 = turn1 + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And of Spain?"}]
    cached, plain = both(engine, chat_ids(default_model, turn2))
    assert cached.cached_tokens > len(p1)  # the history, including the assistant's generated answer
    assert cached.token_ids == plain.token_ids


def test_full_prompt_repeat(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    p = chat_ids(default_model, [{"role": "user", "content": "Name a primary colour."}])
    first = engine.generate(rq.GenerationRequest(prompt_ids=p, sampling=GREEDY))
    cached, plain = both(engine, p)
    assert cached.cached_tokens == len(p) - 1
    assert cached.token_ids == plain.token_ids == first.token_ids


def test_split_in_the_middle_of_a_radix_edge(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    cache = engine.prefix_cache
    assert cache is not None
    base = text_ids(default_model, "Once upon a time in a small village by the sea there lived an old fisherman "
                                   "who every morning")
    engine.generate(rq.GenerationRequest(prompt_ids=base, sampling=GREEDY))
    nodes = cache.num_nodes
    branch = base[:12] + text_ids(default_model, " a dragon slept under the hill")
    cached, plain = both(engine, branch)
    common = next(i for i, (a, b) in enumerate(zip(base, branch)) if a != b)
    assert cached.cached_tokens == common
    assert cache.num_nodes > nodes
    assert cached.token_ids == plain.token_ids


def test_prefix_text_ending_mid_word(engine: gen.Engine, default_model: loader.LoadedModel) -> None:
    short = text_ids(default_model, "The quick brown fox jum")
    full = text_ids(default_model, "The quick brown fox jumps over the lazy")
    engine.generate(rq.GenerationRequest(prompt_ids=short, sampling=GREEDY))
    cached, plain = both(engine, full)
    # Only the tokens both tokenizations share are reused: the seam is never trusted.
    common = next((i for i, (a, b) in enumerate(zip(short, full)) if a != b), min(len(short), len(full)))
    assert cached.cached_tokens == common
    assert cached.token_ids == plain.token_ids
