"""Admission control over real HTTP on the tiny model: 429 + Retry-After, a 600-request burst,
client disconnects stop compute, a worker fault turns into 500s and a not-ready /healthz."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from llmcache.model_server import handlers, loader
from llmcache.model_server.settings import BatchingSettings, ModelServerSettings, ModelSettings, PrefixCacheSettings

from .helpers import RunningServer, never_stops, serve_in_thread

PROMPT = list(range(10, 40))


@contextmanager
def server_with(model: loader.LoadedModel, **batching: Any) -> Iterator[RunningServer]:
    # Hogs ask for 10**7 tokens with a sink window: far more than the default --max-tokens-limit.
    settings = ModelServerSettings(enable_embeddings=False, prefix_cache=PrefixCacheSettings(budget_bytes=8 << 20),
                                   model=ModelSettings(model="random-tiny", max_tokens_limit=10**7),
                                   batching=BatchingSettings(**batching))
    with serve_in_thread(handlers.create_app(settings, loaded=model)) as running:
        assert running.state.ready.wait(60)
        yield running


def wait_for(pred: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def counter(server: RunningServer, family: Any, **labels: str) -> float:
    return float((family.labels(**labels) if labels else family)._value.get())


def test_burst_of_600_gets_answers_or_429_with_retry_after(tiny_model: loader.LoadedModel) -> None:
    with server_with(tiny_model, max_num_seqs=4, max_queue_len=16) as server:
        async def burst() -> list[tuple[int, dict[str, Any], str | None]]:
            timeout = aiohttp.ClientTimeout(total=300)
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:
                async def one(i: int) -> tuple[int, dict[str, Any], str | None]:
                    body = {"prompt": PROMPT + [i % 400 + 50], "max_tokens": 8, "temperature": 0}
                    async with http.post(server.url + "/v1/completions", json=body) as r:
                        return r.status, await r.json(), r.headers.get("Retry-After")
                return await asyncio.gather(*(one(i) for i in range(600)))

        results = asyncio.run(burst())
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 20 and statuses.count(429) >= 100
    for status, body, retry in results:
        if status == 429:
            err = body["error"]
            assert err["type"] == "server_overloaded" and err["code"] in {"queue_full", "queue_timeout"}
            assert retry is not None and int(retry) >= 1
        else:
            assert body["usage"]["completion_tokens"] == 8


def test_queue_timeout_is_429_for_streams_too(tiny_model: loader.LoadedModel) -> None:
    with server_with(never_stops(tiny_model), max_num_seqs=1, max_queue_time_s=0.3) as server:
        engine = server.state.engine
        assert engine is not None

        async def scenario() -> tuple[int, str | None, dict[str, Any]]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                hog = asyncio.ensure_future(http.post(
                    server.url + "/v1/completions",
                    json={"prompt": PROMPT, "max_tokens": 10**7, "sink_window_tokens": 64}))
                await asyncio.to_thread(wait_for, lambda: engine.stats().num_running == 1)
                async with http.post(server.url + "/v1/completions",
                                     json={"prompt": PROMPT, "max_tokens": 2, "stream": True}) as r:
                    out = r.status, r.headers.get("Retry-After"), await r.json()
                hog.cancel()
                return out

        status, retry, body = asyncio.run(scenario())
    assert status == 429 and retry is not None
    assert body["error"]["code"] == "queue_timeout" and "--max-queue-time-s" in body["error"]["message"]


def _raw_post(url: str, payload: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(payload).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_stops_compute(tiny_model: loader.LoadedModel, stream: bool) -> None:
    with server_with(tiny_model) as server:
        engine = server.state.engine
        assert engine is not None
        metrics = server.state.metrics
        # A sink window lets the generation run far longer than the test (the tiny model is fast).
        sock = _raw_post(server.url, {"prompt": PROMPT, "max_tokens": 10**7, "temperature": 0, "stream": stream,
                                      "sink_window_tokens": 64})
        wait_for(lambda: counter(server, metrics.generation_tokens) >= 3)
        sock.close()
        wait_for(lambda: counter(server, metrics.finished, reason="cancelled") == 1)
        assert counter(server, metrics.finished, reason="length") == 0
        assert engine.stats().num_running == 0 and engine.stats().kv_reserved_bytes == 0


def test_worker_fault_is_500_and_not_ready(tiny_model: loader.LoadedModel) -> None:
    with server_with(tiny_model) as server:
        engine = server.state.engine
        assert engine is not None

        def broken(model: object, segments: object) -> object:  # fault injection
            raise RuntimeError("injected: CUDA error: an illegal memory access")

        engine.forward = broken
        for stream in (False, True):
            body = json.dumps({"prompt": PROMPT, "max_tokens": 4, "stream": stream}).encode()
            req = urllib.request.Request(server.url + "/v1/completions", headers={"Content-Type": "application/json"},
                                         data=body)
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(req, timeout=60)
            assert exc.value.code == 500
            err = json.loads(exc.value.read())["error"]
            assert err["type"] == "server_error" and "illegal memory access" in err["message"]
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(server.url + "/healthz", timeout=30)
        assert health.value.code == 503
        body = json.loads(health.value.read())
        assert body["status"] == "failed" and "illegal memory access" in body["error"]
