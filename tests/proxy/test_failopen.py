"""Fail open: Redis dead, slow or full turns into ``bypass`` answers, never client errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from proxy_helpers import ADMIN, CHAT, Stack


def body(i: int) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": f"question {i % 5}"}]}


async def test_redis_killed_mid_run_gives_no_client_errors_and_recovers(proxy_stack, redis_factory) -> None:
    server = redis_factory(with_search=False)
    stack: Stack = await proxy_stack(redis_url=server.url, redis_breaker_cooldown_s=0.1)
    client = stack.openai()
    statuses: list[str] = []

    async def one(i: int) -> None:
        raw = await client.chat.completions.with_raw_response.create(**body(i))
        assert raw.status_code == 200
        assert raw.parse().choices[0].finish_reason == "stop"
        statuses.append(raw.headers["X-LLMCache-Status"])

    for i in range(10):
        await one(i)
    assert statuses.count("hit") == 5
    server.kill()
    statuses.clear()
    for i in range(20):
        await one(i)  # any exception here is a client-visible error
    assert set(statuses) == {"bypass"}
    assert stack.state.breaker.num_opened_total >= 1
    server.restart()
    statuses.clear()
    deadline = time.monotonic() + 20  # liveness bound for the breaker's probe, not a latency claim
    while "hit" not in statuses:
        assert time.monotonic() < deadline, f"cache never came back: {statuses[-10:]}"
        await one(0)
        await asyncio.sleep(0.05)
    assert stack.state.breaker.state == "closed"
    assert "miss" in statuses  # the restarted Redis was empty: a miss stored the answer again


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    finally:
        sock.close()


async def test_slow_redis_is_bypassed_within_the_deadline(proxy_stack, silent_redis: str) -> None:
    stack = await proxy_stack(redis_url=silent_redis, redis_timeout_ms=20)
    async with stack.http.get(stack.proxy_url + "/readyz") as r:
        assert r.status == 200  # the breaker settled on bypass: the stack may start
    for _ in range(5):
        status, headers, _payload = await stack.post("/v1/chat/completions", CHAT)
        assert status == 200 and headers["X-LLMCache-Status"] == "bypass"
    assert stack.state.breaker.is_open
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert "llmcache_breaker_open 1.0" in await r.text()


async def test_unreachable_redis_at_start(proxy_stack, unused_port: int) -> None:
    stack = await proxy_stack(redis_url=f"redis://127.0.0.1:{unused_port}/0")
    async with stack.http.get(stack.proxy_url + "/readyz") as r:
        assert r.status == 200
    for _ in range(3):
        status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
        assert status == 200 and headers["X-LLMCache-Status"] == "bypass"
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as r:
        data = await r.json()
        assert r.status == 200 and data["namespaces"] is None and "unavailable" in data["error"]


async def test_full_redis_still_answers(proxy_stack, redis_factory) -> None:
    server = redis_factory(with_search=False)
    stack = await proxy_stack(redis_url=server.url)
    r = aioredis.Redis.from_url(server.url)
    try:
        await stack.post("/v1/chat/completions", CHAT)  # stored before Redis fills up
        await r.config_set("maxmemory-policy", "noeviction")
        await r.config_set("maxmemory", "1")  # every write is refused with OOM
        n_keys = await r.dbsize()
        for i in range(6):
            status, headers, _payload = await stack.post("/v1/chat/completions", body(i))
            assert status == 200 and headers["X-LLMCache-Status"] == "miss"  # answered; not stored
        assert await r.dbsize() == n_keys
        assert stack.state.breaker.state == "closed"  # refused writes do not open the breaker...
        status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
        assert status == 200 and headers["X-LLMCache-Status"] == "hit"  # ...so hits keep coming
    finally:
        await r.aclose()


async def test_a_flushed_script_cache_costs_no_entry(proxy_stack, redis_factory) -> None:
    """The lookup and the background store send their scripts by SHA without a coroutine of their own;
    a Redis that forgot them (SCRIPT FLUSH, a restart) answers NOSCRIPT, and both load them again:
    the miss is still stored, its twin is a hit, and the breaker never counts a failure."""
    server = redis_factory(with_search=False)
    stack = await proxy_stack(redis_url=server.url)
    r = aioredis.Redis.from_url(server.url)
    try:
        await stack.post("/v1/chat/completions", body(0))  # scripts loaded, connection up
        await stack.flush()
        for i in range(1, 4):
            await r.script_flush()
            status, headers, _ = await stack.post("/v1/chat/completions", body(i))
            assert status == 200 and headers["X-LLMCache-Status"] == "miss"
            await stack.flush()
            status, headers, _ = await stack.post("/v1/chat/completions", body(i))
            assert status == 200 and headers["X-LLMCache-Status"] == "hit"
        assert stack.state.breaker.num_failures_total == 0
    finally:
        await r.aclose()
