"""Request handling: pass-through, exact and semantic lookup, single-flight misses (own endpoints: ``admin``).

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

Redis trouble anywhere turns into ``bypass`` (the answer still comes from the
upstream); it never causes a 5xx. Logs carry the first 12 hex digits of the key
hash, never prompt text or credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio
from aiohttp import web

from llmcache import keys, stats
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.policy import PolicyDocument
from llmcache.proxy import cachecontrol, controls, limits, streaming, upstream
from llmcache.proxy.breaker import Breaker, CacheUnavailable
from llmcache.proxy.exact import Entry, ExactStore, InvalidEntry, validate_answer
from llmcache.proxy.metrics import ProxyMetrics
from llmcache.proxy.settings import ProxySettings
from llmcache.proxy.singleflight import Flight, FlightGroup, RedisLease
from llmcache.proxy.telemetry import Telemetry

__all__ = ["ProxyState", "STATE", "EffectiveConfig", "effective_config", "add_routes"]

log = logging.getLogger(__name__)

STATUS_HEADER = "X-LLMCache-Status"
SIMILARITY_HEADER = "X-LLMCache-Similarity"
THRESHOLD_HEADER = controls.THRESHOLD_HEADER
NAMESPACE_HEADER = controls.NAMESPACE_HEADER
_JSON = "application/json"
_SSE = "text/event-stream"


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


_UNSET: Any = object()


@dataclass(slots=True)
class _Call:
    """One cacheable request in progress."""

    request: web.Request
    state: ProxyState
    cfg: EffectiveConfig
    route: str
    raw: bytes
    """The body as forwarded upstream (with ``cache_salt`` when enabled)."""
    body: dict[str, Any]
    key: str
    tenant: str
    namespace: str
    query: str
    directives: cachecontrol.RequestDirectives
    stream: bool
    include_usage: bool
    stream_shape: str | None
    asked_threshold: float | None = None
    """``X-LLMCache-Similarity-Threshold`` (checked by :mod:`llmcache.proxy.controls`), or ``None``."""
    redis_ok: bool = True
    status: str = "miss"
    similarity: float | None = None
    coalesced: bool = False
    lease_key: str | None = None
    handed_off: bool = False
    """True once landing the flight is the background store's job."""
    _parts: Any = _UNSET
    """The request's semantic split, computed at most once (lookup, then store)."""

    def semantic_parts(self) -> keys.SemanticParts | None:
        """:func:`llmcache.keys.semantic_parts` of this request (canonical JSON + SHA-256, done once)."""
        if self._parts is _UNSET:
            try:
                self._parts = keys.semantic_parts(self.route, self.body, tenant=self.tenant, namespace=self.namespace,
                                                  partition=self.cfg.partition, query=self.query)
            except (ValueError, TypeError, RecursionError):
                self._parts = None
        return self._parts

    @property
    def log_key(self) -> str:
        return keys.short(self.key)

    @property
    def wants_usage(self) -> bool:
        """A JSON answer always carries usage; a stream only with ``include_usage``."""
        return self.route != "/v1/embeddings" and (not self.stream or self.include_usage)


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
    call = _Call(request=request, state=state, cfg=cfg, route=route, raw=forwarded, body=body, key=key,
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


async def _lookup_or_fetch(call: _Call) -> web.StreamResponse:
    state = call.state
    if not call.directives.no_cache:
        if call.cfg.exact:
            entry = await _load(call, call.key, kind="exact")
            if entry is not None:
                return _serve(call, entry, status="hit")
        # An identical request in flight beats a semantic neighbour (and saves the embedding).
        served = await _join(call)
        if served is not None:
            return served
        if call.cfg.semantic and state.semantic is not None and call.redis_ok:
            served = await _semantic_lookup(call)
            if served is not None:
                return served
    if call.directives.only_if_cached:
        call.status = "miss"
        _count(call, "miss")
        return upstream.error_response(504, "not in the cache and the request says only-if-cached",
                                       type_="cache_miss", code="only_if_cached", headers={STATUS_HEADER: "miss"})
    return await _miss(call, join=True)


async def _load(call: _Call, key_hash: str, *, kind: str) -> Entry | None:
    """Fetch and validate the entry at ``key_hash``; ``None`` on miss, invalid, stale or Redis trouble."""
    state = call.state
    if state.store is None:
        call.redis_ok = False
        return None
    store = state.store
    t0 = time.perf_counter()
    try:
        blob = await state.breaker.call(lambda: store.get(key_hash, group=call.cfg.group))
    except CacheUnavailable:
        call.redis_ok = False
        _note_redis_failure(state)
        return None
    finally:
        state.metrics.observe_lookup(kind, time.perf_counter() - t0)
    if blob is None:
        return None
    try:
        # A stored entry is the answer (≤ max_entry_bytes) escaped once inside the entry JSON.
        if len(blob) > 2 * state.settings.cache.max_entry_bytes + 4096:
            raise InvalidEntry(f"entry of {len(blob)} bytes exceeds what the proxy stores")
        entry = Entry.from_json(blob, route=call.route)
        if entry.tenant != call.tenant:
            raise InvalidEntry("entry belongs to another tenant")
    except InvalidEntry as exc:
        log.warning("dropping invalid cache entry %s: %s", keys.short(key_hash), exc)
        state.spawn(_guarded(state, lambda: store.delete(key_hash)))
        return None
    if call.cfg.invalidate_before_s is not None and entry.created_s < call.cfg.invalidate_before_s:
        return None
    if not call.directives.accepts_age(entry.age_s()):
        return None
    if not _can_serve(call, entry):
        return None
    return entry


def _count(call: _Call, status: str, *, tokens_saved: int = 0, bytes_saved: int = 0) -> None:
    """Count one answer with cache ``status`` in the metrics and the per-namespace stats."""
    call.state.metrics.count(call.route, status)
    call.state.stats.add(call.namespace, status, policy=call.cfg.policy_id, tokens_saved=tokens_saved,
                         bytes_saved=bytes_saved)


def _note_redis_failure(state: ProxyState) -> None:
    state.metrics.redis_failures.inc()
    state.metrics.breaker_open.set(1 if state.breaker.is_open else 0)


async def _guarded(state: ProxyState, op: Callable[[], Awaitable[Any]]) -> Any:
    """Run a Redis operation under the breaker in the background; failures only count."""
    try:
        return await state.breaker.call(op)
    except CacheUnavailable:
        _note_redis_failure(state)
        return None


async def _semantic_lookup(call: _Call) -> web.StreamResponse | None:
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
    except Exception:  # noqa: BLE001 - the facade promises not to raise; fail open if it does
        log.exception("semantic lookup failed for %s", call.log_key)
        match = None
    state.metrics.observe_lookup("semantic", time.perf_counter() - t0)
    if match is None:
        return None
    entry = await _load(call, match.key_hash, kind="exact")
    if entry is None:
        return None
    call.similarity = float(match.similarity)
    log.debug("semantic hit %s → %s (%.3f)", call.log_key, keys.short(match.key_hash), call.similarity)
    # Promote: the next identical request is an exact hit. Keep the original creation time so
    # Age and the fixed TTL stay those of the stored answer.
    remaining_s = int(call.cfg.ttl_s - entry.age_s())
    if remaining_s >= 1 and state.store is not None:
        store = state.store
        state.spawn(_guarded(state, lambda: store.put(call.key, entry, ttl_s=remaining_s, group=call.cfg.group)))
    return _serve(call, entry, status="semantic-hit")


def _serve(call: _Call, entry: Entry, *, status: str) -> web.Response:
    """Answer from ``entry`` in the shape the request asked for (JSON or SSE)."""
    state = call.state
    call.status = status
    headers = {STATUS_HEADER: status, "Age": str(int(entry.age_s()))}
    if call.similarity is not None:
        headers[SIMILARITY_HEADER] = f"{call.similarity:.4f}"
    if call.stream:
        payload = streaming.replay(call.route, entry.answer(), include_usage=call.include_usage)
        headers["Cache-Control"] = "no-cache"
        resp = web.Response(body=payload, headers=headers, content_type=_SSE)
    else:
        payload = entry.body.encode()
        resp = web.Response(body=payload, headers=headers, content_type=_JSON)
    _count(call, status, tokens_saved=entry.prompt_tokens + entry.completion_tokens, bytes_saved=len(payload))
    state.metrics.served_from_cache(num_bytes=len(payload), prompt_tokens=entry.prompt_tokens,
                                    completion_tokens=entry.completion_tokens)
    log.debug("%s %s age=%ss", status, call.log_key, headers["Age"])
    return resp


# ---------------------------------------------------------------------------------------------
# misses


async def _join(call: _Call) -> web.StreamResponse | None:
    """Serve from an identical request's upstream call in this process, if one is running."""
    flight = call.state.flights.join(call.key, needs_usage=call.wants_usage)
    if flight is None:
        return None
    call.state.metrics.coalesced.inc()
    return await _follow(call, flight)


async def _miss(call: _Call, *, join: bool) -> web.StreamResponse:
    state = call.state
    if join:
        served = await _join(call)
        if served is not None:
            return served
    # Lead in-process first, so identical requests here join this flight while it waits for
    # another pod's lease.
    flight = state.flights.lead(call.key, stream_shape=call.stream_shape,
                                with_usage=not call.stream or call.include_usage,
                                max_bytes=state.settings.cache.max_entry_bytes)
    try:
        if state.lease is not None and call.redis_ok and not call.directives.no_store:
            waited = await _cross_pod_wait(call)
            if isinstance(waited, Entry):
                flight.finish(waited)
                call.coalesced = True
                return _serve(call, waited, status="hit")
            call.lease_key = waited
        return await _lead(call, flight)
    finally:
        if not call.handed_off:
            _land(call, flight)


def _land(call: _Call, flight: Flight) -> None:
    """End ``flight`` (later requests read Redis again) and give up the cross-pod lease."""
    state = call.state
    state.flights.land(flight)
    if call.lease_key is not None and state.lease is not None:
        lease, lease_key = state.lease, call.lease_key
        state.spawn(_guarded(state, lambda: lease.release(lease_key)))


async def _store_then_land(call: _Call, flight: Flight, entry: Entry) -> None:
    """Store after the answer went out, then land: until the entry is in Redis, identical
    requests join the finished flight and are served its entry from memory (no gap, no repeat
    upstream call), and the client's next request on the connection does not wait for Redis."""
    try:
        await _store(call, entry)
    finally:
        _land(call, flight)


async def _cross_pod_wait(call: _Call) -> Entry | str | None:
    """Own the miss across pods (return the lease key), or wait for the owner's entry (return it).

    ``None``: no lease (Redis trouble, or the owner gave up without storing): call the upstream.
    """
    state = call.state
    assert state.lease is not None
    lease = state.lease
    ttl_s = min(state.settings.upstream.timeout_s, 60.0)
    try:
        if await state.breaker.call(lambda: lease.acquire(call.key, ttl_s=ttl_s)):
            return call.key
    except CacheUnavailable:
        return None
    deadline = time.monotonic() + ttl_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.025)
        entry = await _load(call, call.key, kind="exact")
        if entry is not None:
            return entry
        try:
            if not await state.breaker.call(lambda: lease.held(call.key)):
                break
        except CacheUnavailable:
            break
    return None


async def _follow(call: _Call, flight: Flight) -> web.StreamResponse | None:
    """Serve from another request's upstream call; ``None`` when it failed before sending anything."""
    call.coalesced = True
    if call.stream and flight.stream_shape == call.stream_shape:
        out: web.StreamResponse | None = None
        try:
            async for chunk in flight.follow():
                if out is None:
                    out = web.StreamResponse(status=200, headers={STATUS_HEADER: "hit", "Age": "0",
                                                                  "Content-Type": _SSE, "Cache-Control": "no-cache"})
                    await out.prepare(call.request)
                await out.write(chunk)
        except ConnectionResetError:
            flight.num_followers -= 1  # one reader fewer for the leader to keep the upstream open for
            return out or web.Response(status=499)
        if out is None:  # the flight ended (or overflowed) without a streamed byte
            if flight.overflowed:
                return None  # too long to share: go upstream ourselves
            if flight.entry is not None and _can_serve(call, flight.entry):
                return _serve(call, flight.entry, status="hit")
            return None  # go upstream ourselves
        if flight.failed or flight.overflowed:
            upstream.abort(call.request)
            return out
        call.status = "hit"
        state = call.state
        state.metrics.count(call.route, "hit")
        entry = flight.entry
        if entry is not None:
            state.metrics.served_from_cache(num_bytes=0, prompt_tokens=entry.prompt_tokens,
                                            completion_tokens=entry.completion_tokens)
            state.stats.add(call.namespace, "hit", policy=call.cfg.policy_id,
                            tokens_saved=entry.prompt_tokens + entry.completion_tokens)
        await out.write_eof()
        return out
    entry = await flight.wait()
    if entry is None or not _can_serve(call, entry):
        return None
    return _serve(call, entry, status="hit")


def _can_serve(call: _Call, entry: Entry) -> bool:
    """False when the request wants usage (a JSON answer, or a stream with ``include_usage``) and
    ``entry`` was recorded from a stream without it.

    Clients read usage, so such a request is fetched once; its answer (with usage) then replaces
    the entry and serves every shape.
    """
    return not call.wants_usage or entry.has_usage or entry.origin != "sse"


async def _lead(call: _Call, flight: Flight) -> web.StreamResponse:
    """Call the upstream, relay its answer as it arrives, store it when complete."""
    state = call.state
    assert state.upstream is not None
    request = call.request
    call.status = "miss" if call.redis_ok else "bypass"
    headers = upstream.filter_headers(request.headers, drop=frozenset({"accept-encoding"}))
    headers["Accept-Encoding"] = "identity"  # we must be able to read what we store
    t0 = time.perf_counter()
    try:
        resp = await state.upstream.open("POST", request.raw_path, headers, call.raw)
    except upstream.UpstreamError as exc:
        flight.fail()
        _count(call, call.status)
        log.info("upstream failed for %s: %s", call.log_key, exc.message)
        return upstream.error_response(exc.status, exc.message, type_="upstream_error",
                                       headers={STATUS_HEADER: call.status})
    state.metrics.observe_upstream(call.route, time.perf_counter() - t0)
    _count(call, call.status)
    ctype = resp.headers.get("Content-Type", "")
    is_sse = ctype.startswith(_SSE)
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    recording = resp.status == 200 and not encoded and (is_sse or ctype.startswith(_JSON))
    push = recording and is_sse and flight.stream_shape is not None
    max_bytes = state.settings.cache.max_entry_bytes
    recorder = streaming.SSERecorder(call.route, max_bytes=max_bytes) if recording and is_sse else None
    parts: list[bytes] = []
    size = 0

    out = upstream.response_for(resp, extra_headers={STATUS_HEADER: call.status})
    client_gone = False
    try:
        try:
            await out.prepare(request)
        except ConnectionResetError:
            client_gone = True
        async for chunk in resp.content.iter_any():
            if push:
                flight.push(chunk)
            if recorder is not None:
                recorder.feed(chunk)
            elif recording:
                size += len(chunk)
                if size > max_bytes:
                    recording = False
                    parts.clear()
                else:
                    parts.append(chunk)
            if not client_gone:
                try:
                    await out.write(chunk)
                except ConnectionResetError:
                    client_gone = True
            # Keep reading for requests that joined this call; with none left, stop the upstream.
            if client_gone and flight.num_followers == 0:
                break
        else:
            if not client_gone:
                with contextlib.suppress(ConnectionResetError):
                    await out.write_eof()
    except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as exc:
        log.info("upstream broke off the answer for %s (%s); not stored", call.log_key, type(exc).__name__)
        flight.fail()
        upstream.abort(request)
        return out
    finally:
        resp.release()
    if client_gone:
        # A cancelled request is never stored; requests that joined it still get the answer.
        log.info("client left before the answer for %s was complete; not stored", call.log_key)
        entry = _entry_from(call, recorder, parts) if recording and flight.num_followers else None
        if entry is None:
            flight.fail()
        else:
            flight.finish(entry)
        return out
    entry = _entry_from(call, recorder, parts) if recording else None
    flight.finish(entry)
    if entry is not None and not call.directives.no_store and call.redis_ok:
        call.handed_off = True
        state.spawn(_store_then_land(call, flight, entry))
    return out


def _entry_from(call: _Call, recorder: streaming.SSERecorder | None, parts: list[bytes]) -> Entry | None:
    """The storable entry of a complete answer, or ``None`` (incomplete, error body, not parseable)."""
    try:
        if recorder is not None:
            if not recorder.complete:
                log.info("stream for %s ended without [DONE]/finish_reason; not stored", call.log_key)
                return None
            answer = recorder.answer()
            text = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
            origin = "sse"
        else:
            text = b"".join(parts).decode()
            answer = json.loads(text)
            origin = "json"
        validate_answer(call.route, answer)
    except (ValueError, UnicodeDecodeError) as exc:  # InvalidEntry is a ValueError
        log.info("answer for %s is not storable: %s", call.log_key, exc)
        return None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    model = answer.get("model") if isinstance(answer.get("model"), str) else str(call.body.get("model", ""))
    return Entry(route=call.route, model=model, created_s=time.time(), body=text, tenant=call.tenant,
                 namespace=call.namespace, origin=origin,
                 prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens")))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


async def _store(call: _Call, entry: Entry) -> None:
    """Write the entry (fixed TTL) and register it with the semantic index; failures only count."""
    state = call.state
    store = state.store
    if store is None:
        return
    ttl_s = cachecontrol.entry_ttl_s(call.directives, ttl_bound_s=call.cfg.ttl_s)
    try:
        await state.breaker.call(lambda: store.put(call.key, entry, ttl_s=ttl_s, group=call.cfg.group))
    except CacheUnavailable:
        _note_redis_failure(state)
        log.info("could not store %s (redis unavailable); served uncached", call.log_key)
        return
    if call.cfg.semantic and state.semantic is not None:
        parts = call.semantic_parts()
        if parts is None:
            return
        if state.num_pending_adds >= state.settings.semantic.max_pending_adds:
            # The embedder is behind: skip indexing rather than queue without bound.
            state.metrics.semantic_adds_skipped.inc()
            log.info("semantic add for %s skipped: %d adds pending", call.log_key, state.num_pending_adds)
            return
        state.num_pending_adds += 1
        state.spawn(_semantic_add(state, state.semantic, parts, call.key, ttl_s))


async def _semantic_add(state: ProxyState, semantic: Any, parts: keys.SemanticParts, key_hash: str,
                        ttl_s: int) -> None:
    """Index the stored entry by meaning, within ``SemanticOptions.add_timeout_ms``; failures only log."""
    try:
        async with asyncio.timeout(state.settings.semantic.add_timeout_ms / 1000):
            await semantic.add(parts, key_hash, ttl_s=ttl_s)
    except TimeoutError:
        log.info("semantic add for %s timed out; the exact entry is stored", keys.short(key_hash))
    except Exception as exc:  # noqa: BLE001 - indexing is best effort; the exact entry is stored
        log.info("semantic add failed for %s (%s: %s)", keys.short(key_hash), type(exc).__name__, exc)
    finally:
        state.num_pending_adds -= 1


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
