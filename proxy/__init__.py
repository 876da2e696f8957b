"""The caching sidecar (``llmcache proxy``): an aiohttp app in front of an OpenAI-compatible upstream.

Modules (import them directly; this package imports nothing so ``llmcache proxy --help`` stays fast):

- :mod:`~llmcache.proxy.app` — ``create_app(settings)``, resources in ``cleanup_ctx``
- :mod:`~llmcache.proxy.settings` — ``ProxySettings`` (one dataclass per concern)
- :mod:`~llmcache.proxy.state` — ``ProxyState`` (what handlers share) and the ``EffectiveConfig`` of a request
- :mod:`~llmcache.proxy.handlers` — admission, pass-through, exact and semantic lookup
- :mod:`~llmcache.proxy.call` — the request in progress: load, serve, count (every path shares these)
- :mod:`~llmcache.proxy.misses` — single flight: lead the upstream call, follow it, store its answer
- :mod:`~llmcache.proxy.admin` — own endpoints: health, readiness, metrics, stats, invalidation
- :mod:`~llmcache.proxy.upstream` — pass-through, hop-by-hop hygiene, 502/504
- :mod:`~llmcache.proxy.exact` — ``ExactStore`` protocol, versioned JSON entries in Redis
- :mod:`~llmcache.proxy.streaming` — SSE record while relaying, replay of stored answers
- :mod:`~llmcache.proxy.singleflight` — in-process flights, optional cross-pod Redis lease
- :mod:`~llmcache.proxy.breaker` — per-operation deadline and circuit breaker (fail open)
- :mod:`~llmcache.proxy.cachecontrol` — request ``Cache-Control`` directives
- :mod:`~llmcache.proxy.controls` — every request control header, checked once (400 names the header)
- :mod:`~llmcache.proxy.limits` — request-body budget and deadlines
- :mod:`~llmcache.proxy.metrics`, :mod:`~llmcache.proxy.telemetry` — Prometheus, OpenTelemetry
- :mod:`~llmcache.proxy.policy_watch` — the CachePolicy that selects this pod, from Redis
- :mod:`~llmcache.proxy.semantic` — the semantic cache, a sub-package behind one facade (``SemanticCache``)
"""
