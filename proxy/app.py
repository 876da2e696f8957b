"""The proxy application factory: ``create_app(settings)``.

Resources open and close with the app (``cleanup_ctx``), in this order, and
live on :data:`llmcache.proxy.state.STATE`:

1. one pooled ``aiohttp.ClientSession`` to the upstream, and for misses and bypasses without
   ``stream`` keep-alive connections of their own (:mod:`~llmcache.proxy.pool`, ~260,000
   instructions less per request than the session's);
2. one ``redis.asyncio`` client (no client-side retries: the breaker decides),
   the exact store and the optional cross-pod lease; a first PING settles
   ``/readyz`` (reached, or breaker open → bypass). On one Redis over TCP or a Unix
   socket the exact store's lookups and writes go through a pipelined connection of
   their own (:mod:`~llmcache.proxy.resp`, ~15 µs of CPU per command instead of redis-py's ~100);
3. the policy watcher, when a policy source is configured;
4. the semantic cache, when the mode wants it and the module is installed; when Redis (or a
   remote embedder) is not there yet, it keeps starting in the background with backoff
   (0.5 s doubling to 30 s) and the proxy serves exact-only meanwhile;
5. error-bounded caching (judging workers, model refresh), when the semantic cache may run;
6. the stats flusher (pending counters → Redis once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from llmcache import connection
from llmcache.errors import DependencyError
from llmcache.keyspace import Keyspace
from llmcache.proxy import admin, handlers, limits, replicas, resp, routing, semantic
from llmcache.proxy.breaker import Breaker, CacheUnavailable, LoopLag
from llmcache.proxy.exact import RedisExactStore
from llmcache.proxy.limits import BodyBudget
from llmcache.proxy.metrics import ProxyMetrics
from llmcache.proxy.near import NearCache
from llmcache.proxy.policy_watch import PolicyWatcher
from llmcache.proxy.semantic.bound import ErrorBound
from llmcache.proxy.semantic.embedder import Embedder
from llmcache.proxy.settings import ProxySettings, generated_salt
from llmcache.proxy.singleflight import RedisLease
from llmcache.proxy.state import STATE, ProxyState
from llmcache.proxy.telemetry import Telemetry
from llmcache.proxy.upstream import Upstream

__all__ = ["STATE", "create_app"]

log = logging.getLogger(__name__)


#: Redis connections opened at start-up (a first burst of requests finds them ready).
_WARM_CONNECTIONS = 16

#: How long shutdown waits for pending background writes (entries of answers already sent), s.
_SHUTDOWN_GRACE_S = 1.0

#: How often pending stats counters are written to Redis (s).
STATS_FLUSH_INTERVAL_S = 1.0

#: First and longest wait between attempts to start the semantic cache (s).
SEMANTIC_RETRY_MIN_S = 0.5
SEMANTIC_RETRY_MAX_S = 30.0


def create_app(settings: ProxySettings) -> web.Application:
    """Build the proxy application; nothing connects until the app starts.

    Serve it as ``web.run_app`` does, without handler cancellation (aiohttp's default): a client
    hanging up then ends only its own answer, while requests that joined its upstream call
    keep receiving theirs.
    """
    salt = settings.cache.tenant_salt
    if not salt:
        salt = generated_salt()
        log.warning("no --tenant-salt set: generated a random one, so cache entries are private to this "
                    "process; set the same LLMCACHE_TENANT_SALT on every pod that shares this Redis")
    obs = settings.observability
    state = ProxyState(
        settings=settings,
        keyspace=Keyspace(settings.cache.key_prefix, partition=settings.policy.partition),
        tenant_salt=salt,
        metrics=ProxyMetrics(price_input_per_1k=obs.price_input_per_1k, price_output_per_1k=obs.price_output_per_1k),
        telemetry=Telemetry(otlp_endpoint=obs.otlp_endpoint),
        breaker=Breaker(timeout_s=settings.redis.timeout_ms / 1000, failure_threshold=settings.redis.breaker_failures,
                        cooldown_s=settings.redis.breaker_cooldown_s, lag=LoopLag()),
        body_budget=BodyBudget(settings.cache.max_inflight_body_bytes),
        writes=limits.WriteDeadlines(settings.cache.write_timeout_s),
    )
    # The body limit is enforced by the cacheable handler (413 with an OpenAI error body);
    # pass-through bodies are streamed and never held, so aiohttp's own limit is lifted.
    app = web.Application(client_max_size=max(settings.cache.max_body_bytes, 1) * 2, handler_args={
        "max_field_size": 64 * 1024})
    app[STATE] = state
    # Outermost: every answer a handler returns unsent goes out within the write deadline.
    app.middlewares.append(limits.write_deadline_middleware(state.writes))
    app.cleanup_ctx.append(_writes_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_policy_ctx)
    app.cleanup_ctx.append(_semantic_ctx)
    app.cleanup_ctx.append(_bound_ctx)
    app.cleanup_ctx.append(_stats_ctx)
    # Last in, first out: background work (stores, promotions, semantic adds) ends before the
    # resources it uses close.
    app.cleanup_ctx.append(_background_ctx)
    admin.add_routes(app)  # own endpoints before the pipeline's catch-all pass-through
    handlers.add_routes(app)
    return app


async def _writes_ctx(app: web.Application) -> AsyncIterator[None]:
    """The write-deadline watchdog (:class:`llmcache.proxy.limits.WriteDeadlines`)."""
    task = asyncio.get_running_loop().create_task(app[STATE].writes.run(), name="write-deadlines")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    up = state.settings.upstream
    session = Upstream.make_session(pool_size=up.pool_size)
    sources = replicas.parse_sources(up.sources or (up.url,))
    router: routing.Router | None = None
    if len(sources) > 1 or sources[0].kind != "static":
        # Several replicas (or a source that may list several): route between them.
        replica_set = replicas.ReplicaSet(sources, session, refresh_s=up.refresh_s)
        await replica_set.start()
        router = routing.Router(replica_set, mode=up.routing,
                                metrics=routing.RoutingMetrics(state.metrics.registry, replica_set))
    base_url = sources[0].value if router is None else up.url
    upstream = state.upstream = Upstream(session, base_url=base_url, timeout_s=up.timeout_s,
                                         connect_timeout_s=up.connect_timeout_s, router=router,
                                         pool_size=up.pool_size)
    try:
        yield
    finally:
        upstream.close()
        if router is not None:
            await router.replicas.close()
        await session.close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    rs = state.settings.redis
    cluster = connection.is_cluster_url(rs.url)
    client = connection.connect(
        rs.url,
        # Sockets get a generous timeout of their own; the breaker's per-operation deadline
        # (--redis-timeout-ms) is what bounds a request. No retries on one Redis: a retry is the
        # breaker's call. On a cluster one: a command that met a dead master refreshes the
        # topology and goes to the promoted replica (MOVED/ASK are followed either way).
        socket_connect_timeout=max(1.0, rs.timeout_ms / 1000 * 4),
        socket_timeout=max(1.0, rs.timeout_ms / 1000 * 4),
        retry=Retry(NoBackoff(), 1 if cluster else 0),
        health_check_interval=0,
        # redis-py 8 would add a CLIENT MAINT_NOTIFICATIONS round trip to every new connection
        # (managed-cloud failover hints); the breaker already covers reconnects.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    state.redis = client
    # The request path's commands (entry lookup, entry write) on a pipelined connection of their
    # own; TLS and cluster URLs keep redis-py, which handles them.
    # Each command has its own deadline (the breaker's); staleness only reclaims a hung connection, and
    # dropping it fails every command in flight, so it waits far longer than any deadline: a reply that
    # is merely slow on a starved machine must not take 60 requests into bypass with it.
    fast = None
    if resp.supports(rs.url):
        fast = resp.RespClient.from_url(rs.url, connect_timeout_s=max(1.0, rs.timeout_ms / 1000 * 4),
                                        stale_after_s=max(5.0, rs.timeout_ms / 1000 * 20))
    state.store = RedisExactStore(fast if fast is not None else client, keyspace=state.keyspace)
    if fast is not None and rs.near_cache_bytes > 0:
        state.near = state.store.near = NearCache(fast, state.keyspace, max_bytes=rs.near_cache_bytes)
        state.metrics.watch_near(state.near)
        state.near.start()
    if state.settings.cache.single_flight_lease:
        owner = f"{socket.gethostname()}:{os.getpid()}"
        state.lease = RedisLease(fast if fast is not None else client, keyspace=state.keyspace, owner=owner)
    state.spawn(_first_ping(state, client, fast))
    lag = state.breaker.lag
    lag_task = asyncio.get_running_loop().create_task(lag.run()) if lag is not None else None
    try:
        yield
    finally:
        if lag_task is not None:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
        if state.near is not None:
            await state.near.aclose()
            state.near = None
            state.metrics.watch_near(None)
        await _cancel_background(state)
        with contextlib.suppress(Exception):
            await client.aclose()
        if fast is not None:
            await fast.aclose()


async def _cancel_background(state: ProxyState) -> None:
    for task in list(state.background):
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*state.background, return_exceptions=True)


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[STATE]
    if state.background:
        # Answers already sent are worth keeping: give their pending writes a moment on shutdown.
        await asyncio.wait(list(state.background), timeout=_SHUTDOWN_GRACE_S)
    await _cancel_background(state)


async def _first_ping(state: ProxyState, client: redis.asyncio.Redis, fast: resp.RespClient | None) -> None:
    """Settle readiness: Redis answered, or the breaker opened (the proxy then bypasses)."""
    # A first connect may take longer than a cached GET; give it 1 s per try.
    for _ in range(state.breaker.failure_threshold):
        try:
            await state.breaker.call(client.ping, timeout_s=1.0)
            log.info("redis reachable at %s", connection.redact(state.settings.redis.url))
            # Open a few pooled connections now: a burst of first requests would otherwise each pay
            # a connection handshake inside the per-operation deadline and could trip the breaker.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(client.ping() for _ in range(_WARM_CONNECTIONS)),
                                                      *([fast.ping()] if fast is not None else [])), 2.0)
            return
        except CacheUnavailable:
            await asyncio.sleep(0.05)
    log.warning("redis at %s is unreachable: serving in bypass mode until it answers",
                connection.redact(state.settings.redis.url))
    state.breaker.settled = True


async def _policy_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    source = state.settings.policy
    if not source.enabled:
        yield
        return
    watcher = PolicyWatcher(
        state.redis, keyspace=state.keyspace, namespace=source.pod_namespace or "default",
        pod_name=source.pod_name or socket.gethostname(), labels_file=source.pod_labels_file,
        policy_file=source.policy_file, on_change=_policy_changed)
    await watcher.start()
    state.policy_watcher = watcher
    try:
        yield
    finally:
        state.policy_watcher = None
        await watcher.stop()


def _policy_changed(doc: Any) -> None:
    if doc is None:
        log.info("no CachePolicy selects this pod: CLI settings apply")
    else:
        log.info("applying CachePolicy %s (generation %s, config %s)", doc.id, doc.generation, doc.config_hash)


async def _semantic_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    settings = state.settings
    if not settings.semantic_wanted:
        yield
        return
    starter = _SemanticStarter(state)
    # One attempt before serving (a healthy start has the semantic cache from the first request);
    # if Redis or the embedder is not there yet, keep trying in the background.
    if not await starter.attempt():
        starter.task = asyncio.get_running_loop().create_task(starter.run(), name="semantic-start")
    try:
        yield
    finally:
        await starter.close()


async def _bound_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    settings = state.settings
    if not settings.semantic_wanted or state.redis is None or state.store is None:
        yield
        return
    bound = ErrorBound(redis=state.redis, store=state.store, breaker=state.breaker, keyspace=state.keyspace,
                       settings=settings.judge, metrics=state.metrics)
    bound.start()
    state.bound = bound
    try:
        yield
    finally:
        state.bound = None
        await bound.close()


class _SemanticStarter:
    """Start the semantic cache, retrying with backoff until it works (exact-only meanwhile).

    A sidecar often starts before Redis; the semantic cache must come up when Redis does, not
    stay off for the life of the process. The embedder is loaded once and reused by every attempt.
    """

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.embedder: Embedder | None = None
        self.task: asyncio.Task[None] | None = None
        self.num_attempts = 0
        self._give_up = False

    async def attempt(self) -> bool:
        """One try; True when the semantic cache is running (or cannot ever run: no point retrying)."""
        state = self.state
        sem_settings = state.settings.semantic
        self.num_attempts += 1
        try:
            if self.embedder is None:
                self.embedder = await semantic.make_embedder(sem_settings)
        except DependencyError as exc:
            log.error("semantic cache cannot start: %s; exact cache only", exc)
            return True
        except Exception as exc:  # noqa: BLE001 - a remote embedder may come up later
            self._warn("embedder", exc)
            return False
        try:
            state.semantic = await semantic.SemanticCache.create(state.redis, settings=sem_settings,
                                                               keyspace=state.keyspace, embedder=self.embedder)
        except Exception as exc:  # noqa: BLE001 - Redis away, index not creatable yet: retry
            self._warn("vector index", exc)
            return False
        if self.num_attempts > 1:
            log.warning("semantic cache started after %d attempts", self.num_attempts)
        return True

    def _warn(self, part: str, exc: BaseException) -> None:
        # First failure loudly, then quietly: a long outage must not flood the log.
        level = logging.WARNING if self.num_attempts == 1 else logging.DEBUG
        log.log(level, "semantic cache not started yet (%s: %s: %s): exact cache only; retrying with backoff",
                part, type(exc).__name__, exc)

    async def run(self) -> None:
        delay_s = SEMANTIC_RETRY_MIN_S
        while True:
            await asyncio.sleep(delay_s)
            if await self.attempt():
                return
            delay_s = min(delay_s * 2, SEMANTIC_RETRY_MAX_S)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        sem, self.state.semantic = self.state.semantic, None
        if sem is not None:
            with contextlib.suppress(Exception):
                await sem.close()
        if self.embedder is not None:
            with contextlib.suppress(Exception):
                await self.embedder.close()


async def _stats_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(_flush_stats_forever(state, stop))
    try:
        yield
    finally:
        # The event, not only the cancel: a cancel that lands while a flush times out can be lost
        # (asyncio.timeout in the breaker, Python 3.11), and the loop would sleep on forever while
        # the app's cleanup waits for it.
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if state.redis is not None and state.stats:
            client = state.redis
            with contextlib.suppress(CacheUnavailable):
                await state.breaker.call(lambda: state.stats.flush(client, keyspace=state.keyspace), timeout_s=1.0)


async def _flush_stats_forever(state: ProxyState, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATS_FLUSH_INTERVAL_S)
        if stop.is_set():
            return
        client = state.redis
        if client is None or not state.stats or state.breaker.is_open:
            continue
        with contextlib.suppress(CacheUnavailable):
            # Awaited in this iteration; bound as a default all the same (one loop variable per call).
            await state.breaker.call(lambda client=client: state.stats.flush(client, keyspace=state.keyspace),
                                     timeout_s=1.0)
