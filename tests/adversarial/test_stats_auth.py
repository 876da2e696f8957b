"""Issue 14 item 10: the stats endpoint needs the admin token, and its Redis reads never open the
breaker that protects the cache traffic."""

from __future__ import annotations

import asyncio

from proxy_helpers import ADMIN, CHAT, Stack

from llmcache import stats

STATS = "/llmcache/v1/stats"


async def test_stats_need_the_admin_token(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "secret-team"})
    for headers in ({}, {"Authorization": "Bearer sk-test-tenant-a"}, {"X-LLMCache-Admin-Token": "wrong"}):
        async with stack.http.get(stack.proxy_url + STATS, headers=headers) as r:
            body = await r.text()
            assert r.status == 401 and "secret-team" not in body
    for headers in (ADMIN, {"X-LLMCache-Admin-Token": "admin-secret"}):
        async with stack.http.get(stack.proxy_url + STATS, headers=headers) as r:
            assert r.status == 200
            assert "secret-team" in {row["namespace"] for row in (await r.json())["namespaces"]}


async def test_stats_are_off_without_an_admin_token(proxy_stack) -> None:
    stack: Stack = await proxy_stack(obs_admin_token=None)
    async with stack.http.get(stack.proxy_url + STATS, headers=ADMIN) as r:
        assert r.status == 403 and "--admin-token" in (await r.json())["error"]["message"]


async def test_slow_stats_reads_do_not_open_the_breaker(proxy_stack, monkeypatch) -> None:
    stack: Stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT)

    async def slow_read(*args, **kwargs):  # fault injection: a SCAN over a huge keyspace
        await asyncio.sleep(30)

    monkeypatch.setattr(stats, "read_stats", slow_read)
    for _ in range(stack.state.breaker.failure_threshold + 1):
        async with stack.http.get(stack.proxy_url + STATS, headers=ADMIN) as r:
            data = await r.json()
            assert r.status == 200 and data["namespaces"] is None and "TimeoutError" in data["error"]
    assert stack.state.breaker.state == "closed" and stack.state.breaker.num_opened_total == 0
    _, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit"  # the cache traffic never noticed
