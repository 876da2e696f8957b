"""Every Redis key and channel name llmcache uses, in one place.

Keys never contain prompt text, API keys or tenant identities in clear: cache
entries are addressed by a SHA-256 hex digest (``key_hash``), tenants by a
salted hash. All names share a prefix (default ``llmcache``) so several
installations can share one Redis.

Layout (``{p}`` = prefix)::

    {p}:e:{key_hash}               STRING  exact cache entry (versioned JSON), EXPIRE = TTL
    {p}:v:{key_hash}               HASH    semantic vector document for the same entry
    {p}:vevents                    STREAM  vector adds/deletes, keeps client-side indexes in sync
    {p}:g:{group}:lru              ZSET    key_hash → last access time (s)      ┐ eviction
    {p}:g:{group}:lfu              ZSET    key_hash → access count              │ bookkeeping,
    {p}:g:{group}:ctime            ZSET    key_hash → creation time (s)         │ one group per
    {p}:g:{group}:size             HASH    key_hash → entry size (bytes)        ┘ CachePolicy
    {p}:stats:{ns_hash}            HASH    counters per cache namespace (hits, misses, …)
    {p}:lease:{key_hash}           STRING  cross-pod single-flight lease (SET NX PX)
    {p}:policies:{k8s_namespace}   HASH    policy name → PolicyDocument JSON
    {p}:policies:events            CHANNEL {"namespace", "name", "generation"} on any change
    {p}:acks:{k8s_ns}:{policy}     HASH    pod name → {"configHash", "appliedAt"}

``group`` is the policy id ``namespace/name`` of the policy the writing sidecar
applied, or ``_default`` without a policy. Sidecars record accesses in the
same round trip as the read or write (:func:`record_access` on a pipeline, or
the same writes inside the proxy's get/put scripts); the operator's eviction
timer trims each group to its limits across all pods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_PREFIX", "DEFAULT_GROUP", "Keyspace"]

DEFAULT_PREFIX = "llmcache"
DEFAULT_GROUP = "_default"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key and channel names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def entry(self, key_hash: str) -> str:
        return f"{self.prefix}:e:{key_hash}"

    def vector(self, key_hash: str) -> str:
        return f"{self.prefix}:v:{key_hash}"

    @property
    def vector_prefix(self) -> str:
        """Prefix for ``FT.CREATE … PREFIX 1 <this>``."""
        return f"{self.prefix}:v:"

    @property
    def vector_index(self) -> str:
        return f"{self.prefix}:vidx"

    @property
    def vector_events(self) -> str:
        """Stream of ``{op: add|del, k: key_hash, src: writer id}``: client-side vector indexes tail it (not under ``vector_prefix``)."""
        return f"{self.prefix}:vevents"

    def group(self, group: str, kind: str) -> str:
        """``kind`` is one of ``lru``, ``lfu``, ``ctime``, ``size``."""
        return f"{self.prefix}:g:{group}:{kind}"

    def stats(self, ns_hash: str) -> str:
        return f"{self.prefix}:stats:{ns_hash}"

    @property
    def stats_pattern(self) -> str:
        return f"{self.prefix}:stats:*"

    def lease(self, key_hash: str) -> str:
        return f"{self.prefix}:lease:{key_hash}"

    def policies(self, k8s_namespace: str) -> str:
        return f"{self.prefix}:policies:{k8s_namespace}"

    @property
    def policy_events(self) -> str:
        return f"{self.prefix}:policies:events"

    def acks(self, k8s_namespace: str, policy: str) -> str:
        return f"{self.prefix}:acks:{k8s_namespace}:{policy}"

    def record_access(self, pipe: Any, group: str, key_hash: str, *, size_bytes: int | None = None,
                      created: bool = False, now_s: float | None = None) -> None:
        """Queue the eviction bookkeeping for one read (or write, with ``created``) on ``pipe``."""
        now = time.time() if now_s is None else now_s
        pipe.zadd(self.group(group, "lru"), {key_hash: now})
        pipe.zincrby(self.group(group, "lfu"), 1, key_hash)
        if created:
            pipe.zadd(self.group(group, "ctime"), {key_hash: now})
            if size_bytes is not None:
                pipe.hset(self.group(group, "size"), key_hash, size_bytes)
