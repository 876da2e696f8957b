"""Cross-pod eviction: keep one policy's cache group inside ``maxEntries`` / ``maxMemory``.

Sidecars never evict; they only record accesses (:meth:`Keyspace.record_access`,
pipelined with the cache read or write). Every pod applying policy ``ns/name``
writes into the same group, so the limits hold across all of them::

    {p}:g:{group}:{s}:lru    ZSET  key_hash → last access (s)   ─┐ victim order by policy:
    {p}:g:{group}:{s}:lfu    ZSET  key_hash → access count        │ LRU → lru, LFU → lfu,
    {p}:g:{group}:{s}:ctime  ZSET  key_hash → creation time (s)   │ TTL → ctime (oldest first,
    {p}:g:{group}:{s}:size   HASH  key_hash → entry bytes        ─┘ i.e. nearest to expiry)
    {p}:g:{group}:{s}:exp    ZSET  key_hash → expiry (s)          sidecars trim expired rows by it

One :func:`enforce_limits` pass:

0. *invalidate*: with ``spec.invalidateBefore``, delete the entries created
   before it (``ZRANGEBYSCORE ctime``): sidecars never serve them again;
1. *prune*: walk the next ``prune_scan_count`` members of ``lru`` (shard by
   shard, a cursor carried between passes, never a full scan) and drop the bookkeeping of
   members whose entry expired or was deleted (plus any leftover vector doc);
2. *count*: if ``ZCARD lru`` > ``maxEntries``, delete that excess, taking the
   lowest-scored members of the policy's set (``ZRANGE 0 n``) batch by batch;
3. *memory*: if the sum of ``size`` > ``maxMemory``, the same, counting bytes.

The excess is measured once per pass, so a pass always ends even while writers
outpace it.

Deleting a victim removes ``{p}:e:{h}``, ``{p}:v:{h}``, ``{p}:j:{h}`` (its judged outcomes) and
the member from all five structures in one pipeline, and appends ``{op: del, k: h}`` to
``{p}:vevents`` for each vector doc that existed, so sidecars with a
client-side vector index drop it too. A pass is not atomic with concurrent writers:
entries written meanwhile are counted by the next pass, so a group may overshoot
its limit by what all pods write within one interval, never for longer.

Members absent from the policy's ordering set (e.g. a hit recorded in a group
that did not create the entry has no ``ctime``) are taken from ``lru`` once the
ordering set is exhausted. LFU ties are broken by member order, not recency.

Everything here is plain ``redis.asyncio``; kopf only calls it from a timer, and
tests call it directly.

Sharding (see :mod:`llmcache.keyspace`): each of the five structures is split
into 256 shards, ``{p}:g:{group}:{s}:lru`` …, a member living in the shard of its
entry (same hash tag, same slot on Redis Cluster). A pass works shard by shard
and merges: counts are summed over the shards (one pipeline), victims are the
group-wide lowest scores (each shard's lowest few, merged, refetching deeper only
from shards that could still hold more of them), and every delete script runs
on one shard, i.e. one slot. The ``prune`` cursor is the next shard to sweep.
Vector-doc deletions are returned by the script and appended to ``{p}:vevents``
after it (a stream in its own slot; only client-side indexes read it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from llmcache.connection import as_text
from llmcache.keyspace import BOOKKEEPING_KINDS, NUM_SHARDS, ORDER_KINDS, SHARDS, Keyspace, by_shard
from llmcache.policy import PolicySpec

__all__ = ["EvictionLimits", "EvictionResult", "delete_members", "drop_bookkeeping", "enforce_limits", "group_count",
           "group_usage", "purge_group"]

log = logging.getLogger(__name__)

_ORDER_SET = {"LRU": "lru", "LFU": "lfu", "TTL": "ctime"}
#: Approximate cap of the vector-events stream; the proxy trims it to the same length.
VECTOR_EVENTS_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class EvictionLimits:
    """The limits of one group; ``None`` means unlimited."""

    policy: str = "LRU"
    max_entries: int | None = None
    max_memory_bytes: int | None = None
    #: ``spec.invalidateBefore`` (epoch seconds): entries created earlier are never served again,
    #: so the pass deletes them instead of letting them hold memory until their TTL.
    invalidate_before_s: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in _ORDER_SET:
            raise ValueError(f"eviction policy must be one of {', '.join(_ORDER_SET)}, got {self.policy!r}")

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> EvictionLimits:
        return cls(policy=spec.eviction_policy, max_entries=spec.max_entries,
                   max_memory_bytes=spec.max_memory_bytes, invalidate_before_s=spec.invalidate_before_s)


@dataclass(frozen=True, slots=True)
class EvictionResult:
    """What one pass found and did."""

    #: Entries (``lru`` members) left after the pass.
    num_entries: int
    #: Sum of recorded entry sizes left after the pass; ``None`` when no memory limit asked for it.
    memory_bytes: int | None
    #: Members deleted to meet the limits.
    num_evicted: int
    #: Members dropped because their entry had already expired.
    num_pruned: int
    #: Entries deleted because they were created before ``invalidateBefore``.
    num_invalidated: int
    #: Next shard to prune, to pass to the next call (0: the sweep wrapped around).
    prune_cursor: int




# The per-member work runs inside Redis, one script call per shard batch: a batch of 256 costs
# one round trip and well under a millisecond of server time, where a client pipeline of the
# same DEL/ZREM commands spent most of a pass packing and parsing in Python. Every key is
# declared and carries the shard's hash tag, so the script runs on one slot of a cluster.
# KEYS: lru, lfu, ctime, size, exp (BOOKKEEPING_KINDS order), then entry, vector and judged-outcomes
# key of each member. ARGV: mode ("all": delete entries too, "bookkeeping": leave entries, "dead": only
# members whose entry is gone), then the members. Returns {members removed, members whose vector doc
# was deleted}.
_REMOVE = """
local mode = ARGV[1]
local removed, vdel = 0, {}
for j = 2, #ARGV do
  local h, e, v, o = ARGV[j], KEYS[3 + 3 * (j - 1)], KEYS[4 + 3 * (j - 1)], KEYS[5 + 3 * (j - 1)]
  if mode ~= 'dead' or redis.call('EXISTS', e) == 0 then
    if mode == 'all' then redis.call('DEL', e) end
    if mode ~= 'bookkeeping' then redis.call('DEL', o) end
    if redis.call('DEL', v) == 1 then vdel[#vdel + 1] = h end
    redis.call('ZREM', KEYS[1], h)
    redis.call('ZREM', KEYS[2], h)
    redis.call('ZREM', KEYS[3], h)
    redis.call('HDEL', KEYS[4], h)
    redis.call('ZREM', KEYS[5], h)
    removed = removed + 1
  end
end
return {removed, vdel}
"""

# KEYS: lru, size of one shard. Returns {ZCARD lru, sum of size values as a string}.
_USAGE = """
local total = 0
local sizes = redis.call('HVALS', KEYS[2])
for i = 1, #sizes do total = total + (tonumber(sizes[i]) or 0) end
return {redis.call('ZCARD', KEYS[1]), tostring(total)}
"""


#: Victims chosen per round, in batches: one round asks every shard for its lowest members (a
#: pipeline of 256) and deletes with one script per shard, so it pays to take many at once.
_ROUND_BATCHES = 16


def _pipe(r: Any) -> Any:
    """A non-transactional pipeline (a cluster pipeline groups its commands by node)."""
    return r.pipeline(transaction=False)


async def _remove(r: Any, ks: Keyspace, group: str, members: Sequence[str], *, mode: str,
                  batch_size: int = 256) -> int:
    calls: list[tuple[list[str], list[str]]] = []
    for shard, in_shard in by_shard(members).items():
        for i in range(0, len(in_shard), batch_size):
            batch = in_shard[i:i + batch_size]
            keys = ks.bookkeeping(group, shard)
            for h in batch:
                keys += [ks.entry(h), ks.vector(h), ks.judged(h)]
            calls.append((keys, batch))
    if not calls:
        return 0
    async with _pipe(r) as pipe:
        for keys, batch in calls:
            pipe.eval(_REMOVE, len(keys), *keys, mode, *batch)
        replies = await pipe.execute()
    removed, vdel = 0, []
    for reply in replies:
        removed += int(reply[0])
        vdel.extend(as_text(h) for h in reply[1] or [])
    if vdel:
        # Client-side vector indexes learn about the deleted docs from the stream (own slot).
        async with _pipe(r) as pipe:
            for h in vdel:
                pipe.xadd(ks.vector_events, {"op": "del", "k": h}, maxlen=VECTOR_EVENTS_MAXLEN, approximate=True)
            await pipe.execute()
    return removed


def _bookkeeping_keys(ks: Keyspace, group: str) -> list[str]:
    return [key for kind in BOOKKEEPING_KINDS for key in ks.group_keys(group, kind)]


async def delete_members(r: aioredis.Redis, ks: Keyspace, group: str, members: Sequence[str], *,
                         delete_entries: bool = True) -> None:
    """Remove ``members`` from the group's bookkeeping and vector docs, and (``delete_entries``) their entries.

    Each removed vector doc is announced on ``{p}:vevents`` (``op=del``) for client-side indexes.
    """
    if members:
        await _remove(r, ks, group, members, mode="all" if delete_entries else "bookkeeping")


async def group_count(r: aioredis.Redis, ks: Keyspace, group: str, kind: str = "lru") -> int:
    """Members of the group's ``kind`` set, summed over its shards (one pipeline)."""
    async with _pipe(r) as pipe:
        for key in ks.group_keys(group, kind):
            pipe.zcard(key)
        return sum(int(n) for n in await pipe.execute())


async def group_usage(r: aioredis.Redis, ks: Keyspace, group: str) -> tuple[int, int]:
    """``(entries, memory_bytes)`` of a group as its bookkeeping records them (sizes summed inside Redis)."""
    async with _pipe(r) as pipe:
        for shard in SHARDS:
            lru, size = ks.group(group, "lru", shard), ks.group(group, "size", shard)
            pipe.eval(_USAGE, 2, lru, size)
        replies = await pipe.execute()
    return (sum(int(c) for c, _ in replies), sum(int(float(as_text(t))) for _, t in replies))


async def _prune(r: aioredis.Redis, ks: Keyspace, group: str, *, cursor: int, count: int) -> tuple[int, int]:
    """Sweep whole shards from shard ``cursor`` until about ``count`` members were looked at; next shard (0: wrapped).

    The sizes of the next shards are read first (one pipeline), so a pass takes as many
    shards as make ``count`` (at least one): small groups sweep many shards per pass, big
    ones one or a few, and no pass reads more than ``count`` plus one shard.
    """
    shard_i = cursor if 0 <= cursor < NUM_SHARDS else 0
    seen, pruned = 0, 0
    while shard_i < NUM_SHARDS and seen < count:
        ahead = SHARDS[shard_i:shard_i + 64]
        async with _pipe(r) as pipe:
            for shard in ahead:
                pipe.zcard(ks.group(group, "lru", shard))
            sizes = [int(n) for n in await pipe.execute()]
        take, budget = 0, count - seen
        while take < len(ahead) and (take == 0 or budget > 0):
            budget -= sizes[take]
            take += 1
        shards = [sh for sh, n in zip(ahead[:take], sizes[:take], strict=True) if n]
        members: list[str] = []
        async with _pipe(r) as pipe:  # first pages together: small shards end there
            for shard in shards:
                pipe.zscan(ks.group(group, "lru", shard), cursor=0, count=count)
            pages = await pipe.execute()
        for shard, (first_cursor, first_page) in zip(shards, pages, strict=True):
            members.extend(as_text(m) for m, _ in first_page)
            zcur = first_cursor
            while int(zcur) != 0:  # a big shard: the rest of it (bounded by its size)
                zcur, scored = await r.zscan(ks.group(group, "lru", shard), cursor=zcur, count=count)
                members.extend(as_text(m) for m, _ in scored)
        seen += sum(sizes[:take])
        if members:
            pruned += await _remove(r, ks, group, members, mode="dead")
        shard_i += take
    return (shard_i if shard_i < NUM_SHARDS else 0), pruned


async def _delete_created_before(r: aioredis.Redis, ks: Keyspace, group: str, before_s: float, *,
                                 batch_size: int) -> int:
    """Delete the members whose ``ctime`` is earlier than ``before_s`` (new writes are later: this ends)."""
    deleted = 0
    per_shard = max(1, batch_size // 8)
    while True:
        async with _pipe(r) as pipe:
            for key in ks.group_keys(group, "ctime"):
                pipe.zrangebyscore(key, "-inf", f"({before_s}", start=0, num=per_shard)
            stale = [as_text(m) for page in await pipe.execute() for m in page]
        if not stale:
            return deleted
        await delete_members(r, ks, group, stale)
        deleted += len(stale)


async def _lowest(r: aioredis.Redis, ks: Keyspace, group: str, kind: str, n: int,
                  exclude: set[str] | None = None) -> list[str]:
    """The ``n`` group-wide lowest-scored members of ``kind`` (ties by member), not in ``exclude``.

    Each shard gives its lowest few; a shard is asked again, deeper, only while all it gave
    fall below the current n-th best: exact, and usually one pipeline.
    """
    exclude = exclude or set()
    depth = {shard: max(2, -(-2 * (n + len(exclude)) // NUM_SHARDS)) for shard in SHARDS}
    got: dict[str, list[tuple[float, str]]] = {}
    todo = list(SHARDS)
    while todo:
        async with _pipe(r) as pipe:
            for shard in todo:
                pipe.zrange(ks.group(group, kind, shard), 0, depth[shard] - 1, withscores=True)
            pages = await pipe.execute()
        for shard, page in zip(todo, pages, strict=True):
            got[shard] = [(float(score), as_text(m)) for m, score in page]
        merged = sorted(item for items in got.values() for item in items if item[1] not in exclude)
        bound = merged[n - 1] if len(merged) >= n else None
        todo = []
        for shard, items in got.items():
            full = len(items) == depth[shard]  # the shard may hold more below the bound
            if full and (bound is None or items[-1] <= bound):
                depth[shard] *= 2
                todo.append(shard)
    return [m for _, m in merged[:n]]


async def _candidates(r: aioredis.Redis, ks: Keyspace, group: str, order: str, n: int) -> list[str]:
    """The ``n`` next victims: lowest scores of the ordering set, then of ``lru`` for members it lacks."""
    out = await _lowest(r, ks, group, order, n)
    if len(out) < n and order != "lru":
        out.extend(await _lowest(r, ks, group, "lru", n - len(out), exclude=set(out)))
    return out[:n]


async def enforce_limits(r: aioredis.Redis, ks: Keyspace, group: str, limits: EvictionLimits, *,
                         batch_size: int = 256, prune_cursor: int = 0,
                         prune_scan_count: int = 1000) -> EvictionResult:
    """Run one pass over ``group`` (prune expired, then trim to the limits); see the module docstring.

    ``prune_cursor`` is the previous result's ``prune_cursor`` (0 to start a sweep).
    Safe to run concurrently with writers, and idempotent: a second pass over a
    group inside its limits deletes nothing.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = _ORDER_SET[limits.policy]
    next_cursor, pruned = await _prune(r, ks, group, cursor=prune_cursor, count=prune_scan_count)
    invalidated = 0
    if limits.invalidate_before_s is not None:
        invalidated = await _delete_created_before(r, ks, group, limits.invalidate_before_s, batch_size=batch_size)
    evicted = 0
    # Summing sizes is O(entries) inside Redis: only when a memory limit needs it.
    if limits.max_memory_bytes is not None:
        count, memory = await group_usage(r, ks, group)
    else:
        count, memory = await group_count(r, ks, group), None

    # Each pass removes the excess measured at its start, then stops: with writers faster
    # than one pass, re-measuring in a loop would chase them forever.
    if limits.max_entries is not None and count > limits.max_entries:
        excess = count - limits.max_entries
        while excess > 0:
            victims = await _candidates(r, ks, group, order, min(batch_size * _ROUND_BATCHES, excess))
            if not victims:
                break
            await delete_members(r, ks, group, victims)
            evicted += len(victims)
            excess -= len(victims)
        if memory is not None:
            count, memory = await group_usage(r, ks, group)
        else:
            count = await group_count(r, ks, group)

    if limits.max_memory_bytes is not None and memory is not None and memory > limits.max_memory_bytes:
        to_free = memory - limits.max_memory_bytes
        while to_free > 0:
            batch = await _candidates(r, ks, group, order, batch_size * _ROUND_BATCHES)
            if not batch:
                break
            async with _pipe(r) as pipe:
                for member in batch:
                    pipe.hget(ks.group_of(group, "size", member), member)
                sizes = await pipe.execute()
            victims = []
            for member, size in zip(batch, sizes, strict=True):
                if to_free <= 0:
                    break
                victims.append(member)
                to_free -= int(size or 0)
            await delete_members(r, ks, group, victims)
            evicted += len(victims)
        count, memory = await group_usage(r, ks, group)

    if evicted or pruned or invalidated:
        log.info("eviction group %s (%s): evicted %s, pruned %s expired, deleted %s invalidated, "
                 "now %s entries / %s bytes", group, limits.policy, evicted, pruned, invalidated, count, memory)
    return EvictionResult(num_entries=count, memory_bytes=memory, num_evicted=evicted, num_pruned=pruned,
                          num_invalidated=invalidated, prune_cursor=next_cursor)


async def drop_bookkeeping(r: aioredis.Redis, ks: Keyspace, group: str) -> None:
    """Delete the group's bookkeeping keys (every kind), its learned error-bound model and its judged
    pairs, leaving its entries to expire with their TTL."""
    keys = [*_bookkeeping_keys(ks, group), ks.bound(group), *(ks.pairs(group, s) for s in SHARDS)]
    for i in range(0, len(keys), 256):
        await r.delete(*keys[i:i + 256])  # split by slot on a cluster


async def purge_group(r: aioredis.Redis, ks: Keyspace, group: str, *, batch_size: int = 256) -> int:
    """Delete every entry recorded in ``group`` and the group's bookkeeping; returns the entries deleted."""
    members: set[str] = set()
    for shard in SHARDS:
        for kind in ORDER_KINDS:
            async for m, _ in r.zscan_iter(ks.group(group, kind, shard)):
                members.add(as_text(m))
        async for h, _ in r.hscan_iter(ks.group(group, "size", shard)):
            members.add(as_text(h))
    ordered = sorted(members)
    for i in range(0, len(ordered), batch_size):
        await delete_members(r, ks, group, ordered[i:i + batch_size])
    await drop_bookkeeping(r, ks, group)
    log.info("purged %s entries of group %s", len(ordered), group)
    return len(ordered)
