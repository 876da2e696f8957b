"""kopf handlers for ``CachePolicy``: publish, status, eviction and clean-up.

Top-level handlers; :func:`build_registry` puts them in a fresh registry per
process (no module-level registry), and the process's connections reach them
as ``memo.runtime`` (:func:`memo_for`, kopf's ``memo``), not through a closure.

=========================  ===============================================
create / update / resume   validate (``PermanentError`` if invalid), publish
                           to Redis + ConfigMap (``TemporaryError`` while
                           Redis or the API is away), set status
timer ``status``           republish if Redis lost the document (restarted
                           Redis) or holds other content (SHA-256 of the
                           stored bytes vs ours: a rewrite that keeps the
                           generation is caught too), then count selected/synced pods, entries,
                           memory, hit rate; patch status only on change
timer ``eviction``         :func:`llmcache.operator.eviction.enforce_limits`
startup task ``sweeper``   :mod:`llmcache.operator.sweep`: ``_default`` and
                           orphaned groups, trimmed to the default limits;
                           :mod:`llmcache.operator.partitions`: each namespace's
                           Redis user and vector index
delete (finalizer)         unpublish, rebuild the ConfigMap; purge the group's
                           entries when annotated ``llmcache.io/purge-on-delete:
                           "true"``, else drop only its bookkeeping (the
                           entries expire with their TTL)
=========================  ===============================================

kopf's own progress and diff-base go to annotations under ``llmcache.io/``:
the status schema is strict and would prune ``status.kopf``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
import redis.asyncio as aioredis
import redis.exceptions

from llmcache import connection
from llmcache.errors import PolicyError
from llmcache.keyspace import Keyspace
from llmcache.operator import credentials, eviction, partitions, publish, sweep
from llmcache.operator import status as policy_status
from llmcache.operator.kube import ApiError, KubeClient
from llmcache.operator.settings import INJECT_LABEL, PURGE_ANNOTATION, OperatorSettings
from llmcache.policy import API_GROUP, API_VERSION, PLURAL, PolicyDocument, PolicySpec, parse_spec

__all__ = ["Runtime", "build_registry", "content_hash", "kopf_settings", "memo_for"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_STATUS_FIELDS = ("observedGeneration", "configHash", "selectedPods", "syncedPods", "entries", "memoryBytes",
                  "hitRate")


def content_hash(document: str | bytes) -> str:
    """SHA-256 of a published policy document's exact bytes: what :func:`refresh_status` compares."""
    return hashlib.sha256(document.encode() if isinstance(document, str) else document).hexdigest()


@dataclass(slots=True)
class Runtime:
    """Connections shared by every handler of one operator process."""

    settings: OperatorSettings
    redis: aioredis.Redis
    kube: KubeClient
    keyspace: Keyspace = field(default_factory=Keyspace)
    #: The namespaces' Redis users (``--sidecar-redis-users namespace``), else ``None``.
    users: partitions.NamespaceUsers | None = None
    #: The webhook's credentials Secret writer, when the webhook runs with one.
    mirror: credentials.CredentialsMirror | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: Background tasks started with the operator (the sweeper of groups without a policy, the
    #: namespace users and indexes).
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def namespaces_in_use(self) -> set[str]:
        """Namespaces with injected pods; their credentials Secrets are rewritten when due (a webhook
        call that could not write one is repaired here)."""
        found = await self.kube.labelled_pod_namespaces(f"{INJECT_LABEL}=enabled")
        if self.mirror is not None:
            for namespace in sorted(found):
                try:
                    await self.mirror.ensure(namespace)
                except ApiError as exc:
                    log.warning("cannot write credentials Secret %s/%s: %s", namespace, self.mirror.name, exc)
        return found

    async def sync_configmap(self, namespace: str) -> None:
        """Rebuild the namespace's ConfigMap from Redis (serialised per namespace in this process)."""
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            docs = await publish.namespace_documents(self.redis, self.keyspace, namespace)
            await self.kube.put_configmap_data(
                namespace, self.settings.configmap_name, publish.render_configmap(docs),
                labels={"app.kubernetes.io/managed-by": "llmcache-operator"})

    def redis_down(self, exc: BaseException) -> kopf.TemporaryError:
        return kopf.TemporaryError(
            f"Redis at {connection.redact(self.settings.redis_url)} is unreachable ({exc}); retrying in "
            f"{self.settings.redis_retry_delay_s:g}s — check the Redis pod/Service or --redis-url",
            delay=self.settings.redis_retry_delay_s)


def kopf_settings(ours: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings for this operator: annotation storage, our finalizer, warnings as events."""
    ks = kopf.OperatorSettings()
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP,
                                                                      key="last-handled-configuration")
    ks.persistence.finalizer = f"{API_GROUP}/finalizer"
    ks.posting.level = logging.WARNING
    # Re-list well before any proxy's idle timeout; a stale watch would delay reconciling.
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.watching.connect_timeout = 10
    ks.networking.request_timeout = 30
    return ks


def _namespaced(namespace: str | None) -> str:
    # CachePolicy is namespaced: kopf always passes one; the type says it might not.
    if namespace is None:
        raise kopf.PermanentError("CachePolicy without a namespace: the CRD must be namespaced")
    return namespace


def _generation(meta: Mapping[str, Any]) -> int:
    """``metadata.generation`` (1 when the API server has not set it yet)."""
    return int(meta.get("generation") or 1)


def _created_s(meta: Mapping[str, Any]) -> float:
    ts = meta.get("creationTimestamp")
    if not ts:
        return 0.0
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


def _document(spec: Mapping[str, Any], meta: Mapping[str, Any], name: str, namespace: str) -> PolicyDocument:
    """The document to publish; raises :class:`PolicyError`."""
    return PolicyDocument(namespace=namespace, name=name, generation=_generation(meta),
                          spec=parse_spec(dict(spec)), created_s=_created_s(meta))


def _patch_status(patch: kopf.Patch, current: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    """Write only the fields that differ (an unchanged status costs no API call)."""
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value


def _status_with(current: Mapping[str, Any], *, generation: int, published: bool, problem: str | None = None,
                 reason: str = "Error", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    desired = dict(extra or {})
    selected = int(desired.get("selectedPods", current.get("selectedPods") or 0))
    synced = int(desired.get("syncedPods", current.get("syncedPods") or 0))
    new = policy_status.conditions_for(generation=generation, published=published, selected=selected,
                                       synced=synced, problem=problem, problem_reason=reason)
    desired["conditions"] = policy_status.merge_conditions(current.get("conditions"), new)
    return desired


def memo_for(rt: Runtime) -> kopf.Memo:
    """The operator's root memo. kopf hands every handler a shallow copy (one per CachePolicy, the
    root itself to startup/login/probe handlers), so ``memo.runtime`` is this process's one
    :class:`Runtime` everywhere, while keys a handler sets (the eviction cursor) stay per object."""
    return kopf.Memo(runtime=rt)


def _runtime(memo: Any) -> Runtime:
    rt = memo.runtime
    assert isinstance(rt, Runtime), "kopf.operator() was started without memo=memo_for(runtime)"
    return rt


async def _publish_current(rt: Runtime, spec: Mapping[str, Any], meta: Mapping[str, Any], name: str,
                           namespace: str, st: Mapping[str, Any], patch: kopf.Patch) -> PolicyDocument:
    """Validate and publish the policy (Redis + ConfigMap), or report why not on its status and raise."""
    generation = _generation(meta)
    try:
        doc = _document(spec, meta, name, namespace)
    except PolicyError as exc:
        _patch_status(patch, st, _status_with(st, generation=generation, published=False, problem=str(exc),
                                              reason="InvalidSpec"))
        raise kopf.PermanentError(f"invalid CachePolicy {namespace}/{name}: {exc}") from exc
    try:
        await publish.publish_policy(rt.redis, rt.keyspace, doc)
        await rt.sync_configmap(namespace)
    except _REDIS_ERRORS as exc:
        _patch_status(patch, st, _status_with(st, generation=generation, published=False,
                                              problem=f"Redis unreachable: {exc}", reason="RedisUnavailable"))
        raise rt.redis_down(exc) from exc
    except ApiError as exc:
        raise kopf.TemporaryError(f"cannot write ConfigMap {namespace}/{rt.settings.configmap_name}: {exc}",
                                  delay=rt.settings.redis_retry_delay_s) from exc
    return doc


async def on_change(*, spec: Mapping[str, Any], meta: Mapping[str, Any], name: str, namespace: str | None,
                    status: Mapping[str, Any], patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """create / update / resume: publish, then record the generation and config hash."""
    namespace = _namespaced(namespace)
    doc = await _publish_current(_runtime(memo), spec, meta, name, namespace, status, patch)
    _patch_status(patch, status, _status_with(status, generation=doc.generation, published=True, extra={
        "observedGeneration": doc.generation, "configHash": doc.config_hash}))


async def refresh_status(*, spec: Mapping[str, Any], meta: Mapping[str, Any], name: str, namespace: str | None,
                         status: Mapping[str, Any], patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Timer: republish a lost or rewritten document, then count pods, entries, memory, hit rate."""
    rt = _runtime(memo)
    namespace = _namespaced(namespace)
    try:
        doc = _document(spec, meta, name, namespace)
    except PolicyError:
        return  # the change handler reported it; nothing to count for an unpublished policy
    try:
        stored = await rt.redis.hget(rt.keyspace.policies(namespace), name)
        if stored is None or content_hash(stored) != content_hash(doc.to_json()):
            # Redis restarted without persistence, a missed update, or the document was
            # rewritten by someone else (same generation, other content): publish ours again.
            # Comparing the whole content, not the generation, is what catches the last case.
            log.warning("policy %s %s in Redis; republishing", doc.id,
                        "missing" if stored is None else "differs from the CachePolicy")
            doc = await _publish_current(rt, spec, meta, name, namespace, status, patch)
        pods = await rt.kube.pod_names(namespace, doc.spec.selector)
        synced = await policy_status.synced_pods(rt.redis, rt.keyspace, namespace, name, doc.config_hash,
                                                 pods=pods)
        part = rt.keyspace.for_partition(namespace)  # a policy's group lives in its namespace's partition
        entries, memory = await eviction.group_usage(rt.redis, part, doc.id)
        counters = await policy_status.policy_counters(rt.redis, part, doc.id)
        bound = await policy_status.semantic_status(rt.redis, part, doc.id, doc.spec.max_error_rate)
    except _REDIS_ERRORS as exc:
        _patch_status(patch, status, _status_with(status, generation=doc.generation, published=False,
                                                  problem=f"Redis unreachable: {exc}", reason="RedisUnavailable"))
        raise rt.redis_down(exc) from exc
    except PolicyError as exc:  # a hand-edited document: overwrite it with ours
        log.warning("policy document of %s in Redis is invalid (%s); republishing", doc.id, exc)
        await _publish_current(rt, spec, meta, name, namespace, status, patch)
        return
    extra: dict[str, Any] = {
        "observedGeneration": doc.generation, "configHash": doc.config_hash,
        "selectedPods": len(pods), "syncedPods": synced, "entries": entries, "memoryBytes": memory,
    }
    if counters.hit_rate is not None:
        extra["hitRate"] = round(counters.hit_rate, 4)
    extra.update(bound)
    _patch_status(patch, status, _status_with(status, generation=doc.generation, published=True, extra=extra))


async def evict(*, spec: Mapping[str, Any], name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Timer: keep the policy's group inside its limits; the prune cursor lives in this object's memo."""
    rt = _runtime(memo)
    namespace = _namespaced(namespace)
    try:
        parsed: PolicySpec = parse_spec(dict(spec))
    except PolicyError:
        return
    ev = rt.settings.eviction
    try:
        result = await eviction.enforce_limits(
            rt.redis, rt.keyspace.for_partition(namespace), f"{namespace}/{name}",
            eviction.EvictionLimits.from_spec(parsed),
            batch_size=ev.batch_size, prune_cursor=int(memo.get("prune_cursor", 0)),
            prune_scan_count=ev.prune_scan_count)
    except _REDIS_ERRORS as exc:
        raise rt.redis_down(exc) from exc
    memo["prune_cursor"] = result.prune_cursor


async def on_delete(*, meta: Mapping[str, Any], name: str, namespace: str | None, memo: kopf.Memo,
                    **_: Any) -> None:
    """Finalizer: unpublish, purge or drop the group's bookkeeping, rebuild the ConfigMap."""
    rt = _runtime(memo)
    namespace = _namespaced(namespace)
    generation = _generation(meta)
    purge = str((meta.get("annotations") or {}).get(PURGE_ANNOTATION, "")).lower() == "true"
    try:
        await publish.unpublish_policy(rt.redis, rt.keyspace, namespace, name, generation=generation)
        if purge:
            await eviction.purge_group(rt.redis, rt.keyspace.for_partition(namespace), f"{namespace}/{name}",
                                       batch_size=rt.settings.eviction.batch_size)
        else:
            # No timer trims this group any more: drop its bookkeeping so it cannot leak.
            # The entries stay and expire with their TTL (a hit from another policy's pod
            # records them in that policy's group).
            await eviction.drop_bookkeeping(rt.redis, rt.keyspace.for_partition(namespace), f"{namespace}/{name}")
    except _REDIS_ERRORS as exc:
        raise rt.redis_down(exc) from exc
    try:
        await rt.sync_configmap(namespace)
    except ApiError as exc:
        if exc.status in (403, 404):  # namespace being deleted: its ConfigMap goes with it
            log.info("not rewriting ConfigMap in %s: %s", namespace, exc)
        else:
            raise kopf.TemporaryError(f"cannot rewrite ConfigMap {namespace}/{rt.settings.configmap_name}: "
                                      f"{exc}", delay=rt.settings.redis_retry_delay_s) from exc


async def start_sweeper(*, memo: kopf.Memo, **_: Any) -> None:
    """Startup: groups without a policy have no timer of their own; one task trims them all. Another
    keeps every namespace with injected pods supplied with its Redis user and vector index."""
    rt = _runtime(memo)
    ev = rt.settings.eviction
    limits = eviction.EvictionLimits(max_entries=ev.default_max_entries, max_memory_bytes=ev.default_max_memory_bytes)
    rt.tasks.append(asyncio.create_task(sweep.run_sweeper(
        rt.redis, rt.keyspace, limits, interval_s=ev.interval_s, batch_size=ev.batch_size,
        prune_scan_count=ev.prune_scan_count, max_stats_keys=ev.max_stats_keys)))
    rt.tasks.append(asyncio.create_task(partitions.run_reconciler(
        rt.redis, rt.keyspace, rt.users, namespaces_in_use=rt.namespaces_in_use,
        interval_s=rt.settings.namespace_users.interval_s)))


async def stop_sweeper(*, memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    for task in rt.tasks:
        task.cancel()
    await asyncio.gather(*rt.tasks, return_exceptions=True)
    rt.tasks.clear()


async def login(*, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the same as our own API calls (kopf's login handlers, see
    :class:`~llmcache.operator.kube.KubeConfig`), with a token read from its file now.
    A custom registry does not get kopf's default login handlers, hence this one."""
    return _runtime(memo).kube.config.connection_info()


async def redis_probe(*, memo: kopf.Memo, **_: Any) -> bool:
    # Reported, never raised: restarting the operator would not bring Redis back.
    try:
        return bool(await _runtime(memo).redis.ping())
    except _REDIS_ERRORS:
        return False


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The handlers above in a fresh registry (timer intervals from ``settings``); run it with
    ``kopf.operator(registry=…, memo=memo_for(runtime))``."""
    reg = kopf.OperatorRegistry()
    res = (API_GROUP, API_VERSION, PLURAL)
    for on in (kopf.on.resume, kopf.on.create):
        on(*res, registry=reg, id="publish")(on_change)
    kopf.on.update(*res, registry=reg, id="publish", field="spec")(on_change)
    kopf.timer(*res, registry=reg, id="status", interval=settings.status_interval_s,
               initial_delay=min(1.0, settings.status_interval_s))(refresh_status)
    kopf.timer(*res, registry=reg, id="eviction", interval=settings.eviction.interval_s)(evict)
    kopf.on.delete(*res, registry=reg, id="cleanup")(on_delete)
    kopf.on.startup(registry=reg, id="sweeper")(start_sweeper)
    kopf.on.cleanup(registry=reg, id="sweeper")(stop_sweeper)
    kopf.on.login(registry=reg, id="kubeconfig")(login)
    kopf.on.probe(registry=reg, id="redis")(redis_probe)
    return reg
