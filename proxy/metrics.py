"""Prometheus metrics of one proxy process (its own registry, so tests can run several apps).

=========================================  ==========================================================
``llmcache_requests_total``                requests by ``route`` and ``cache_status`` (hit, semantic-hit,
                                           miss, bypass, error)
``llmcache_lookup_seconds``                cache lookup latency by ``kind`` (exact, semantic)
``llmcache_upstream_seconds``              upstream time to response headers by ``route``
``llmcache_served_bytes_total``            answer bytes served from the cache
``llmcache_served_tokens_total``           tokens served from the cache by ``kind`` (prompt, completion)
``llmcache_saved_usd_total``               estimated money saved (``--price-*-per-1k``)
``llmcache_coalesced_total``               requests that joined another request's upstream call
``llmcache_redis_failures_total``          Redis operations that failed, timed out or were skipped
                                           because the breaker was open
``llmcache_breaker_open``                  1 while the Redis circuit breaker is open
``llmcache_semantic_up``                   1 while the semantic cache runs; 0 while the mode or the policy
                                           watch wants it but it is not running (embedder or Redis
                                           unreachable)
``llmcache_semantic_failures_total``       semantic lookups that failed open (embedder/index error or
                                           deadline): those requests were served exact-only
``llmcache_semantic_bounded``              error-bounded caching, by ``policy`` (group): 1 once judged
                                           outcomes certify the bound, 0 while learning
``llmcache_semantic_error_rate``           estimated wrong-answer rate of the semantic hits served under
                                           the bound, by ``policy`` (all sidecars' judgements)
``llmcache_semantic_error_rate_upper``     its upper bound at 95 % confidence
``llmcache_semantic_judged_samples``       judged candidates of the policy, all sidecars
``llmcache_semantic_judged_total``         judgements made here, by ``policy`` and ``outcome`` (right, wrong)
``llmcache_semantic_explorations_total``   would-be hits sent upstream to be judged (extra upstream calls)
``llmcache_semantic_hits_gained_total``    hits served that one certified similarity threshold would not serve
``llmcache_semantic_judge_failures_total`` judgements not made, by ``reason`` (queue_full, rate_limited,
                                           timeout, judge, error): judging fails open
=========================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ProxyMetrics"]

_LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_UPSTREAM_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ProxyMetrics:
    """All proxy metrics on a private registry; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, *, price_input_per_1k: float = 0.0, price_output_per_1k: float = 0.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.price_input_per_1k = price_input_per_1k
        self.price_output_per_1k = price_output_per_1k
        self.requests = Counter("llmcache_requests", "Proxied requests by route and cache status",
                                ["route", "cache_status"], registry=r)
        self.lookup_seconds = Histogram("llmcache_lookup_seconds", "Cache lookup latency", ["kind"],
                                        buckets=_LOOKUP_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("llmcache_upstream_seconds", "Upstream latency to response headers",
                                          ["route"], buckets=_UPSTREAM_BUCKETS, registry=r)
        self.served_bytes = Counter("llmcache_served_bytes", "Answer bytes served from the cache", registry=r)
        self.served_tokens = Counter("llmcache_served_tokens", "Tokens served from the cache", ["kind"],
                                     registry=r)
        self._prompt_tokens = self.served_tokens.labels("prompt")
        self._completion_tokens = self.served_tokens.labels("completion")
        self.saved_usd = Counter("llmcache_saved_usd", "Estimated money saved by cache hits (USD)", registry=r)
        self.coalesced = Counter("llmcache_coalesced", "Requests that joined an in-flight upstream call",
                                 registry=r)
        self.redis_failures = Counter(
            "llmcache_redis_failures", "Redis operations that failed, timed out or met an open breaker", registry=r)
        self.semantic_adds_skipped = Counter(
            "llmcache_semantic_adds_skipped", "Semantic index adds skipped because too many were pending", registry=r)
        self.semantic_adds_failed = Counter(
            "llmcache_semantic_adds_failed", "Semantic index adds that timed out or failed (the exact entry is stored)",
            registry=r)
        self.shed = Counter("llmcache_shed", "Requests refused with 429 because the body budget was full",
                            registry=r)
        self._request_children: dict[tuple[str, str], Any] = {}
        self._lookup_children: dict[str, Any] = {}
        self._upstream_children: dict[str, Any] = {}
        self.breaker_open = Gauge("llmcache_breaker_open", "1 while the Redis circuit breaker is open",
                                  registry=r)
        self.semantic_up = Gauge("llmcache_semantic_up",
                                 "1 while the semantic cache runs, 0 while the mode wants it but it is down",
                                 registry=r)
        self.semantic_failures = Counter(
            "llmcache_semantic_failures", "Semantic lookups that failed open (embedder/index error or deadline)",
            registry=r)
        self._semantic_failures_seen = 0
        self.semantic_bounded = Gauge("llmcache_semantic_bounded",
                                      "1 once judged outcomes certify the policy's error bound, 0 while learning",
                                      ["policy"], registry=r)
        self.semantic_error_rate = Gauge("llmcache_semantic_error_rate",
                                         "Estimated wrong-answer rate of semantic hits served under the bound",
                                         ["policy"], registry=r)
        self.semantic_error_rate_upper = Gauge("llmcache_semantic_error_rate_upper",
                                               "Upper bound (95 %) of the wrong-answer rate under the bound",
                                               ["policy"], registry=r)
        self.semantic_judged_samples = Gauge("llmcache_semantic_judged_samples",
                                             "Judged semantic candidates of the policy (all sidecars)", ["policy"],
                                             registry=r)
        self.semantic_judged = Counter("llmcache_semantic_judged", "Judgements made by this process",
                                       ["policy", "outcome"], registry=r)
        self.semantic_explorations = Counter("llmcache_semantic_explorations",
                                             "Would-be semantic hits sent upstream to be judged (extra calls)",
                                             ["policy"], registry=r)
        self.semantic_hits_gained = Counter("llmcache_semantic_hits_gained",
                                            "Hits served that one certified similarity threshold would not serve",
                                            ["policy"], registry=r)
        self.semantic_judge_failures = Counter("llmcache_semantic_judge_failures",
                                               "Judgements not made (judging fails open)", ["reason"], registry=r)

    def count(self, route: str, cache_status: str) -> None:
        """Count one request (label children are cached: ``labels()`` is a lock and a dict per call)."""
        child = self._request_children.get((route, cache_status))
        if child is None:
            child = self._request_children[(route, cache_status)] = self.requests.labels(route, cache_status)
        child.inc()

    def observe_lookup(self, kind: str, seconds: float) -> None:
        child = self._lookup_children.get(kind)
        if child is None:
            child = self._lookup_children[kind] = self.lookup_seconds.labels(kind)
        child.observe(seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        child = self._upstream_children.get(route)
        if child is None:
            child = self._upstream_children[route] = self.upstream_seconds.labels(route)
        child.observe(seconds)

    def served_from_cache(self, *, num_bytes: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Account one answer served without an upstream call."""
        self.served_bytes.inc(num_bytes)
        if prompt_tokens:
            self._prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self._completion_tokens.inc(completion_tokens)
        saved = (prompt_tokens * self.price_input_per_1k + completion_tokens * self.price_output_per_1k) / 1000
        if saved:
            self.saved_usd.inc(saved)

    def observe_semantic(self, *, wanted: bool, stats: dict[str, Any] | None) -> None:
        """Refresh the semantic gauges from the cache's own counters (``stats``; None: not running)."""
        self.semantic_up.set(1 if stats is not None else (0 if wanted else 1))
        if stats is not None:
            failed = int(stats.get("errors") or 0) + int(stats.get("timeouts") or 0)
            if failed > self._semantic_failures_seen:
                self.semantic_failures.inc(failed - self._semantic_failures_seen)
            self._semantic_failures_seen = failed

    def bound_fit(self, policy: str, fit: Any) -> None:
        """Publish a policy's current :class:`llmcache.errorbound.Fit`."""
        self.semantic_bounded.labels(policy).set(1 if fit.bounded else 0)
        self.semantic_judged_samples.labels(policy).set(fit.num_judged)
        if fit.error_rate is not None:
            self.semantic_error_rate.labels(policy).set(fit.error_rate)
            self.semantic_error_rate_upper.labels(policy).set(fit.error_upper)

    def bound_judged(self, policy: str, *, wrong: bool) -> None:
        self.semantic_judged.labels(policy, "wrong" if wrong else "right").inc()

    def bound_explored(self, policy: str) -> None:
        self.semantic_explorations.labels(policy).inc()

    def bound_gained(self, policy: str) -> None:
        self.semantic_hits_gained.labels(policy).inc()

    def judge_failed(self, reason: str) -> None:
        self.semantic_judge_failures.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
