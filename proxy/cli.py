"""``llmcache proxy``: flags (each also ``LLMCACHE_<FLAG>``) → :class:`ProxySettings` → the app."""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web

from llmcache.errors import ConfigError
from llmcache.proxy import settings as ps
from llmcache.settings import (
    DEFAULT_REDIS_URL,
    UPSTREAM_HELP,
    add_flag,
    bind_listen_socket,
    parse_bytes,
    parse_listen,
    upstream_url,
)

__all__ = ["EVENT_LOOPS", "configure", "new_event_loop", "run", "settings_from_args"]

log = logging.getLogger(__name__)

EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def configure(parser: argparse.ArgumentParser) -> None:
    d = ps.ProxySettings()
    add_flag(parser, "--listen", default="127.0.0.1:8080", help="HOST:PORT the proxy listens on")
    add_flag(parser, "--health-listen", default="",
             help="HOST:PORT serving only /healthz, /readyz and /metrics (kubelet probes on the pod IP); '' = none")
    add_flag(parser, "--upstream", default=d.upstream.url, type=_upstream_source, action="repeat",
             help=UPSTREAM_HELP + ". Repeat it for several model-server replicas (env: comma-separated); "
             "dns+URL takes every address of the host (a headless Service), file:PATH the URLs in a file")
    add_flag(parser, "--routing", default=d.upstream.routing, choices=("prefix", "hash", "round-robin"),
             help="how a miss picks a replica: prefix (longest cached prefix vs load) | hash | round-robin")
    add_flag(parser, "--upstream-refresh-seconds", default=d.upstream.refresh_s, type=float,
             help="how often dns+ and file: upstreams are read again")
    add_flag(parser, "--redis-url", default=DEFAULT_REDIS_URL, help="Redis for entries, vectors and policies")
    add_flag(parser, "--mode", default=None, choices=ps.MODES,
             help="exact | semantic | both (both when an embedder is available, else exact)")
    add_flag(parser, "--ttl-seconds", default=d.cache.ttl_s, type=int,
             help="entry lifetime, fixed at write; also the upper bound of a request's max-age")
    add_flag(parser, "--max-body-bytes", default="2Mi", type=parse_bytes,
             help="largest cacheable request body (larger → 413)")
    add_flag(parser, "--max-inflight-body-bytes", default="32Mi", type=parse_bytes,
             help="request-body bytes all cacheable requests in progress may hold (more → 429)")
    add_flag(parser, "--body-timeout-seconds", default=d.cache.body_timeout_s, type=float,
             help="deadline for reading a cached route's request body, and the longest silence "
                  "while streaming a pass-through body upstream (slower → 408)")
    add_flag(parser, "--write-timeout-seconds", default=d.cache.write_timeout_s, type=float,
             help="deadline for a client to take each write of an answer (a chunk, or a whole answer); "
                  "past it the connection is closed")
    add_flag(parser, "--anonymous", default=d.cache.anonymous, choices=ps.ANONYMOUS,
             help="requests without the tenant header: bypass (never cached) | per-namespace")
    add_flag(parser, "--upstream-cache-salt", default="on", choices=("on", "off"),
             help="send a per-tenant cache_salt upstream (prefix-cache isolation); off for OpenAI itself")
    add_flag(parser, "--redis-timeout-ms", default=d.redis.timeout_ms, type=float,
             help="deadline of each Redis operation; slower means bypass")
    add_flag(parser, "--near-cache-bytes", default=d.redis.near_cache_bytes, type=int,
             help="exact hits held in the proxy, invalidated by Redis (CLIENT TRACKING); 0: off")
    add_flag(parser, "--upstream-timeout-seconds", default=d.upstream.timeout_s, type=float,
             help="longest wait for the upstream's next byte (504 before the first)")
    add_flag(parser, "--non-deterministic", default=d.cache.non_deterministic, choices=ps.NON_DETERMINISTIC,
             help="requests with temperature > 0 (or unset): bypass | cache | cache-if-seeded")
    add_flag(parser, "--tenant-header", default=d.cache.tenant_header,
             help="header whose salted hash is the tenant")
    add_flag(parser, "--tenant-salt", default=None,
             help="HMAC salt for tenant ids; the same on every pod sharing Redis (random when unset)")
    add_flag(parser, "--admin-token", default=None,
             help="bearer token for /llmcache/v1/stats and POST /llmcache/v1/invalidate (both off when unset)")
    add_flag(parser, "--key-prefix", default=d.cache.key_prefix, help="prefix of every Redis key")
    add_flag(parser, "--price-input-per-1k", default=0.0, type=float,
             help="USD per 1000 prompt tokens, for the money-saved metric")
    add_flag(parser, "--price-output-per-1k", default=0.0, type=float,
             help="USD per 1000 completion tokens, for the money-saved metric")
    add_flag(parser, "--otlp-endpoint", default=None, help="OTLP/HTTP endpoint for traces (off when unset)")
    add_flag(parser, "--single-flight-lease", action="store_true",
             help="coalesce identical misses across pods with a Redis lease")
    add_flag(parser, "--similarity-threshold", default=d.semantic.similarity_threshold, type=float,
             help="cosine similarity in [0, 1] a semantic hit needs")
    add_flag(parser, "--semantic-max-error-rate", default=None, type=float,
             help="share of semantic hits that may be wrong, e.g. 0.01: serve a candidate only once judged "
                  "outcomes certify it (unset: every candidate the verifier accepts)")
    add_flag(parser, "--judge-url", default=None,
             help="OpenAI-compatible LLM judge for the error bound (unset: compare the fresh and cached answers)")
    add_flag(parser, "--judge-model", default=d.judge.model, help="model name sent to --judge-url")
    add_flag(parser, "--judge-api-key", default=None, help="bearer token for --judge-url")
    add_flag(parser, "--judge-budget", default=d.judge.budget, type=float,
             help="extra upstream calls per minute (explorations) as a share of semantic lookups")
    add_flag(parser, "--judge-explore-rate", default=d.judge.explore_rate, type=float,
             help="share of would-be semantic hits sent upstream and judged instead (within --judge-budget)")
    add_flag(parser, "--judge-max-calls-per-minute", default=d.judge.max_calls_per_minute, type=int,
             help="LLM-judge calls per minute at most")
    add_flag(parser, "--embedder", default=d.semantic.embedder, choices=("local", "remote"),
             help="local sentence-transformers model or a remote /v1/embeddings endpoint")
    add_flag(parser, "--embedder-url", default=None, help="base URL of the remote embedder")
    add_flag(parser, "--embedder-backend", default=d.semantic.embedder_backend, choices=("auto", "onnx", "torch"),
             help="local embedder on ONNX Runtime, torch, or auto (ONNX when installed)")
    add_flag(parser, "--semantic-index", default=d.semantic.index, choices=("auto", "search", "client"),
             help="vector index: RediSearch, client-side, or auto-detect")
    add_flag(parser, "--semantic-timeout-ms", default=d.semantic.timeout_s * 1000, type=float,
             help="deadline of one semantic lookup")
    add_flag(parser, "--pod-labels-file", default=None, help="downward-API labels file of this pod")
    add_flag(parser, "--pod-namespace", default=None, help="Kubernetes namespace of this pod (policy lookup)")
    add_flag(parser, "--pod-name", default=None, help="name of this pod (policy acks)")
    add_flag(parser, "--policy-file", default=None, help="mounted ConfigMap copy of the policies (start-up)")
    add_flag(parser, "--event-loop", default="auto", choices=EVENT_LOOPS,
             help="asyncio | uvloop | auto (uvloop when installed: ~30%% less CPU per request)")


def _upstream_source(value: str) -> str:
    """One ``--upstream`` value: an http(s) URL (normalised), ``dns+URL`` or ``file:PATH``."""
    if value.startswith("file:"):
        if not value.removeprefix("file:").removeprefix("//"):
            raise ConfigError(f"file: needs a path, e.g. file:/etc/llmcache/upstreams, got {value!r}")
        return value
    if value.startswith("dns+"):
        return "dns+" + upstream_url(value.removeprefix("dns+"))
    return upstream_url(value)


def settings_from_args(args: argparse.Namespace) -> ps.ProxySettings:
    """Turn parsed flags into settings; raise :class:`ConfigError` naming the flag on bad values."""
    host, port = parse_listen(args.listen)
    semantic = ps.SemanticSettings(similarity_threshold=args.similarity_threshold, embedder=args.embedder,
                                   embedder_url=args.embedder_url, embedder_backend=args.embedder_backend,
                                   index=args.semantic_index,
                                   timeout_s=args.semantic_timeout_ms / 1000,
                                   max_error_rate=args.semantic_max_error_rate)
    mode = args.mode
    if mode is None:
        mode = "both" if ps.semantic_available(semantic) else "exact"
    salt = args.tenant_salt.encode() if args.tenant_salt else b""
    if args.max_body_bytes <= 0:
        raise ConfigError("--max-body-bytes must be > 0")
    if args.near_cache_bytes < 0:
        raise ConfigError("--near-cache-bytes must be >= 0 (0 turns the near cache off)")
    return ps.ProxySettings(
        listen_host=host, listen_port=port,
        cache=ps.CacheSettings(mode=mode, ttl_s=args.ttl_seconds, max_body_bytes=args.max_body_bytes,
                               max_inflight_body_bytes=args.max_inflight_body_bytes,
                               body_timeout_s=args.body_timeout_seconds,
                               write_timeout_s=args.write_timeout_seconds, anonymous=args.anonymous,
                               non_deterministic=args.non_deterministic, tenant_header=args.tenant_header,
                               tenant_salt=salt, key_prefix=args.key_prefix,
                               single_flight_lease=bool(args.single_flight_lease)),
        redis=ps.RedisSettings(url=args.redis_url, timeout_ms=args.redis_timeout_ms,
                               near_cache_bytes=args.near_cache_bytes),
        upstream=ps.UpstreamSettings(url=args.upstream[0], sources=tuple(args.upstream), routing=args.routing,
                                     refresh_s=args.upstream_refresh_seconds, timeout_s=args.upstream_timeout_seconds,
                                     enable_cache_salt=args.upstream_cache_salt == "on"),
        semantic=semantic,
        judge=ps.JudgeSettings(url=args.judge_url, model=args.judge_model, api_key=args.judge_api_key,
                               budget=args.judge_budget, explore_rate=args.judge_explore_rate,
                               max_calls_per_minute=args.judge_max_calls_per_minute),
        policy=ps.PolicySource(pod_labels_file=args.pod_labels_file, pod_namespace=args.pod_namespace,
                               pod_name=args.pod_name, policy_file=args.policy_file),
        observability=ps.ObservabilitySettings(price_input_per_1k=args.price_input_per_1k,
                                               price_output_per_1k=args.price_output_per_1k,
                                               otlp_endpoint=args.otlp_endpoint, admin_token=args.admin_token),
    )


def run(args: argparse.Namespace) -> int:
    from llmcache.proxy.app import create_app  # keeps `llmcache proxy --help` fast

    settings = settings_from_args(args)
    sock = bind_listen_socket(settings.listen_host, settings.listen_port)
    port = sock.getsockname()[1]
    socks = [sock]
    if args.health_listen:
        from llmcache.proxy import health_port

        socks.append(health_port.bind(args.health_listen))
    app = create_app(settings)
    if len(socks) > 1:
        app.middlewares.append(health_port.health_only_middleware(socks[1].getsockname()[1]))

    def announce(_aiohttp_banner: str) -> None:  # called by run_app once the sockets accept connections
        print(f"llmcache proxy on http://{settings.listen_host}:{port} → {', '.join(settings.upstream.sources)} "
              f"(mode {settings.cache.mode}); point OpenAI clients at "
              f"http://{settings.listen_host}:{port}/v1", flush=True)

    loop = new_event_loop(args.event_loop)
    log.info("event loop: %s", type(loop).__module__.split(".")[0])
    web.run_app(app, sock=socks, access_log=None, print=announce, handle_signals=True, loop=loop)
    return 0


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of ``kind`` (:data:`EVENT_LOOPS`); ``auto`` takes uvloop when it is installed.

    uvloop (libuv, in C) runs the same aiohttp code with less interpreter work per loop turn,
    timer and socket operation; it is part of ``llmcache[proxy]`` (Linux and macOS).
    """
    if kind not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if kind == "uvloop":
                raise ConfigError("--event-loop uvloop needs the uvloop package: pip install 'llmcache[proxy]' "
                                  "(or --event-loop asyncio)") from exc
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
