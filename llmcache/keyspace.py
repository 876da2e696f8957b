"""Every Redis key, channel and ACL user name llmcache uses, in one place.

Keys never contain prompt text, API keys or tenant identities in clear: cache
entries are addressed by a SHA-256 hex digest (``key_hash``), tenants by a
salted hash. All names share a prefix (default ``llmcache``) so several
installations can share one Redis.

Everything the sidecars of one Kubernetes namespace own lives under that
namespace's *partition* ``{p}:n:{ns}:`` (``{ns}`` = the pod namespace; a proxy
outside Kubernetes uses :data:`LOCAL_PARTITION`, ``_local``, which no namespace
can be called). One Redis ACL key pattern, ``~{p}:n:{ns}:*``, therefore covers
exactly what a namespace may touch: the operator gives each namespace its own
ACL user with that pattern (:mod:`llmcache.operator.partitions`), and nothing a
pod holds reaches another namespace's entries, vectors, bookkeeping or stats.

Layout (``{p}`` = prefix, ``{n}`` = ``{p}:n:{ns}``, ``{s}`` = a literal Redis
Cluster hash tag: the entry's *shard*, two hex digits of CRC-32(key_hash), 256 shards)::

    {n}:e:{s}:{key_hash}           STRING  exact cache entry (versioned JSON), EXPIRE = TTL
    {n}:v:{s}:{key_hash}           HASH    semantic vector document for the same entry
    {n}:lease:{s}:{key_hash}       STRING  cross-pod single-flight lease (SET NX PX)
    {n}:j:{s}:{key_hash}           HASH    judged outcomes of the entry as a semantic candidate
                                           (error-bounded caching), EXPIRE = the entry's remaining TTL
    {n}:g:{group}:{s}:lru          ZSET    key_hash → last access time (s)      ┐ eviction
    {n}:g:{group}:{s}:lfu          ZSET    key_hash → access count              │ bookkeeping,
    {n}:g:{group}:{s}:ctime        ZSET    key_hash → creation time (s)         │ one group per
    {n}:g:{group}:{s}:size         HASH    key_hash → entry size (bytes)        │ CachePolicy, 256 shards;
    {n}:g:{group}:{s}:exp          ZSET    key_hash → expiry (s, Redis clock)   ┘ EXPIRE ≥ its last entry's
    {n}:vevents                    STREAM  vector adds/deletes, keeps client-side indexes in sync
    {n}:vidx[:{tag}]               INDEX   Query Engine vector index over {n}:v: (one per cluster
                                           master, see :meth:`Keyspace.vector_index_for_slot`)
    {n}:vspec                      HASH    dim, m: the index the sidecars ask the operator to create
    {n}:stats:{ns_hash}            HASH    counters per cache namespace (hits, misses, …)
    {n}:statsidx                   ZSET    ns_hash → last flush (s): the stats hashes, listed without SCAN
    {n}:b:{group}                  HASH    error-bound model of a policy group: per-cell counters
                                           (:mod:`llmcache.errorbound`), a fixed set of fields per version
    {n}:ap:{group}:{s}             HASH    judged (request text, cached text) pairs of a policy group:
                                           pair hash → "right,wrong" counts; 256 shards, each capped
    {n}:acks:{policy}              HASH    pod name → {"configHash", "appliedAt"}
    {p}:policies:{ns}              HASH    policy name → PolicyDocument JSON (sidecars: read only)
    {p}:policies:events:{ns}       CHANNEL {"namespace", "name", "generation"} on any change in {ns}
    user {p}-ns-{ns}               ACL     the namespace's sidecars' Redis user
    {p}:operator:namespaces        HASH    namespace → last seen with injected pods (operator only)

Why the shard tag: on Redis Cluster every Lua script and multi-key command must
touch one hash slot. An entry, its vector document, its lease and its
bookkeeping rows in every group carry the same ``{s}`` (the partition part of
a name has no braces), so the proxy's get/put scripts and the operator's delete
script each run on one slot. The bookkeeping of one group is split over the
same 256 shards, so a big policy spreads over every master instead of piling
onto the one owning its ZSETs; the operator walks a group shard by shard
(:mod:`llmcache.operator.eviction`). On a single Redis the same layout costs
nothing (a few hundred small ZSETs per group).

``group`` is the policy id ``namespace/name`` of the policy the writing sidecar
applied, or ``_default`` without a policy; a group lives in the partition of
the pods that write it. Sidecars record accesses in the same round trip as the
read or write (:func:`record_access` on a pipeline, or the same writes inside
the proxy's get/put scripts); the operator's eviction timer trims each group to
its limits across all pods.

A :class:`Keyspace` is the view of one partition (``Keyspace(prefix,
partition)``; :meth:`Keyspace.for_partition` gives another's): the per-partition
names above come from its partition, the global ones (policies, their channel,
acks, ACL users) take the namespace as an argument.

Bookkeeping cleans up after itself, with or without the operator: every write of
an entry records its expiry in ``exp``, drops the rows of a few members whose
expiry has passed (:data:`TRIM_PER_WRITE`), and makes each row key of its shard
live at least as long as the entry (``PEXPIRE``, only ever lengthened). Rows of
expired entries are gone after a few later writes to the same group shard, or
with the row keys themselves once no entry of the shard is left: an idle group
vanishes, and under ``volatile-lru`` the rows can be evicted like entries.
"""

from __future__ import annotations

import dataclasses
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["BOOKKEEPING_KINDS", "DEFAULT_GROUP", "DEFAULT_PREFIX", "LOCAL_PARTITION", "NUM_SHARDS", "ORDER_KINDS",
           "TRIM_PER_WRITE", "ZSET_KINDS", "Keyspace", "check_partition", "shard_of"]

DEFAULT_PREFIX = "llmcache"
DEFAULT_GROUP = "_default"
#: The partition of a proxy outside Kubernetes (no pod namespace). Kubernetes namespace names are DNS
#: labels (``[a-z0-9-]``), so no namespace can ever share it.
LOCAL_PARTITION = "_local"
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: Characters a prefix must not hold: braces are cluster hash tags, the rest glob syntax in ACL key
#: patterns and ``SCAN MATCH``, and whitespace would split an ACL rule.
_PREFIX_FORBIDDEN = re.compile(r"[{}*?\[\]\\\s]")
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


def check_partition(name: str) -> str:
    """``name`` when it is a partition (a Kubernetes namespace name or :data:`LOCAL_PARTITION`), else ValueError."""
    if name != LOCAL_PARTITION and not _NAMESPACE.fullmatch(name):
        raise ValueError(f"partition {name!r} is not a Kubernetes namespace name (lowercase letters, digits and "
                         f"'-', at most 63) nor {LOCAL_PARTITION!r}")
    return name


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key and channel names under one prefix, seen from one partition (see the module docstring)."""

    prefix: str = DEFAULT_PREFIX
    partition: str = LOCAL_PARTITION
    """Whose keys the per-partition names are: the pod's Kubernetes namespace, or ``_local``."""

    def __post_init__(self) -> None:
        if not self.prefix or _PREFIX_FORBIDDEN.search(self.prefix):
            raise ValueError(f"key prefix {self.prefix!r} must be non-empty, without braces (Redis Cluster hash "
                             "tags), glob characters (* ? [ ] \\) or whitespace (ACL key patterns)")
        check_partition(self.partition)

    def for_partition(self, partition: str) -> Keyspace:
        """The same prefix seen from ``partition`` (a namespace name or ``_local``)."""
        return dataclasses.replace(self, partition=partition)

    @property
    def partition_prefix(self) -> str:
        """What every key of this partition starts with: ``{p}:n:{ns}:``."""
        return f"{self.prefix}:n:{self.partition}:"

    @property
    def partition_pattern(self) -> str:
        """Every key of this partition: the key pattern of its ACL user (``~`` this)."""
        return self.partition_prefix + "*"

    @property
    def all_partitions_prefix(self) -> str:
        """What the keys of every partition start with (the operator's scans)."""
        return f"{self.prefix}:n:"

    def entry(self, key_hash: str) -> str:
        return f"{self.partition_prefix}e:{{{shard_of(key_hash)}}}:{key_hash}"

    @property
    def entry_pattern(self) -> str:
        """``SCAN MATCH`` pattern of this partition's entries."""
        return f"{self.partition_prefix}e:*"

    def vector(self, key_hash: str) -> str:
        return f"{self.partition_prefix}v:{{{shard_of(key_hash)}}}:{key_hash}"

    @property
    def vector_prefix(self) -> str:
        """Prefix for ``FT.CREATE … PREFIX 1 <this>`` (and ``SCAN MATCH <this>*``)."""
        return f"{self.partition_prefix}v:"

    @staticmethod
    def key_hash_of(key: str | bytes) -> str:
        """The key hash at the end of an entry, vector or lease key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.rsplit(":", 1)[-1]

    @property
    def vector_index(self) -> str:
        """Name of this partition's vector index on a single Redis."""
        return f"{self.partition_prefix}vidx"

    def vector_index_for_slot(self, tag: str) -> str:
        """Name of one cluster master's vector index: ``tag`` is chosen to hash to a slot that master owns.

        RediSearch without a coordinator indexes only the keys of the node it runs on, and routes
        ``FT.*`` by the index name's slot: one index per master, named into its own slots. Redis ACL
        treats an index name as a key, so a partition's user reaches only its own indexes.
        """
        return f"{self.partition_prefix}vidx:{{{tag}}}"

    @property
    def vector_index_spec(self) -> str:
        """HASH ``dim``, ``m`` of the vector index this partition's sidecars ask for: the operator creates
        it (a sidecar may not: ``FT.CREATE`` takes any key prefix, its own partition's or not)."""
        return f"{self.partition_prefix}vspec"

    @property
    def vector_events(self) -> str:
        """Stream of ``{op: add|del, k: key_hash, src: writer id}``: client-side vector indexes tail it
        (not under ``vector_prefix``)."""
        return f"{self.partition_prefix}vevents"

    def group(self, group: str, kind: str, shard: str) -> str:
        """``kind`` is one of :data:`BOOKKEEPING_KINDS`; ``shard`` is :func:`shard_of` a member."""
        return f"{self.partition_prefix}g:{group}:{{{shard}}}:{kind}"

    def bookkeeping(self, group: str, shard: str) -> list[str]:
        """The keys of every :data:`BOOKKEEPING_KINDS` row of one group shard, in that order."""
        return [self.group(group, kind, shard) for kind in BOOKKEEPING_KINDS]

    def group_of(self, group: str, kind: str, key_hash: str) -> str:
        """The bookkeeping key of ``kind`` holding ``key_hash`` (same slot as its entry)."""
        return self.group(group, kind, shard_of(key_hash))

    def group_keys(self, group: str, kind: str) -> list[str]:
        """The bookkeeping keys of ``kind`` for every shard of ``group``."""
        return [self.group(group, kind, s) for s in SHARDS]

    @property
    def group_pattern(self) -> str:
        """``SCAN MATCH`` pattern of the ``lru`` keys of every group of every partition (the operator's)."""
        return f"{self.all_partitions_prefix}*:g:*:lru"

    def parse_group_key(self, key: str | bytes) -> tuple[str, str] | None:
        """``(partition, group)`` of a bookkeeping key under this prefix, else ``None``."""
        text = key.decode() if isinstance(key, bytes) else key
        head = self.all_partitions_prefix
        if not text.startswith(head):
            return None
        partition, sep, rest = text[len(head):].partition(":g:")
        group, tag_sep, _ = rest.rpartition(":{")
        if not sep or not tag_sep or not group:
            return None
        try:
            return check_partition(partition), group
        except ValueError:
            return None

    def stats(self, ns_hash: str) -> str:
        return f"{self.partition_prefix}stats:{ns_hash}"

    @property
    def stats_pattern(self) -> str:
        return f"{self.partition_prefix}stats:*"

    @property
    def all_stats_pattern(self) -> str:
        """``SCAN MATCH`` pattern of the stats hashes of every partition (the operator's, ``llmcache stats``)."""
        return f"{self.all_partitions_prefix}*:stats:*"

    @property
    def stats_index(self) -> str:
        """ZSET ``ns_hash`` → last flush (s) of this partition's stats hashes: sidecars list them from it,
        never by ``SCAN`` (which would list every partition's keys)."""
        return f"{self.partition_prefix}statsidx"

    def partition_of(self, key: str | bytes) -> str | None:
        """The partition a key under this prefix belongs to, else ``None``."""
        text = key.decode() if isinstance(key, bytes) else key
        head = self.all_partitions_prefix
        if not text.startswith(head):
            return None
        try:
            return check_partition(text[len(head):].partition(":")[0])
        except ValueError:
            return None

    def lease(self, key_hash: str) -> str:
        return f"{self.partition_prefix}lease:{{{shard_of(key_hash)}}}:{key_hash}"

    def judged(self, key_hash: str) -> str:
        """Judged outcomes of one entry as a semantic candidate (same slot as the entry; expires with it)."""
        return f"{self.partition_prefix}j:{{{shard_of(key_hash)}}}:{key_hash}"

    def bound(self, group: str) -> str:
        """The error-bound model of one policy group in this partition (:mod:`llmcache.errorbound`), shared
        by the partition's sidecars: learning is per partition, so no namespace reads or poisons another's."""
        return f"{self.partition_prefix}b:{group}"

    def pairs(self, group: str, shard: str) -> str:
        """One shard of a policy group's judged pairs (``shard`` is :func:`shard_of` the pair hash)."""
        return f"{self.partition_prefix}ap:{group}:{{{shard}}}"

    def pairs_of(self, group: str, pair_hash: str) -> str:
        return self.pairs(group, shard_of(pair_hash))

    def policies(self, k8s_namespace: str) -> str:
        """The namespace's published policies (any partition may be asked; sidecars may only read their own)."""
        return f"{self.prefix}:policies:{k8s_namespace}"

    def policy_channel(self, k8s_namespace: str) -> str:
        """Where a change of the namespace's policies is announced (one channel per namespace)."""
        return f"{self.prefix}:policies:events:{k8s_namespace}"

    def acks(self, k8s_namespace: str, policy: str) -> str:
        """Which pods of the namespace applied which version of ``policy`` (in the namespace's partition)."""
        return f"{self.prefix}:n:{check_partition(k8s_namespace)}:acks:{policy}"

    def namespace_user(self, k8s_namespace: str) -> str:
        """The Redis ACL user of the namespace's sidecars."""
        return f"{self.prefix}-ns-{check_partition(k8s_namespace)}"

    @property
    def operator_namespaces(self) -> str:
        """HASH namespace → when the operator last saw it with injected pods (operator only)."""
        return f"{self.prefix}:operator:namespaces"

    @property
    def namespace_user_prefix(self) -> str:
        """What every namespace user's name starts with (the operator lists them by it)."""
        return f"{self.prefix}-ns-"

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
