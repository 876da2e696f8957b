"""Trimming the groups no CachePolicy owns: ``_default`` and the groups of vanished policies.

A policy's own group is trimmed by its ``eviction`` timer (:mod:`llmcache.operator.handlers`).
Two kinds of group have no such timer, yet sidecars keep writing to them:

- ``_default``: every pod that no policy selects writes here (one group per partition, i.e.
  per app namespace, each held to the default limits);
- an *orphan*: a group ``ns/name`` whose policy is not published any more (deleted
  while the operator was down, or by a former installation on the same Redis).

One :func:`sweep_once` pass finds every group of every partition from its ``lru`` keys
(``SCAN {p}:n:*:g:*:lru``, bounded per round trip; a group has one per shard), keeps the
groups of published policies (the ``{p}:policies:*`` hashes) for their own timers, and runs
:func:`llmcache.operator.eviction.enforce_limits` on the rest with the operator's default
limits. That also prunes bookkeeping of expired entries, which otherwise grows without
bound (bookkeeping keys have no TTL)::

    SCAN {p}:n:*:g:*:lru ──▶ (partition, group) ──▶ published? ──yes──▶ its own timer
                                                        │no
                                                        ▼
                                          enforce_limits(default limits)

The same task caps the number of stats hashes (:func:`cap_stats_keys`), and once per start
removes what the layout before partitions left behind (:func:`drop_legacy_layout`).

Idempotent and safe alongside writers and other replicas (each pass deletes at most
the excess it measured at its start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from llmcache import connection
from llmcache.connection import as_text
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.operator import eviction

__all__ = ["Group", "SweepResult", "cap_stats_keys", "drop_legacy_layout", "published_groups", "run_sweeper",
           "still_unowned", "sweep_once", "unowned_groups"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)




@dataclass(slots=True)
class SweepResult:
    """What one pass did, per group it trimmed."""

    #: (partition, group) → entries left after the pass.
    num_entries: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Members deleted to meet the default limits, all groups together.
    num_evicted: int = 0
    #: Bookkeeping members dropped because their entry had expired.
    num_pruned: int = 0


#: A group where it lives: ``(partition, group)``.
Group = tuple[str, str]


async def published_groups(r: aioredis.Redis, ks: Keyspace) -> set[str]:
    """Ids ``ns/name`` of every policy published in Redis (any namespace, any operator)."""
    out: set[str] = set()
    prefix = ks.policies("")
    async for key in r.scan_iter(match=f"{prefix}*", count=500, _type="HASH"):
        namespace = as_text(key)[len(prefix):]
        for name in await r.hkeys(key):
            out.add(f"{namespace}/{as_text(name)}")
    return out


async def unowned_groups(r: aioredis.Redis, ks: Keyspace) -> list[Group]:
    """Every group with bookkeeping, in any partition, whose policy is not published (``_default`` included), sorted."""
    groups: set[Group] = set()
    async for key in r.scan_iter(match=ks.group_pattern, count=1000):
        found = ks.parse_group_key(key)
        if found is not None:
            groups.add(found)
    published = await published_groups(r, ks)
    return sorted(g for g in groups if g[1] not in published)


async def still_unowned(r: aioredis.Redis, ks: Keyspace, groups: Iterable[Group]) -> list[Group]:
    """``groups`` without those whose policy is published now (one ``HEXISTS`` each; ``_default`` stays)."""
    out = []
    for partition, group in groups:
        namespace, _, name = group.partition("/")
        if group == DEFAULT_GROUP or not name or not await r.hexists(ks.policies(namespace), name):
            out.append((partition, group))
    return out


async def sweep_once(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *,
                     cursors: dict[Group, int], groups: Sequence[Group] | None = None, batch_size: int = 256,
                     prune_scan_count: int = 1000) -> SweepResult:
    """Trim unowned groups to ``limits``: ``groups`` (re-checked), else every one :func:`unowned_groups` finds.

    ``cursors`` carries each group's prune cursor between passes.
    """
    result = SweepResult()
    groups = await unowned_groups(r, ks) if groups is None else await still_unowned(r, ks, groups)
    for gone in set(cursors) - set(groups):
        del cursors[gone]
    for partition, group in groups:
        done = await eviction.enforce_limits(r, ks.for_partition(partition), group, limits, batch_size=batch_size,
                                             prune_cursor=cursors.get((partition, group), 0),
                                             prune_scan_count=prune_scan_count)
        cursors[(partition, group)] = done.prune_cursor
        result.num_entries[(partition, group)] = done.num_entries
        result.num_evicted += done.num_evicted
        result.num_pruned += done.num_pruned
    return result


async def cap_stats_keys(r: aioredis.Redis, ks: Keyspace, *, max_keys: int) -> int:
    """Delete the stats hashes beyond ``max_keys`` (all partitions together), least recently written first
    (lowest TTL left), and their rows in their partition's stats index.

    Every ``X-LLMCache-Namespace`` value a client sends makes one hash; their TTL
    (:data:`llmcache.stats.STATS_TTL_S`) bounds them in time, this bounds them in number.
    Returns how many were deleted.
    """
    keys = [as_text(key) async for key in r.scan_iter(match=ks.all_stats_pattern, count=1000, _type="HASH")]
    if len(keys) <= max_keys:
        return 0
    async with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.ttl(key)
        ttls = await pipe.execute()
    # No TTL (-1, written before TTLs existed) counts as the oldest.
    by_age = sorted(zip(ttls, keys, strict=True), key=lambda t: int(t[0]))
    victims = [key for _, key in by_age[:len(keys) - max_keys]]
    for i in range(0, len(victims), 500):
        await r.unlink(*victims[i:i + 500])
    async with r.pipeline(transaction=False) as pipe:
        for key in victims:
            partition = ks.partition_of(key)
            if partition is not None:
                pipe.zrem(ks.for_partition(partition).stats_index, key.rsplit(":", 1)[-1])
        await pipe.execute()
    log.info("deleted %d stats hashes beyond the cap of %d", len(victims), max_keys)
    return len(victims)


#: Key patterns of the layout before partitions (``{p}:e:…``, ``{p}:g:…``): unreachable by any sidecar now.
_LEGACY_PATTERNS = ("e:*", "v:*", "g:*", "lease:*", "stats:*", "acks:*", "vevents")


async def drop_legacy_layout(r: aioredis.Redis, ks: Keyspace) -> int:
    """Delete the keys and vector indexes of the layout before partitions; returns the keys deleted.

    Entries there expire with their TTL, but their bookkeeping rows have none, and no sidecar
    reads any of it any more. Safe to run on every start: it finds nothing the second time.
    """
    deleted = 0
    for pattern in _LEGACY_PATTERNS:
        batch: list[str] = []
        async for key in r.scan_iter(match=f"{ks.prefix}:{pattern}", count=1000):
            batch.append(as_text(key))
            if len(batch) >= 500:
                deleted += await _unlink_each(r, batch)
                batch = []
        deleted += await _unlink_each(r, batch)
    index = f"{ks.prefix}:vidx"
    for _, node in await connection.primaries(r):
        kwargs = {} if node is None else {"target_nodes": node}
        try:
            names = [as_text(n) for n in await r.execute_command("FT._LIST", **kwargs) or []]
        except redis.exceptions.ResponseError:
            return deleted  # no search module: no index to drop
        for name in names:
            if name == index or name.startswith(index + ":{"):
                with contextlib.suppress(redis.exceptions.ResponseError):  # gone meanwhile
                    await r.execute_command("FT.DROPINDEX", name, **kwargs)
                log.info("dropped vector index %s of the layout before partitions", name)
    if deleted:
        log.info("deleted %d keys of the layout before partitions (%s:e:…, :g:…, …)", deleted, ks.prefix)
    return deleted


async def _unlink_each(r: aioredis.Redis, keys: list[str]) -> int:
    if not keys:
        return 0
    if connection.is_cluster(r):  # one slot per command on a cluster
        return sum([int(await r.unlink(key)) for key in keys])
    return int(await r.unlink(*keys))


async def run_sweeper(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *, interval_s: float,
                      batch_size: int = 256, prune_scan_count: int = 1000, discover_every: int = 30,
                      max_stats_keys: int | None = None,
                      on_pass: Callable[[SweepResult], None] | None = None) -> None:
    """Run :func:`sweep_once` every ``interval_s`` until cancelled; Redis outages are logged and retried.

    Finding groups walks the whole keyspace (``SCAN``), so it runs on the first pass and then every
    ``discover_every`` passes (default 30: every 5 min at the default 10 s); the groups found
    (each partition's ``_default`` and the orphans) are trimmed on every pass. With ``max_stats_keys``,
    the stats hashes are capped on the discovery passes too. The first pass also drops the layout
    before partitions.
    """
    cursors: dict[Group, int] = {}
    known: list[Group] = []
    num_passes = 0
    legacy_dropped = False
    while True:
        try:
            if not legacy_dropped:
                await drop_legacy_layout(r, ks)
                legacy_dropped = True
            if num_passes % max(1, discover_every) == 0:
                known = await unowned_groups(r, ks)
                if max_stats_keys is not None:
                    await cap_stats_keys(r, ks, max_keys=max_stats_keys)
            num_passes += 1
            done = await sweep_once(r, ks, limits, cursors=cursors, groups=known, batch_size=batch_size,
                                    prune_scan_count=prune_scan_count)
            if on_pass is not None:
                on_pass(done)
        except _REDIS_ERRORS as exc:
            log.warning("cannot trim groups without a policy: Redis unreachable (%s); retrying in %ss",
                        exc, interval_s)
        await asyncio.sleep(interval_s)
