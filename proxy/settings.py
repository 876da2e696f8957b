"""Settings of the proxy sidecar: one dataclass per concern, combined in :class:`ProxySettings`.

Every field maps to one CLI flag and one env var (``ttl_s`` ↔ ``--ttl-seconds``
↔ ``LLMCACHE_TTL_SECONDS``); :mod:`llmcache.proxy.cli` does the mapping. A
CachePolicy applied by the policy watcher overrides the cache fields per
request (see :func:`llmcache.proxy.handlers.effective_config`).
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
from dataclasses import dataclass, field
from typing import Literal

from llmcache.errors import ConfigError
from llmcache.settings import DEFAULT_REDIS_URL

__all__ = [
    "ANONYMOUS",
    "MODES",
    "NON_DETERMINISTIC",
    "CacheMode",
    "CacheSettings",
    "NonDeterministic",
    "ObservabilitySettings",
    "PolicySource",
    "ProxySettings",
    "RedisSettings",
    "SemanticOptions",
    "UpstreamSettings",
    "generated_salt",
    "semantic_available",
]

log = logging.getLogger(__name__)

CacheMode = Literal["exact", "semantic", "both"]
NonDeterministic = Literal["bypass", "cache", "cache-if-seeded"]

MODES: tuple[CacheMode, ...] = ("exact", "semantic", "both")
NON_DETERMINISTIC: tuple[NonDeterministic, ...] = ("bypass", "cache", "cache-if-seeded")
ANONYMOUS: tuple[str, ...] = ("bypass", "per-namespace")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """What is cached and for how long (a CachePolicy may override these per request)."""

    mode: CacheMode = "exact"
    """``exact``, ``semantic`` or ``both``. The CLI defaults to ``both`` when an embedder is available."""
    ttl_s: int = 3600
    """Entry lifetime (s), fixed at write time and not refreshed on hits; also the upper bound
    of a request's ``Cache-Control: max-age``. Default one hour (as the CachePolicy default)."""
    max_body_bytes: int = 2 * 1024**2
    """Largest cacheable request body (bytes); larger ones get 413. Default 2 MiB (was 16 MiB):
    above a 128k-token prompt as JSON text, and parsing peaks at ~15× the body, so two 16 MiB
    requests could exceed a 512 Mi sidecar."""
    max_inflight_body_bytes: int = 32 * 1024**2
    """Request-body bytes all cacheable requests in progress may hold together; past it new ones
    are shed with 429 (``Retry-After: 1``) before their body is read. Default 32 MiB: sixteen
    maximal bodies, well inside a 512 Mi sidecar with parsing overhead."""
    body_timeout_s: float = 30.0
    """Deadline for reading a cacheable request's whole body (s); a slower client gets 408.
    Default 30 s: a 2 MiB body over a slow link, not a client trickling bytes to hold memory."""
    anonymous: Literal["bypass", "per-namespace"] = "bypass"
    """Requests without the tenant header: ``bypass`` (default, never cached: every such caller
    would otherwise share one tenant) or ``per-namespace`` (cached per pod namespace). A
    CachePolicy's ``spec.scope.anonymous`` (``Bypass`` | ``PerNamespace``) overrides it."""
    max_entry_bytes: int = 8 * 1024**2
    """Largest answer that is stored (bytes); larger answers are relayed but not cached. Default 8 MiB."""
    non_deterministic: NonDeterministic = "bypass"
    """Requests with temperature > 0 (or unset, as OpenAI's default is 1): ``bypass`` (default,
    never serve one sample to everyone), ``cache``, or ``cache-if-seeded`` (only with ``seed``)."""
    tenant_header: str = "Authorization"
    """Header whose salted hash is the tenant. Default ``Authorization``: one API key, one tenant."""
    tenant_salt: bytes = b""
    """HMAC salt for tenant ids. Must be the same on every pod sharing a Redis; generated (with a
    warning) when absent, which isolates this process's entries from every other pod's."""
    key_prefix: str = "llmcache"
    """Prefix of every Redis key (:class:`llmcache.keyspace.Keyspace`)."""
    single_flight_lease: bool = False
    """Take a Redis lease per miss so concurrent identical misses on other pods wait for this one.
    Default off: it costs a round trip per miss, and in-process coalescing covers one pod."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where Redis is and how long the proxy waits for it."""

    url: str = DEFAULT_REDIS_URL
    timeout_ms: float = 50.0
    """Deadline of every Redis operation (ms). Default 50 ms: a hit must stay far cheaper than a
    model call, and a slow Redis must turn into a bypass, not into latency."""
    breaker_failures: int = 3
    """Consecutive failures that open the circuit breaker. Default 3."""
    breaker_cooldown_s: float = 1.0
    """First wait before a probe once open (s); doubles per failed probe up to 30 s."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The OpenAI-compatible server behind the proxy."""

    url: str = "http://127.0.0.1:8000"
    timeout_s: float = 300.0
    """Longest wait for the upstream's next byte (s): connect, first byte and between stream chunks.
    Default 5 min, as long generations on a busy GPU are normal."""
    connect_timeout_s: float = 10.0
    """Deadline for getting an upstream connection (s): waiting for a free one in the pool plus
    connecting. Past it the client gets 503 with ``Retry-After`` (overload is shed, never queued
    forever). Default 10 s."""
    pool_size: int = 256
    """Pooled upstream connections (keep-alive). Default 256."""
    enable_cache_salt: bool = True
    """Send ``cache_salt`` (an HMAC of the tenant and the pod namespace) with every chat/completions
    request forwarded upstream, so a prefix-caching server (the bundled one, vLLM) keeps tenants'
    KV caches apart and ``cached_tokens`` tells nobody about another tenant's prompts. Default on;
    turn off (``--upstream-cache-salt off``) for upstreams that reject unknown fields (OpenAI)."""


@dataclass(frozen=True, slots=True)
class SemanticOptions:
    """Flags passed to the semantic cache facade (``llmcache.proxy.semantic``)."""

    similarity_threshold: float = 0.80
    """Cosine similarity in [0, 1] a semantic candidate needs before verification. Default 0.80,
    the same as the CachePolicy default (see llmcache.policy.DEFAULTS for why)."""
    embedder: Literal["local", "remote"] = "local"
    embedder_url: str | None = None
    index: Literal["auto", "search", "client"] = "auto"
    timeout_ms: float = 100.0
    """Deadline of one semantic lookup (embedding + KNN), ms. Default 100 ms."""
    add_timeout_ms: float = 5000.0
    """Deadline of one background semantic add (embedding + HSET), ms. Default 5 s."""
    max_pending_adds: int = 256
    """Background semantic adds in progress at most; more are skipped (the exact entry is still
    stored). Default 256: bounds memory when the embedder falls behind."""


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where this sidecar learns its CachePolicy (all optional: none = CLI settings only)."""

    pod_labels_file: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    policy_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.pod_namespace or self.policy_file)


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    """Prices for the money-saved estimate, tracing and the admin token."""

    price_input_per_1k: float = 0.0
    """Price of 1000 prompt tokens (USD) used for ``llmcache_saved_usd_total``. Default 0 (unknown)."""
    price_output_per_1k: float = 0.0
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint; ``None`` (default) exports nothing."""
    admin_token: str | None = None
    """Bearer token for ``POST /llmcache/v1/invalidate``; ``None`` disables the endpoint."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Root settings of one proxy process."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    cache: CacheSettings = field(default_factory=CacheSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    semantic: SemanticOptions = field(default_factory=SemanticOptions)
    policy: PolicySource = field(default_factory=PolicySource)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)

    def __post_init__(self) -> None:
        if self.cache.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.cache.mode!r}")
        if self.cache.non_deterministic not in NON_DETERMINISTIC:
            raise ConfigError(f"--non-deterministic must be one of {', '.join(NON_DETERMINISTIC)}")
        if self.cache.ttl_s < 1:
            raise ConfigError(f"--ttl-seconds must be >= 1, got {self.cache.ttl_s}")
        if self.cache.anonymous not in ANONYMOUS:
            raise ConfigError(f"--anonymous must be one of {', '.join(ANONYMOUS)}, got {self.cache.anonymous!r}")
        if self.cache.max_body_bytes <= 0 or self.cache.max_inflight_body_bytes < self.cache.max_body_bytes:
            raise ConfigError("--max-body-bytes must be > 0 and --max-inflight-body-bytes at least as large")
        if self.cache.body_timeout_s <= 0:
            raise ConfigError("--body-timeout-seconds must be > 0")
        if self.redis.timeout_ms <= 0:
            raise ConfigError("--redis-timeout-ms must be > 0")
        if not 0.0 <= self.semantic.similarity_threshold <= 1.0:
            raise ConfigError("--similarity-threshold is a cosine similarity in [0, 1]")
        if not self.upstream.url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream must be an http(s) URL, got {self.upstream.url!r}")


def generated_salt() -> bytes:
    """A random tenant salt, for when none was configured (logged as a warning by the CLI)."""
    return secrets.token_bytes(32)


def semantic_available(options: SemanticOptions) -> bool:
    """True when the semantic facade is installed and an embedder can run (local model or remote URL)."""
    if importlib.util.find_spec("llmcache.proxy.semantic") is None:
        return False
    if options.embedder == "remote":
        return bool(options.embedder_url)
    return importlib.util.find_spec("sentence_transformers") is not None
