"""Issue 14, item 4: groups without a CachePolicy (``_default``, orphans) are trimmed too.

Pods no policy selects all write into ``_default``; before the fix no timer ever trimmed it,
so Redis grew until it was OOM-killed. A real operator (``--default-max-entries 40``) must
bring ``_default`` and a deleted policy's group within the limit, oldest first, prune the
bookkeeping of expired entries, and leave a live policy's group to the policy's own limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from operator_kit import crds, ns, start_operator  # noqa: F401 - fixtures
from opkit import cachepolicy, wait_for

from llmcache.keyspace import Keyspace

pytestmark = pytest.mark.controlplane

KS = Keyspace()
LIMIT = 40


def fill(r: redis.Redis, group: str, count: int, *, tag: str, live: bool = True) -> list[str]:
    """``count`` entries in ``group``, the first one least recently used; ``live=False``: the entries are gone."""
    now = time.time()
    hashes = [f"{tag}{i:04d}" for i in range(count)]
    pipe = r.pipeline()
    for i, h in enumerate(hashes):
        if live:
            pipe.set(KS.entry(h), b"{}", ex=3600)
        KS.record_access(pipe, group, h, size_bytes=2, created=True, now_s=now - count + i)
    pipe.execute()
    return hashes


def count(r: redis.Redis, group: str) -> int:
    return sum(int(r.zcard(key)) for key in KS.group_keys(group, "lru"))


def members(r: redis.Redis, group: str) -> set[str]:
    out: set[str] = set()
    for key in KS.group_keys(group, "lru"):
        out.update(r.zrange(key, 0, -1))
    return out


def test_default_and_orphan_groups_are_trimmed_oldest_first(crds: Any, ns: str, redis_plain_url: str,
                                                            start_operator: Callable[..., Any]) -> None:
    r = redis.Redis.from_url(redis_plain_url, decode_responses=True)
    try:
        op = start_operator(ns, redis_plain_url, eviction_interval_s=0.5,
                            env={"LLMCACHE_DEFAULT_MAX_ENTRIES": str(LIMIT)})
        crds.apply(cachepolicy("chat", {"selector": {"matchLabels": {"app": "chat"}}}), namespace=ns)
        # Published first, so the sweeper never mistakes the live group for an orphan.
        wait_for(lambda: r.hget(f"llmcache:policies:{ns}", "chat"), what="publication", logs=[op.log])

        default = fill(r, "_default", 150, tag="d")
        orphan = fill(r, f"{ns}/deleted-long-ago", 90, tag="o")
        dead = fill(r, "_default", 30, tag="x", live=False)  # bookkeeping of expired entries
        live_group = fill(r, f"{ns}/chat", 70, tag="c")

        def trimmed() -> bool:
            return count(r, "_default") <= LIMIT and count(r, f"{ns}/deleted-long-ago") <= LIMIT

        wait_for(trimmed, what="_default and the orphan group trimmed", logs=[op.log])
        kept = members(r, "_default")
        # The most recently used survive; the dead bookkeeping went first (pruned or evicted).
        assert kept and kept <= set(default[-LIMIT:]), sorted(kept)[:5]
        assert not kept & set(dead)
        assert r.exists(KS.entry(default[-1])) and not r.exists(KS.entry(default[0]))
        assert members(r, f"{ns}/deleted-long-ago") <= set(orphan[-LIMIT:])
        # A published policy's group is its own timer's business (no maxEntries: all stay).
        assert count(r, f"{ns}/chat") == len(live_group)
    finally:
        r.close()
