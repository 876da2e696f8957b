"""A CachePolicy in Redis overrides the CLI settings per request (through the policy watcher)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis
from proxy_helpers import ADMIN, CHAT, Stack

from llmcache import policy
from llmcache.keyspace import Keyspace

NS = "team-a"
#: The proxies here run in pod namespace NS: their keys are in its partition.
KS = Keyspace(partition=NS)


async def publish(r: aioredis.Redis, spec: dict, *, generation: int) -> policy.PolicyDocument:
    doc = policy.PolicyDocument(NS, "chat-cache", generation, policy.parse_spec(spec))
    await r.hset(KS.policies(NS), doc.name, doc.to_json())
    await r.publish(KS.policy_channel(NS), json.dumps({"namespace": NS, "name": doc.name, "generation": generation}))
    return doc


async def wait_generation(stack: Stack, generation: int) -> None:
    deadline = time.monotonic() + 15  # liveness bound for pub/sub delivery
    while True:
        watcher = stack.state.policy_watcher
        current = watcher.current if watcher is not None else None
        if current is not None and current.generation == generation:
            return
        assert time.monotonic() < deadline, "policy never applied"
        await asyncio.sleep(0.02)


async def test_policy_overrides_ttl_suspend_and_invalidate_before(proxy_stack, redis_plain_url: str,
                                                                  tmp_path) -> None:
    labels = tmp_path / "labels"
    labels.write_text('app="chat"\ntier="web"\n')
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        selector = {"matchLabels": {"app": "chat"}}
        await publish(r, {"selector": selector, "ttlSeconds": 42, "mode": "Exact"}, generation=1)
        stack = await proxy_stack(policy_pod_namespace=NS, policy_pod_name="chat-0",
                                  policy_pod_labels_file=str(labels), cache_ttl_s=3600)
        await wait_generation(stack, 1)
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        key = await anext(r.scan_iter(match=KS.entry_pattern))
        assert 0 < await r.ttl(key) <= 42  # the policy's TTL, not the CLI's hour
        key_hash = key.decode().rsplit(":", 1)[1]
        # The eviction group is the policy's.
        assert await r.zscore(KS.group_of(f"{NS}/chat-cache", "lfu", key_hash), key_hash) == 1
        # The policy's ttlSeconds also bounds max-age.
        await stack.post("/v1/chat/completions", {**CHAT, "n": 1}, headers={"Cache-Control": "max-age=100000"})
        assert max([await r.ttl(k) async for k in r.scan_iter(match=KS.entry_pattern)]) <= 42

        await publish(r, {"selector": selector, "mode": "Exact", "ttlSeconds": 42, "suspend": True}, generation=2)
        await wait_generation(stack, 2)
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "bypass"

        later = datetime.now(UTC).isoformat()
        await publish(r, {"selector": selector, "mode": "Exact", "ttlSeconds": 42, "invalidateBefore": later},
                      generation=3)
        await wait_generation(stack, 3)
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"

        await publish(r, {"selector": selector, "mode": "Exact", "nonDeterministic": "cache",
                             "scope": {"tenantHeader": "X-Team"}},
                      generation=4)
        await wait_generation(stack, 4)
        hot = {**CHAT, "temperature": 0.9}
        for team in ("a", "b"):
            assert (await stack.post("/v1/chat/completions", hot,
                                     headers={"X-Team": team}))[1]["X-LLMCache-Status"] == "miss"
        assert (await stack.post("/v1/chat/completions", hot, headers={"X-Team": "a"}))[1]["X-LLMCache-Status"] == "hit"
        async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as resp:
            assert (await resp.json())["process"]["policy"] == f"{NS}/chat-cache"
    finally:
        await r.aclose()


async def test_cross_pod_lease_coalesces_misses(proxy_stack, redis_plain_url: str) -> None:
    a = await proxy_stack(cache_single_flight_lease=True)
    b = await proxy_stack(cache_single_flight_lease=True, upstream_url=a.upstream_url)
    a.stub.latency_ms = 300
    results = await asyncio.gather(*(s.post("/v1/chat/completions", CHAT) for s in [a, b] * 5))
    assert all(status == 200 for status, _, _ in results)
    assert len({body for _, _, body in results}) == 1
    assert await a.upstream_count() == 1


async def test_cross_pod_leases_are_all_given_up(proxy_stack, redis_plain_url: str) -> None:
    """Every lease a miss takes (in its lookup, or after leading) is given up once the answers are out:
    by the script that stores the entry, or, where a request took one and then followed a flight here
    (its twin with no-store leads without a lease), by the request itself."""
    a = await proxy_stack(cache_single_flight_lease=True, upstream_timeout_s=60.0)  # a lease holds 60 s
    a.stub.latency_ms = 100
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        for i in range(6):
            body = {**CHAT, "messages": [{"role": "user", "content": f"lease round {i}"}]}
            results = await asyncio.gather(a.post("/v1/chat/completions", body, headers={"Cache-Control": "no-store"}),
                                           a.post("/v1/chat/completions", body))
            assert all(status == 200 for status, _, _ in results)
        deadline = time.monotonic() + 10  # (the lease itself would hold for the upstream's timeout)
        while [k async for k in r.scan_iter(match="*:lease:*")] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [k async for k in r.scan_iter(match="*:lease:*")] == []
    finally:
        await r.aclose()


async def test_stats_are_tagged_with_the_applied_policy(proxy_stack, redis_plain_url: str, tmp_path) -> None:
    """Counters under a policy land in a stats hash carrying ``policy`` (what the operator's hitRate
    sums); counts from before the policy stay untagged; ``read_stats`` still gives one row per namespace."""
    from llmcache import stats
    from llmcache.operator import status

    labels = tmp_path / "labels"
    labels.write_text('app="chat"\n')
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        stack = await proxy_stack(policy_pod_namespace=NS, policy_pod_name="chat-0",
                                  policy_pod_labels_file=str(labels))
        assert (await stack.post("/v1/chat/completions", {**CHAT, "n": 2}))[1]["X-LLMCache-Status"] == "miss"
        await publish(r, {"selector": {"matchLabels": {"app": "chat"}}, "mode": "Exact"}, generation=1)
        await wait_generation(stack, 1)
        for want in ("miss", "hit", "hit"):
            assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == want
        async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as resp:
            rows = (await resp.json())["namespaces"]  # flushes this proxy's counts first
        assert len(rows) == 1
        assert (rows[0]["namespace"], rows[0]["hit"], rows[0]["miss"]) == ("default", 2, 2)
        assert rows[0]["policies"] == [f"{NS}/chat-cache"] and rows[0]["hit_rate"] == 0.5
        tagged = await r.hgetall(KS.stats(stats.ns_hash("default", policy=f"{NS}/chat-cache")))
        assert tagged[b"policy"] == f"{NS}/chat-cache".encode() and tagged[b"namespace"] == b"default"
        assert (int(tagged[b"hit"]), int(tagged[b"miss"])) == (2, 1)
        untagged = await r.hgetall(KS.stats(stats.ns_hash("default")))
        assert b"policy" not in untagged and int(untagged[b"miss"]) == 1
        counters = await status.policy_counters(r, KS, f"{NS}/chat-cache")
        assert (counters.num_hits, counters.num_misses) == (2, 1)  # exact, not the bookkeeping estimate
    finally:
        await r.aclose()
