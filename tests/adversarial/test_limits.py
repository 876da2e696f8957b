"""Issue 14 items 8 and 9: bounded memory and a deadline on every wait, against the real proxy.

Triggers from the issue: big bodies, many big bodies at once, a client trickling its body
(slowloris), deeply nested JSON, every pooled upstream connection busy, a streamed answer longer
than what is stored, an embedder that falls behind. Each must end in a clear 4xx/5xx-with-Retry-After
or a normal answer, never a hang, a 500 or unbounded growth.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from proxy_helpers import CHAT, Stack

from llmcache.proxy.semantic.embedder import EmbedderError, _BatchingEmbedder

ROUTE = "/v1/chat/completions"


async def _until(what: str, check, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s  # liveness bound, not a latency claim
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_default_body_limit_is_2_mib(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    big = json.dumps({**CHAT, "pad": "x" * (2 * 1024**2)}).encode()
    status, _, payload = await stack.post(ROUTE, None, raw=big, headers={"Content-Type": "application/json"})
    assert status == 413 and b"--max-body-bytes" in payload
    assert await stack.upstream_count() == 0


async def _slow_body(port: int, *, declared: int, sent: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection that declares ``declared`` body bytes and sends only ``sent``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n").encode() + b"{" * sent)
    await writer.drain()
    return reader, writer


async def test_bodies_in_flight_are_capped_and_shed_with_429(proxy_stack) -> None:
    stack: Stack = await proxy_stack(cache_max_body_bytes=100_000, cache_max_inflight_body_bytes=150_000)
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    _, writer = await _slow_body(port, declared=90_000, sent=10)
    try:
        await _until("the slow body holds its reservation", lambda: stack.state.body_budget.used_bytes == 90_000)
        body = json.dumps({**CHAT, "pad": "x" * 70_000}).encode()
        status, headers, payload = await stack.post(ROUTE, None, raw=body, headers={"Content-Type": "application/json"})
        assert status == 429 and headers["Retry-After"] == "1" and b"--max-inflight-body-bytes" in payload
        status, headers, _ = await stack.post(ROUTE, CHAT)  # small ones still fit
        assert status == 200
    finally:
        writer.close()
    await _until("the reservation is returned", lambda: stack.state.body_budget.used_bytes == 0)
    status, _, _ = await stack.post(ROUTE, None, raw=body, headers={"Content-Type": "application/json"})
    assert status == 200


async def _chunked_upload(port: int, *, sent: bytes) -> asyncio.StreamWriter:
    """Open a ``Transfer-Encoding: chunked`` upload (no Content-Length) that sends one chunk, then idles."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                 + f"{len(sent):x}\r\n".encode() + sent + b"\r\n")
    await writer.drain()
    return writer


async def test_idle_chunked_uploads_hold_only_what_they_sent(proxy_stack) -> None:
    """Issue 18 item 4: bodies without Content-Length reserved the whole --max-body-bytes for their life,
    so a handful of idle chunked uploads pushed every other client to 429."""
    stack: Stack = await proxy_stack(cache_max_body_bytes=64_000, cache_max_inflight_body_bytes=256_000,
                                     cache_body_timeout_s=60.0)
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    budget = stack.state.body_budget
    idle = [await _chunked_upload(port, sent=b'{"model"') for _ in range(8)]  # 8 × 64 kB > the 256 kB budget
    try:
        # Every upload is admitted and holding its reservation (8 bytes each, or 64 kB each before the fix).
        await _until("the idle uploads are being read", lambda: budget.used_bytes >= 8 * 8)
        body = json.dumps({**CHAT, "pad": "x" * 50_000}).encode()
        status, _, payload = await stack.post(ROUTE, None, raw=body, headers={"Content-Type": "application/json"})
        assert status == 200, payload
        assert budget.used_bytes == 8 * 8
    finally:
        for writer in idle:
            writer.close()
    await _until("the reservations are returned", lambda: budget.used_bytes == 0)


async def test_a_chunked_body_that_outgrows_the_budget_gets_429(proxy_stack) -> None:
    """What the reservation grows into is still bounded: past the in-flight budget, 429 and the
    connection closed (the rest of the body is never read)."""
    stack: Stack = await proxy_stack(cache_max_body_bytes=100_000, cache_max_inflight_body_bytes=150_000)
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    budget = stack.state.body_budget
    holder = await _chunked_upload(port, sent=b"{" + b" " * 89_999)  # holds 90 kB, then idles
    try:
        await _until("the first upload holds its 90 kB", lambda: budget.used_bytes == 90_000)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write((f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
                          "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
            for _ in range(8):  # 8 × 10 kB: fits until 60 kB, then the budget is full
                writer.write(f"{10_000:x}\r\n".encode() + b" " * 10_000 + b"\r\n")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 30)  # liveness bound
            assert status_line.split()[1] == b"429"
            rest = await asyncio.wait_for(reader.read(), 30)
            assert b"--max-inflight-body-bytes" in rest and b"Retry-After: 1" in rest
        finally:
            writer.close()
    finally:
        holder.close()
    await _until("the reservations are returned", lambda: budget.used_bytes == 0)


async def test_slowloris_body_gets_408(proxy_stack) -> None:
    stack: Stack = await proxy_stack(cache_body_timeout_s=0.5)
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    reader, writer = await _slow_body(port, declared=1000, sent=10)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)  # liveness bound
        assert status_line.split()[1] == b"408"
    finally:
        writer.close()
    await _until("the reservation is returned", lambda: stack.state.body_budget.used_bytes == 0)


async def test_stalled_pass_through_body_gets_408_and_a_slow_one_still_passes(proxy_stack) -> None:
    """Pass-through bodies are streamed upstream with a deadline on silence, not on the whole body."""
    stack: Stack = await proxy_stack(cache_body_timeout_s=0.5)
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    head = (b"POST /stub/echo/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 3000\r\n\r\n")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"x" * 1000)  # then silence
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)  # liveness bound
        assert status_line.split()[1] == b"408"
        rest = await asyncio.wait_for(reader.read(), 30)
        assert b"request_timeout" in rest and b"--body-timeout-seconds" in rest
    finally:
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace(b"Host: x", b"Host: x\r\nConnection: close"))
        for _ in range(4):  # 4 pieces, 0.25 s apart: 0.75 s in all (> the deadline), never silent for it
            writer.write(b"y" * 750)
            await writer.drain()
            await asyncio.sleep(0.25)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.split()[1] == b"200"
        rest = await asyncio.wait_for(reader.read(), 30)
        assert b'"body_bytes": 3000' in rest or b'"body_bytes":3000' in rest
    finally:
        writer.close()


@pytest.mark.parametrize("depth", [900, 100_000])
async def test_deeply_nested_json_is_a_clear_400(proxy_stack, depth: int) -> None:
    stack: Stack = await proxy_stack()
    raw = b'{"model":"stub-model","temperature":0,"messages":[{"role":"user","content":"x"}],"x":' + \
        b"[" * depth + b"]" * depth + b"}"
    status, _, payload = await stack.post(ROUTE, None, raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(payload)["error"]["code"] == "json_too_deep"
    status, _headers, _ = await stack.post(ROUTE, CHAT)
    assert status == 200  # the proxy is fine afterwards


async def test_busy_upstream_pool_is_a_503_with_retry_after_not_a_hang(proxy_stack) -> None:
    stack: Stack = await proxy_stack(upstream_pool_size=1, upstream_connect_timeout_s=0.3)
    slow = asyncio.create_task(stack.post(ROUTE, CHAT, headers={"X-Stub-Latency-Ms": "3000"}))
    await _until("the slow request holds the only connection", lambda: len(stack.state.flights) == 1)
    status, headers, payload = await stack.post(ROUTE, {**CHAT, "max_tokens": 3})
    assert status == 503 and headers["Retry-After"] == "1" and b"busy" in payload
    status, _, _ = await slow
    assert status == 200


async def test_a_streamed_answer_longer_than_the_entry_limit_is_not_buffered(proxy_stack) -> None:
    stack: Stack = await proxy_stack(cache_max_entry_bytes=600)
    stack.stub.chunk_delay_ms = 20
    body = {**CHAT, "stream": True, "max_tokens": 60}
    leader = asyncio.create_task(stack.post(ROUTE, body))
    await _until("the leader's flight overflowed",
                 lambda: any(f.overflowed for f in stack.state.flights._flights.values()))
    flight = next(iter(stack.state.flights._flights.values()))
    assert flight.chunks == []  # nothing kept past the cap
    status, _headers, follower = await stack.post(ROUTE, body)  # cannot join: fetches its own
    status0, _, first = await leader
    assert (status0, status) == (200, 200) and first.endswith(b"data: [DONE]\n\n")
    assert follower.endswith(b"data: [DONE]\n\n")
    assert await stack.upstream_count() == 2
    assert (await stack.post(ROUTE, body))[1]["X-LLMCache-Status"] == "miss"  # too long: never stored


class _SlowEmbedder(_BatchingEmbedder):
    """Fault injection: a model that takes 0.2 s per batch, recording what it was asked to embed."""

    name = "slow"
    dim = 4

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedded: list[str] = []

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        self.embedded.extend(texts)
        await asyncio.sleep(0.2)
        return np.ones((len(texts), self.dim), dtype=np.float32)


async def test_embedder_queue_is_bounded_and_sheds_expired_work() -> None:
    emb = _SlowEmbedder(max_batch=1, cache_entries=0, max_pending=3)
    try:
        async def lookup(text: str, timeout_s: float) -> str:
            try:
                async with asyncio.timeout(timeout_s):
                    await emb.embed([text])
                return "ok"
            except TimeoutError:
                return "timeout"
            except EmbedderError:
                return "full"

        results = await asyncio.gather(lookup("first", 5.0), *(lookup(f"t{i}", 0.05) for i in range(6)))
        assert results[0] == "ok"
        assert results.count("full") >= 1  # queue of 3: the rest refused at once
        await asyncio.sleep(0.5)  # let the worker run on (liveness: nothing more may be embedded)
        assert emb.embedded == ["first"]  # texts whose callers gave up never reached the model
    finally:
        await emb.close()
