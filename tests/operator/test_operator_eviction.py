"""Eviction logic (llmcache.operator.eviction) against a real Redis, without the API server."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction
from llmcache.operator.eviction import EvictionLimits
from llmcache.policy import parse_spec

GROUP = "ns/policy"


def h(i: int) -> str:
    return hashlib.sha256(f"entry-{i}".encode()).hexdigest()


@pytest.fixture
async def r(redis_plain_url: str):
    client = aioredis.from_url(redis_plain_url)
    yield client
    await client.aclose()


async def write(r: aioredis.Redis, ks: Keyspace, i: int, *, now_s: float, size: int = 100, ttl_ms: int = 600_000,
                group: str = GROUP, vector: bool = True) -> None:
    """What a sidecar does on a miss: entry + vector doc + bookkeeping, one pipeline."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.set(ks.entry(h(i)), b"{}", px=ttl_ms)
        if vector:
            pipe.hset(ks.vector(h(i)), mapping={"scope": "s"})
        ks.record_access(pipe, group, h(i), size_bytes=size, created=True, now_s=now_s)
        await pipe.execute()


async def hit(r: aioredis.Redis, ks: Keyspace, i: int, *, now_s: float, group: str = GROUP) -> None:
    async with r.pipeline(transaction=False) as pipe:
        ks.record_access(pipe, group, h(i), now_s=now_s)
        await pipe.execute()


async def live(r: aioredis.Redis, ks: Keyspace, n: int) -> set[int]:
    return {i for i in range(n) if await r.exists(ks.entry(h(i)))}


async def bookkeeping_sizes(r: aioredis.Redis, ks: Keyspace, group: str = GROUP) -> tuple[int, int, int, int]:
    async def hlen(kind: str) -> int:
        return sum([await r.hlen(key) for key in ks.group_keys(group, kind)])
    return (await eviction.group_count(r, ks, group, "lru"), await eviction.group_count(r, ks, group, "lfu"),
            await eviction.group_count(r, ks, group, "ctime"), await hlen("size"))


async def test_lru_keeps_the_most_recently_used(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(20):
        await write(r, ks, i, now_s=1000 + i)
    await hit(r, ks, 0, now_s=2000)  # the oldest entry, touched last: must survive

    result = await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LRU", max_entries=10), batch_size=3)

    assert result.num_evicted == 10 and result.num_entries == 10
    assert await live(r, ks, 20) == {0, *range(11, 20)}
    assert await bookkeeping_sizes(r, ks) == (10, 10, 10, 10)
    # Vector docs of the victims went with their entries, and client indexes were told.
    assert not await r.exists(ks.vector(h(1)))
    assert await r.exists(ks.vector(h(0)))
    events = await r.xrange(ks.vector_events)
    assert {fields[b"k"].decode() for _, fields in events} == {h(i) for i in range(1, 11)}
    assert all(fields[b"op"] == b"del" for _, fields in events)


async def test_second_pass_inside_limits_deletes_nothing(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(5):
        await write(r, ks, i, now_s=1000 + i)
    limits = EvictionLimits("LRU", max_entries=5, max_memory_bytes=500)
    first = await eviction.enforce_limits(r, ks, GROUP, limits)
    second = await eviction.enforce_limits(r, ks, GROUP, limits)
    assert first.num_evicted == second.num_evicted == 0
    assert await live(r, ks, 5) == set(range(5))


async def test_lfu_keeps_the_most_frequently_used(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(6):
        await write(r, ks, i, now_s=1000 + i)
    for _ in range(5):
        await hit(r, ks, 0, now_s=1100)
        await hit(r, ks, 1, now_s=1100)
    await hit(r, ks, 2, now_s=1100)

    await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LFU", max_entries=3))

    assert await live(r, ks, 6) == {0, 1, 2}


async def test_ttl_evicts_the_oldest_created_even_if_recently_used(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(4):
        await write(r, ks, i, now_s=1000 + i)
    await hit(r, ks, 0, now_s=5000)  # recent use does not matter for TTL order

    await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("TTL", max_entries=2))

    assert await live(r, ks, 4) == {2, 3}


async def test_ttl_falls_back_to_lru_for_members_without_creation_time(r: aioredis.Redis) -> None:
    ks = Keyspace()
    await write(r, ks, 0, now_s=1000)
    for i in (1, 2):  # entries written under another group, only read here (no ctime)
        await r.set(ks.entry(h(i)), b"{}")
        await hit(r, ks, i, now_s=900 + i)

    await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("TTL", max_entries=1))

    assert (await eviction.group_usage(r, ks, GROUP))[0] == 1
    assert await live(r, ks, 3) == {2}


async def test_max_memory_trims_by_recorded_size(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(10):
        await write(r, ks, i, now_s=1000 + i, size=1000)

    result = await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LRU", max_memory_bytes=3500),
                                           batch_size=4)

    assert result.memory_bytes == 3000 and result.num_entries == 3
    assert await live(r, ks, 10) == {7, 8, 9}


async def test_expired_entries_are_pruned_without_counting_as_evictions(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(4):
        await write(r, ks, i, now_s=1000 + i, ttl_ms=50 if i < 2 else 600_000)
    await asyncio.sleep(0.2)  # let Redis expire the two short-lived entries

    result = await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LRU", max_entries=2))

    # Both slots were taken by dead members; pruning them keeps the live entries.
    assert result.num_pruned == 2 and result.num_evicted == 0
    assert await live(r, ks, 4) == {2, 3}
    assert await bookkeeping_sizes(r, ks) == (2, 2, 2, 2)
    assert not await r.exists(ks.vector(h(0)))


async def test_prune_walks_the_set_with_a_cursor(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(300):
        await write(r, ks, i, now_s=1000 + i, vector=False)
    await r.delete(*[ks.entry(h(i)) for i in range(300)])  # all gone behind the operator's back

    cursor, pruned, passes = 0, 0, 0
    while True:
        res = await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LRU"), prune_cursor=cursor,
                                            prune_scan_count=50)
        pruned += res.num_pruned
        cursor = res.prune_cursor
        passes += 1
        if cursor == 0:
            break
    assert pruned == 300 and passes > 1  # more than one pass: bounded work per pass
    assert await bookkeeping_sizes(r, ks) == (0, 0, 0, 0)


async def test_groups_are_independent(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(6):
        await write(r, ks, i, now_s=1000 + i, group="ns/a" if i < 3 else "ns/b")
    await eviction.enforce_limits(r, ks, "ns/a", EvictionLimits("LRU", max_entries=1))
    assert await live(r, ks, 6) == {2, 3, 4, 5}


async def test_purge_group_deletes_every_entry_and_the_bookkeeping(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(7):
        await write(r, ks, i, now_s=1000 + i)
    await write(r, ks, 99, now_s=1000, group="ns/other")

    assert await eviction.purge_group(r, ks, GROUP, batch_size=3) == 7

    assert await live(r, ks, 7) == set()
    assert await r.exists(ks.entry(h(99)))
    assert not await r.exists(*[key for k in ("lru", "lfu", "ctime", "size") for key in ks.group_keys(GROUP, k)])


async def test_concurrent_writers_end_within_max_entries(r: aioredis.Redis) -> None:
    """Two writers keep writing and re-reading a hot key while passes run; the limit holds after each quiet pass."""
    ks = Keyspace()
    limits = EvictionLimits("LRU", max_entries=25)
    stop = asyncio.Event()
    clock = iter(range(10_000_000))

    async def writer(offset: int) -> None:
        i = offset
        while not stop.is_set():
            await write(r, ks, i, now_s=1000 + next(clock))
            await hit(r, ks, 0, now_s=1000 + next(clock))  # key 0 stays hot
            i += 2
            await asyncio.sleep(0)

    await write(r, ks, 0, now_s=1000)
    tasks = [asyncio.create_task(writer(1)), asyncio.create_task(writer(2))]
    for _ in range(30):
        await eviction.enforce_limits(r, ks, GROUP, limits, batch_size=8)
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.gather(*tasks)
    final = await eviction.enforce_limits(r, ks, GROUP, limits)

    written = await eviction.group_count(r, ks, GROUP)
    assert final.num_entries == written <= 25
    keys = [k async for k in r.scan_iter(match=ks.entry_pattern)]
    assert len(keys) <= 25
    assert await r.exists(ks.entry(h(0)))  # the hot key survived every pass


def test_limits_reject_unknown_policy() -> None:
    with pytest.raises(ValueError, match="LRU, LFU, TTL"):
        EvictionLimits("FIFO")


async def test_entries_created_before_invalidate_before_are_deleted(r: aioredis.Redis) -> None:
    ks = Keyspace()
    for i in range(10):
        await write(r, ks, i, now_s=1000 + i)
    limits = EvictionLimits("LRU", max_entries=100, invalidate_before_s=1005.0)

    result = await eviction.enforce_limits(r, ks, GROUP, limits, batch_size=2)

    assert result.num_invalidated == 5 and result.num_evicted == 0
    assert await live(r, ks, 10) == set(range(5, 10))
    assert (await eviction.enforce_limits(r, ks, GROUP, limits)).num_invalidated == 0


def test_limits_from_spec_carry_invalidate_before() -> None:
    spec = parse_spec({"eviction": {"policy": "TTL", "maxEntries": 5, "maxMemory": "1Ki"},
                       "invalidateBefore": "2026-01-01T00:00:00Z"})
    assert EvictionLimits.from_spec(spec) == EvictionLimits("TTL", max_entries=5, max_memory_bytes=1024,
                                                            invalidate_before_s=1767225600.0)


async def test_judged_outcomes_go_with_their_entries_and_the_model_with_its_group(r: aioredis.Redis) -> None:
    """Error-bounded caching's per-entry record is evicted with the entry; a dropped group drops its model."""
    ks = Keyspace()
    for i in range(4):
        await write(r, ks, i, now_s=1000 + i)
        await r.hset(ks.judged(h(i)), mapping={"veto": "0.93", "wrong": 1})
    await r.hset(ks.bound(GROUP), mapping={"current": "v1", "v1:a:11:j": 5})
    await r.hset(ks.pairs_of(GROUP, "0123456789abcdef01234567"), "0123456789abcdef01234567", "2,0")
    await eviction.enforce_limits(r, ks, GROUP, EvictionLimits("LRU", max_entries=2))
    assert await live(r, ks, 4) == {2, 3}
    assert [await r.exists(ks.judged(h(i))) for i in range(4)] == [0, 0, 1, 1]
    # Leaving entries in place (a policy deleted without purge) leaves their records to expire with them.
    await eviction.delete_members(r, ks, GROUP, [h(2)], delete_entries=False)
    assert await r.exists(ks.judged(h(2)))
    await eviction.drop_bookkeeping(r, ks, GROUP)
    assert not await r.exists(ks.bound(GROUP))
    assert not await r.exists(ks.pairs_of(GROUP, "0123456789abcdef01234567"))
