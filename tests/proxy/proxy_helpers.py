"""Helpers shared by the proxy tests (imported by conftest and the test modules).

"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
from aiohttp import web

from llmcache.proxy import settings as ps
from llmcache.proxy.state import STATE, ProxyState
from llmcache.testing.stub_upstream import StubConfig

SALT = b"test-salt-0123456789"
ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""Headers of an admin request (``/llmcache/v1/stats``, ``/llmcache/v1/invalidate``)."""


@dataclass
class Stack:
    proxy_url: str
    upstream_url: str
    app: web.Application
    stub: StubConfig
    http: aiohttp.ClientSession
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)
    runner: web.AppRunner | None = None
    stopped: bool = False

    async def stop(self) -> None:
        """Shut the proxy down as SIGTERM does (cleanup contexts run: pending counters are flushed)."""
        if not self.stopped and self.runner is not None:
            self.stopped = True
            await self.runner.cleanup()

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]

    def openai(self, api_key: str = "sk-test-tenant-a", **kwargs: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.proxy_url + "/v1", api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    async def upstream_count(self) -> int:
        async with self.http.get(self.upstream_url + "/stub/requests") as r:
            return int((await r.json())["total"])

    async def post(self, path: str, body: Any, *, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """POST through the proxy; return status, headers, body bytes."""
        h = {"Authorization": "Bearer sk-test-tenant-a", **(headers or {})}
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.http.post(self.proxy_url + path, headers=h, **kwargs) as r:
            result = r.status, dict(r.headers), await r.read()
        # Entries are written after the answer is sent; tests that then look into Redis need them.
        await self.flush()
        return result

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for background cache work (stores, promotions, semantic adds, invalid-entry deletes) to
        finish, within ``timeout_s`` (a liveness bound, not a latency claim)."""
        async with asyncio.timeout(timeout_s):
            while self.state.background:
                await asyncio.gather(*list(self.state.background), return_exceptions=True)


def proxy_settings(redis_url: str, stub_url: str, **overrides: Any) -> ps.ProxySettings:
    cache_kw = {k[6:]: v for k, v in overrides.items() if k.startswith("cache_")}
    redis_kw = {k[6:]: v for k, v in overrides.items() if k.startswith("redis_")}
    up_kw = {k[9:]: v for k, v in overrides.items() if k.startswith("upstream_")}
    obs_kw = {k[4:]: v for k, v in overrides.items() if k.startswith("obs_")}
    policy_kw = {k[7:]: v for k, v in overrides.items() if k.startswith("policy_")}
    sem_kw = {k[9:]: v for k, v in overrides.items() if k.startswith("semantic_")}
    judge_kw = {k[6:]: v for k, v in overrides.items() if k.startswith("judge_")}
    return ps.ProxySettings(
        cache=dataclasses.replace(ps.CacheSettings(mode="exact", tenant_salt=SALT), **cache_kw),
        # 500 ms, not the 50 ms default: the test box is shared and a burst of new connections may be
        # slow; the deadline itself is tested with explicit short timeouts (test_failopen).
        redis=dataclasses.replace(ps.RedisSettings(url=redis_url, timeout_ms=500), **redis_kw),
        upstream=dataclasses.replace(ps.UpstreamSettings(url=stub_url, timeout_s=5.0), **up_kw),
        observability=dataclasses.replace(ps.ObservabilitySettings(admin_token=ADMIN_TOKEN), **obs_kw),
        policy=ps.PolicySource(**policy_kw),
        semantic=ps.SemanticSettings(**sem_kw),
        judge=ps.JudgeSettings(**judge_kw),
    )


CHAT = {"model": "stub-model", "temperature": 0, "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a radix tree?"}]}

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look something up",
                                            "parameters": {"type": "object", "properties": {
                                                "query": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "count", "parameters": {"type": "object", "properties": {}}}}]


class RawServer:
    """A raw asyncio HTTP server on loopback, for an upstream that must misbehave in ways aiohttp's
    server will not (close a kept-alive connection unannounced, truncate, hang up unanswered).
    Subclasses answer each connection in :meth:`handle`; ``async with`` gives the base URL."""

    server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def json_answer(body: bytes) -> bytes:
    """A whole HTTP/1.1 200 answer with a JSON ``body`` and its Content-Length, as a raw server writes it."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request: its head (through the blank line) and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


async def wait_until(what: str, check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)
