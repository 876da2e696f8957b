"""Issue 18 item 7: the model server bounds what one request may ask for, and sheds embedding overload.

Triggers from the issue, against the real model server (the tiny random Llama for generation,
the bundled all-MiniLM-L6-v2 for embeddings) over real HTTP:

- ``max_tokens: 10**12`` with an attention-sink window (in the request, or the server's
  ``--sink-window-tokens``) was accepted and ran until a sampled EOS (never, for a model without
  one): now ``400`` naming ``--max-tokens-limit``.
- ``/v1/embeddings`` took any number of inputs up to 16 MiB with no admission control: now
  ``400`` past ``--embeddings-max-inputs`` / ``--embeddings-max-tokens``, and ``429`` with
  ``Retry-After`` when the queue is full or a request waited too long, never a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
import torch

from llmcache.model_server import handlers, loader
from llmcache.model_server.settings import (
    BatchingSettings,
    EmbeddingSettings,
    ModelServerSettings,
    ModelSettings,
    SinkSettings,
)
from llmcache.testing import threaded

PROMPT = list(range(10, 40))
# Every request here ends by the test's own deadline (a liveness bound, not a latency claim).
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=300)


@pytest.fixture(scope="module")
def endless_model() -> loader.LoadedModel:
    """The tiny random Llama without an EOS token: a generation ends only at max_tokens."""
    torch.set_num_threads(1)
    tiny = loader.load_model("random-tiny", device="cpu", dtype="float32", seed=0)
    return dataclasses.replace(tiny, eos_token_ids=frozenset())


@contextmanager
def model_server(loaded: loader.LoadedModel, **overrides: Any) -> Iterator[str]:
    settings = dataclasses.replace(ModelServerSettings(), **overrides)
    app = handlers.create_app(settings, loaded=loaded)
    with threaded.serve_in_thread(app) as url:
        assert app[handlers.STATE_KEY].ready.wait(120)
        yield url


async def first_answer(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | bytes, str | None]:
    """Status, error body (or the first streamed bytes) and Retry-After; the connection is closed after."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http, http.post(url + path, json=body) as r:
        if r.status == 200 and body.get("stream"):
            return r.status, await r.content.readany(), None
        return r.status, await r.json(), r.headers.get("Retry-After")


# ---------------------------------------------------------------- max_tokens


@pytest.mark.parametrize("window_from", ["request", "server flag"])
def test_max_tokens_of_10_to_the_12_with_a_sink_window_is_400_naming_the_limit(
        endless_model: loader.LoadedModel, window_from: str) -> None:
    body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 10**12, "stream": True}
    overrides: dict[str, Any] = {"enable_embeddings": False}
    if window_from == "request":
        body["sink_window_tokens"] = 64
    else:
        overrides["sink"] = SinkSettings(window_tokens=64)
    with model_server(endless_model, **overrides) as url:
        status, payload, _ = asyncio.run(first_answer(url, "/v1/completions", body))
        assert status == 400, payload  # before the fix: 200 and a stream that never ends
        assert isinstance(payload, dict)
        err = payload["error"]
        limit = 4 * endless_model.context_tokens  # auto: 4 x the model's context
        assert err["param"] == "max_tokens" and err["code"] == "max_tokens_exceeded"
        assert "--max-tokens-limit" in err["message"] and str(limit) in err["message"]
        # Control: at the limit the same request is served (its stream starts; we hang up).
        status, first, _ = asyncio.run(first_answer(url, "/v1/completions", {**body, "max_tokens": limit}))
        assert status == 200 and isinstance(first, bytes) and first.startswith(b"data: ")


def test_the_limit_is_a_flag_and_applies_without_a_window_too(endless_model: loader.LoadedModel) -> None:
    with model_server(endless_model, enable_embeddings=False,
                      model=ModelSettings(model="random-tiny", max_tokens_limit=100)) as url:
        status, payload, _ = asyncio.run(first_answer(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 101}))
        assert status == 400 and isinstance(payload, dict)
        assert "limit of 100 tokens" in payload["error"]["message"]
        status, _, _ = asyncio.run(first_answer(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 100}))
        assert status == 200


# ---------------------------------------------------------------- embeddings


def test_more_embedding_inputs_than_the_limit_is_400(endless_model: loader.LoadedModel) -> None:
    with model_server(endless_model) as url:
        status, payload, _ = asyncio.run(first_answer(url, "/v1/embeddings", {"input": ["x"] * 2049}))
        assert status == 400, "before the fix: 2049 inputs were all embedded"
        assert isinstance(payload, dict)
        err = payload["error"]
        assert err["code"] == "too_many_inputs" and "--embeddings-max-inputs" in err["message"]
        assert "2048" in err["message"]
    with model_server(endless_model, embeddings=EmbeddingSettings(max_inputs=4)) as url:
        assert asyncio.run(first_answer(url, "/v1/embeddings", {"input": ["x"] * 4}))[0] == 200
        assert asyncio.run(first_answer(url, "/v1/embeddings", {"input": ["x"] * 5}))[0] == 400


def test_more_embedding_tokens_than_the_limit_is_400(endless_model: loader.LoadedModel) -> None:
    big = "word " * 160_000  # 160,002 tokens each (one per word, plus CLS and SEP): 320,004 > 300,000
    with model_server(endless_model) as url:
        status, payload, _ = asyncio.run(first_answer(url, "/v1/embeddings", {"input": [big, big]}))
        assert status == 400, "before the fix: the encoder truncated each input and answered 200"
        assert isinstance(payload, dict)
        err = payload["error"]
        assert err["code"] == "too_many_tokens" and err["param"] == "input"
        assert "--embeddings-max-tokens" in err["message"] and "300000" in err["message"]
        assert "320004" in err["message"]
        status, ok, _ = asyncio.run(first_answer(url, "/v1/embeddings", {"input": [big]}))
        assert status == 200 and isinstance(ok, dict) and ok["usage"]["prompt_tokens"] == 160_002


def _heavy(i: int) -> list[str]:
    """An embedding request that keeps the encoder busy well beyond a scheduling hiccup."""
    return [f"request {i} sentence {j} " + "about caching and prefixes " * 30 for j in range(64)]


async def _burst(url: str, n: int) -> list[tuple[int, dict[str, Any], str | None]]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one(i: int) -> tuple[int, dict[str, Any], str | None]:
            async with http.post(url + "/v1/embeddings", json={"input": _heavy(i)}) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_embedding_burst_beyond_the_queue_gets_429_with_retry_after(endless_model: loader.LoadedModel) -> None:
    with model_server(endless_model, batching=BatchingSettings(max_queue_len=2)) as url:
        results = asyncio.run(_burst(url, 12))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) >= 1, "before the fix: no admission control, every request queued on the encoder"
    assert statuses.count(200) >= 3  # one running and two queued at the least
    for status, body, retry in results:
        if status == 429:
            assert body["error"]["type"] == "server_overloaded" and body["error"]["code"] == "queue_full"
            assert retry is not None and int(retry) >= 1
        else:
            assert len(body["data"]) == 64


def test_embedding_request_that_waits_too_long_gets_429(endless_model: loader.LoadedModel) -> None:
    with model_server(endless_model, batching=BatchingSettings(max_queue_time_s=0.05)) as url:
        results = asyncio.run(_burst(url, 2))  # whichever runs first keeps the other waiting > 0.05 s
    assert sorted(s for s, _, _ in results) == [200, 429]
    _, body, retry = next(r for r in results if r[0] == 429)
    assert body["error"]["code"] == "queue_timeout" and "--max-queue-time-s" in body["error"]["message"]
    assert retry is not None and int(retry) >= 1
