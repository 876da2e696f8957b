"""Prometheus metrics of the model server, on a per-app registry (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmcache.model_server.stats import IterationStats, PrefixCacheStats, SchedulerStats

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ModelServerMetrics"]

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ModelServerMetrics:
    """All metric families; names carry the ``llmcache_model_`` prefix and their unit.

    The engine's :class:`~llmcache.model_server.stats.StatLogger`: :meth:`record` turns its
    stats objects into metric updates; the HTTP layer updates ``requests`` and ``loaded``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmcache_model_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("llmcache_model_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("llmcache_model_generation_tokens", "Tokens generated", registry=r)
        self.prefix_queried_tokens = Counter("llmcache_model_prefix_cache_queried_tokens",
                                             "Prompt tokens looked up in the prefix cache", registry=r)
        self.prefix_hit_tokens = Counter("llmcache_model_prefix_cache_hit_tokens",
                                         "Prompt tokens whose KV came from the prefix cache", registry=r)
        self.prefix_evictions = Counter("llmcache_model_prefix_cache_evictions",
                                        "Radix nodes evicted from the prefix cache", registry=r)
        self.prefix_bytes = Gauge("llmcache_model_prefix_cache_bytes", "Bytes of KV held by the prefix cache",
                                  registry=r)
        self.prefix_budget_bytes = Gauge("llmcache_model_prefix_cache_budget_bytes",
                                         "Byte budget of the prefix cache", registry=r)
        self.prefix_nodes = Gauge("llmcache_model_prefix_cache_nodes", "Radix nodes in the prefix cache", registry=r)
        self.sink_evicted_tokens = Counter("llmcache_model_sink_evicted_tokens",
                                           "Tokens dropped from KV by the attention-sink window", registry=r)
        self.ttft_s = Histogram("llmcache_model_time_to_first_token_seconds",
                                "Time from queueing a request to its first sampled token",
                                buckets=_LATENCY_BUCKETS_S, registry=r)
        self.inter_token_s = Histogram("llmcache_model_inter_token_seconds",
                                       "Time between consecutive generated tokens of one request",
                                       buckets=_ITL_BUCKETS_S, registry=r)
        self.prefix_op_s = Histogram("llmcache_model_prefix_cache_op_seconds",
                                     "Time spent in prefix-cache lookups (incl. building the request's KV) "
                                     "and inserts: the cache's own overhead", ["op"],
                                     buckets=_ITL_BUCKETS_S, registry=r)
        self.running = Gauge("llmcache_model_running_requests", "Requests in the running batch", registry=r)
        self.waiting = Gauge("llmcache_model_waiting_requests", "Requests queued for admission", registry=r)
        self.step_batch_size = Histogram("llmcache_model_step_batch_size", "Sequences in one forward step",
                                         buckets=_BATCH_BUCKETS, registry=r)
        self.step_tokens = Histogram("llmcache_model_step_tokens", "Tokens fed in one forward step (decode + prefill)",
                                     buckets=_TOKEN_BUCKETS, registry=r)
        self.kv_bytes = Gauge("llmcache_model_kv_bytes", "KV bytes allocated by running sequences", registry=r)
        self.kv_reserved_bytes = Gauge("llmcache_model_kv_reserved_bytes",
                                       "KV bytes reserved by running sequences (prompt + max_tokens each)", registry=r)
        self.kv_budget_bytes = Gauge("llmcache_model_kv_budget_bytes", "KV byte budget of the running batch",
                                     registry=r)
        self.queue_time_s = Histogram("llmcache_model_queue_time_seconds", "Time from queueing to admission",
                                      buckets=_LATENCY_BUCKETS_S, registry=r)
        self.e2e_s = Histogram("llmcache_model_e2e_request_latency_seconds", "Time from queueing to the last token",
                               buckets=_LATENCY_BUCKETS_S, registry=r)
        self.finished = Counter("llmcache_model_request_finished", "Requests finished, by finish reason",
                                ["reason"], registry=r)
        self.rejected = Counter("llmcache_model_request_rejected",
                                "Requests answered 429: queue_full at once, queue_timeout after waiting", ["reason"],
                                registry=r)
        self.loaded = Gauge("llmcache_model_loaded", "1 once the model is loaded and serving", registry=r)

        self._evictions_seen = 0

    def record(self, scheduler: SchedulerStats, iteration: IterationStats | None = None,
               prefix_cache: PrefixCacheStats | None = None) -> None:
        """Apply one engine step's stats (levels to gauges, events to counters and histograms)."""
        self.running.set(scheduler.num_running)
        self.waiting.set(scheduler.num_waiting)
        self.kv_bytes.set(scheduler.kv_allocated_bytes)
        self.kv_reserved_bytes.set(scheduler.kv_reserved_bytes)
        self.kv_budget_bytes.set(scheduler.kv_budget_bytes)
        if prefix_cache is not None:
            self.prefix_bytes.set(prefix_cache.total_bytes)
            self.prefix_budget_bytes.set(prefix_cache.budget_bytes)
            self.prefix_nodes.set(prefix_cache.num_nodes)
            if prefix_cache.num_evictions > self._evictions_seen:
                self.prefix_evictions.inc(prefix_cache.num_evictions - self._evictions_seen)
                self._evictions_seen = prefix_cache.num_evictions
        if iteration is not None:
            self._record_iteration(iteration)

    def _record_iteration(self, it: IterationStats) -> None:
        if it.num_prompt_tokens:
            self.prompt_tokens.inc(it.num_prompt_tokens)
        if it.num_generation_tokens:
            self.generation_tokens.inc(it.num_generation_tokens)
        if it.num_prefix_queried_tokens:
            self.prefix_queried_tokens.inc(it.num_prefix_queried_tokens)
        if it.num_prefix_hit_tokens:
            self.prefix_hit_tokens.inc(it.num_prefix_hit_tokens)
        if it.num_sink_evicted_tokens:
            self.sink_evicted_tokens.inc(it.num_sink_evicted_tokens)
        if it.batch_size:
            self.step_batch_size.observe(it.batch_size)
            self.step_tokens.observe(it.num_batched_tokens)
        for histogram, values in ((self.queue_time_s, it.queue_times_s), (self.ttft_s, it.ttfts_s),
                                  (self.inter_token_s, it.inter_token_latencies_s)):
            for v in values:
                histogram.observe(v)
        for v in it.prefix_lookup_s:
            self.prefix_op_s.labels(op="lookup").observe(v)
        for v in it.prefix_insert_s:
            self.prefix_op_s.labels(op="insert").observe(v)
        for f in it.finished:
            self.finished.labels(reason=f.finish_reason).inc()
            self.e2e_s.observe(f.e2e_latency_s)
        for reason, n in it.num_rejected.items():
            self.rejected.labels(reason=reason).inc(n)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
