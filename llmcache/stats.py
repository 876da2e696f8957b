"""Per-namespace cache counters in Redis: written by every proxy, read by ``llmcache stats``.

One HASH per cache namespace (the ``X-LLMCache-Namespace`` value, ``default``
when absent) and CachePolicy at :meth:`llmcache.keyspace.Keyspace.stats`, in the
writing proxy's partition (its pod namespace), addressed by a hash of both
(:func:`ns_hash`) so any header value makes a safe key name::

    {p}:n:{ns}:stats:{ns_hash}  namespace  "<X-LLMCache-Namespace or default>"
                         policy     "<k8s namespace>/<name>" of the policy the proxy applied
                                    (absent without a policy)
                         hit | semantic_hit | miss | bypass   request counts
                         tokens_saved                          prompt + completion tokens served from cache
                         bytes_saved                           answer bytes served from cache

Each flush also records the hash in the partition's index (``{p}:n:{ns}:statsidx``,
:attr:`llmcache.keyspace.Keyspace.stats_index`), so a proxy lists its partition's
counters without ``SCAN``, which would list every partition's keys and which a
namespace's Redis user may not run.

With error-bounded semantic caching (a policy's ``maxErrorRate``), each row also carries
``error_bound``: per policy, what the judged outcomes of the row's partition certify
(:mod:`llmcache.errorbound`, read from ``{p}:n:{ns}:b:{group}``; learning is per partition):
the state line, the estimated error rate and its upper bound, judged samples, explorations and
hits gained over one static threshold.

The ``policy`` field is what the operator sums for a CachePolicy's
``status.hitRate`` (:func:`llmcache.operator.status.hit_counters`), so the rate
is exact rather than estimated from eviction bookkeeping. Readers of this
module (:func:`read_stats`) sum a namespace's hashes over its policies.

Proxies count in memory (:class:`StatsBuffer`) and flush with one pipelined
``HINCRBY`` batch per second, so counting never adds a Redis round trip to a
response; counts that could not be flushed are kept for the next try.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import redis.asyncio

from llmcache import connection, errorbound
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.settings import DEFAULT_REDIS_URL, add_flag

__all__ = ["DEFAULT_NAMESPACE", "FIELDS", "OVERFLOW_NAMESPACE", "STATS_TTL_S", "StatsBuffer", "configure", "ns_hash",
           "read_stats", "run"]

FIELDS = ("hit", "semantic_hit", "miss", "bypass", "tokens_saved", "bytes_saved")
DEFAULT_NAMESPACE = "default"
#: Where counts go once a buffer holds ``max_namespaces`` distinct namespaces.
OVERFLOW_NAMESPACE = "_other"
#: Lifetime of a stats hash after its last write (s), refreshed on every flush. Default 7 days:
#: weekly reports still see every active namespace, and the hash of a namespace nobody uses any
#: more (each ``X-LLMCache-Namespace`` value makes one) does not stay forever. The operator also
#: caps how many exist (``llmcache.operator.sweep``).
STATS_TTL_S = 7 * 86_400


def ns_hash(namespace: str, *, policy: str | None = None) -> str:
    """Key-safe id of a namespace name, or of a (namespace, policy id) pair (first 16 hex digits
    of a SHA-256). Without a policy the id is the one counters had before policies were tagged."""
    name = namespace if policy is None else f"{namespace}\x00{policy}"
    return hashlib.sha256(name.encode()).hexdigest()[:16]


#: ``(namespace, policy id or None)``: what one stats hash counts.
_Slot = tuple[str, str | None]


def _new_counts() -> defaultdict[_Slot, defaultdict[str, int]]:
    return defaultdict(lambda: defaultdict(int))


class StatsBuffer:
    """In-memory counters per (namespace, policy), flushed to Redis in one pipeline."""

    __slots__ = ("_counts", "max_namespaces")

    def __init__(self, *, max_namespaces: int = 10_000) -> None:
        self._counts = _new_counts()
        self.max_namespaces = max_namespaces
        """Distinct (namespace, policy) pairs held between flushes; more fold into ``OVERFLOW_NAMESPACE``
        (keeping their policy). Default 10 000: the header is client-chosen, and a Redis outage must not
        let it grow memory unbounded."""

    def add(self, namespace: str, status: str, *, policy: str | None = None, tokens_saved: int = 0,
            bytes_saved: int = 0) -> None:
        """Count one request with cache ``status`` (hit, semantic-hit, miss, bypass) under the
        CachePolicy id ``policy`` the proxy applied to it (``None``: no policy)."""
        slot = (namespace or DEFAULT_NAMESPACE, policy)
        if slot not in self._counts and len(self._counts) >= self.max_namespaces:
            slot = (OVERFLOW_NAMESPACE, policy)
        c = self._counts[slot]
        c[status.replace("-", "_")] += 1
        if tokens_saved:
            c["tokens_saved"] += tokens_saved
        if bytes_saved:
            c["bytes_saved"] += bytes_saved

    def __bool__(self) -> bool:
        return bool(self._counts)

    async def flush(self, client: redis.asyncio.Redis, *, keyspace: Keyspace) -> None:
        """Write the pending counts; on failure they are merged back and the error re-raised."""
        if not self._counts:
            return
        pending, self._counts = self._counts, _new_counts()
        now = time.time()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for (namespace, policy), counts in pending.items():
                    key = keyspace.stats(ns_hash(namespace, policy=policy))
                    if policy is None:
                        pipe.hset(key, "namespace", namespace)
                    else:
                        pipe.hset(key, mapping={"namespace": namespace, "policy": policy})
                    for field_name, n in counts.items():
                        pipe.hincrby(key, field_name, n)
                    pipe.expire(key, STATS_TTL_S)
                    pipe.zadd(keyspace.stats_index, {ns_hash(namespace, policy=policy): now})
                # The index forgets hashes that expired (no flush within their TTL).
                pipe.zremrangebyscore(keyspace.stats_index, "-inf", f"({now - STATS_TTL_S}")
                pipe.expire(keyspace.stats_index, STATS_TTL_S)
                await pipe.execute()
        except BaseException:
            for slot, counts in pending.items():
                for field_name, n in counts.items():
                    self._counts[slot][field_name] += n
            raise


async def read_stats(client: redis.asyncio.Redis, *, keyspace: Keyspace,
                     all_partitions: bool = False) -> list[dict[str, Any]]:
    """Counters per (partition, namespace), summed over the policies that counted them, sorted, with
    ``hit_rate`` over cacheable requests and ``policies``, the sorted policy ids seen.

    By default those of ``keyspace``'s partition only, listed from its stats index (what a proxy
    may read); ``all_partitions`` scans every partition's hashes (``llmcache stats``, an admin's
    Redis user).
    """
    if all_partitions:
        found = [connection.as_text(k) async for k in client.scan_iter(match=keyspace.all_stats_pattern, count=500)]
        keys = [(keyspace.partition_of(k) or "?", k) for k in found]
    else:
        members = await client.zrangebyscore(keyspace.stats_index, f"({time.time() - STATS_TTL_S}", "+inf")
        keys = [(keyspace.partition, keyspace.stats(connection.as_text(m))) for m in members]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for partition, key in keys:
        raw = await client.hgetall(key)
        if not raw:
            continue  # expired since it was listed
        namespace = connection.as_text(raw.get(b"namespace", b"?"))
        row = rows.setdefault((partition, namespace), {"partition": partition, "namespace": namespace,
                                                       **dict.fromkeys(FIELDS, 0), "policies": []})
        for f in FIELDS:
            row[f] += int(raw.get(f.encode(), 0))
        if b"policy" in raw:
            row["policies"].append(connection.as_text(raw[b"policy"]))
    bounds: dict[tuple[str, str], dict[str, Any] | None] = {}
    for row in rows.values():
        hits = row["hit"] + row["semantic_hit"]
        looked = hits + row["miss"]
        row["hit_rate"] = round(hits / looked, 4) if looked else 0.0
        row["policies"].sort()
        row["error_bound"] = {}
        partition = row["partition"]
        if partition == "?":
            continue  # a key under the prefix whose partition does not parse: no model to name
        for group in row["policies"] or [DEFAULT_GROUP]:
            if (partition, group) not in bounds:
                bounds[partition, group] = await read_bound(client, keyspace=keyspace.for_partition(partition),
                                                            group=group)
            if bounds[partition, group] is not None:
                row["error_bound"][group] = bounds[partition, group]
    return [rows[k] for k in sorted(rows)]


async def read_bound(client: redis.asyncio.Redis, *, keyspace: Keyspace, group: str) -> dict[str, Any] | None:
    """What a policy group's error-bound model in ``keyspace``'s partition certifies at the bound its
    sidecars last applied; ``None`` when no sidecar ever learned under a bound there."""
    state = errorbound.parse(await client.hgetall(keyspace.bound(group)))
    if state.max_error_rate is None:
        return None
    return errorbound.fit(state, state.max_error_rate).to_dict()


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--redis-url", default=DEFAULT_REDIS_URL, help="Redis the proxies write to")
    add_flag(parser, "--key-prefix", default="llmcache", help="key prefix the proxies use")
    add_flag(parser, "--json", action="store_true", help="print JSON instead of a table")
    add_flag(parser, "--proxy-url", default=None,
             help="read GET /llmcache/v1/stats of this proxy (http://HOST:PORT) instead of Redis")
    add_flag(parser, "--admin-token", default=None, help="the proxy's --admin-token (sent with --proxy-url)")


def run(args: argparse.Namespace) -> int:
    if args.proxy_url:
        rows = _read_proxy(args.proxy_url, args.admin_token)
    else:
        rows = asyncio.run(_read(args.redis_url, args.key_prefix))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no counters yet (no proxy has flushed stats to this Redis under this --key-prefix)")
        return 0
    cols = ("partition", "namespace", *FIELDS, "hit_rate")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    # Keyed by partition too: every partition learns its own model, ``_default`` included.
    bounds = {(r["partition"], group): b for r in rows for group, b in (r.get("error_bound") or {}).items()}
    if bounds:
        print()
        _print_bounds(bounds)
    return 0


def _print_bounds(bounds: dict[tuple[str, str], dict[str, Any]]) -> None:
    """One line per (partition, policy) with a bound: ``partition  policy  max_error_rate  error  upper  judged
    explored  gained  state``."""
    cols = ("partition", "policy", "max_error_rate", "error_rate", "error_rate_upper", "judged", "explored",
            "gained", "state")
    table = [[partition, group, *("—" if b.get(c) is None else str(b[c]) for c in cols[2:])]
             for (partition, group), b in sorted(bounds.items())]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _read_proxy(url: str, token: str | None) -> list[dict[str, Any]]:
    """The ``namespaces`` rows of a proxy's stats endpoint, which needs the admin token."""
    if not token:
        print("llmcache stats: --proxy-url needs the proxy's admin token: --admin-token or LLMCACHE_ADMIN_TOKEN",
              file=sys.stderr)
        raise SystemExit(2)
    if not url.startswith(("http://", "https://")):
        print(f"llmcache stats: --proxy-url {url!r} is not http(s)://HOST:PORT", file=sys.stderr)
        raise SystemExit(2)
    req = urllib.request.Request(url.rstrip("/") + "/llmcache/v1/stats",  # noqa: S310 - http(s) checked above
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http(s) checked above
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        hint = "; check --admin-token" if exc.code in (401, 403) else ""
        print(f"llmcache stats: {url} answered HTTP {exc.code}{hint}", file=sys.stderr)
        raise SystemExit(1) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"llmcache stats: cannot read {url}: {exc}; check --proxy-url", file=sys.stderr)
        raise SystemExit(1) from exc
    if data.get("namespaces") is None:
        print(f"llmcache stats: the proxy has no counters from Redis: {data.get('error', 'unknown reason')}",
              file=sys.stderr)
        raise SystemExit(1)
    return list(data["namespaces"])


async def _read(url: str, prefix: str) -> list[dict[str, Any]]:
    client = connection.connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return await read_stats(client, keyspace=Keyspace(prefix), all_partitions=True)
    except (redis.exceptions.RedisError, OSError) as exc:
        print(f"llmcache stats: cannot read {connection.redact(url)}: {exc}; check --redis-url", file=sys.stderr)
        raise SystemExit(1) from exc
    finally:
        await client.aclose()
