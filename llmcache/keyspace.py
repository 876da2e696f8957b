"""Every Redis key and channel name llmcache uses, in one place.

Keys never contain prompt text, API keys or tenant identities in clear: cache
entries are addressed by a SHA-256 hex digest (``key_hash``), tenants by a
salted hash. All names share a prefix (default ``llmcache``) so several
installations can share one Redis (and one ACL key pattern ``~llmcache:*``).

Layout (``{p}`` = prefix, ``{s}`` = a literal Redis Cluster hash tag: the
entry's *shard*, two hex digits of CRC-32(key_hash), 256 shards)::

    {p}:e:{s}:{key_hash}           STRING  exact cache entry (versioned JSON), EXPIRE = TTL
    {p}:v:{s}:{key_hash}           HASH    semantic vector document for the same entry
    {p}:lease:{s}:{key_hash}       STRING  cross-pod single-flight lease (SET NX PX)
    {p}:g:{group}:{s}:lru          ZSET    key_hash → last access time (s)      ┐ eviction
    {p}:g:{group}:{s}:lfu          ZSET    key_hash → access count              │ bookkeeping,
    {p}:g:{group}:{s}:ctime        ZSET    key_hash → creation time (s)         │ one group per
    {p}:g:{group}:{s}:size         HASH    key_hash → entry size (bytes)        │ CachePolicy, 256 shards;
    {p}:g:{group}:{s}:exp          ZSET    key_hash → expiry (s, Redis clock)   ┘ EXPIRE ≥ its last entry's
    {p}:vevents                    STREAM  vector adds/deletes, keeps client-side indexes in sync
    {p}:vidx[:{tag}]               INDEX   Query Engine vector index (one per cluster master, see
                                           :meth:`Keyspace.vector_index_for_slot`)
    {p}:stats:{ns_hash}            HASH    counters per cache namespace (hits, misses, …)
    {p}:policies:{k8s_namespace}   HASH    policy name → PolicyDocument JSON
    {p}:policies:events            CHANNEL {"namespace", "name", "generation"} on any change
    {p}:acks:{k8s_ns}:{policy}     HASH    pod name → {"configHash", "appliedAt"}

Why the shard tag: on Redis Cluster every Lua script and multi-key command must
touch one hash slot. An entry, its vector document, its lease and its
bookkeeping rows in every group carry the same ``{s}``, so the proxy's get/put
scripts and the operator's delete script each run on one slot. The bookkeeping
of one group is split over the same 256 shards, so a big policy spreads over
every master instead of piling onto the one owning its ZSETs; the operator
walks a group shard by shard (:mod:`llmcache.operator.eviction`). On a single
Redis the same layout costs nothing (a few hundred small ZSETs per group).

``group`` is the policy id ``namespace/name`` of the policy the writing sidecar
applied, or ``_default`` without a policy. Sidecars record accesses in the
same round trip as the read or write (:func:`record_access` on a pipeline, or
the same writes inside the proxy's get/put scripts); the operator's eviction
timer trims each group to its limits across all pods.

Bookkeeping cleans up after itself, with or without the operator: every write of
an entry records its expiry in ``exp``, drops the rows of a few members whose
expiry has passed (:data:`TRIM_PER_WRITE`), and makes each row key of its shard
live at least as long as the entry (``PEXPIRE``, only ever lengthened). Rows of
expired entries are gone after a few later writes to the same group shard, or
with the row keys themselves once no entry of the shard is left: an idle group
vanishes, and under ``volatile-lru`` the rows can be evicted like entries.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["BOOKKEEPING_KINDS", "DEFAULT_GROUP", "DEFAULT_PREFIX", "NUM_SHARDS", "ORDER_KINDS", "TRIM_PER_WRITE",
           "ZSET_KINDS", "Keyspace", "shard_of"]

DEFAULT_PREFIX = "llmcache"
DEFAULT_GROUP = "_default"
#: Shards (hash tags) entries and bookkeeping are spread over. 256 tags land within ±10 % of an
#: even share on 3 masters and keep one slot migration small (1/256 of the cache); every pod
#: and the operator must agree on it, so it is a constant, not a setting.
NUM_SHARDS = 256
SHARDS = tuple(f"{i:02x}" for i in range(NUM_SHARDS))

#: The eviction bookkeeping rows of one group shard, in the order every script takes them as KEYS:
#: ``lru`` (ZSET key_hash → last access s), ``lfu`` (ZSET → access count), ``ctime`` (ZSET →
#: creation time s), ``size`` (HASH → entry bytes), ``exp`` (ZSET → expiry, s on the Redis clock).
#: Sidecars write them; the operator trims by them; writers drop the rows of expired members.
BOOKKEEPING_KINDS: tuple[str, ...] = ("lru", "lfu", "ctime", "size", "exp")
#: The kinds that order eviction victims (by eviction policy).
ORDER_KINDS: tuple[str, ...] = ("lru", "lfu", "ctime")
#: The sorted-set kinds (every kind but ``size``, a hash): removing a member takes it out of each.
ZSET_KINDS: tuple[str, ...] = ("lru", "lfu", "ctime", "exp")
#: Expired members whose rows one entry write drops (at most): more than the one row it adds, so a
#: backlog of expired rows shrinks under any write load, and a bounded cost per write.
TRIM_PER_WRITE = 16


def shard_of(key_hash: str) -> str:
    """The shard (two hex digits) of an entry: CRC-32 of its key hash, so any string works."""
    return SHARDS[zlib.crc32(key_hash.encode()) & (NUM_SHARDS - 1)]


def by_shard(key_hashes: Iterable[str]) -> dict[str, list[str]]:
    """``key_hashes`` grouped by :func:`shard_of` (a script or pipeline per shard runs on one slot)."""
    out: dict[str, list[str]] = {}
    for h in key_hashes:
        out.setdefault(shard_of(h), []).append(h)
    return out


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key and channel names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"key prefix {self.prefix!r} must not contain braces: they are Redis Cluster hash tags")

    def entry(self, key_hash: str) -> str:
        return f"{self.prefix}:e:{{{shard_of(key_hash)}}}:{key_hash}"

    @property
    def entry_pattern(self) -> str:
        """``SCAN MATCH`` pattern of every entry (admin paths only: invalidation)."""
        return f"{self.prefix}:e:*"

    def vector(self, key_hash: str) -> str:
        return f"{self.prefix}:v:{{{shard_of(key_hash)}}}:{key_hash}"

    @property
    def vector_prefix(self) -> str:
        """Prefix for ``FT.CREATE … PREFIX 1 <this>`` (and ``SCAN MATCH <this>*``)."""
        return f"{self.prefix}:v:"

    @staticmethod
    def key_hash_of(key: str | bytes) -> str:
        """The key hash at the end of an entry, vector or lease key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.rsplit(":", 1)[-1]

    @property
    def vector_index(self) -> str:
        """Name of the vector index on a single Redis."""
        return f"{self.prefix}:vidx"

    def vector_index_for_slot(self, tag: str) -> str:
        """Name of one cluster master's vector index: ``tag`` is chosen to hash to a slot that master owns.

        RediSearch without a coordinator indexes only the keys of the node it runs on, and routes
        ``FT.*`` by the index name's slot: one index per master, named into its own slots.
        """
        return f"{self.prefix}:vidx:{{{tag}}}"

    @property
    def vector_events(self) -> str:
        """Stream of ``{op: add|del, k: key_hash, src: writer id}``: client-side vector indexes tail it (not under ``vector_prefix``)."""
        return f"{self.prefix}:vevents"

    def group(self, group: str, kind: str, shard: str) -> str:
        """``kind`` is one of :data:`BOOKKEEPING_KINDS`; ``shard`` is :func:`shard_of` a member."""
        return f"{self.prefix}:g:{group}:{{{shard}}}:{kind}"

    def bookkeeping(self, group: str, shard: str) -> list[str]:
        """The keys of every :data:`BOOKKEEPING_KINDS` row of one group shard, in that order."""
        return [self.group(group, kind, shard) for kind in BOOKKEEPING_KINDS]

    def group_of(self, group: str, kind: str, key_hash: str) -> str:
        """The bookkeeping key of ``kind`` holding ``key_hash`` (same slot as its entry)."""
        return self.group(group, kind, shard_of(key_hash))

    def group_keys(self, group: str, kind: str) -> list[str]:
        """The bookkeeping keys of ``kind`` for every shard of ``group``."""
        return [self.group(group, kind, s) for s in SHARDS]

    def stats(self, ns_hash: str) -> str:
        return f"{self.prefix}:stats:{ns_hash}"

    @property
    def stats_pattern(self) -> str:
        return f"{self.prefix}:stats:*"

    def lease(self, key_hash: str) -> str:
        return f"{self.prefix}:lease:{{{shard_of(key_hash)}}}:{key_hash}"

    def policies(self, k8s_namespace: str) -> str:
        return f"{self.prefix}:policies:{k8s_namespace}"

    @property
    def policy_events(self) -> str:
        return f"{self.prefix}:policies:events"

    def acks(self, k8s_namespace: str, policy: str) -> str:
        return f"{self.prefix}:acks:{k8s_namespace}:{policy}"

    def record_access(self, pipe: Any, group: str, key_hash: str, *, size_bytes: int | None = None,
                      created: bool = False, now_s: float | None = None) -> None:
        """Queue the eviction bookkeeping for one read (or write, with ``created``) on ``pipe``.

        Records no expiry (``exp``) and sets no TTL: rows written this way (tools, tests) are left to
        the operator's prune; the proxy's get/put scripts do both.
        """
        now = time.time() if now_s is None else now_s
        pipe.zadd(self.group_of(group, "lru", key_hash), {key_hash: now})
        pipe.zincrby(self.group_of(group, "lfu", key_hash), 1, key_hash)
        if created:
            pipe.zadd(self.group_of(group, "ctime", key_hash), {key_hash: now})
            if size_bytes is not None:
                pipe.hset(self.group_of(group, "size", key_hash), key_hash, size_bytes)
