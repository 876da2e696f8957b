"""Trimming the groups no CachePolicy owns: ``_default`` and the groups of vanished policies.

A policy's own group is trimmed by its ``eviction`` timer (:mod:`llmcache.operator.handlers`).
Two kinds of group have no such timer, yet sidecars keep writing to them:

- ``_default``: every pod that no policy selects writes here (one shared group);
- an *orphan*: a group ``ns/name`` whose policy is not published any more (deleted
  while the operator was down, or by a former installation on the same Redis).

One :func:`sweep_once` pass finds every group from its ``lru`` keys (``SCAN``,
bounded per round trip; a group has one per shard), keeps the groups of published policies (the
``{p}:policies:*`` hashes) for their own timers, and runs
:func:`llmcache.operator.eviction.enforce_limits` on the rest with the operator's
default limits. That also prunes bookkeeping of expired entries, which otherwise
grows without bound (bookkeeping keys have no TTL)::

    SCAN {p}:g:*:lru ──▶ group ──▶ published? ──yes──▶ its own timer
                                         │no
                                         ▼
                              enforce_limits(default limits)

The same task caps the number of stats hashes (:func:`cap_stats_keys`).

Idempotent and safe alongside writers and other replicas (each pass deletes at most
the excess it measured at its start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from llmcache.connection import as_text
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.operator import eviction

__all__ = ["SweepResult", "cap_stats_keys", "published_groups", "run_sweeper", "still_unowned", "sweep_once", "unowned_groups"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)




@dataclass(slots=True)
class SweepResult:
    """What one pass did, per group it trimmed."""

    #: Group → entries left after the pass.
    num_entries: dict[str, int] = field(default_factory=dict)
    #: Members deleted to meet the default limits, all groups together.
    num_evicted: int = 0
    #: Bookkeeping members dropped because their entry had expired.
    num_pruned: int = 0


async def published_groups(r: aioredis.Redis, ks: Keyspace) -> set[str]:
    """Ids ``ns/name`` of every policy published in Redis (any namespace, any operator)."""
    out: set[str] = set()
    prefix = ks.policies("")
    async for key in r.scan_iter(match=f"{prefix}*", count=500, _type="HASH"):
        namespace = as_text(key)[len(prefix):]
        for name in await r.hkeys(key):
            out.add(f"{namespace}/{as_text(name)}")
    return out


async def unowned_groups(r: aioredis.Redis, ks: Keyspace) -> list[str]:
    """Every group with bookkeeping whose policy is not published (``_default`` included), sorted."""
    # Key names come from Keyspace only: "{p}:g:" + group + ":{" + shard + "}:lru".
    head, rest = ks.group("\0", "lru", "\1").split("\0")
    tag_open, kind_tail = rest.split("\1")
    groups = set()
    async for key in r.scan_iter(match=f"{head}*{kind_tail}", count=1000):
        name = as_text(key)[len(head):-len(kind_tail)].rpartition(tag_open)[0]
        if name:
            groups.add(name)
    return sorted(groups - await published_groups(r, ks))


async def still_unowned(r: aioredis.Redis, ks: Keyspace, groups: Iterable[str]) -> list[str]:
    """``groups`` without those whose policy is published now (one ``HEXISTS`` each; ``_default`` stays)."""
    out = []
    for group in groups:
        namespace, _, name = group.partition("/")
        if group == DEFAULT_GROUP or not name or not await r.hexists(ks.policies(namespace), name):
            out.append(group)
    return out


async def sweep_once(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *,
                     cursors: dict[str, int], groups: Sequence[str] | None = None, batch_size: int = 256,
                     prune_scan_count: int = 1000) -> SweepResult:
    """Trim unowned groups to ``limits``: ``groups`` (re-checked), else every one :func:`unowned_groups` finds.

    ``cursors`` carries each group's prune cursor between passes.
    """
    result = SweepResult()
    groups = await unowned_groups(r, ks) if groups is None else await still_unowned(r, ks, groups)
    for gone in set(cursors) - set(groups):
        del cursors[gone]
    for group in groups:
        done = await eviction.enforce_limits(r, ks, group, limits, batch_size=batch_size,
                                             prune_cursor=cursors.get(group, 0), prune_scan_count=prune_scan_count)
        cursors[group] = done.prune_cursor
        result.num_entries[group] = done.num_entries
        result.num_evicted += done.num_evicted
        result.num_pruned += done.num_pruned
    return result


async def cap_stats_keys(r: aioredis.Redis, ks: Keyspace, *, max_keys: int) -> int:
    """Delete the stats hashes beyond ``max_keys``, least recently written first (lowest TTL left).

    Every ``X-LLMCache-Namespace`` value a client sends makes one hash; their TTL
    (:data:`llmcache.stats.STATS_TTL_S`) bounds them in time, this bounds them in number.
    Returns how many were deleted.
    """
    keys = [key async for key in r.scan_iter(match=ks.stats_pattern, count=1000, _type="HASH")]
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
    log.info("deleted %d stats hashes beyond the cap of %d", len(victims), max_keys)
    return len(victims)


async def run_sweeper(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *, interval_s: float,
                      batch_size: int = 256, prune_scan_count: int = 1000, discover_every: int = 30,
                      max_stats_keys: int | None = None,
                      on_pass: Callable[[SweepResult], None] | None = None) -> None:
    """Run :func:`sweep_once` every ``interval_s`` until cancelled; Redis outages are logged and retried.

    Finding orphans walks the whole keyspace (``SCAN``), so it runs on the first pass and then every
    ``discover_every`` passes (default 30: every 5 min at the default 10 s); ``_default`` and the
    orphans found are trimmed on every pass. With ``max_stats_keys``, the stats hashes are capped
    on the discovery passes too.
    """
    cursors: dict[str, int] = {}
    known: list[str] = [DEFAULT_GROUP]
    num_passes = 0
    while True:
        try:
            if num_passes % max(1, discover_every) == 0:
                known = sorted(set(await unowned_groups(r, ks)) | {DEFAULT_GROUP})
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
