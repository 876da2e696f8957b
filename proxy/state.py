"""What every request handler shares: the proxy's state (:class:`ProxyState`, under :data:`STATE`) and
the configuration in effect for a request (:class:`EffectiveConfig`).

::

    create_app ─▶ ProxyState(settings, keyspace, metrics, breaker, …) ─▶ app[STATE]
                  cleanup_ctx fills: upstream · redis · store · lease · policy_watcher · semantic
    request    ─▶ state.config() = effective_config(settings, current CachePolicy)  (memoised per policy)

Handlers (:mod:`~llmcache.proxy.handlers`, :mod:`~llmcache.proxy.call`, :mod:`~llmcache.proxy.misses`,
:mod:`~llmcache.proxy.admin`) import this module; it imports none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from aiohttp import web

from llmcache import stats
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.policy import PolicyDocument
from llmcache.proxy import limits, upstream
from llmcache.proxy.breaker import Breaker
from llmcache.proxy.exact import ExactStore, ParsedEntries
from llmcache.proxy.metrics import ProxyMetrics
from llmcache.proxy.near import NearCache
from llmcache.proxy.policy_watch import PolicyWatcher
from llmcache.proxy.semantic import SemanticCache
from llmcache.proxy.semantic.bound import ErrorBound
from llmcache.proxy.settings import ProxySettings
from llmcache.proxy.singleflight import FlightGroup, RedisLease
from llmcache.proxy.telemetry import Telemetry

__all__ = ["STATE", "EffectiveConfig", "ProxyState", "effective_config"]


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    """What applies to a request right now: CLI settings overridden by the current CachePolicy."""

    exact: bool
    semantic: bool
    ttl_s: int
    similarity_threshold: float
    tenant_header: str
    non_deterministic: str
    suspend: bool
    invalidate_before_s: float | None
    group: str
    """Eviction group: the policy id, or :data:`llmcache.keyspace.DEFAULT_GROUP`."""
    partition: str = ""
    """What every key includes besides the tenant: the pod's Kubernetes namespace (``--pod-namespace``),
    else the applied policy's namespace, else empty (a proxy outside Kubernetes)."""
    cache_anonymous: bool = False
    """Cache requests without the tenant header (per partition)? ``anonymous: PerNamespace``."""
    policy_id: str | None = None
    """The applied CachePolicy's id (``namespace/name``) that tags the stats counters; ``None`` without one."""
    max_error_rate: float | None = None
    """The accepted share of wrong semantic hits (δ): ``spec.semantic.maxErrorRate``, else
    ``--semantic-max-error-rate``; ``None``: every candidate the verifier accepts is served."""


def effective_config(settings: ProxySettings, doc: PolicyDocument | None, *,
                     semantic_ready: bool) -> EffectiveConfig:
    """Merge ``settings`` with the policy ``doc`` (the policy wins for every field it carries)."""
    c = settings.cache
    if doc is None:
        # Semantic-only without a semantic engine falls back to exact rather than caching nothing.
        return EffectiveConfig(
            exact=c.mode in ("exact", "both") or not semantic_ready,
            semantic=semantic_ready and c.mode in ("semantic", "both"),
            ttl_s=c.ttl_s, similarity_threshold=settings.semantic.similarity_threshold,
            tenant_header=c.tenant_header, non_deterministic=c.non_deterministic, suspend=False,
            invalidate_before_s=None, group=DEFAULT_GROUP, partition=settings.policy.pod_namespace or "",
            cache_anonymous=c.anonymous == "per-namespace", max_error_rate=settings.semantic.max_error_rate)
    s = doc.spec
    return EffectiveConfig(
        exact=s.exact_enabled or (not s.suspend and not semantic_ready),
        semantic=semantic_ready and s.semantic_enabled, ttl_s=s.ttl_seconds,
        similarity_threshold=s.similarity_threshold, tenant_header=s.tenant_header,
        non_deterministic=s.non_deterministic, suspend=s.suspend, invalidate_before_s=s.invalidate_before_s,
        group=doc.id, partition=settings.policy.pod_namespace or doc.namespace,
        cache_anonymous=s.anonymous == "PerNamespace", policy_id=doc.id, max_error_rate=s.max_error_rate)


@dataclass(slots=True)
class ProxyState:
    """Everything a handler needs; created by :func:`llmcache.proxy.app.create_app`, filled by its
    ``cleanup_ctx`` (so resources open and close with the app)."""

    settings: ProxySettings
    keyspace: Keyspace
    tenant_salt: bytes
    metrics: ProxyMetrics
    telemetry: Telemetry
    breaker: Breaker
    body_budget: limits.BodyBudget
    writes: limits.WriteDeadlines
    """The write deadline of every answer (``--write-timeout-seconds``); its watchdog runs with the app."""
    flights: FlightGroup = field(default_factory=FlightGroup)
    parsed: ParsedEntries = field(default_factory=ParsedEntries)
    """Entries parsed and validated on earlier hits (reused while Redis returns the same bytes)."""
    stats: stats.StatsBuffer = field(default_factory=stats.StatsBuffer)
    upstream: upstream.Upstream | None = None
    redis: redis.asyncio.Redis | None = None
    store: ExactStore | None = None
    lease: RedisLease | None = None
    near: NearCache | None = None
    """Exact hits held in this process, invalidated by Redis (:mod:`llmcache.proxy.near`); ``None`` when off."""
    semantic: SemanticCache | None = None
    """The semantic cache, or ``None`` (exact-only mode, or not started yet: see ``app._SemanticStarter``)."""
    bound: ErrorBound | None = None
    """Error-bounded semantic caching (decides under a ``max_error_rate``, judges, learns); ``None`` in
    exact-only mode. A request whose config carries a bound is never served semantically without it."""
    policy_watcher: PolicyWatcher | None = None
    """The CachePolicy watcher, or ``None`` (no policy source configured)."""
    background: set[asyncio.Future[Any]] = field(default_factory=set)
    num_pending_adds: int = 0
    """Background semantic adds in progress (capped by ``SemanticOptions.max_pending_adds``)."""
    _config: tuple[PolicyDocument | None, bool, EffectiveConfig] | None = None
    """The last effective config with the (policy document, semantic ready) it was computed for."""

    def config(self) -> EffectiveConfig:
        """The effective config, recomputed only when the policy document or semantic engine changes."""
        doc = self.policy_watcher.current if self.policy_watcher is not None else None
        semantic_ready = self.semantic is not None
        cached = self._config
        if cached is None or cached[0] is not doc or cached[1] != semantic_ready:
            cached = self._config = (doc, semantic_ready,
                                     effective_config(self.settings, doc, semantic_ready=semantic_ready))
        return cached[2]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        self.hold(asyncio.get_running_loop().create_task(coro))

    def hold(self, fut: asyncio.Future[Any]) -> None:
        """Keep background work (a task, or a Redis reply a callback waits for) until it is done:
        shutdown gives it a moment, then cancels it."""
        self.background.add(fut)
        fut.add_done_callback(self.background.discard)


STATE = web.AppKey("llmcache_proxy_state", ProxyState)
