"""Request handling: pass-through, exact and semantic lookup (misses: ``misses``; own endpoints: ``admin``).

A cacheable request (``POST`` on :data:`llmcache.keys.CACHEABLE_ROUTES`)::

    every header value UTF-8 and every control readable? ─no─▶ 400
    body ≤ max_body_bytes? ─no─▶ 413    body budget free? ─no─▶ 429    body read in time? ─no─▶ 408
    JSON object? ─no─▶ 400 on chat/completions (the salt needs one); forward untouched on embeddings
    nested past the parser? ─▶ 400
    policy suspended / non-deterministic / cache off ─▶ forward (bypass)
    no tenant credential and anonymous: Bypass ─▶ forward (bypass)
    key = exact_key(route, query, body, partition (pod namespace), tenant, namespace)
    Cache-Control no-cache? ─────────────────────────────────────────┐
    exact GET (deadline, breaker) ─hit─▶ serve (Age, X-LLMCache-Status: hit)
    identical call in flight here ─▶ its chunks / its entry (hit)     │
    semantic lookup ─hit─▶ serve entry of the match, promote to exact key with its similarity
                           (semantic-hit; not with no-store; later served as a hit only at or
                           below that similarity's threshold)
    only-if-cached ─▶ 504                                             │
    join in-flight call for key ─▶ its chunks / its entry (hit)       ◀┘
    [--single-flight-lease: another pod owns the miss → poll for its entry]
    lead: upstream ─▶ relay chunks while recording ─▶ complete? store (TTL fixed) + semantic add

Every body forwarded upstream on chat/completions carries a ``cache_salt`` derived from the
tenant and partition (``--upstream-cache-salt``), so the model server's prefix cache, and
the ``cached_tokens`` it reports, never cross tenants. A ``POST`` whose path an upstream may
normalise into a cacheable route (``/v1/chat/completions/``, ``//v1/chat/completions``,
``/v1/chat%2Fcompletions``, …: :func:`llmcache.keys.canonical_route`) is served as that route.
``X-LLMCache-*`` request headers are the proxy's and never forwarded.

The request in progress and the steps every path shares (load, serve, count) are in
:mod:`llmcache.proxy.call`; the single-flight miss path is :mod:`llmcache.proxy.misses`.

Redis trouble anywhere turns into ``bypass`` (the answer still comes from the
upstream); it never causes a 5xx. Logs carry the first 12 hex digits of the key
hash, never prompt text or credentials.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from llmcache import keys
from llmcache.proxy import controls, limits, misses, upstream
from llmcache.proxy.call import (
    STATUS_HEADER,
    Call,
    count_answer,
    guarded,
    load_entry,
    salted,
    serve,
    upstream_body,
    upstream_body_waits,
)
from llmcache.proxy.state import STATE, ProxyState

__all__ = ["add_routes", "cacheable", "invalid_header", "passthrough"]

log = logging.getLogger(__name__)

THRESHOLD_HEADER = controls.THRESHOLD_HEADER
NAMESPACE_HEADER = controls.NAMESPACE_HEADER


# ---------------------------------------------------------------------------------------------
# pass-through


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Forward any request untouched, streaming the body both ways."""
    state = request.app[STATE]
    assert state.upstream is not None
    if request.method == "POST":
        route = keys.canonical_route(request.raw_path)
        if route is not None:
            # A cacheable route spelled another way: served as that route (cached, salted, and
            # forwarded to the canonical path), never passed through without the tenant's salt.
            _, sep, query = request.raw_path.partition("?")
            return await serve_cacheable(request, route, upstream_path=route + sep + query)
    try:
        controls.check_encoding(request.headers)
    except controls.InvalidControl as exc:
        return invalid_header(exc)
    headers = upstream.filter_headers(request.headers, to_upstream=True)
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
    return await upstream.relay(request, resp, writes=state.writes)


def invalid_header(exc: controls.InvalidControl) -> web.Response:
    """The 400 for a header the proxy cannot read (a control's value, or any value that is not UTF-8)."""
    return upstream.error_response(400, str(exc), type_="invalid_request_error", code=exc.code)


async def _forward_bypass(request: web.Request, state: ProxyState, body: bytes, *,
                          route: str, namespace: str, upstream_path: str, pooled: bool = False) -> web.StreamResponse:
    """Forward a cacheable-route request without caching it (status ``bypass``); ``body`` as sent upstream.

    ``pooled``: the body asks for no stream (see :func:`_unstreamed`): over the upstream's keep-alive
    pool, as a miss is."""
    assert state.upstream is not None
    state.metrics.count(route, "bypass")
    state.stats.add(namespace, "bypass", policy=state.config().policy_id)
    headers = upstream.Forwarded(request, drop=frozenset())
    t0 = time.perf_counter()
    try:
        resp = await state.upstream.open("POST", upstream_path, headers, body, pooled=pooled)
    except upstream.UpstreamError as exc:
        return upstream.error_response(exc.status, exc.message, type_="upstream_error",
                                       headers={STATUS_HEADER: "bypass"})
    state.metrics.observe_upstream(route, time.perf_counter() - t0)
    return await upstream.relay(request, resp, writes=state.writes, extra_headers={STATUS_HEADER: "bypass"})


# ---------------------------------------------------------------------------------------------
# cacheable routes


def _unstreamed(route: str, body: Mapping[str, Any]) -> bool:
    """Does the request ask for one JSON answer (embeddings, or ``stream`` absent or false), not a stream?"""
    return route == "/v1/embeddings" or body.get("stream") in (None, False)


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
    return await serve_cacheable(request, request.path, upstream_path=request.raw_path)


async def serve_cacheable(request: web.Request, route: str, *, upstream_path: str) -> web.StreamResponse:
    """Serve ``request`` as a ``POST`` on the cacheable ``route``, forwarding misses to ``upstream_path``."""
    state = request.app[STATE]
    if not state.telemetry.recording:  # no exporter: not even a no-op span on the request path
        return (await _cacheable(request, state, route, None, upstream_path))[0]
    span = state.telemetry.tracer.start_span("llmcache.request", attributes={
        "http.request.method": request.method, "url.path": route})
    status = "error"
    http_status = 500
    try:
        response, status = await _cacheable(request, state, route, span, upstream_path)
        http_status = response.status
        return response
    finally:
        span.set_attribute("llmcache.status", status)
        span.set_attribute("http.response.status_code", http_status)
        span.end()


async def _cacheable(request: web.Request, state: ProxyState, route: str, span: Any | None,
                     upstream_path: str) -> tuple[web.StreamResponse, str]:
    try:
        asked = controls.parse(request.headers)
    except controls.InvalidControl as exc:
        state.metrics.count(route, "error")
        return invalid_header(exc), "error"
    cache = state.settings.cache
    limit = cache.max_body_bytes
    length = request.content_length  # (a property that parses the header on every read)
    if length is not None and length > limit:
        state.metrics.count(route, "error")
        return _too_large(limit), "error"
    # Reserve the body's bytes for the whole request (held raw, parsed, forwarded, stored): all of
    # Content-Length now, or a chunked body's bytes as they arrive (limits.read_body).
    reservation = limits.Reservation(state.body_budget)
    if length and not reservation.grow_to(length):
        state.metrics.count(route, "error")
        state.metrics.shed.inc()
        return _overloaded(state), "error"
    try:
        return await _admitted(request, state, route, span, asked, reservation, upstream_path)
    finally:
        reservation.release()


def _overloaded(state: ProxyState, *, headers: Mapping[str, str] | None = None) -> web.Response:
    return upstream.error_response(
        429, f"the proxy holds {state.body_budget.used_bytes} bytes of request bodies already "
             f"(--max-inflight-body-bytes {state.settings.cache.max_inflight_body_bytes}); retry shortly",
        type_="rate_limit_error", code="overloaded", headers={"Retry-After": "1", **(headers or {})})


def _too_large(limit: int) -> web.Response:
    return upstream.error_response(413, f"request body exceeds {limit} bytes (--max-body-bytes)",
                                   type_="invalid_request_error", code="request_too_large")


async def _admitted(request: web.Request, state: ProxyState, route: str, span: Any | None,
                    asked: controls.RequestControls, reservation: limits.Reservation,
                    upstream_path: str) -> tuple[web.StreamResponse, str]:
    cache = state.settings.cache
    namespace = asked.namespace
    read = await limits.read_body(request, limit_bytes=cache.max_body_bytes, timeout_s=cache.body_timeout_s,
                                  reservation=reservation)
    if read.body is None:
        state.metrics.count(route, "error")
        if read.status == 413:
            return _too_large(cache.max_body_bytes), "error"
        if read.status == 429:
            state.metrics.shed.inc()
            return _overloaded(state, headers={"Connection": "close"}), "error"  # the rest of the body is unread
        if read.status == 499:
            return web.Response(status=499), "error"  # nobody to send it to: ends the handler quietly
        return upstream.error_response(408, f"request body not received within {cache.body_timeout_s:g} s "
                                            "(--body-timeout-seconds)", type_="invalid_request_error",
                                       code="request_timeout", headers={"Connection": "close"}), "error"
    raw = read.body
    try:
        body, float_free = keys.parse_body(raw)  # numbers normalised while parsing: the key needs no second walk
    except (ValueError, UnicodeDecodeError):
        body = None
    except RecursionError:
        state.metrics.count(route, "error")
        return _too_deep(), "error"
    if not isinstance(body, dict):
        if salted(state, route):
            # The tenant's cache_salt goes into a JSON object; without one, nothing goes upstream.
            state.metrics.count(route, "error")
            what = "is not valid JSON (UTF-8)" if body is None else "is JSON but not an object"
            return upstream.error_response(400, f"the request body {what}; send a JSON object as the OpenAI API "
                                                "expects", type_="invalid_request_error", code="invalid_json"), "error"
        # Not ours to judge: the upstream answers with its own error, byte for byte.
        return await _forward_bypass(request, state, raw, route=route, namespace=namespace,
                                     upstream_path=upstream_path), "bypass"
    cfg = state.config()
    credential = request.headers.get(cfg.tenant_header)
    tenant = keys.tenant_id(credential, state.tenant_salt)
    # The body as forwarded: built now where building it may fail (as it always was), otherwise by
    # whatever forwards it (Call.raw): a hit forwards nothing.
    forwarded = None if upstream_body_waits(raw, body) else upstream_body(state, cfg, route, raw, body, tenant)
    if cfg.suspend or not (cfg.exact or cfg.semantic) or not _deterministic(route, body, cfg.non_deterministic):
        return await _forward_bypass(request, state, forwarded or upstream_body(state, cfg, route, raw, body, tenant),
                                     route=route, namespace=namespace, upstream_path=upstream_path,
                                     pooled=_unstreamed(route, body)), "bypass"
    if not credential and not cfg.cache_anonymous:
        # Without a credential every caller would share one tenant: never cached unless a policy
        # opts in (spec.scope.anonymous: PerNamespace, or --anonymous per-namespace).
        return await _forward_bypass(request, state, forwarded or upstream_body(state, cfg, route, raw, body, tenant),
                                     route=route, namespace=namespace, upstream_path=upstream_path,
                                     pooled=_unstreamed(route, body)), "bypass"
    query = request.query_string
    try:
        key = keys.exact_key(route, body, tenant=tenant, namespace=namespace, partition=cfg.partition, query=query,
                             normalised=True, float_free=float_free)
    except (ValueError, TypeError):  # NaN/Infinity are not JSON; let the upstream reject them
        return await _forward_bypass(request, state, forwarded or upstream_body(state, cfg, route, raw, body, tenant),
                                     route=route, namespace=namespace, upstream_path=upstream_path,
                                     pooled=_unstreamed(route, body)), "bypass"
    except RecursionError:
        state.metrics.count(route, "error")
        return _too_deep(), "error"
    stream = route != "/v1/embeddings" and body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    # Followers share the leader's raw chunks only when they asked for the same stream options.
    shape = json.dumps(opts, sort_keys=True) if stream else None
    call = Call(request=request, state=state, cfg=cfg, route=route, client_raw=raw, body=body, key=key,
                 tenant=tenant, namespace=namespace, query=query, upstream_path=upstream_path,
                 directives=asked.directives, asked_threshold=asked.similarity_threshold,
                 stream=stream, include_usage=include_usage, stream_shape=shape, _raw=forwarded)
    response = await _lookup_or_fetch(call)
    if span is not None:
        span.set_attribute("llmcache.key", call.log_key)
        if call.similarity is not None:
            span.set_attribute("llmcache.similarity", call.similarity)
        if call.coalesced:
            span.set_attribute("llmcache.coalesced", True)
    return response, call.status


def _too_deep() -> web.Response:
    return upstream.error_response(400, "request JSON is nested too deeply to parse; flatten it",
                                   type_="invalid_request_error", code="json_too_deep")


async def _lookup_or_fetch(call: Call) -> web.StreamResponse:
    try:
        return await _lookup_or_fetch_leased(call)
    finally:
        if call.lease_taken:  # taken in the lookup, then served otherwise (a flight here): give it up
            misses.release_lease(call, call.key)


async def _lookup_or_fetch_leased(call: Call) -> web.StreamResponse:
    state = call.state
    joined = False  # True while this request has looked for a flight to join, with no await since
    if not call.directives.no_cache:
        if call.cfg.exact:
            entry = await load_entry(call, call.key, kind="exact", lease_ms=misses.lookup_lease_ms(call))
            if entry is not None:
                return serve(call, entry, status="hit")
        # An identical request in flight beats a semantic neighbour (and saves the embedding).
        served = await misses.join_flight(call)
        if served is not None:
            return served
        joined = True
        if call.cfg.semantic and state.semantic is not None and call.redis_ok:
            joined = False  # (a flight may have started while the lookup awaited)
            served = await _semantic_lookup(call)
            if served is not None:
                return served
    if call.directives.only_if_cached:
        call.status = "miss"
        count_answer(call, "miss")
        return upstream.error_response(504, "not in the cache and the request says only-if-cached",
                                       type_="cache_miss", code="only_if_cached", headers={STATUS_HEADER: "miss"})
    return await misses.miss(call, join=not joined)


async def _semantic_lookup(call: Call) -> web.StreamResponse | None:
    state = call.state
    parts = call.semantic_parts()
    if parts is None:
        return None
    t0 = time.perf_counter()
    try:
        match = await state.semantic.lookup(parts, threshold=call.similarity_threshold)
    except Exception:
        log.exception("semantic lookup failed for %s", call.log_key)
        match = None
    state.metrics.observe_lookup("semantic", time.perf_counter() - t0)
    # Under a policy's error bound the verifier's consent is not enough (llmcache.proxy.semantic.bound).
    if call.cfg.max_error_rate is not None and (state.bound is None or not await state.bound.admit(call, match)):
        return None
    if match is None:
        return None
    entry = await load_entry(call, match.key_hash, kind="exact")
    if entry is None:
        return None
    # (The matched entry may itself be a promoted match: the answer is then as close as the weaker link.)
    call.similarity = min(float(match.similarity), 1.0 if entry.similarity is None else entry.similarity)
    log.debug("semantic hit %s → %s (%.3f)", call.log_key, keys.short(match.key_hash), call.similarity)
    # Promote: the next identical request is an exact hit where its threshold accepts this match
    # (the entry remembers the similarity). Keep the original creation time so Age and the fixed
    # TTL stay those of the stored answer. no-store: nothing about this exchange is stored.
    remaining_s = int(call.cfg.ttl_s - entry.age_s())
    if remaining_s >= 1 and state.store is not None and not call.directives.no_store:
        store = state.store
        promoted = dataclasses.replace(entry, similarity=call.similarity)
        state.spawn(guarded(state, lambda: store.put(call.key, promoted, ttl_s=remaining_s, group=call.cfg.group)))
    return serve(call, entry, status="semantic-hit")


def add_routes(app: web.Application) -> None:
    """The cacheable routes, then everything else passed through (add :mod:`admin`'s routes first)."""
    r = app.router
    for route in keys.CACHEABLE_ROUTES:
        r.add_post(route, cacheable)
    r.add_route("*", "/{tail:.*}", passthrough)
