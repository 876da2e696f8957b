"""The HTTP surface with the official openai client against the real SmolLM2 on a real port."""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from llmcache.model_server import handlers, loader
from llmcache.model_server.settings import ModelServerSettings, PrefixCacheSettings

from .helpers import RunningServer, serve_in_thread

pytestmark = pytest.mark.slow

SYSTEM = "You are a terse geography tutor. Answer with one short sentence and nothing else."


@pytest.fixture(scope="module")
def server(default_model: loader.LoadedModel) -> Iterator[RunningServer]:
    settings = ModelServerSettings(prefix_cache=PrefixCacheSettings(budget_bytes=256 * 2**20))
    with serve_in_thread(handlers.create_app(settings, loaded=default_model)) as running:
        assert running.state.ready.wait(60)
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client: openai.OpenAI, question: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="default", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        temperature=0, max_tokens=kwargs.pop("max_tokens", 12), **kwargs)  # type: ignore[arg-type]


def prompt_ids(model: loader.LoadedModel, question: str) -> list[int]:
    text = model.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        add_generation_prompt=True, tokenize=False)
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chat_reports_hand_computed_cached_tokens(client: openai.OpenAI, default_model: loader.LoadedModel,
                                                  server: RunningServer) -> None:
    salt = "test-chat-hits"  # own namespace: other tests' entries cannot change the numbers
    first = chat(client, "What is the capital of France?", extra_body={"cache_salt": salt})
    assert "Paris" in (first.choices[0].message.content or "")
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = chat(client, "What is the capital of Italy?", extra_body={"cache_salt": salt})
    a = prompt_ids(default_model, "What is the capital of France?")
    b = prompt_ids(default_model, "What is the capital of Italy?")
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert second.usage is not None and second.usage.prompt_tokens == len(b)
    assert second.usage.prompt_tokens_details.cached_tokens == common  # type: ignore[union-attr]
    plain = chat(client, "What is the capital of Italy?", extra_body={"prefix_cache": False})
    assert plain.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    assert plain.choices[0].message.content == second.choices[0].message.content


def test_stream_matches_non_stream_and_reports_usage(client: openai.OpenAI) -> None:
    salt = {"cache_salt": "test-stream-usage"}  # own namespace: the first request fills it
    full = chat(client, "Where is Mount Everest?", extra_body=salt)
    stream = chat(client, "Where is Mount Everest?", stream=True, stream_options={"include_usage": True},
                  extra_body=salt)
    parts: list[str] = []
    finish: str | None = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.prompt_tokens_details.cached_tokens > 0


def test_completions_stop_and_n(client: openai.OpenAI) -> None:
    base = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8, temperature=0)
    text = base.choices[0].text
    assert "Paris" in text
    stopped = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8,
                                        temperature=0, stop=["Paris"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index("Paris")]
    many = client.completions.create(model="default", prompt="My favourite animal is", max_tokens=6,
                                     temperature=1.0, seed=7, n=2)
    again = client.completions.create(model="default", prompt="My favourite animal is", max_tokens=6,
                                      temperature=1.0, seed=7, n=2)
    assert [c.index for c in many.choices] == [0, 1]
    assert [c.text for c in many.choices] == [c.text for c in again.choices]  # seeded: reproducible


def test_prompt_longer_than_context_is_400_with_numbers(client: openai.OpenAI,
                                                        default_model: loader.LoadedModel) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="default", prompt="hello " * 9000, max_tokens=4)
    body = exc.value.body
    assert isinstance(body, dict)
    n = len(default_model.tokenizer("hello " * 9000)["input_ids"])
    assert body["code"] == "context_length_exceeded"
    assert "8192" in body["message"] and str(n) in body["message"]


def test_bad_input_is_openai_error_json(server: RunningServer) -> None:
    for payload, param in (({"model": "default"}, "messages"),
                           ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
                           ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role")):
        req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 400
        err = json.loads(exc.value.read())["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    req = urllib.request.Request(server.url + "/v1/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 400 and "not valid JSON" in json.loads(exc.value.read())["error"]["message"]


def test_concurrent_streams_are_correct(client: openai.OpenAI) -> None:
    questions = ["Where is Kyoto?", "Where is Lima?", "Where is Oslo?", "Where is Cairo?"]
    expected = {q: chat(client, q, max_tokens=8, extra_body={"prefix_cache": False}).choices[0].message.content
                for q in questions}
    got: dict[str, str] = {}
    barrier = threading.Barrier(len(questions))

    def one(q: str) -> None:
        barrier.wait()
        stream = chat(client, q, max_tokens=8, stream=True)
        got[q] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=one, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert got == expected


def test_models_embeddings_and_metrics(client: openai.OpenAI, server: RunningServer) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["default", "all-MiniLM-L6-v2"]
    emb = client.embeddings.create(model="all-MiniLM-L6-v2",
                                   input=["How do I reset my password?", "password reset steps", "bananas are yellow"])
    v = [d.embedding for d in emb.data]
    assert len(v[0]) == 384

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    cache = server.state.engine.prefix_cache  # type: ignore[union-attr]
    assert cache is not None
    assert values["llmcache_model_prefix_cache_hit_tokens_total"] == cache.num_hit_tokens > 0
    assert values["llmcache_model_prefix_cache_queried_tokens_total"] == cache.num_queried_tokens
    assert values["llmcache_model_prefix_cache_bytes"] == cache.total_bytes <= 256 * 2**20
    assert values["llmcache_model_time_to_first_token_seconds_count"] >= 10
    assert values["llmcache_model_inter_token_seconds_count"] > 0
