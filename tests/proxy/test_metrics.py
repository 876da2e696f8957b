"""The request-path metrics families: plain numbers, exposed exactly as prometheus_client's own types expose them."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llmcache.proxy import metrics as proxy_metrics
from llmcache.proxy.metrics import ProxyMetrics

LOOKUPS = [("exact", 0.00005), ("exact", 0.0001), ("exact", 0.0003), ("semantic", 0.3), ("exact", 5.0)]
UPSTREAMS = [("/v1/chat/completions", 0.002), ("/v1/chat/completions", 500.0), ("/v1/completions", 0.01)]
COUNTS = [("/v1/chat/completions", "miss"), ("/v1/chat/completions", "miss"), ("/v1/completions", "hit")]
HOT = r"llmcache_(requests|lookup_seconds|upstream_seconds|served_bytes|served_tokens|saved_usd)"


def _hot_lines(text: str) -> list[str]:
    """The hot families' lines, creation timestamps masked (they differ by when each was made)."""
    lines = [line for line in text.splitlines() if re.match(rf"(# (HELP|TYPE) )?{HOT}", line)]
    return [re.sub(r"(_created(\{[^}]*\})?) \S+$", r"\1 T", line) for line in lines]


def test_request_path_families_read_as_prometheus_client_types_would_write_them() -> None:
    ours = ProxyMetrics(price_input_per_1k=0.5, price_output_per_1k=1.5)
    ref = CollectorRegistry()
    requests = Counter("llmcache_requests", "Proxied requests by route and cache status", ["route", "cache_status"],
                       registry=ref)
    lookup = Histogram("llmcache_lookup_seconds", "Cache lookup latency", ["kind"],
                       buckets=proxy_metrics._LOOKUP_BUCKETS, registry=ref)
    upstream = Histogram("llmcache_upstream_seconds", "Upstream latency to response headers", ["route"],
                         buckets=proxy_metrics._UPSTREAM_BUCKETS, registry=ref)
    served_bytes = Counter("llmcache_served_bytes", "Answer bytes served from the cache", registry=ref)
    tokens = Counter("llmcache_served_tokens", "Tokens served from the cache", ["kind"], registry=ref)
    saved = Counter("llmcache_saved_usd", "Estimated money saved by cache hits (USD)", registry=ref)
    tokens.labels("prompt")
    tokens.labels("completion")
    for kind, s in LOOKUPS:
        ours.observe_lookup(kind, s)
        lookup.labels(kind).observe(s)
    for route, s in UPSTREAMS:
        ours.observe_upstream(route, s)
        upstream.labels(route).observe(s)
    for route, status in COUNTS:
        ours.count(route, status)
        requests.labels(route, status).inc()
    for num_bytes, p, c in [(500, 6, 17), (20, 0, 0)]:
        ours.served_from_cache(num_bytes=num_bytes, prompt_tokens=p, completion_tokens=c)
        served_bytes.inc(num_bytes)
        tokens.labels("prompt").inc(p)
        tokens.labels("completion").inc(c)
        saved.inc((p * 0.5 + c * 1.5) / 1000)
    want = _hot_lines(generate_latest(ref).decode())
    assert want and _hot_lines(ours.render().decode()) == want
