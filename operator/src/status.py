"""The ``status`` of a CachePolicy: what the operator published and what the sidecars applied.

Status fields (the CRD's status schema is strict, nothing else is stored there)::

    observedGeneration  generation last published to Redis
    configHash          hash of that spec (what sidecars ack)
    selectedPods        pods in the namespace matching spec.selector (API server)
    syncedPods          of those, pods whose ack {p}:acks:{ns}:{name}[pod].configHash == configHash
    entries/memoryBytes size of the policy's eviction group (its bookkeeping in Redis)
    hitRate             hits / lookups of this policy (see :func:`policy_counters`)
    semantic …          with spec.semantic.maxErrorRate: "learning (N judged)" or the certified bound,
                        errorRate / errorRateUpper, judgedSamples, explorationCalls, hitsGained
                        (:func:`semantic_status`, from the sidecars' shared model in Redis)
    conditions          Propagated, Ready, Degraded (Kubernetes condition shape)

Ready is True when the current generation is in Redis and every selected pod
applied it (or no pod is selected); Degraded is True while the spec is invalid,
Redis is unreachable or eviction fails, with the reason in the message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from llmcache import errorbound
from llmcache.connection import as_text
from llmcache.keyspace import Keyspace

__all__ = [
    "Counters",
    "conditions_for",
    "group_counters",
    "hit_counters",
    "make_condition",
    "merge_conditions",
    "policy_counters",
    "semantic_status",
    "synced_pods",
]

log = logging.getLogger(__name__)

#: Stats-hash fields summed as hits / misses (:mod:`llmcache.stats` writes ``hit``, ``semantic_hit``,
#: ``miss``; the plural spellings are read too). Absent fields count 0.
HIT_FIELDS = ("hit", "semantic_hit", "hits", "semantic_hits")
MISS_FIELDS = ("miss", "misses")
#: Stats-hash fields naming the policy (``namespace/name``) whose sidecar wrote the counters.
POLICY_FIELDS = ("policy", "group")


@dataclass(frozen=True, slots=True)
class Counters:
    """Hit/miss counters of one policy, summed over its stats hashes."""

    num_hits: int = 0
    num_misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        total = self.num_hits + self.num_misses
        return None if total == 0 else self.num_hits / total




def _int(v: bytes | str | None) -> int:
    try:
        return int(float(as_text(v))) if v is not None else 0
    except ValueError:
        return 0


async def synced_pods(r: aioredis.Redis, ks: Keyspace, namespace: str, name: str, config_hash: str, *,
                      pods: Collection[str] | None = None) -> int:
    """Pods whose ack names ``config_hash``; with ``pods``, only those (acks of gone pods do not count)."""
    acks: Mapping[bytes | str, bytes | str] = await r.hgetall(ks.acks(namespace, name))
    n = 0
    for pod, blob in acks.items():
        if pods is not None and as_text(pod) not in pods:
            continue
        try:
            ack = json.loads(blob)
        except ValueError:
            log.warning("ignoring malformed ack of pod %s for %s/%s", as_text(pod), namespace, name)
            continue
        if isinstance(ack, dict) and ack.get("configHash") == config_hash:
            n += 1
    return n


async def hit_counters(r: aioredis.Redis, ks: Keyspace, policy_id: str, *, scan_count: int = 100) -> Counters:
    """Sum hits and misses of every stats hash whose ``policy``/``group`` field is ``policy_id``.

    Stats hashes without such a field cannot be attributed and are ignored; no stats → zeros.
    """
    hits = misses = 0
    async for key in r.scan_iter(match=ks.stats_pattern, count=scan_count, _type="HASH"):
        fields = {as_text(k): v for k, v in (await r.hgetall(key)).items()}
        if not any(as_text(fields[f]) == policy_id for f in POLICY_FIELDS if f in fields):
            continue
        hits += sum(_int(fields.get(f)) for f in HIT_FIELDS)
        misses += sum(_int(fields.get(f)) for f in MISS_FIELDS)
    return Counters(num_hits=hits, num_misses=misses)


async def group_counters(r: aioredis.Redis, ks: Keyspace, group: str, *, sample_size: int = 1000) -> Counters:
    """Hits and misses of a group estimated from its eviction bookkeeping.

    Every write adds 1 to its member's ``lfu`` score and a ``ctime`` member; every hit adds 1
    to ``lfu``. So over the entries still cached: hits = Σ lfu - |ctime| and misses (that
    were cached) = |ctime|. Entries already evicted or expired drop out of both sides.
    Σ lfu is exact up to ``sample_size`` members and estimated from a uniform sample
    (``ZRANDMEMBER … WITHSCORES``) above that, so the cost never grows with the group.
    """
    # The sets are sharded (see llmcache.keyspace): count per shard, then read or sample each.
    lfu_keys = ks.group_keys(group, "lfu")
    async with r.pipeline(transaction=False) as pipe:
        for key in lfu_keys:
            pipe.zcard(key)
        for key in ks.group_keys(group, "ctime"):
            pipe.zcard(key)
        cards = [int(n) for n in await pipe.execute()]
    sizes, created = cards[:len(lfu_keys)], sum(cards[len(lfu_keys):])
    num_members = sum(sizes)
    total = 0.0
    if num_members:
        per_shard = max(1, -(-sample_size // len(lfu_keys)))
        sampled = num_members > sample_size
        async with r.pipeline(transaction=False) as pipe:
            for key, n in zip(lfu_keys, sizes, strict=True):
                if n == 0:
                    continue
                if sampled:
                    pipe.zrandmember(key, per_shard, withscores=True)
                else:
                    pipe.zrange(key, 0, -1, withscores=True)
            pages = await pipe.execute()
        for n, page in zip([n for n in sizes if n], pages, strict=True):
            sample: list[Any] = list(page or [])
            # RESP3 answers [[member, score], …], RESP2 a flat [member, score, …] (ZRANDMEMBER).
            flat = sampled and not (sample and isinstance(sample[0], (list, tuple)))
            pairs = list(zip(sample[::2], sample[1::2], strict=True)) if flat else sample
            scores = [float(score) for _, score in pairs]
            if scores:
                total += n * sum(scores) / len(scores) if sampled else sum(scores)
    return Counters(num_hits=max(0, round(total) - created), num_misses=created)


async def policy_counters(r: aioredis.Redis, ks: Keyspace, policy_id: str) -> Counters:
    """The policy's hit/miss counts: stats hashes tagged with it when the proxies write such tags,
    else the estimate of :func:`group_counters`."""
    tagged = await hit_counters(r, ks, policy_id)
    if tagged.num_hits + tagged.num_misses:
        return tagged
    return await group_counters(r, ks, policy_id)


#: Status fields :func:`semantic_status` owns (all cleared when the policy drops its bound).
SEMANTIC_FIELDS = ("semantic", "errorRate", "errorRateUpper", "judgedSamples", "explorationCalls", "hitsGained")


async def semantic_status(r: aioredis.Redis, ks: Keyspace, policy_id: str,
                          max_error_rate: float | None) -> dict[str, Any]:
    """The error-bound status fields of a policy: what its sidecars' judged outcomes certify at its δ.

    Without a bound every field is ``None`` (a merge patch removes fields a former bound left).
    The fit is the one every sidecar computes (:func:`llmcache.errorbound.fit`) from the shared counters.
    """
    out: dict[str, Any] = dict.fromkeys(SEMANTIC_FIELDS)
    if max_error_rate is None:
        return out
    state = errorbound.parse(await r.hgetall(ks.bound(policy_id)))
    fit = errorbound.fit(state, max_error_rate)
    out.update(semantic=fit.describe(), judgedSamples=fit.num_judged, explorationCalls=fit.num_explored,
               hitsGained=fit.num_gained)
    if fit.error_rate is not None and fit.error_upper is not None:
        out.update(errorRate=round(fit.error_rate, 5), errorRateUpper=round(fit.error_upper, 5))
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_condition(type_: str, status: bool, reason: str, message: str, *, generation: int) -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": _now()}


def merge_conditions(previous: Sequence[Mapping[str, Any]] | None,
                     new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``new`` conditions, keeping each previous ``lastTransitionTime`` when its status did not change."""
    before = {c.get("type"): c for c in previous or ()}
    out = []
    for cond in new:
        c = dict(cond)
        old = before.get(c["type"])
        if old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime"):
            c["lastTransitionTime"] = old["lastTransitionTime"]
        out.append(c)
    new_types = {c["type"] for c in out}
    others = [dict(c) for t, c in before.items() if t not in new_types]
    return sorted(out + others, key=lambda c: str(c.get("type")))


def conditions_for(*, generation: int, published: bool, selected: int, synced: int,
                   problem: str | None = None, problem_reason: str = "Error") -> list[dict[str, Any]]:
    """The three conditions for one observation (see the module docstring)."""
    if published:
        propagated = make_condition("Propagated", True, "Published",
                                    f"generation {generation} is in Redis and the ConfigMap", generation=generation)
    else:
        propagated = make_condition("Propagated", False, problem_reason, problem or "not published yet",
                                    generation=generation)
    if not published:
        ready = make_condition("Ready", False, "NotPublished", "the policy is not published", generation=generation)
    elif selected == 0:
        ready = make_condition("Ready", True, "NoPodsSelected", "published; no pod matches the selector",
                               generation=generation)
    elif synced >= selected:
        ready = make_condition("Ready", True, "AllPodsSynced", f"{synced}/{selected} pods applied this generation",
                               generation=generation)
    else:
        ready = make_condition("Ready", False, "Syncing", f"{synced}/{selected} pods applied this generation",
                               generation=generation)
    degraded = make_condition("Degraded", problem is not None, problem_reason if problem else "AsExpected",
                              problem or "", generation=generation)
    return [degraded, propagated, ready]
