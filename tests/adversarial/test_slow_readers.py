"""Issue 18 item 9: streams and slow readers.

- the SSE recorder reads an untrusted upstream's stream: its work must grow linearly with the
  bytes, however the stream is cut (it rescanned its whole buffer on every chunk);
- a non-streaming follower whose client left was still counted, so a leader whose own client
  had left kept reading the upstream for nobody;
- a client that stops reading stalled the requests that joined its upstream call and held a
  pooled upstream connection for ever: every write to a client has a deadline now.

The proxy tests use raw sockets for the misbehaving clients (an HTTP library reads what it is sent).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from proxy_helpers import CHAT, Stack

from llmcache.proxy import streaming

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _event(delta: dict[str, Any], finish: str | None = None, *, sep: bytes = b"\n\n") -> bytes:
    chunk = {**BASE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + sep


class _CountingPattern:
    """The recorder's event separator pattern, counting the bytes each call is given to scan."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self._pattern = pattern
        self.num_bytes_scanned = 0
        self.num_calls = 0

    def _count(self, string: bytes | bytearray, pos: int = 0) -> None:
        self.num_calls += 1
        self.num_bytes_scanned += len(string) - pos

    def split(self, string: bytes, maxsplit: int = 0) -> list[bytes]:
        self._count(string)
        return self._pattern.split(string, maxsplit)

    def finditer(self, string: bytes, pos: int = 0, *args: int) -> Any:
        self._count(string, pos)
        return self._pattern.finditer(string, pos, *args)

    def search(self, string: bytes, pos: int = 0, *args: int) -> Any:
        self._count(string, pos)
        return self._pattern.search(string, pos, *args)


class _CountingBuffer(bytearray):
    """The recorder's buffer, counting the bytes its ``find`` examines (the \\n-only way: no regular expression)."""

    num_bytes_scanned = 0
    num_calls = 0

    def find(self, sub: Any, start: Any = 0, *args: Any) -> int:  # type: ignore[override]
        at = super().find(sub, start, *args)
        self.num_calls += 1
        self.num_bytes_scanned += (at + len(sub) if at >= 0 else len(self)) - start
        return at


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"], ids=["lf", "crlf"])
def test_sse_recorder_scans_a_long_event_cut_in_small_chunks_once(monkeypatch: pytest.MonkeyPatch, sep: bytes) -> None:
    counting: _CountingPattern | _CountingBuffer
    rec = streaming.SSERecorder("/v1/chat/completions")
    if sep == b"\n\n":  # bytes.find on the buffer
        counting = rec._buf = _CountingBuffer()  # type: ignore[misc]
    else:  # the separator pattern
        counting = _CountingPattern(streaming._EVENT_SPLIT)
        monkeypatch.setattr(streaming, "_EVENT_SPLIT", counting)
    text = "x" * (96 * 1024)  # one event of ~96 KiB: a long answer in a single delta
    # (A comment first: the \r\n stream takes the pattern's way from its first chunk.)
    stream = (b": ok" + sep + _event({"role": "assistant", "content": ""}, sep=sep) + _event({"content": text}, sep=sep)
              + _event({}, "stop", sep=sep) + b"data: [DONE]" + sep)
    chunk_bytes = 16
    num_chunks = 0
    for i in range(0, len(stream), chunk_bytes):
        rec.feed(stream[i:i + chunk_bytes])
        num_chunks += 1
    assert rec.complete and rec.answer()["choices"][0]["message"]["content"] == text
    assert isinstance(rec._buf, _CountingBuffer) is (sep == b"\n\n")  # (the same buffer all along)
    # Every byte is scanned at least once (the count sees the recorder's work) ...
    assert counting.num_calls >= num_chunks and counting.num_bytes_scanned >= len(stream)
    # ... and about once: linear in the stream, plus a separator's width per chunk. The old
    # recorder scanned ~num_chunks × len(stream) / 2 bytes (here ~300 MB for 96 KiB).
    assert counting.num_bytes_scanned <= len(stream) + 4 * num_chunks, counting.num_bytes_scanned


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 4096])
def test_sse_recorder_finds_separators_cut_anywhere(sep: bytes, chunk_bytes: int) -> None:
    """Control for the incremental scan: separators split across chunks at every offset still end events."""
    stream = b"".join([_event({"role": "assistant", "content": ""}, sep=sep), _event({"content": "Hello"}, sep=sep),
                       _event({"content": " there"}, sep=sep), _event({}, "stop", sep=sep)]) + b"data: [DONE]" + sep
    rec = streaming.SSERecorder("/v1/chat/completions")
    for i in range(0, len(stream), chunk_bytes):
        rec.feed(stream[i:i + chunk_bytes])
    assert rec.complete and rec.answer()["choices"][0]["message"]["content"] == "Hello there"


# --- clients that leave or stop reading ---------------------------------------------------------

ROUTE = "/v1/chat/completions"


async def _until(what: str, check: Any, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s  # a liveness bound, not a latency claim
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.02)


async def _raw_post(stack: Stack, path: str, body: dict[str, Any], *,
                    small_receive_buffer: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client on a raw socket: it reads only what the test reads (or, unread, what its buffers hold)."""
    sock = socket.socket()
    if small_receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(stack.proxy_url.rsplit(":", 1)[1])))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    payload = json.dumps(body).encode()
    writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload)
    await writer.drain()
    return reader, writer


def _flight(stack: Stack) -> Any:
    flights = list(stack.state.flights._flights.values())
    return flights[0] if flights else None


def _sse(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _event(delta, finish)


async def test_a_non_streaming_follower_that_leaves_lets_an_abandoned_leader_stop(scripted_stack) -> None:
    upstream_stopped = asyncio.Event()

    async def endless(request: web.Request, body: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(600):  # 30 s of tokens, far longer than the test waits
                await resp.write(_sse({"content": "tok "}))
                await asyncio.sleep(0.05)
            await resp.write(_sse({}, "stop") + streaming.DONE)
        except ConnectionResetError:
            upstream_stopped.set()  # the proxy closed the upstream connection
        return resp

    stack, _ = await scripted_stack(endless)
    leader_body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    lead_reader, lead_writer = await _raw_post(stack, ROUTE, leader_body)
    await asyncio.wait_for(lead_reader.readuntil(b"tok "), 30)  # the leader's answer is streaming
    _, follower_writer = await _raw_post(stack, ROUTE, CHAT)  # same key, JSON: waits for the entry
    await _until("the follower joined", lambda: _flight(stack) is not None and _flight(stack).num_followers == 1)
    follower_writer.close()
    lead_writer.close()
    # Nobody is left to read the answer: the proxy stops the upstream call.
    await asyncio.wait_for(upstream_stopped.wait(), 15)  # liveness bound: the stream would run 30 s
    await _until("the flight landed", lambda: _flight(stack) is None)


async def test_a_leader_that_stops_reading_does_not_stall_its_followers(scripted_stack) -> None:
    go = asyncio.Event()
    piece = "x" * 32 * 1024

    async def big(request: web.Request, body: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_sse({"role": "assistant", "content": ""}))
        await go.wait()
        for _ in range(512):  # 16 MiB: more than every buffer between the proxy and a client that reads nothing
            await resp.write(_sse({"content": piece}))
        await resp.write(_sse({}, "stop") + streaming.DONE)
        return resp

    stack, seen = await scripted_stack(big, cache_write_timeout_s=1.0, cache_max_entry_bytes=64 * 1024**2)
    body = {**CHAT, "stream": True}
    _, lead_writer = await _raw_post(stack, ROUTE, body, small_receive_buffer=True)  # and never read
    await _until("the leader's call is in flight", lambda: _flight(stack) is not None)
    async with aiohttp.ClientSession() as http:
        follower = asyncio.create_task(_read_all(http, stack, body))
        await _until("the follower joined", lambda: _flight(stack).num_followers == 1)
        go.set()
        status, received = await asyncio.wait_for(follower, 60)  # liveness bound
    lead_writer.close()
    assert status == 200 and received.endswith(streaming.DONE)
    assert received.count(piece.encode()) == 512
    assert len(seen) == 1  # the follower was served from the leader's call


async def _read_all(http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any]) -> tuple[int, bytes]:
    async with http.post(stack.proxy_url + ROUTE, json=body, headers={"Authorization": "Bearer sk-a"}) as r:
        return r.status, await r.read()


async def test_a_pass_through_client_that_stops_reading_frees_its_upstream_connection(scripted_stack) -> None:
    started = asyncio.Event()

    async def download(request: web.Request, body: dict) -> web.StreamResponse:
        if body.get("small"):
            return web.json_response({"ok": True})
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        started.set()
        try:
            for _ in range(512):  # 16 MiB
                await resp.write(b"z" * 32 * 1024)
        except ConnectionResetError:
            pass
        return resp

    stack, _ = await scripted_stack(download, cache_write_timeout_s=1.0, upstream_pool_size=1,
                                    upstream_connect_timeout_s=10.0)
    _, stuck_writer = await _raw_post(stack, "/v1/files/download", {"big": True}, small_receive_buffer=True)
    try:
        await asyncio.wait_for(started.wait(), 30)
        # The only pooled connection is the stuck client's until its write deadline frees it.
        status, _, payload = await stack.post("/v1/files/other", {"small": True})
        assert status == 200 and json.loads(payload) == {"ok": True}
    finally:
        stuck_writer.close()


def _proxy_end_open(stack: Stack, writer: asyncio.StreamWriter) -> bool:
    """Is the proxy's end of this client's connection still established (``/proc/net/tcp``, state 01)?

    Closing with unsent bytes queued sends them before the FIN, so the client cannot tell yet;
    the proxy's socket can (it leaves ESTABLISHED at once).
    """
    proxy_port = int(stack.proxy_url.rsplit(":", 1)[1])
    client_port = writer.get_extra_info("sockname")[1]
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = row.split()[1:4]
        if int(local.rsplit(":", 1)[1], 16) == proxy_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
            return state == "01"
    return False


async def test_a_client_that_does_not_read_a_cached_answer_is_cut_off(scripted_stack) -> None:
    """Whole answers (hits, errors, the proxy's own endpoints) have the deadline too."""
    long_text = "y" * 6 * 1024**2

    async def answer(request: web.Request, body: dict) -> web.StreamResponse:
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": long_text},
                                               "finish_reason": "stop"}]})

    stack, _ = await scripted_stack(answer, cache_write_timeout_s=1.0, cache_max_entry_bytes=64 * 1024**2)
    status, headers, _ = await stack.post(ROUTE, CHAT, headers={"Authorization": "Bearer sk-a"})
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    reader, writer = await _raw_post(stack, ROUTE, CHAT, small_receive_buffer=True)  # a hit it does not read
    try:
        await _until("the client's connection is open", lambda: _proxy_end_open(stack, writer))
        await _until("the proxy closed the connection", lambda: not _proxy_end_open(stack, writer))
        received = await asyncio.wait_for(reader.read(-1), 60)  # what was queued before the close, then EOF
        assert b"X-LLMCache-Status: hit" in received and len(received) < len(long_text)
    finally:
        writer.close()
