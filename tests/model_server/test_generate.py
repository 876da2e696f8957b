"""The inference worker on the tiny random-weight GQA Llama: prefix reuse never changes outputs."""

from __future__ import annotations

import random
import threading

import torch

from llmcache.model_server import generate as gen
from llmcache.model_server import loader
from llmcache.model_server import request as rq

from .helpers import EngineFactory

GREEDY = rq.SamplingParams(max_tokens=12, temperature=0.0)


def rand_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 512) for _ in range(n)]  # 0-2 are pad/bos/eos


def run(engine: gen.Engine, prompt: list[int], *, cache: bool = True, params: rq.SamplingParams = GREEDY,
        salt: str | None = None) -> rq.GenerationResult:
    return engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=params, enable_prefix_cache=cache,
                                                 cache_salt=salt), timeout_s=120)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def reference(model: loader.LoadedModel, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy ids from a plain full-prompt forward pass each step (no cache at all)."""
    ids = list(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
            t = int(torch.argmax(logits))
            out.append(t)
            if t in model.eos_token_ids:
                break
            ids.append(t)
    return out


def test_greedy_ids_match_a_cacheless_reference(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    rng = random.Random(1)
    prompt = rand_tokens(rng, 40)
    first = run(engine, prompt)
    assert list(first.token_ids) == reference(tiny_model, prompt, 12)
    again = run(engine, prompt)  # full-prompt repeat: everything but the last token cached
    assert again.cached_tokens == len(prompt) - 1
    assert again.token_ids == first.token_ids


def test_shared_prefix_split_edge_and_hit_counts(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    cache = engine.prefix_cache
    assert cache is not None
    rng = random.Random(2)
    system = rand_tokens(rng, 60)
    questions = [rand_tokens(rng, 8) for _ in range(4)]
    r0 = run(engine, system + questions[0])
    assert r0.cached_tokens == 0
    # Stored: the prompt plus all generated tokens except the last (never fed).
    assert r0.inserted_tokens == len(system) + 8 + len(r0.token_ids) - 1
    stored = [system + questions[0] + list(r0.token_ids[:-1])]
    for q in questions[1:]:
        prompt = system + q
        expected_hit = max(_common(prompt[:-1], s) for s in stored)  # hand-computed longest prefix
        with_cache = run(engine, prompt)
        without = run(engine, prompt, cache=False)
        assert with_cache.cached_tokens == expected_hit >= len(system)
        assert with_cache.token_ids == without.token_ids
        stored.append(prompt + list(with_cache.token_ids[:-1]))
    # A prompt that diverges in the middle of the 60-token system edge splits it.
    nodes_before = cache.num_nodes
    mid = system[:25] + rand_tokens(rng, 10)
    r = run(engine, mid)
    assert r.cached_tokens == 25
    assert cache.num_nodes >= nodes_before + 2  # the split plus the new branch
    assert r.token_ids == run(engine, mid, cache=False).token_ids
    assert r.token_ids == tuple(reference(tiny_model, mid, 12))


def test_hit_counters_equal_hand_computed(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    cache = engine.prefix_cache
    assert cache is not None
    rng = random.Random(3)
    a = rand_tokens(rng, 30)
    b = a[:20] + [7, 7, 7]  # shares 20 with a; a's tokens 20.. differ (7 never appears at 20 by construction)
    if a[20] == 7:
        a[20] = 8
    ra = run(engine, a)
    rb = run(engine, b)
    rc = run(engine, a)
    assert (ra.cached_tokens, rb.cached_tokens, rc.cached_tokens) == (0, 20, 29)
    assert cache.num_queried_tokens == 30 + 23 + 30
    assert cache.num_hit_tokens == 0 + 20 + 29


def test_salt_isolates_tenants(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    prompt = rand_tokens(random.Random(4), 20)
    run(engine, prompt, salt="tenant-a")
    assert run(engine, prompt, salt="tenant-b").cached_tokens == 0
    assert run(engine, prompt, salt="tenant-a").cached_tokens == 19
    assert run(engine, prompt).cached_tokens == 0


def test_stored_tensors_unchanged_after_many_requests(tiny_model: loader.LoadedModel,
                                                      make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model, budget_bytes=200_000)  # small: forces splits and evictions
    cache = engine.prefix_cache
    assert cache is not None
    rng = random.Random(5)
    bases = [rand_tokens(rng, 30) for _ in range(3)]
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(40):
        base = bases[i % 3]
        prompt = base[: rng.randrange(5, 30)] + rand_tokens(rng, rng.randrange(1, 6))
        run(engine, prompt, params=rq.SamplingParams(max_tokens=6, temperature=0.9, seed=i))
        assert cache.total_bytes <= cache.budget_bytes
        if i % 8 == 0:
            for node in cache.iter_nodes():
                for k, v in node.kv:
                    snapshots += [(k, k.clone()), (v, v.clone())]
    assert cache.num_evictions > 0
    assert len(snapshots) > 10
    assert all(torch.equal(ref, snap) for ref, snap in snapshots)


def test_concurrent_requests_are_correct(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    rng = random.Random(6)
    system = rand_tokens(rng, 50)
    prompts = [system + rand_tokens(rng, 5) for _ in range(6)]
    expected = [tuple(reference(tiny_model, p, 12)) for p in prompts]
    results: list[rq.GenerationResult | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        start.wait()
        results[i] = run(engine, prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.token_ids if r else None for r in results] == expected


def test_seeded_sampling_is_reproducible_and_top_p_tiny_is_greedy(tiny_model: loader.LoadedModel,
                                                                  make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    prompt = rand_tokens(random.Random(7), 15)
    hot = rq.SamplingParams(max_tokens=20, temperature=1.5, seed=123)
    assert run(engine, prompt, params=hot).token_ids == run(engine, prompt, params=hot).token_ids
    other = run(engine, prompt, params=rq.SamplingParams(max_tokens=20, temperature=1.5, seed=124))
    assert other.token_ids != run(engine, prompt, params=hot).token_ids
    nucleus = rq.SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1)
    assert run(engine, prompt, params=nucleus).token_ids == run(engine, prompt).token_ids


def test_stop_string_and_length_finish(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    prompt = rand_tokens(random.Random(8), 10)
    full = run(engine, prompt)
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    # The tiny model has no tokenizer: text is the ids joined by spaces.
    third = f" {full.token_ids[2]}"
    stopped = run(engine, prompt, params=rq.SamplingParams(max_tokens=12, temperature=0.0, stop=(third,)))
    assert stopped.finish_reason == "stop"
    assert third not in stopped.text
    assert full.text.startswith(stopped.text)


def test_too_long_prompt_is_rejected_with_numbers(tiny_model: loader.LoadedModel, make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    try:
        engine.submit(rq.GenerationRequest(prompt_ids=[5] * 1020, sampling=GREEDY))
    except rq.InvalidRequestError as exc:
        assert "1024" in str(exc) and "1032" in str(exc) and "1020" in str(exc)
        assert exc.code == "context_length_exceeded"
    else:
        raise AssertionError("a prompt + max_tokens over the context must be rejected")
