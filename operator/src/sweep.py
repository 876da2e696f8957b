"""Trimming the groups no CachePolicy owns: ``_default`` and the groups of vanished policies.

A policy's own group is trimmed by its ``eviction`` timer (:mod:`llmcache.operator.handlers`).
Two kinds of group have no such timer, yet sidecars keep writing to them:

- ``_default``: every pod that no policy selects writes here (one shared group);
- an *orphan*: a group ``ns/name`` whose policy is not published any more (deleted
  while the operator was down, or by a former installation on the same Redis).

One :func:`sweep_once` pass finds every group from its ``lru`` key (``SCAN``,
bounded per round trip), keeps the groups of published policies (the
``{p}:policies:*`` hashes) for their own timers, and runs
:func:`llmcache.operator.eviction.enforce_limits` on the rest with the operator's
default limits. That also prunes bookkeeping of expired entries, which otherwise
grows without bound (bookkeeping keys have no TTL)::

    SCAN {p}:g:*:lru ──▶ group ──▶ published? ──yes──▶ its own timer
                                         │no
                                         ▼
                              enforce_limits(default limits)

Idempotent and safe alongside writers and other replicas (each pass deletes at most
the excess it measured at its start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction

__all__ = ["SweepResult", "published_groups", "run_sweeper", "sweep_once", "unowned_groups"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


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
        namespace = _s(key)[len(prefix):]
        for name in await r.hkeys(key):
            out.add(f"{namespace}/{_s(name)}")
    return out


async def unowned_groups(r: aioredis.Redis, ks: Keyspace) -> list[str]:
    """Every group with bookkeeping whose policy is not published (``_default`` included), sorted."""
    head, tail = ks.group("\0", "lru").split("\0")  # "{p}:g:" and ":lru", named in one place
    groups = set()
    async for key in r.scan_iter(match=f"{head}*{tail}", count=500):
        name = _s(key)[len(head):-len(tail)]
        if name:
            groups.add(name)
    return sorted(groups - await published_groups(r, ks))


async def sweep_once(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *,
                     cursors: dict[str, int], batch_size: int = 256, prune_scan_count: int = 1000) -> SweepResult:
    """Trim every unowned group to ``limits``; ``cursors`` carries each group's prune cursor between passes."""
    result = SweepResult()
    groups = await unowned_groups(r, ks)
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


async def run_sweeper(r: aioredis.Redis, ks: Keyspace, limits: eviction.EvictionLimits, *, interval_s: float,
                      batch_size: int = 256, prune_scan_count: int = 1000,
                      on_pass: Callable[[SweepResult], None] | None = None) -> None:
    """Run :func:`sweep_once` every ``interval_s`` until cancelled; Redis outages are logged and retried."""
    cursors: dict[str, int] = {}
    while True:
        try:
            done = await sweep_once(r, ks, limits, cursors=cursors, batch_size=batch_size,
                                    prune_scan_count=prune_scan_count)
            if on_pass is not None:
                on_pass(done)
        except _REDIS_ERRORS as exc:
            log.warning("cannot trim groups without a policy: Redis unreachable (%s); retrying in %ss",
                        exc, interval_s)
        await asyncio.sleep(interval_s)
