"""Issue 18 item 6: eviction bookkeeping does not outlive what it describes, without the operator.

Bookkeeping rows (``lru``, ``lfu``, ``ctime``, ``size`` per entry) had no TTL: 300 entries stored
with ``max-age=1`` left 14 live entries and 314 + 314 rows with TTL -1, which ``volatile-lru``
can never evict. A proxy run without the operator (``llmcache proxy``, ``up``) leaked Redis memory
for ever. Now the row keys expire with their longest-lived entry, and every write drops the rows of
a few expired members of its shard; the operator's eviction keeps working on the same rows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from proxy_helpers import CHAT, Stack

from llmcache.keyspace import BOOKKEEPING_KINDS, DEFAULT_GROUP, TRIM_PER_WRITE, Keyspace, shard_of
from llmcache.operator import eviction
from llmcache.proxy.exact import Entry, RedisExactStore

KS = Keyspace()


async def _rows(r: aioredis.Redis, group: str = DEFAULT_GROUP) -> dict[str, Any]:
    """Bookkeeping keys of ``group`` (with their TTLs) and the rows in them, and the live entries."""
    keys = [k async for k in r.scan_iter(match=f"{KS.partition_prefix}g:{group}:*")]
    rows = 0
    for key in keys:
        rows += await (r.hlen(key) if key.endswith(b":size") else r.zcard(key))
    return {"keys": len(keys), "rows": rows, "ttls": {await r.ttl(k) for k in keys},
            "entries": len([k async for k in r.scan_iter(match=KS.entry_pattern)])}


async def _until(what: str, check: Any, *, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s  # a liveness bound, not a latency claim
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.1)


async def test_rows_of_300_short_lived_entries_go_away_on_their_own(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    for i in range(300):
        status, headers, _ = await stack.post("/v1/chat/completions", {**CHAT, "seed": i},
                                              headers={"Cache-Control": "max-age=1"})
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    r = stack.state.redis
    assert r is not None
    during = await _rows(r)
    assert during["rows"] > 0 and -1 not in during["ttls"], during  # every row key expires
    # The bound: the longest entry TTL (1 s) plus Redis's expiry of keys with a TTL.

    async def clean() -> dict[str, Any] | None:
        now = await _rows(r)
        return now if now["entries"] == 0 and now["keys"] == 0 else None

    after = await _until("bookkeeping of expired entries gone", clean, timeout_s=15)
    assert after["rows"] == 0


def _same_shard(n: int, prefix: str) -> list[str]:
    """``n`` key hashes in one shard (the shard of ``prefix``-0)."""
    shard = shard_of(f"{prefix}-0")
    out = []
    i = 0
    while len(out) < n:
        if shard_of(f"{prefix}-{i}") == shard:
            out.append(f"{prefix}-{i}")
        i += 1
    return out


def _entry() -> Entry:
    body = '{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
    return Entry(route="/v1/chat/completions", model="m", created_s=time.time(), body=body, tenant="t")


async def test_writes_trim_expired_rows_of_a_busy_shard(redis_plain_url: str) -> None:
    """A shard that keeps a long-lived entry keeps its row keys: its expired rows go with later writes."""
    r = aioredis.Redis.from_url(redis_plain_url)
    store = RedisExactStore(r, keyspace=KS)
    try:
        in_shard = _same_shard(45, "h")
        short = in_shard[:40]
        num_writes = -(-len(short) // TRIM_PER_WRITE)  # writes it takes to trim them all
        keeper = in_shard[40:41 + num_writes]
        await store.put(keeper[0], _entry(), ttl_s=3600, group=DEFAULT_GROUP)
        for h in short:
            await store.put(h, _entry(), ttl_s=1, group=DEFAULT_GROUP)

        async def expired() -> bool:
            return not await r.exists(*(KS.entry(h) for h in short))

        await _until("the short-lived entries expired", expired, timeout_s=15)
        assert (await _rows(r))["rows"] == len(BOOKKEEPING_KINDS) * (len(short) + 1)  # still there
        for h in keeper[1:]:  # each write drops up to TRIM_PER_WRITE expired members' rows
            await store.put(h, _entry(), ttl_s=3600, group=DEFAULT_GROUP)
        rows = await _rows(r)
        assert rows["entries"] == len(keeper)
        assert rows["rows"] == len(BOOKKEEPING_KINDS) * len(keeper), rows  # only the live entries' rows
    finally:
        await r.aclose()


async def test_a_hit_recorded_in_another_group_expires_with_the_entry(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    store = RedisExactStore(r, keyspace=KS)
    try:
        await store.put("h1", _entry(), ttl_s=60, group="ns/a")
        assert await store.get("h1", group="ns/b") is not None  # a policy change: another group reads it
        shard = shard_of("h1")
        for kind in ("lru", "lfu", "exp"):
            ttl = await r.pttl(KS.group("ns/b", kind, shard))
            assert 0 < ttl <= 60_000, (kind, ttl)
        assert await r.zscore(KS.group("ns/b", "exp", shard), "h1") is not None
    finally:
        await r.aclose()


async def test_the_operators_eviction_works_on_the_same_rows(redis_plain_url: str) -> None:
    """The operator's pass (prune, trim to maxEntries) removes a member from every row, ``exp`` included."""
    r = aioredis.Redis.from_url(redis_plain_url)
    store = RedisExactStore(r, keyspace=KS)
    group = "ns/p"
    try:
        for i in range(20):
            await store.put(f"k{i}", _entry(), ttl_s=600, group=group)
        result = await eviction.enforce_limits(r, KS, group, eviction.EvictionLimits(max_entries=5))
        assert result.num_entries == 5 and result.num_evicted == 15
        rows = await _rows(r, group)
        assert rows["entries"] == 5 and rows["rows"] == len(BOOKKEEPING_KINDS) * 5, rows
        await eviction.purge_group(r, KS, group)
        assert (await _rows(r, group))["keys"] == 0
    finally:
        await r.aclose()
