"""Request handling: pass-through, exact and semantic lookup (misses: ``misses``; own endpoints: ``admin``).

A cacheable request (``POST`` on :data:`llmcache.keys.CACHEABLE_ROUTES`)::

    body ≤ max_body_bytes? ─no─▶ 413    body budget free? ─no─▶ 429    body read in time? ─no─▶ 408
    JSON object? ─no─▶ forward untouched (bypass)        nested past the parser? ─▶ 400
    policy suspended / non-deterministic / cache off ─▶ forward (bypass)
    no tenant credential and anonymous: Bypass ─▶ forward (bypass)
    key = exact_key(route, query, body, partition (pod namespace), tenant, namespace)
    Cache-Control no-cache? ─────────────────────────────────────────┐
    exact GET (deadline, breaker) ─hit─▶ serve (Age, X-LLMCache-Status: hit)
    identical call in flight here ─▶ its chunks / its entry (hit)     │
    semantic lookup ─hit─▶ serve entry of the match, promote to exact key (semantic-hit)
    only-if-cached ─▶ 504                                             │
    join in-flight call for key ─▶ its chunks / its entry (hit)       ◀┘
    [--single-flight-lease: another pod owns the miss → poll for its entry]
    lead: upstream ─▶ relay chunks while recording ─▶ complete? store (TTL fixed) + semantic add

Every body forwarded upstream on chat/completions carries a ``cache_salt`` derived from the
tenant and partition (``--upstream-cache-salt``), so the model server's prefix cache, and
the ``cached_tokens`` it reports, never cross tenants.

The request in progress and the steps every path shares (load, serve, count) are in
:mod:`llmcache.proxy.call`; the single-flight miss path is :mod:`llmcache.proxy.misses`.

Redis trouble anywhere turns into ``bypass`` (the answer still comes from the
upstream); it never causes a 5xx. Logs carry the first 12 hex digits of the key
hash, never prompt text or credentials.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from aiohttp import web

from llmcache import keys, stats
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.policy import PolicyDocument
from llmcache.proxy import controls, limits, misses, upstream
from llmcache.proxy.breaker import Breaker
from llmcache.proxy.call import (
    STATUS_HEADER,
    Call,
    count_answer,
    guarded,
    load_entry,
    serve,
)
from llmcache.proxy.exact import ExactStore
from llmcache.proxy.metrics import ProxyMetrics
from llmcache.proxy.settings import ProxySettings
from llmcache.proxy.singleflight import FlightGroup, RedisLease
from llmcache.proxy.telemetry import Telemetry

__all__ = ["STATE", "EffectiveConfig", "ProxyState", "add_routes", "effective_config"]

log = logging.getLogger(__name__)

THRESHOLD_HEADER = controls.THRESHOLD_HEADER
NAMESPACE_HEADER = controls.NAMESPACE_HEADER


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
            cache_anonymous=c.anonymous == "per-namespace")
    s = doc.spec
    return EffectiveConfig(
        exact=s.exact_enabled or (not s.suspend and not semantic_ready),
        semantic=semantic_ready and s.semantic_enabled, ttl_s=s.ttl_seconds,
        similarity_threshold=s.similarity_threshold, tenant_header=s.tenant_header,
        non_deterministic=s.non_deterministic, suspend=s.suspend, invalidate_before_s=s.invalidate_before_s,
        group=doc.id, partition=settings.policy.pod_namespace or doc.namespace,
        cache_anonymous=s.anonymous == "PerNamespace", policy_id=doc.id)


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
    flights: FlightGroup = field(default_factory=FlightGroup)
    stats: stats.StatsBuffer = field(default_factory=stats.StatsBuffer)
    upstream: upstream.Upstream | None = None
    redis: redis.asyncio.Redis | None = None
    store: ExactStore | None = None
    lease: RedisLease | None = None
    semantic: Any | None = None
    """The semantic cache facade (``llmcache.proxy.semantic.SemanticCache``) or ``None``."""
    policy_watcher: Any | None = None
    """``llmcache.proxy.policy_watch.PolicyWatcher`` or ``None`` (no policy source configured)."""
    background: set[asyncio.Task[Any]] = field(default_factory=set)
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

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


STATE = web.AppKey("llmcache_proxy_state", ProxyState)


# ---------------------------------------------------------------------------------------------
# pass-through


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Forward any request untouched, streaming the body both ways."""
    state = request.app[STATE]
    assert state.upstream is not None
    headers = upstream.filter_headers(request.headers)
    idle_s = state.settings.cache.body_timeout_s
    body = limits.StreamedBody(request, idle_s=idle_s) if request.body_exists else None
    if body is not None and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)  # stream it, but not re-chunked
    try:
        resp = await state.upstream.open(request.method, request.raw_path, headers, body)
    except (upstream.UpstreamError, limits.BodyStalled) as exc:
        if isinstance(exc, limits.BodyStalled) or (body is not None and body.stalled):
            # (aiohttp reports the stall as a failed write upstream)
            return upstream.error_response(408, f"request body stalled: no bytes for {idle_s:g} s "
                                                "(--body-timeout-seconds)", type_="invalid_request_error",
                                           code="request_timeout", headers={"Connection": "close"})
        return upstream.error_response(exc.status, exc.message, type_="upstream_error")
    return await upstream.relay(request, resp)


async def _forward_bypass(request: web.Request, state: ProxyState, body: bytes, *,
                          route: str, namespace: str) -> web.StreamResponse:
    """Forward a cacheable-route request without caching it (status ``bypass``); ``body`` as sent upstream."""
    assert state.upstream is not None
    state.metrics.count(route, "bypass")
    state.stats.add(namespace, "bypass", policy=state.config().policy_id)
    headers = upstream.filter_headers(request.headers)
    t0 = time.perf_counter()
    try:
        resp = await state.upstream.open("POST", request.raw_path, headers, body)
    except upstream.UpstreamError as exc:
        return upstream.error_response(exc.status, exc.message, type_="upstream_error",
                                       headers={STATUS_HEADER: "bypass"})
    state.metrics.observe_upstream(route, time.perf_counter() - t0)
    return await upstream.relay(request, resp, extra_headers={STATUS_HEADER: "bypass"})


# ---------------------------------------------------------------------------------------------
# cacheable routes


def _upstream_body(state: ProxyState, cfg: EffectiveConfig, route: str, raw: bytes, body: dict[str, Any],
                   tenant: str) -> bytes:
    """``raw`` with the tenant's ``cache_salt`` (chat/completions, when enabled); otherwise ``raw`` itself.

    The salt is spliced in after the opening brace, so the client's JSON travels byte for byte;
    a client's own ``cache_salt`` is folded into ours and replaced.
    """
    if route == "/v1/embeddings" or not state.settings.upstream.enable_cache_salt:
        return raw
    client_salt = body.get("cache_salt")
    salt = keys.cache_salt(tenant, state.tenant_salt, partition=cfg.partition,
                           client_salt=client_salt if isinstance(client_salt, str) else None)
    head = raw.lstrip()
    if "cache_salt" in body or not body or not head.startswith(b"{"):
        return json.dumps({**body, "cache_salt": salt}, ensure_ascii=False).encode()
    return b'{"cache_salt":"' + salt.encode() + b'",' + head[1:]


def _deterministic(route: str, body: Mapping[str, Any], policy: str) -> bool:
    """May this request be cached under the non-determinism ``policy``?"""
    if route == "/v1/embeddings" or policy == "cache":
        return True
    t = body.get("temperature")
    if t is None:
        t = 1.0  # the OpenAI API's default: an unset temperature samples
    if isinstance(t, (int, float)) and not isinstance(t, bool) and t == 0:
        return True
    return policy == "cache-if-seeded" and isinstance(body.get("seed"), int) and not isinstance(
        body.get("seed"), bool)


async def cacheable(request: web.Request) -> web.StreamResponse:
    """Entry point for ``POST`` on a cacheable route."""
    state = request.app[STATE]
    route = request.path
    span = state.telemetry.tracer.start_span("llmcache.request", attributes={
        "http.request.method": request.method, "url.path": route})
    status = "error"
    http_status = 500
    try:
        response, status = await _cacheable(request, state, route, span)
        http_status = response.status
        return response
    finally:
        span.set_attribute("llmcache.status", status)
        span.set_attribute("http.response.status_code", http_status)
        span.end()


async def _cacheable(request: web.Request, state: ProxyState, route: str,
                     span: Any) -> tuple[web.StreamResponse, str]:
    try:
        asked = controls.parse(request.headers)
    except controls.InvalidControl as exc:
        state.metrics.count(route, "error")
        return upstream.error_response(400, str(exc), type_="invalid_request_error",
                                       code="invalid_control_header"), "error"
    cache = state.settings.cache
    limit = cache.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        state.metrics.count(route, "error")
        return _too_large(limit), "error"
    # Reserve the body's bytes for the whole request (held raw, parsed, forwarded, stored).
    reserved = request.content_length if request.content_length is not None else limit
    if not state.body_budget.try_take(reserved):
        state.metrics.count(route, "error")
        state.metrics.shed.inc()
        return upstream.error_response(
            429, f"the proxy holds {state.body_budget.used_bytes} bytes of request bodies already "
                 f"(--max-inflight-body-bytes {cache.max_inflight_body_bytes}); retry shortly",
            type_="rate_limit_error", code="overloaded", headers={"Retry-After": "1"}), "error"
    try:
        return await _admitted(request, state, route, span, asked)
    finally:
        state.body_budget.give(reserved)


def _too_large(limit: int) -> web.Response:
    return upstream.error_response(413, f"request body exceeds {limit} bytes (--max-body-bytes)",
                                   type_="invalid_request_error", code="request_too_large")


async def _admitted(request: web.Request, state: ProxyState, route: str, span: Any,
                    asked: controls.RequestControls) -> tuple[web.StreamResponse, str]:
    cache = state.settings.cache
    namespace = asked.namespace
    read = await limits.read_body(request, limit_bytes=cache.max_body_bytes, timeout_s=cache.body_timeout_s)
    if read.body is None:
        state.metrics.count(route, "error")
        if read.status == 413:
            return _too_large(cache.max_body_bytes), "error"
        return upstream.error_response(408, f"request body not received within {cache.body_timeout_s:g} s "
                                            "(--body-timeout-seconds)", type_="invalid_request_error",
                                       code="request_timeout", headers={"Connection": "close"}), "error"
    raw = read.body
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    except RecursionError:
        state.metrics.count(route, "error")
        return _too_deep(), "error"
    if not isinstance(body, dict):
        # Not ours to judge: the upstream answers with its own error, byte for byte.
        return await _forward_bypass(request, state, raw, route=route, namespace=namespace), "bypass"
    cfg = state.config()
    credential = request.headers.get(cfg.tenant_header)
    tenant = keys.tenant_id(credential, state.tenant_salt)
    forwarded = _upstream_body(state, cfg, route, raw, body, tenant)
    if cfg.suspend or not (cfg.exact or cfg.semantic) or not _deterministic(route, body, cfg.non_deterministic):
        return await _forward_bypass(request, state, forwarded, route=route, namespace=namespace), "bypass"
    if not credential and not cfg.cache_anonymous:
        # Without a credential every caller would share one tenant: never cached unless a policy
        # opts in (spec.scope.anonymous: PerNamespace, or --anonymous per-namespace).
        return await _forward_bypass(request, state, forwarded, route=route, namespace=namespace), "bypass"
    query = request.query_string
    try:
        key = keys.exact_key(route, body, tenant=tenant, namespace=namespace, partition=cfg.partition, query=query)
    except (ValueError, TypeError):  # NaN/Infinity are not JSON; let the upstream reject them
        return await _forward_bypass(request, state, forwarded, route=route, namespace=namespace), "bypass"
    except RecursionError:
        state.metrics.count(route, "error")
        return _too_deep(), "error"
    stream = route != "/v1/embeddings" and body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    # Followers share the leader's raw chunks only when they asked for the same stream options.
    shape = json.dumps(opts, sort_keys=True) if stream else None
    call = Call(request=request, state=state, cfg=cfg, route=route, raw=forwarded, body=body, key=key,
                 tenant=tenant, namespace=namespace, query=query,
                 directives=asked.directives, asked_threshold=asked.similarity_threshold,
                 stream=stream, include_usage=include_usage, stream_shape=shape)
    span.set_attribute("llmcache.key", call.log_key)
    response = await _lookup_or_fetch(call)
    if call.similarity is not None:
        span.set_attribute("llmcache.similarity", call.similarity)
    if call.coalesced:
        span.set_attribute("llmcache.coalesced", True)
    return response, call.status


def _too_deep() -> web.Response:
    return upstream.error_response(400, "request JSON is nested too deeply to parse; flatten it",
                                   type_="invalid_request_error", code="json_too_deep")


async def _lookup_or_fetch(call: Call) -> web.StreamResponse:
    state = call.state
    if not call.directives.no_cache:
        if call.cfg.exact:
            entry = await load_entry(call, call.key, kind="exact")
            if entry is not None:
                return serve(call, entry, status="hit")
        # An identical request in flight beats a semantic neighbour (and saves the embedding).
        served = await misses.join_flight(call)
        if served is not None:
            return served
        if call.cfg.semantic and state.semantic is not None and call.redis_ok:
            served = await _semantic_lookup(call)
            if served is not None:
                return served
    if call.directives.only_if_cached:
        call.status = "miss"
        count_answer(call, "miss")
        return upstream.error_response(504, "not in the cache and the request says only-if-cached",
                                       type_="cache_miss", code="only_if_cached", headers={STATUS_HEADER: "miss"})
    return await misses.miss(call, join=True)


async def _semantic_lookup(call: Call) -> web.StreamResponse | None:
    state = call.state
    parts = call.semantic_parts()
    if parts is None:
        return None
    threshold = call.cfg.similarity_threshold
    if call.asked_threshold is not None:
        threshold = max(threshold, call.asked_threshold)  # a request may only tighten it
    t0 = time.perf_counter()
    try:
        match = await state.semantic.lookup(parts, threshold=threshold,
                                            timeout_s=state.settings.semantic.timeout_ms / 1000)
    except Exception:
        log.exception("semantic lookup failed for %s", call.log_key)
        match = None
    state.metrics.observe_lookup("semantic", time.perf_counter() - t0)
    if match is None:
        return None
    entry = await load_entry(call, match.key_hash, kind="exact")
    if entry is None:
        return None
    call.similarity = float(match.similarity)
    log.debug("semantic hit %s → %s (%.3f)", call.log_key, keys.short(match.key_hash), call.similarity)
    # Promote: the next identical request is an exact hit. Keep the original creation time so
    # Age and the fixed TTL stay those of the stored answer.
    remaining_s = int(call.cfg.ttl_s - entry.age_s())
    if remaining_s >= 1 and state.store is not None:
        store = state.store
        state.spawn(guarded(state, lambda: store.put(call.key, entry, ttl_s=remaining_s, group=call.cfg.group)))
    return serve(call, entry, status="semantic-hit")


def add_routes(app: web.Application) -> None:
    """The cacheable routes, then everything else passed through (add :mod:`admin`'s routes first)."""
    r = app.router
    for route in keys.CACHEABLE_ROUTES:
        r.add_post(route, cacheable)
    r.add_route("*", "/{tail:.*}", passthrough)


def optional_module(name: str) -> Any | None:
    """Import an optional proxy module (semantic cache, policy watcher), ``None`` when absent."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None
