"""Prometheus metrics of one proxy process (its own registry, so tests can run several apps).

=========================================  ==========================================================
``llmcache_requests_total``                requests by ``route`` and ``cache_status`` (hit, semantic-hit,
                                           miss, bypass, error)
``llmcache_lookup_seconds``                cache lookup latency by ``kind`` (exact, semantic)
``llmcache_upstream_seconds``              upstream time to response headers by ``route``
``llmcache_served_bytes_total``            answer bytes served from the cache
``llmcache_served_tokens_total``           tokens served from the cache by ``kind`` (prompt, completion)
``llmcache_saved_usd_total``               estimated money saved (``--price-*-per-1k``)
``llmcache_near_cache_hits_total``         exact hits served from the proxy's memory (no Redis round trip)
``llmcache_near_cache_absent_total``       misses the near cache's key filter answered (no Redis round trip)
``llmcache_near_cache_armed``              1 while the near cache serves from memory (tracking on), else 0
``llmcache_near_cache_filter_ready``       1 while its key filter answers misses (scanned under the current
                                           tracking), else 0
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

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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
        # The families every request touches: plain numbers here, read when /metrics is scraped.
        self._hot = _RequestPathMetrics()
        r.register(self._hot)
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
        """Count one request (``llmcache_requests_total``)."""
        counts = self._hot.requests
        counts[(route, cache_status)] = counts.get((route, cache_status), 0) + 1

    def observe_lookup(self, kind: str, seconds: float) -> None:
        self._hot.lookup.observe(kind, seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        self._hot.upstream.observe(route, seconds)

    def served_from_cache(self, *, num_bytes: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Account one answer served without an upstream call."""
        hot = self._hot
        hot.served_bytes += num_bytes
        hot.prompt_tokens += prompt_tokens
        hot.completion_tokens += completion_tokens
        saved = (prompt_tokens * self.price_input_per_1k + completion_tokens * self.price_output_per_1k) / 1000
        if saved:
            hot.saved_usd += saved

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

    def watch_near(self, near: Any) -> None:
        """Report this near cache's counters (:class:`llmcache.proxy.near.NearCache`; ``None``: none)."""
        self._hot.near = near

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Histogram:
    """One histogram family's observations by label value: counts per bucket (not cumulative) and sums."""

    __slots__ = ("bounds", "by_label", "documentation", "label", "name")

    def __init__(self, name: str, documentation: str, label: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.label, self.bounds = name, documentation, label, bounds
        self.by_label: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, label: str, value: float) -> None:
        entry = self.by_label.get(label)
        if entry is None:
            entry = self.by_label[label] = ([0] * (len(self.bounds) + 1), [0.0])
        # The first bucket whose bound is ≥ value (prometheus_client's ``value <= bound``); past the last: +Inf.
        entry[0][bisect.bisect_left(self.bounds, value)] += 1
        entry[1][0] += value

    def family(self, created_s: float) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for label, (counts, total) in self.by_label.items():
            cumulative, running = [], 0
            for le, n in zip(les, counts, strict=True):
                running += n
                cumulative.append((le, running))
            fam.add_metric([label], cumulative, total[0])
            fam.samples.append(Sample(f"{self.name}_created", {self.label: label}, created_s))
        return fam


class _RequestPathMetrics:
    """A collector of the families every request updates (requests, lookup and upstream latency, what
    hits served): plain ints and floats, updated with a dict or list operation, turned into the
    same Prometheus families only when ``/metrics`` is scraped.

    prometheus_client's ``Counter.inc`` takes a lock and ``Histogram.observe`` walks its buckets
    taking two: ~6,000 and ~11,000 instructions each, ~29,000 per miss and more per hit, for a
    process that updates them from one event loop only.
    """

    def __init__(self) -> None:
        self.created_s = time.time()
        self.requests: dict[tuple[str, str], int] = {}
        self.lookup = _Histogram("llmcache_lookup_seconds", "Cache lookup latency", "kind", _LOOKUP_BUCKETS)
        self.upstream = _Histogram("llmcache_upstream_seconds", "Upstream latency to response headers", "route",
                                   _UPSTREAM_BUCKETS)
        self.served_bytes = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.saved_usd = 0.0
        self.near: Any = None  # the near cache, read at scrape time

    def describe(self) -> list[Metric]:
        return list(self.collect())  # (the same families, so the registry knows their names)

    def collect(self) -> Iterator[Metric]:
        created = self.created_s
        requests = CounterMetricFamily("llmcache_requests", "Proxied requests by route and cache status",
                                       labels=["route", "cache_status"])
        for labels, n in self.requests.items():
            requests.add_metric(list(labels), n, created=created)
        yield requests
        yield self.lookup.family(created)
        yield self.upstream.family(created)
        yield CounterMetricFamily("llmcache_served_bytes", "Answer bytes served from the cache",
                                  value=self.served_bytes, created=created)
        tokens = CounterMetricFamily("llmcache_served_tokens", "Tokens served from the cache", labels=["kind"])
        tokens.add_metric(["prompt"], self.prompt_tokens, created=created)
        tokens.add_metric(["completion"], self.completion_tokens, created=created)
        yield tokens
        yield CounterMetricFamily("llmcache_saved_usd", "Estimated money saved by cache hits (USD)",
                                  value=self.saved_usd, created=created)
        near = self.near
        yield CounterMetricFamily("llmcache_near_cache_hits", "Exact hits served from the proxy's memory",
                                  value=0 if near is None else near.num_hits, created=created)
        yield CounterMetricFamily("llmcache_near_cache_absent", "Misses the near cache's key filter answered "
                                  "without a Redis round trip", value=0 if near is None else near.num_absent,
                                  created=created)
        yield GaugeMetricFamily("llmcache_near_cache_armed", "1 while the near cache serves from memory",
                                value=1 if near is not None and near.armed else 0)
        yield GaugeMetricFamily("llmcache_near_cache_filter_ready", "1 while the near cache's key filter answers "
                                "misses", value=1 if near is not None and near.filter_ready else 0)
