"""Prometheus metrics of the model server, on a per-app registry (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE

__all__ = ["ModelServerMetrics", "PROMETHEUS_CONTENT_TYPE"]

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ModelServerMetrics:
    """All metric families; names carry the ``llmcache_model_`` prefix and their unit."""

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
        self.running = Gauge("llmcache_model_running_requests", "Requests admitted to the worker", registry=r)
        self.loaded = Gauge("llmcache_model_loaded", "1 once the model is loaded and serving", registry=r)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
