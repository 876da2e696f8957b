"""The proxy's own endpoints: health, readiness, metrics, stats and invalidation.

These answer about the proxy itself and never reach the upstream; the request
pipeline (lookup, single flight, store) is :mod:`llmcache.proxy.handlers`.

=============================  ==========================================================
``GET /healthz``               the process answers (liveness)
``GET /readyz``                readiness for a Kubernetes probe
``GET /metrics``               Prometheus text format
``GET /llmcache/v1/stats``     per-namespace counters from Redis plus this process's view
``POST /llmcache/v1/invalidate``  delete entries (needs ``--admin-token``)
=============================  ==========================================================
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio
import redis.exceptions
from aiohttp import web

from llmcache import connection, keys, stats
from llmcache.keyspace import DEFAULT_GROUP, Keyspace, shard_of
from llmcache.proxy import handlers, upstream
from llmcache.proxy.breaker import CacheUnavailable
from llmcache.proxy.metrics import CONTENT_TYPE_LATEST

__all__ = ["add_routes", "healthz", "readyz", "metrics", "stats_endpoint", "invalidate"]

log = logging.getLogger(__name__)

STATE = handlers.STATE
ProxyState = handlers.ProxyState


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 once Redis answered or the breaker settled on bypass: either way requests get answers."""
    state = request.app[STATE]
    if not state.breaker.settled:
        return web.json_response({"status": "starting", "redis": "connecting"}, status=503)
    return web.json_response({"status": "ready", "redis": state.breaker.state})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.breaker_open.set(1 if state.breaker.is_open else 0)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats_endpoint(request: web.Request) -> web.Response:
    """Per-namespace counters from Redis (all proxies) plus this process's view."""
    state = request.app[STATE]
    out: dict[str, Any] = {"process": {"breaker": state.breaker.state, "in_flight": len(state.flights),
                                       "coalesced": state.flights.num_coalesced_total,
                                       "policy": state.config().policy_id}}
    if state.semantic is not None:
        try:
            out["semantic"] = state.semantic.stats()
        except Exception:  # noqa: BLE001
            out["semantic"] = None
    client = state.redis
    if client is None:
        out["namespaces"] = None
        return web.json_response(out)
    try:
        await state.breaker.call(lambda: state.stats.flush(client, keyspace=state.keyspace), timeout_s=2.0)
        out["namespaces"] = await state.breaker.call(lambda: stats.read_stats(client, keyspace=state.keyspace),
                                                     timeout_s=2.0)
    except CacheUnavailable:
        out["namespaces"] = None
        out["error"] = "redis unavailable; counters are kept in memory until it is back"
    return web.json_response(out)


def _admin_ok(request: web.Request, token: str) -> bool:
    given = request.headers.get("X-LLMCache-Admin-Token")
    if given is None:
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), token.encode())


async def invalidate(request: web.Request) -> web.Response:
    """Delete entries by ``tenant`` (credential as sent) / ``tenant_id`` / ``namespace`` / ``model``, or ``all``.

    Filters combine with AND; ``{"all": true}`` deletes every entry under the key prefix.
    Requires the admin token (``Authorization: Bearer …`` or ``X-LLMCache-Admin-Token``).
    """
    state = request.app[STATE]
    token = state.settings.observability.admin_token
    if not token:
        return upstream.error_response(403, "invalidation is disabled: start the proxy with --admin-token "
                                            "(or LLMCACHE_ADMIN_TOKEN)", type_="permission_error")
    if not _admin_ok(request, token):
        return upstream.error_response(401, "invalidation needs the admin token as 'Authorization: Bearer …'",
                                       type_="authentication_error")
    try:
        spec = await request.json()
    except ValueError:
        spec = None
    if not isinstance(spec, dict):
        return upstream.error_response(400, "body must be a JSON object such as {\"namespace\": \"docs\"} "
                                            "or {\"all\": true}", type_="invalid_request_error")
    filters: dict[str, str] = {}
    if isinstance(spec.get("tenant"), str):
        filters["tenant"] = keys.tenant_id(spec["tenant"], state.tenant_salt)
    if isinstance(spec.get("tenant_id"), str):
        filters["tenant"] = spec["tenant_id"]
    for name in ("namespace", "model"):
        if isinstance(spec.get(name), str):
            filters[name] = spec[name]
    if not filters and spec.get("all") is not True:
        return upstream.error_response(400, "name what to invalidate: tenant, tenant_id, namespace, model, "
                                            "or {\"all\": true}", type_="invalid_request_error")
    if state.redis is None:
        return upstream.error_response(503, "redis is not configured", type_="unavailable")
    try:
        deleted = await _invalidate(state, state.redis, filters)
    except (redis.exceptions.RedisError, OSError) as exc:
        return upstream.error_response(503, f"redis unavailable ({type(exc).__name__}); retry when it is back",
                                       type_="unavailable")
    log.info("invalidated %d entries (filters: %s)", deleted, sorted(filters))
    return web.json_response({"deleted": deleted, "filters": sorted(filters)})


async def _invalidate(state: ProxyState, client: redis.asyncio.Redis, filters: Mapping[str, str]) -> int:
    ks = state.keyspace
    deleted = 0
    batch: list[bytes] = []

    async def flush() -> None:
        nonlocal deleted
        if not batch:
            return
        victims: list[bytes] = []
        if filters:
            values = await connection.mget(client, batch)
            for key, value in zip(batch, values, strict=True):
                if value is None:
                    continue
                try:
                    meta = json.loads(value)
                except ValueError:
                    victims.append(key)  # unreadable entries are garbage anyway
                    continue
                if all(str(meta.get(k, "")) == v for k, v in filters.items()):
                    victims.append(key)
        else:
            victims = list(batch)
        if victims:
            deleted += await client.unlink(*victims)
            await _forget_bookkeeping(client, ks, [ks.key_hash_of(k) for k in victims],
                                      groups=(DEFAULT_GROUP, state.config().group))
            if state.semantic is not None:
                for key in victims:
                    try:
                        await state.semantic.delete(ks.key_hash_of(key))
                    except Exception:  # noqa: BLE001
                        log.exception("semantic delete failed")
        batch.clear()

    # SCAN on an admin path (a cluster client scans every master), never on a request's path.
    async for key in client.scan_iter(match=ks.entry_pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await flush()
    await flush()
    return deleted


async def _forget_bookkeeping(client: redis.asyncio.Redis, ks: Keyspace, key_hashes: list[str], *,
                              groups: tuple[str, ...]) -> None:
    """Drop eviction rows of deleted entries in the groups this proxy writes (the operator trims the rest)."""
    by_shard: dict[str, list[str]] = {}
    for h in key_hashes:
        by_shard.setdefault(shard_of(h), []).append(h)
    async with client.pipeline(transaction=False) as pipe:
        for group in set(groups):
            for shard, members in by_shard.items():
                for kind in ("lru", "lfu", "ctime"):
                    pipe.zrem(ks.group(group, kind, shard), *members)
                pipe.hdel(ks.group(group, "size", shard), *members)
        await pipe.execute()

def add_routes(app: web.Application) -> None:
    """Register the own endpoints; call before :func:`llmcache.proxy.handlers.add_routes` (its catch-all)."""
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/llmcache/v1/stats", stats_endpoint)
    r.add_post("/llmcache/v1/invalidate", invalidate)
