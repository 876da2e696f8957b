"""The proxy's own endpoints: health, readiness, metrics, stats and invalidation.

These answer about the proxy itself and never reach the upstream; the request
pipeline is :mod:`llmcache.proxy.handlers` (lookup), :mod:`~llmcache.proxy.misses` (single flight, store).

=============================  ==========================================================
``GET /healthz``               the process answers (liveness)
``GET /readyz``                readiness for a Kubernetes probe
``GET /metrics``               Prometheus text format
``GET /llmcache/v1/stats``     per-namespace counters from Redis plus this process's view (admin token)
``POST /llmcache/v1/invalidate``  delete entries (needs ``--admin-token``)
=============================  ==========================================================

Both act on this proxy's partition only (its pod namespace, :attr:`llmcache.keyspace.Keyspace.partition`):
a proxy can neither count nor delete another namespace's entries, and ``{"all": true}`` means all of
its own. Purges across namespaces belong to the operator (a CachePolicy's purge-on-delete).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import redis.exceptions
from aiohttp import web
from yarl import URL

from llmcache import connection, keys, stats
from llmcache.keyspace import DEFAULT_GROUP, LOCAL_PARTITION, SHARDS, ZSET_KINDS, Keyspace, by_shard
from llmcache.proxy import controls, upstream
from llmcache.proxy.breaker import CacheUnavailable
from llmcache.proxy.metrics import CONTENT_TYPE_LATEST
from llmcache.proxy.state import STATE, ProxyState

__all__ = ["add_routes", "healthz", "invalidate", "metrics", "readyz", "stats_endpoint"]

log = logging.getLogger(__name__)

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


#: How long one upstream reachability answer is reused (s): ``/readyz`` is unauthenticated, so
#: a flood of probes must not turn into a flood of connections to the upstream.
_UPSTREAM_PROBE_TTL_S = 1.0
#: Deadline of one upstream TCP connect and of one Redis PING made for ``/readyz`` (s).
_PROBE_TIMEOUT_S = 1.0


@dataclass(slots=True)
class UpstreamProbe:
    """The last answer to "does the upstream accept connections?", shared by concurrent probes."""

    checked_at: float = float("-inf")
    problem: str | None = None
    """``None`` when the last connect succeeded, else why it failed (``connection refused``)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


UPSTREAM_PROBE = web.AppKey("llmcache_upstream_probe", UpstreamProbe)


async def _upstream_problem(state: ProxyState, probe: UpstreamProbe) -> str | None:
    """``None`` when a TCP connection to the upstream opens within the deadline, else the reason."""
    async with probe.lock:
        now = time.monotonic()
        if now - probe.checked_at < _UPSTREAM_PROBE_TTL_S:
            return probe.problem
        url = URL(state.upstream.probe_url() if state.upstream is not None else state.settings.upstream.url)
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                _reader, writer = await asyncio.open_connection(url.host, url.port)
            writer.close()
            probe.problem = None
        except TimeoutError:
            probe.problem = f"no connection within {_PROBE_TIMEOUT_S:.0f} s"
        except OSError as exc:
            probe.problem = (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__).lower()
        probe.checked_at = time.monotonic()
        return probe.problem


async def _redis_problem(state: ProxyState) -> str | None:
    """``None`` when Redis answers a PING (through the breaker, so it counts like any operation)."""
    client = state.redis
    if client is None:
        return "not configured"
    if state.breaker.is_open:  # no network while the breaker is open: its own probe decides
        return "circuit breaker open after repeated failures"
    try:
        await state.breaker.call(client.ping, timeout_s=_PROBE_TIMEOUT_S)
    except CacheUnavailable as exc:
        return str(exc)
    return None


async def readyz(request: web.Request) -> web.Response:
    """Readiness in plain words; the HTTP status is what a Kubernetes readiness probe acts on.

    ==========================================================  ====  ===============================
    ``status``                                                  HTTP  meaning
    ==========================================================  ====  ===============================
    ``ok``                                                      200   Redis and the upstream answer
    ``degraded: redis unreachable, serving without cache``      200   every request is a ``bypass``
                                                                      to the upstream (fail open)
    ``upstream unreachable``                                    503   only cache hits could be
                                                                      answered; take the pod out of
                                                                      Service endpoints until it is back
    ``starting: connecting to redis``                           503   the first Redis PING is pending
    ==========================================================  ====  ===============================

    ``redis`` and ``upstream`` say ``ok``, ``unreachable: <why>`` or ``connecting``. Each call
    checks both (a Redis PING under the breaker, a TCP connect to the upstream reused for 1 s),
    so the answer follows a part that goes away or comes back. Liveness is ``/healthz``: none
    of these states is fixed by restarting the proxy.
    """
    state = request.app[STATE]
    if not state.breaker.settled:
        return web.json_response({"status": "starting: connecting to redis", "redis": "connecting",
                                  "upstream": "not checked yet"}, status=503)
    redis_problem, upstream_problem = await asyncio.gather(
        _redis_problem(state), _upstream_problem(state, request.app[UPSTREAM_PROBE]))
    body = {"redis": "ok" if redis_problem is None else f"unreachable: {redis_problem}",
            "upstream": "ok" if upstream_problem is None else f"unreachable: {upstream_problem}"}
    if upstream_problem is not None:
        status = "upstream unreachable" + ("" if redis_problem is None else "; redis unreachable too")
        return web.json_response({"status": status, **body}, status=503)
    if redis_problem is not None:
        return web.json_response({"status": "degraded: redis unreachable, serving without cache", **body})
    return web.json_response({"status": "ok", **body})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.breaker_open.set(1 if state.breaker.is_open else 0)
    state.metrics.observe_semantic(wanted=state.settings.semantic_wanted,
                                   stats=state.semantic.stats() if state.semantic is not None else None)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


#: Deadline of the admin endpoints' Redis reads (s); they run outside the breaker.
ADMIN_REDIS_TIMEOUT_S = 2.0


async def stats_endpoint(request: web.Request) -> web.Response:
    """Per-namespace counters from Redis (all proxies) plus this process's view; needs the admin token.

    The reads scan Redis, so they run outside the breaker with their own deadline: a slow scan
    must not count as a Redis failure and open the breaker for the cache traffic.
    """
    state = request.app[STATE]
    refused = _admin_refusal(request, state, what="stats")
    if refused is not None:
        return refused
    out: dict[str, Any] = {"process": {"breaker": state.breaker.state, "in_flight": len(state.flights),
                                       "coalesced": state.flights.num_coalesced_total,
                                       "policy": state.config().policy_id,
                                       "body_bytes_in_flight": state.body_budget.used_bytes,
                                       "shed": state.body_budget.num_shed_total}}
    if state.semantic is not None:
        try:
            # The threshold in effect: the applied CachePolicy's, else the flag's.
            out["semantic"] = {**state.semantic.stats(), "threshold": state.config().similarity_threshold}
        except Exception:  # noqa: BLE001
            out["semantic"] = None
    if state.bound is not None:
        out["error_bound"] = state.bound.stats()
    client = state.redis
    if client is None:
        out["namespaces"] = None
        return web.json_response(out)
    if state.breaker.is_open:
        out["namespaces"] = None
        out["error"] = "redis unavailable (circuit breaker open); counters are kept in memory until it is back"
        return web.json_response(out)
    try:
        async with asyncio.timeout(ADMIN_REDIS_TIMEOUT_S):
            await state.stats.flush(client, keyspace=state.keyspace)
            out["namespaces"] = await stats.read_stats(client, keyspace=state.keyspace)
    except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
        out["namespaces"] = None
        out["error"] = f"redis unavailable ({type(exc).__name__}); counters are kept in memory until it is back"
    return web.json_response(out)


def _admin_refusal(request: web.Request, state: ProxyState, *, what: str) -> web.Response | None:
    """``None`` when the request carries the admin token; else the 403 (no token set) or 401 to send."""
    try:
        controls.check_encoding(request.headers)  # the token is compared as UTF-8 bytes
    except controls.InvalidControl as exc:
        return upstream.error_response(400, str(exc), type_="invalid_request_error", code=exc.code)
    token = state.settings.observability.admin_token
    if not token:
        return upstream.error_response(403, f"{what} is disabled: start the proxy with --admin-token "
                                            "(or LLMCACHE_ADMIN_TOKEN)", type_="permission_error")
    if not _admin_ok(request, token):
        return upstream.error_response(401, f"{what} needs the admin token as 'Authorization: Bearer …' "
                                            "or X-LLMCache-Admin-Token", type_="authentication_error")
    return None


def _admin_ok(request: web.Request, token: str) -> bool:
    given = request.headers.get("X-LLMCache-Admin-Token")
    if given is None:
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), token.encode())


#: The body of ``POST /llmcache/v1/invalidate``: field → (JSON type, what it matches).
INVALIDATE_FIELDS: dict[str, tuple[type, str]] = {
    "tenant": (str, "the tenant credential as clients send it in the tenant header "
                    "('Bearer sk-…' for Authorization; a bare 'sk-…' is read as 'Bearer sk-…' too)"),
    "tenant_id": (str, "the salted tenant id (32 hex digits, as /llmcache/v1/stats and logs show it)"),
    "namespace": (str, "the X-LLMCache-Namespace the entries were stored under ('' = none)"),
    "model": (str, "the model name stored with the answer"),
    "all": (bool, "true deletes every entry of this proxy's partition, its pod namespace (no other field allowed)"),
}


class InvalidRequest(ValueError):
    """The invalidation body does not follow :data:`INVALIDATE_FIELDS`; the message says how."""


def parse_invalidate(spec: Any, *, tenant_header: str, salt: bytes) -> dict[str, frozenset[str]]:
    """Turn an invalidation body into entry-field filters (field → accepted values, combined with AND).

    An empty result means ``{"all": true}``. Raises :class:`InvalidRequest` for anything else:
    not an object, unknown fields, wrong types, nothing named, or ``all`` mixed with filters.
    """
    example = '{"namespace": "docs"}, {"tenant": "Bearer sk-…", "model": "gpt-4o"} or {"all": true}'
    if not isinstance(spec, dict):
        raise InvalidRequest(f"body must be a JSON object such as {example}")
    unknown = sorted(set(spec) - set(INVALIDATE_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                             f"{', '.join(INVALIDATE_FIELDS)}")
    for name, value in spec.items():
        kind = INVALIDATE_FIELDS[name][0]
        if not isinstance(value, kind) or (kind is str and not value and name != "namespace"):
            want = "true" if kind is bool else "a non-empty string" if name != "namespace" else "a string"
            raise InvalidRequest(f"field {name!r} must be {want}: {INVALIDATE_FIELDS[name][1]}")
    if "all" in spec:
        if spec["all"] is not True or len(spec) > 1:
            raise InvalidRequest('{"all": true} deletes everything and takes no other field; '
                                 "to delete selectively, name tenant, tenant_id, namespace and/or model")
        return {}
    if not spec:
        raise InvalidRequest(f"name what to invalidate, for example {example}")
    if "tenant" in spec and "tenant_id" in spec:
        raise InvalidRequest("give tenant or tenant_id, not both")
    filters: dict[str, frozenset[str]] = {}
    if "tenant" in spec:
        credential = spec["tenant"]
        candidates = {credential}
        if tenant_header.lower() == "authorization" and not credential.lower().startswith("bearer "):
            candidates.add(f"Bearer {credential}")
        filters["tenant"] = frozenset(keys.tenant_id(c, salt) for c in candidates)
    if "tenant_id" in spec:
        filters["tenant"] = frozenset({spec["tenant_id"]})
    for name in ("namespace", "model"):
        if name in spec:
            filters[name] = frozenset({spec[name]})
    return filters


async def invalidate(request: web.Request) -> web.Response:
    """Delete the entries that match every field of the body (:data:`INVALIDATE_FIELDS`), or all.

    Requires the admin token (``Authorization: Bearer …`` or ``X-LLMCache-Admin-Token``).
    Acts on this proxy's partition only (see the module docstring).
    Answers ``{"deleted": N, "scanned": M, "matched": {...}}`` where ``matched`` shows the
    filters as applied (tenants as their salted ids, never the credential); 400 names the
    field that is wrong.
    """
    state = request.app[STATE]
    refused = _admin_refusal(request, state, what="invalidation")
    if refused is not None:
        return refused
    try:
        spec = await request.json()
    except ValueError:
        spec = None
    try:
        filters = parse_invalidate(spec, tenant_header=state.config().tenant_header, salt=state.tenant_salt)
    except InvalidRequest as exc:
        return upstream.error_response(400, str(exc), type_="invalid_request_error")
    if state.redis is None:
        return upstream.error_response(503, "redis is not configured", type_="unavailable")
    try:
        deleted, scanned = await _invalidate(state, state.redis, filters)
    except (redis.exceptions.RedisError, OSError) as exc:
        return upstream.error_response(503, f"redis unavailable ({type(exc).__name__}); retry when it is back",
                                       type_="unavailable")
    log.info("invalidated %d of %d entries (filters: %s)", deleted, scanned, sorted(filters) or "all")
    matched: dict[str, Any] = {"all": True} if not filters else {
        ("tenant_id" if k == "tenant" else k): sorted(v) if k == "tenant" else next(iter(v))
        for k, v in sorted(filters.items())}
    return web.json_response({"deleted": deleted, "scanned": scanned, "matched": matched})


async def _partition_groups(state: ProxyState, client: redis.asyncio.Redis) -> list[str]:
    """The eviction groups this proxy's partition writes: ``_default``, the one in effect, and every policy
    published for its namespace (pods of one namespace apply only that namespace's policies)."""
    groups = {DEFAULT_GROUP, state.config().group}
    partition = state.keyspace.partition
    if partition != LOCAL_PARTITION:
        names = await client.hkeys(state.keyspace.policies(partition))
        groups.update(f"{partition}/{connection.as_text(n)}" for n in names)
    return sorted(groups)


async def _invalidate(state: ProxyState, client: redis.asyncio.Redis,
                      filters: Mapping[str, frozenset[str]]) -> tuple[int, int]:
    """Delete this partition's entries that match; returns (deleted, entries looked at).

    The entries are listed from the partition's eviction bookkeeping (the ``lru`` rows of each of
    :func:`_partition_groups`, shard by shard), never by ``SCAN``: that would list every
    partition's keys, and a namespace's Redis user may not run it. Each entry must also say it
    belongs to this partition. Entries whose bookkeeping is gone (a CachePolicy deleted without
    purge-on-delete drops it) are not listed; they expire with their TTL.
    """
    ks = state.keyspace
    groups = await _partition_groups(state, client)
    deleted = looked = 0
    seen: set[str] = set()
    batch: list[str] = []

    async def flush() -> None:
        nonlocal deleted, looked
        if not batch:
            return
        values = await connection.mget(client, [ks.entry(h) for h in batch])
        victims: list[str] = []
        for key_hash, value in zip(batch, values, strict=True):
            if value is None:
                continue  # expired: the operator prunes its rows
            looked += 1
            try:
                meta = json.loads(value)
            except ValueError:
                victims.append(key_hash)  # unreadable entries are garbage anyway
                continue
            if not isinstance(meta, dict) or meta.get("partition") != ks.partition:
                continue  # not an entry this partition stored: never ours to delete
            if all(str(meta.get(k, "")) in v for k, v in filters.items()):
                victims.append(key_hash)
        if victims:
            deleted += await client.unlink(*[ks.entry(h) for h in victims])
            await _forget_bookkeeping(client, ks, victims, groups=tuple(groups))
            if state.semantic is not None:
                for key_hash in victims:
                    try:
                        await state.semantic.delete(key_hash)
                    except Exception:
                        log.exception("semantic delete failed")
        batch.clear()

    # Shard by shard (a member is in the same shard in every group): ``seen`` holds one shard's worth.
    for shard in SHARDS:
        seen.clear()
        for group in groups:
            async for member, _score in client.zscan_iter(ks.group(group, "lru", shard), count=1000):
                key_hash = connection.as_text(member)
                if key_hash in seen:
                    continue
                seen.add(key_hash)
                batch.append(key_hash)
                if len(batch) >= 500:
                    await flush()
    await flush()
    return deleted, looked


async def _forget_bookkeeping(client: redis.asyncio.Redis, ks: Keyspace, key_hashes: list[str], *,
                              groups: tuple[str, ...]) -> None:
    """Drop eviction rows of deleted entries in the groups this proxy writes (the operator trims the rest)."""
    shards = by_shard(key_hashes)
    async with client.pipeline(transaction=False) as pipe:
        for group in set(groups):
            for shard, members in shards.items():
                for kind in ZSET_KINDS:
                    pipe.zrem(ks.group(group, kind, shard), *members)
                pipe.hdel(ks.group(group, "size", shard), *members)
        await pipe.execute()


def add_routes(app: web.Application) -> None:
    """Register the own endpoints; call before :func:`llmcache.proxy.handlers.add_routes` (its catch-all)."""
    app[UPSTREAM_PROBE] = UpstreamProbe()
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/llmcache/v1/stats", stats_endpoint)
    r.add_post("/llmcache/v1/invalidate", invalidate)
