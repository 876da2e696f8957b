"""``llmcache.operator.sweep`` on a real Redis: which groups it trims, and how far."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction, sweep

KS = Keyspace()
#: Pods of namespace "team" write their groups (policies of "team", and their own _default) in its partition.
TEAM = KS.for_partition("team")


async def fill(r: aioredis.Redis, group: str, count: int, *, tag: str, ks: Keyspace = TEAM) -> list[str]:
    now = time.time()
    hashes = [f"{tag}{i:04d}" for i in range(count)]
    async with r.pipeline() as pipe:
        for i, h in enumerate(hashes):
            pipe.set(ks.entry(h), b"{}", ex=3600)
            ks.record_access(pipe, group, h, size_bytes=10, created=True, now_s=now - count + i)
        await pipe.execute()
    return hashes


async def members(r: aioredis.Redis, group: str, ks: Keyspace = TEAM) -> set[str]:
    out: set[str] = set()
    for key in ks.group_keys(group, "lru"):
        out.update(await r.zrange(key, 0, -1))
    return out


async def test_unowned_groups_are_default_and_unpublished_ones(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url, decode_responses=True)
    try:
        await fill(r, "_default", 3, tag="d")
        await fill(r, "_default", 3, tag="o", ks=KS.for_partition("other"))  # each partition has its own
        await fill(r, "team/live", 3, tag="l")
        await fill(r, "team/gone", 3, tag="g")
        await r.hset(KS.policies("team"), "live", "{}")
        assert await sweep.unowned_groups(r, KS) == [("other", "_default"), ("team", "_default"),
                                                    ("team", "team/gone")]
    finally:
        await r.aclose()


async def test_sweep_trims_to_entries_and_memory_and_forgets_vanished_groups(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url, decode_responses=True)
    try:
        default = await fill(r, "_default", 50, tag="d")
        await fill(r, "team/live", 50, tag="l")
        await r.hset(KS.policies("team"), "live", "{}")
        cursors: dict[tuple[str, str], int] = {("old", "old/group"): 7}
        done = await sweep.sweep_once(r, KS, eviction.EvictionLimits(max_entries=20), cursors=cursors)
        assert done.num_entries == {("team", "_default"): 20} and done.num_evicted == 30
        assert set(cursors) == {("team", "_default")}  # a group that vanished drops its cursor
        assert await members(r, "_default") == set(default[-20:])
        assert await eviction.group_count(r, TEAM, "team/live") == 50

        # 10 bytes an entry: a 55-byte budget keeps 5.
        done = await sweep.sweep_once(r, KS, eviction.EvictionLimits(max_memory_bytes=55), cursors=cursors)
        assert done.num_entries == {("team", "_default"): 5}
        # Within its limits, a second pass deletes nothing.
        again = await sweep.sweep_once(r, KS, eviction.EvictionLimits(max_memory_bytes=55), cursors=cursors)
        assert (again.num_evicted, again.num_entries) == (0, {("team", "_default"): 5})
    finally:
        await r.aclose()


async def test_known_groups_are_rechecked_so_a_new_policy_keeps_its_group(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url, decode_responses=True)
    try:
        await fill(r, "team/new", 30, tag="n")
        await fill(r, "_default", 30, tag="d")
        known = await sweep.unowned_groups(r, KS)
        assert known == [("team", "_default"), ("team", "team/new")]
        await r.hset(KS.policies("team"), "new", "{}")  # published after the discovery
        done = await sweep.sweep_once(r, KS, eviction.EvictionLimits(max_entries=10), cursors={}, groups=known)
        assert done.num_entries == {("team", "_default"): 10}
        assert await eviction.group_count(r, TEAM, "team/new") == 30
    finally:
        await r.aclose()


async def test_the_layout_before_partitions_is_dropped_once(redis_search_url: str) -> None:
    """What an operator of the previous release left in Redis is deleted; the partitions are not."""
    r = aioredis.Redis.from_url(redis_search_url, decode_responses=True)
    try:
        legacy = ["llmcache:e:{0a}:h1", "llmcache:v:{0a}:h1", "llmcache:g:_default:{0a}:lru", "llmcache:stats:ab",
                  "llmcache:acks:team:p", "llmcache:vevents", "llmcache:lease:{0a}:h1"]
        for key in legacy:
            await r.hset(key, "x", "1")
        await r.execute_command("FT.CREATE", "llmcache:vidx", "ON", "HASH", "PREFIX", 1, "llmcache:v:",
                                "SCHEMA", "scope", "TAG")
        kept = await fill(r, "_default", 2, tag="k")
        await r.hset(KS.policies("team"), "p", "{}")
        assert await sweep.drop_legacy_layout(r, KS) == len(legacy)
        assert not await r.exists(*legacy)
        assert "llmcache:vidx" not in await r.execute_command("FT._LIST")
        assert await r.exists(*[TEAM.entry(h) for h in kept]) == 2 and await r.hexists(KS.policies("team"), "p")
        assert await sweep.drop_legacy_layout(r, KS) == 0
    finally:
        await r.aclose()


async def test_stats_hashes_are_capped_oldest_first_and_carry_a_ttl(redis_plain_url: str) -> None:
    from llmcache import stats

    r = aioredis.Redis.from_url(redis_plain_url, decode_responses=True)
    try:
        buffer = stats.StatsBuffer()
        for i in range(12):  # each client-chosen namespace value makes a hash
            buffer.add(f"ns-{i}", "miss")
        await buffer.flush(r, keyspace=KS)
        keys = [k async for k in r.scan_iter(match=KS.stats_pattern)]
        assert len(keys) == 12 and await r.zcard(KS.stats_index) == 12
        ttls = [await r.ttl(k) for k in keys]
        assert all(0 < t <= stats.STATS_TTL_S for t in ttls), ttls
        old = KS.stats("written-long-ago")
        await r.hset(old, mapping={"namespace": "old", "miss": 1})
        await r.expire(old, 60)  # least time left: written longest ago
        assert await sweep.cap_stats_keys(r, KS, max_keys=10) == 3
        assert not await r.exists(old)
        assert len([k async for k in r.scan_iter(match=KS.stats_pattern)]) == 10
        assert await r.zcard(KS.stats_index) == 10  # the partition's index forgets them too
        assert await sweep.cap_stats_keys(r, KS, max_keys=10) == 0
    finally:
        await r.aclose()
