"""Cross-pod eviction: keep one policy's cache group inside ``maxEntries`` / ``maxMemory``.

Sidecars never evict; they only record accesses (:meth:`Keyspace.record_access`,
pipelined with the cache read or write). Every pod applying policy ``ns/name``
writes into the same group, so the limits hold across all of them::

    {p}:g:{group}:lru    ZSET  key_hash → last access (s)   ─┐ victim order by policy:
    {p}:g:{group}:lfu    ZSET  key_hash → access count        │ LRU → lru, LFU → lfu,
    {p}:g:{group}:ctime  ZSET  key_hash → creation time (s)   │ TTL → ctime (oldest first,
    {p}:g:{group}:size   HASH  key_hash → entry bytes        ─┘ i.e. nearest to expiry)

One :func:`enforce_limits` pass:

0. *invalidate*: with ``spec.invalidateBefore``, delete the entries created
   before it (``ZRANGEBYSCORE ctime``): sidecars never serve them again;
1. *prune*: walk the next ``prune_scan_count`` members of ``lru`` (a ``ZSCAN``
   cursor carried between passes, never a full scan) and drop the bookkeeping of
   members whose entry expired or was deleted (plus any leftover vector doc);
2. *count*: if ``ZCARD lru`` > ``maxEntries``, delete that excess, taking the
   lowest-scored members of the policy's set (``ZRANGE 0 n``) batch by batch;
3. *memory*: if the sum of ``size`` > ``maxMemory``, the same, counting bytes.

The excess is measured once per pass, so a pass always ends even while writers
outpace it.

Deleting a victim removes ``{p}:e:{h}``, ``{p}:v:{h}`` and the member from all
four structures in one pipeline, and appends ``{op: del, k: h}`` to
``{p}:vevents`` for each vector doc that existed, so sidecars with a
client-side vector index drop it too. A pass is not atomic with concurrent writers:
entries written meanwhile are counted by the next pass, so a group may overshoot
its limit by what all pods write within one interval, never for longer.

Members absent from the policy's ordering set (e.g. a hit recorded in a group
that did not create the entry has no ``ctime``) are taken from ``lru`` once the
ordering set is exhausted. LFU ties are broken by member order, not recency.

Everything here is plain ``redis.asyncio``; kopf only calls it from a timer, and
tests call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.policy import PolicySpec

__all__ = ["EvictionLimits", "EvictionResult", "delete_members", "drop_bookkeeping", "enforce_limits", "group_usage",
           "purge_group"]

log = logging.getLogger(__name__)

_ORDER_SET = {"LRU": "lru", "LFU": "lfu", "TTL": "ctime"}
#: The group's bookkeeping structures, in the KEYS order the ``_REMOVE`` script expects.
_BOOKKEEPING = ("lru", "lfu", "ctime", "size")
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
    #: ``ZSCAN`` cursor to pass to the next call (0: the sweep wrapped around).
    prune_cursor: int


def _s(v: object) -> str:
    """A Redis reply item as text (replies are bytes without ``decode_responses``)."""
    return v.decode() if isinstance(v, bytes) else str(v)


# The per-member work runs inside Redis, one script call per batch: a batch of 256 costs one
# round trip and well under a millisecond of server time, where a client pipeline of the same
# DEL/ZREM/XADD commands spent most of a pass packing and parsing in Python.
# KEYS: lru, lfu, ctime, size, vector-events. ARGV: entry prefix, vector prefix, events maxlen,
# mode ("all": delete entries too, "bookkeeping": leave entries, "dead": only members whose
# entry is gone), then the members. Returns the number of members removed.
_REMOVE = """
local ep, vp, maxlen, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local removed = 0
for i = 5, #ARGV do
  local h = ARGV[i]
  if mode ~= 'dead' or redis.call('EXISTS', ep .. h) == 0 then
    if mode == 'all' then redis.call('DEL', ep .. h) end
    if redis.call('DEL', vp .. h) == 1 then
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'op', 'del', 'k', h)
    end
    redis.call('ZREM', KEYS[1], h)
    redis.call('ZREM', KEYS[2], h)
    redis.call('ZREM', KEYS[3], h)
    redis.call('HDEL', KEYS[4], h)
    removed = removed + 1
  end
end
return removed
"""

# KEYS: lru, size. Returns {ZCARD lru, sum of size values as a string}.
_USAGE = """
local total = 0
local sizes = redis.call('HVALS', KEYS[2])
for i = 1, #sizes do total = total + (tonumber(sizes[i]) or 0) end
return {redis.call('ZCARD', KEYS[1]), tostring(total)}
"""


async def _remove(r: aioredis.Redis, ks: Keyspace, group: str, members: Sequence[str], *, mode: str,
                  batch_size: int = 256) -> int:
    keys = [*_bookkeeping_keys(ks, group), ks.vector_events]
    removed = 0
    for i in range(0, len(members), batch_size):
        removed += int(await r.eval(_REMOVE, len(keys), *keys, ks.entry(""), ks.vector(""),
                                    VECTOR_EVENTS_MAXLEN, mode, *members[i:i + batch_size]))
    return removed


def _bookkeeping_keys(ks: Keyspace, group: str) -> list[str]:
    return [ks.group(group, kind) for kind in _BOOKKEEPING]


async def delete_members(r: aioredis.Redis, ks: Keyspace, group: str, members: Sequence[str], *,
                         delete_entries: bool = True) -> None:
    """Remove ``members`` from the group's bookkeeping and vector docs, and (``delete_entries``) their entries.

    Each removed vector doc is announced on ``{p}:vevents`` (``op=del``) for client-side indexes.
    """
    if members:
        await _remove(r, ks, group, members, mode="all" if delete_entries else "bookkeeping")


async def group_usage(r: aioredis.Redis, ks: Keyspace, group: str) -> tuple[int, int]:
    """``(entries, memory_bytes)`` of a group as its bookkeeping records them (sizes summed inside Redis)."""
    count, total = await r.eval(_USAGE, 2, ks.group(group, "lru"), ks.group(group, "size"))
    return int(count), int(float(_s(total)))


async def _prune(r: aioredis.Redis, ks: Keyspace, group: str, *, cursor: int, count: int) -> tuple[int, int]:
    cursor, scored = await r.zscan(ks.group(group, "lru"), cursor=cursor, count=count)
    members = [_s(m) for m, _ in scored]
    pruned = await _remove(r, ks, group, members, mode="dead") if members else 0
    return int(cursor), pruned


async def _delete_created_before(r: aioredis.Redis, ks: Keyspace, group: str, before_s: float, *,
                                 batch_size: int) -> int:
    """Delete the members whose ``ctime`` is earlier than ``before_s`` (new writes are later: this ends)."""
    deleted = 0
    while True:
        stale = [_s(m) for m in await r.zrangebyscore(ks.group(group, "ctime"), "-inf", f"({before_s}",
                                                       start=0, num=batch_size)]
        if not stale:
            return deleted
        await delete_members(r, ks, group, stale)
        deleted += len(stale)


async def _candidates(r: aioredis.Redis, ks: Keyspace, group: str, order: str, n: int) -> list[str]:
    """The ``n`` next victims: lowest scores of the ordering set, then of ``lru`` for members it lacks."""
    out = [_s(m) for m in await r.zrange(ks.group(group, order), 0, n - 1)]
    if len(out) < n and order != "lru":
        seen = set(out)
        extra = [_s(m) for m in await r.zrange(ks.group(group, "lru"), 0, n - 1 + len(out))]
        out.extend(h for h in extra if h not in seen)
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
        count, memory = int(await r.zcard(ks.group(group, "lru"))), None

    # Each pass removes the excess measured at its start, then stops: with writers faster
    # than one pass, re-measuring in a loop would chase them forever.
    if limits.max_entries is not None and count > limits.max_entries:
        excess = count - limits.max_entries
        while excess > 0:
            victims = await _candidates(r, ks, group, order, min(batch_size, excess))
            if not victims:
                break
            await delete_members(r, ks, group, victims)
            evicted += len(victims)
            excess -= len(victims)
        if memory is not None:
            count, memory = await group_usage(r, ks, group)
        else:
            count = int(await r.zcard(ks.group(group, "lru")))

    if limits.max_memory_bytes is not None and memory is not None and memory > limits.max_memory_bytes:
        to_free = memory - limits.max_memory_bytes
        while to_free > 0:
            batch = await _candidates(r, ks, group, order, batch_size)
            if not batch:
                break
            sizes = await r.hmget(ks.group(group, "size"), batch)
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
    """Delete the group's four bookkeeping keys, leaving its entries to expire with their TTL."""
    await r.delete(*_bookkeeping_keys(ks, group))


async def purge_group(r: aioredis.Redis, ks: Keyspace, group: str, *, batch_size: int = 256) -> int:
    """Delete every entry recorded in ``group`` and the group's bookkeeping; returns the entries deleted."""
    members: set[str] = set()
    for kind in ("lru", "ctime", "lfu"):
        async for m, _ in r.zscan_iter(ks.group(group, kind)):
            members.add(_s(m))
    async for h, _ in r.hscan_iter(ks.group(group, "size")):
        members.add(_s(h))
    ordered = sorted(members)
    for i in range(0, len(ordered), batch_size):
        await delete_members(r, ks, group, ordered[i:i + batch_size])
    await drop_bookkeeping(r, ks, group)
    log.info("purged %s entries of group %s", len(ordered), group)
    return len(ordered)
