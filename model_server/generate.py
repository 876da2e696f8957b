"""The inference worker: prefix-cache lookup, prefill, our own decode loop, sampling, insert.

One dedicated thread owns the model. Requests arrive on a queue; the worker admits
(prefills) them and then advances every running request by one token per round,
round-robin, so concurrent streams all make progress. Nothing here runs on the
event loop: handlers receive events through the ``on_event`` callback (called from the
worker thread; the HTTP layer forwards them with ``call_soon_threadsafe``).

Life of a request, for prompt ``P`` with a cached prefix of ``c`` tokens::

    P:      [ 0 ……………………… c | c+1 ……… len(P)-1 ]
             └ KV from radix ┘ └ prefill (forward) ┘ → logits → token g0
    decode:  feed g0 → g1, feed g1 → g2, …           (g_last is never fed)
    insert:  P + g0 … g_{last-1}  (exactly the positions that have KV)

Why not ``model.generate``: it appends to the cache it is given (it would mutate stored
prefix tensors) and hides TTFT, streaming and the sink window from us.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from llmcache.errors import LLMCacheError
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.loader import LoadedModel
from llmcache.model_server.metrics import ModelServerMetrics
from llmcache.model_server.radix import KVLayers, PrefixMatch, RadixCache

__all__ = [
    "InvalidRequestError",
    "SamplingParams",
    "GenerationRequest",
    "TokenDelta",
    "GenerationResult",
    "RequestHandle",
    "Engine",
    "sample_token",
    "cache_namespace",
]

log = logging.getLogger(__name__)


class InvalidRequestError(LLMCacheError):
    """The request cannot be served as sent (HTTP 400); ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy (argmax)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be >= 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]", param="top_p")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty", param="stop")


@dataclass(slots=True, kw_only=True)
class GenerationRequest:
    """One completion (one choice) to run."""

    prompt_ids: list[int]
    sampling: SamplingParams
    enable_prefix_cache: bool = True
    """Look up and insert into the prefix cache (False: compute everything, store nothing)."""
    cache_salt: str | None = None
    """Extra namespace: requests with different salts never share KV (tenant isolation)."""
    sink: sink_mod.SinkWindow | None = None
    """Attention-sink window for this request; ``None`` = full attention."""
    on_event: Callable[[TokenDelta | GenerationResult | BaseException], None] | None = None
    """Called from the worker thread with each text delta, then the result or the error."""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New text for a streaming client (may be empty while stop-string matching holds text back)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What one finished request produced and what it cost."""

    token_ids: tuple[int, ...]
    """Generated ids, the stop token included if one ended the generation."""
    text: str
    finish_reason: str
    """``stop`` (EOS or stop string), ``length`` (max_tokens) or ``cancelled``."""
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    max_kv_tokens: int
    """Largest KV length this request held (≤ sink + window with a sink window)."""
    sink_evicted_tokens: int
    inserted_tokens: int
    """Tokens this request added to the prefix cache."""


class RequestHandle:
    """Ties a submitted request to its result; thread-safe."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self.cancelled = False
        self.submitted_at = time.monotonic()
        """When the request was queued: TTFT includes the time spent waiting for the worker."""

    def cancel(self) -> None:
        """Ask the worker to stop this request at its next step (e.g. the client went away)."""
        self.cancelled = True

    def result(self, timeout_s: float | None = None) -> GenerationResult:
        """Block until done; re-raises the request's error."""
        if not self._done.wait(timeout_s):
            raise TimeoutError("generation did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _finish(self, result: GenerationResult | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()
        cb = self.request.on_event
        if cb is not None:
            cb(error if error is not None else result)  # type: ignore[arg-type]


def cache_namespace(loaded: LoadedModel, cache_salt: str | None) -> str:
    """Radix namespace: model revision + dtype, plus a hash of the salt (never the salt itself)."""
    if not cache_salt:
        return loaded.namespace
    return f"{loaded.namespace}:{hashlib.sha256(cache_salt.encode()).hexdigest()[:16]}"


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from 1-D ``logits``: argmax at temperature 0, else temperature + nucleus (top-p)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_p, dim=-1)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        sorted_p[(cumulative - sorted_p) >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Index of the earliest stop string in ``text`` at or after ``start`` (−1 if none)."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start))
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


# transformers 5.2x renamed the forward argument and output field ``past_key_values`` → ``cache``;
# earlier 5.x releases (e.g. the 5.17 on our CUDA image) only know the old name.
_CACHE_FIELD = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _forward(model: Any, ids: torch.Tensor, cache: DynamicCache, **kwargs: Any) -> tuple[torch.Tensor, DynamicCache]:
    """One forward pass that extends ``cache``; returns (logits, the cache to continue from)."""
    out = model(input_ids=ids, use_cache=True, **{_CACHE_FIELD: cache}, **kwargs)
    return out.logits, getattr(out, _CACHE_FIELD)


def _kv_layers(cache: DynamicCache) -> KVLayers:
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def _cache_from(kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> DynamicCache:
    """A DynamicCache that starts from ``kv`` (tensors the caller owns; they are adopted, not copied).

    transformers 5 builds one ``DynamicLayer`` per ``ddp_cache_data`` entry but copies the
    data in (``cat`` onto an empty tensor): ~50 MB per 1,000 tokens of SmolLM2 in fp32. We
    initialise the layers with empty slices and then adopt the tensors as the layers'
    documented ``keys``/``values``. Safe because ``DynamicLayer.update`` only ever
    concatenates into new tensors; nothing writes into the adopted ones.
    """
    if not kv:
        return DynamicCache()
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in kv])
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys, layer.values = k, v
    return cache


@dataclass(slots=True, eq=False)
class _Running:
    handle: RequestHandle
    namespace: str
    match: PrefixMatch | None
    cache: DynamicCache
    generator: torch.Generator
    submitted_at: float
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None
    emitted_chars: int = 0
    ttft_s: float = 0.0
    last_token_at: float = 0.0
    sink_evicted: int = 0
    max_kv: int = 0
    finish_reason: str | None = None
    text: str = ""
    cached_tokens: int = 0


class Engine:
    """Owns the model and the prefix cache; runs requests on one worker thread.

    ``start()`` launches the worker, ``submit()`` enqueues (any thread), ``stop()`` joins.
    """

    def __init__(self, loaded: LoadedModel, *, prefix_cache: RadixCache | None,
                 metrics: ModelServerMetrics | None = None) -> None:
        self.loaded = loaded
        self.prefix_cache = prefix_cache
        self.metrics = metrics
        self._queue: queue.Queue[RequestHandle | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running: list[_Running] = []
        self._inv_freq: torch.Tensor | None = None
        self._seed_source = random.SystemRandom()
        self._evictions_seen = 0

    # ------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llmcache-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish nothing new; cancel running requests and join the worker."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Validate and enqueue ``request``; InvalidRequestError for an unservable prompt."""
        self.validate(request)
        handle = RequestHandle(request)
        if self._thread is None:
            raise LLMCacheError("the inference worker is not running; call Engine.start() first")
        self._queue.put(handle)
        return handle

    def generate(self, request: GenerationRequest, *, timeout_s: float | None = None) -> GenerationResult:
        """Submit and block until done (tests, benchmarks, scripts)."""
        return self.submit(request).result(timeout_s)

    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequestError (with the numbers) when the prompt cannot fit the context."""
        n = len(request.prompt_ids)
        ctx = self.loaded.context_tokens
        if n == 0:
            raise InvalidRequestError("the prompt is empty after tokenization", param="messages")
        if request.sink is None and n + request.sampling.max_tokens > ctx:
            if n >= ctx:
                msg = (f"This model's maximum context length is {ctx} tokens. However, your prompt has "
                       f"{n} tokens. Please shorten the prompt.")
            else:
                msg = (f"This model's maximum context length is {ctx} tokens. However, you requested "
                       f"{n + request.sampling.max_tokens} tokens ({n} in the prompt, "
                       f"{request.sampling.max_tokens} for the completion). Please reduce the prompt or "
                       "max_tokens, or ask for an attention-sink window (sink_window_tokens).")
            raise InvalidRequestError(msg, param="messages", code="context_length_exceeded")
        if request.sink is not None:
            if n >= ctx:
                raise InvalidRequestError(
                    f"This model's maximum context length is {ctx} tokens. However, your prompt has {n} tokens; "
                    "the attention-sink window only bounds the generated part.",
                    param="messages", code="context_length_exceeded")
            if request.sink.max_tokens > ctx:
                raise InvalidRequestError(
                    f"sink_tokens + sink_window_tokens = {request.sink.max_tokens} exceeds the context of {ctx} tokens",
                    param="sink_window_tokens")
            if self._inv_freq is None:
                self._inv_freq = sink_mod.rope_inv_freq(self.loaded.model)
        vocab = int(self.loaded.model.config.vocab_size)
        if any(t < 0 or t >= vocab for t in request.prompt_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")

    # ---------------------------------------------------------------- worker

    def _loop(self) -> None:
        while not self._stopping:
            # Block only when idle; otherwise take whatever arrived since the last round.
            try:
                item = self._queue.get(block=not self._running)
            except queue.Empty:
                item = None
            while item is not None and not self._stopping:
                self._admit(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if not self._stopping:
                self._decode_round()
        for st in list(self._running):
            st.handle.cancel()
            self._complete(st, "cancelled")
        # Fail whatever never got admitted.
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending._finish(None, LLMCacheError("the model server is shutting down; retry the request"))

    def _admit(self, handle: RequestHandle) -> None:
        req = handle.request
        st: _Running | None = None
        try:
            ns = cache_namespace(self.loaded, req.cache_salt)
            match: PrefixMatch | None = None
            use_cache = req.enable_prefix_cache and self.prefix_cache is not None
            lookup_started = time.perf_counter()
            if use_cache:
                assert self.prefix_cache is not None
                match = self.prefix_cache.match_prefix(ns, req.prompt_ids, lock=True)
            cached = match.num_cached_tokens if match is not None else 0
            seed = req.sampling.seed if req.sampling.seed is not None else self._seed_source.getrandbits(63)
            try:
                cache = _cache_from(match.kv if match is not None else None)
            except Exception:
                if match is not None and self.prefix_cache is not None:
                    self.prefix_cache.release(match)
                raise
            if use_cache and self.metrics is not None:
                self.metrics.prefix_op_s.labels(op="lookup").observe(time.perf_counter() - lookup_started)
            # Keep only the pin, not the matched tensors: the request's cache has its own copy.
            st = _Running(handle=handle, namespace=ns, match=replace(match, kv=None) if match is not None else None,
                          cache=cache,
                          generator=torch.Generator().manual_seed(seed),
                          submitted_at=handle.submitted_at, cached_tokens=cached)
            if self.metrics is not None:
                self.metrics.running.inc()
                self.metrics.prompt_tokens.inc(len(req.prompt_ids))
                if use_cache:
                    self.metrics.prefix_queried_tokens.inc(len(req.prompt_ids))
                    self.metrics.prefix_hit_tokens.inc(cached)
            self._running.append(st)
            ids = torch.tensor([req.prompt_ids[cached:]], dtype=torch.long, device=self.loaded.device)
            with torch.inference_mode():
                logits, st.cache = _forward(self.loaded.model, ids, st.cache, logits_to_keep=1)
            st.max_kv = st.cache.get_seq_length()
            token = sample_token(logits[0, -1], req.sampling, st.generator)
            now = time.monotonic()
            st.ttft_s = now - st.submitted_at
            st.last_token_at = now
            if self.metrics is not None:
                self.metrics.ttft_s.observe(st.ttft_s)
            self._accept(st, token)
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the worker
            if not isinstance(exc, LLMCacheError):
                log.exception("request failed during prefill")
            self._fail(st, handle, exc)

    def _decode_round(self) -> None:
        for st in list(self._running):
            if st.finish_reason is not None:
                continue
            if st.handle.cancelled:
                self._complete(st, "cancelled")
                continue
            try:
                self._step(st)
            except Exception as exc:  # noqa: BLE001
                log.exception("request failed during decode")
                self._fail(st, st.handle, exc)

    def _step(self, st: _Running) -> None:
        req = st.handle.request
        assert st.next_token is not None
        if req.sink is not None:
            assert self._inv_freq is not None
            kv, evicted = sink_mod.trim_kv(list(_kv_layers(st.cache)), req.sink, self._inv_freq)
            if evicted:
                st.cache = _cache_from(kv)
                st.sink_evicted += evicted
                if self.metrics is not None:
                    self.metrics.sink_evicted_tokens.inc(evicted)
        ids = torch.tensor([[st.next_token]], dtype=torch.long, device=self.loaded.device)
        with torch.inference_mode():
            logits, st.cache = _forward(self.loaded.model, ids, st.cache)
        st.max_kv = max(st.max_kv, st.cache.get_seq_length())
        token = sample_token(logits[0, -1], req.sampling, st.generator)
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.inter_token_s.observe(now - st.last_token_at)
        st.last_token_at = now
        self._accept(st, token)

    def _accept(self, st: _Running, token: int) -> None:
        """Record a sampled token, emit safe text, finish on EOS / stop string / length."""
        req = st.handle.request
        st.generated.append(token)
        st.next_token = token
        if self.metrics is not None:
            self.metrics.generation_tokens.inc()
        finish: str | None = None
        text_ids = st.generated
        if token in self.loaded.eos_token_ids:
            finish = "stop"
            text_ids = st.generated[:-1]
        text = self.loaded.decode(text_ids)
        stops = req.sampling.stop
        longest = max(map(len, stops), default=0)
        if stops:
            cut = _find_stop(text, stops, st.emitted_chars - longest)
            if cut != -1:
                text, finish = text[:cut], "stop"
        if finish is None and len(st.generated) >= req.sampling.max_tokens:
            finish = "length"
        safe = len(text)
        if finish is None:
            if stops:
                # Hold back a tail that could still grow into a stop string.
                safe = max(st.emitted_chars, len(text) - (longest - 1))
            if text.endswith("\ufffd"):
                safe = min(safe, len(text) - 1)  # an incomplete UTF-8 sequence
            safe = max(safe, st.emitted_chars)
        st.text = text
        if safe > st.emitted_chars and req.on_event is not None:
            req.on_event(TokenDelta(text=text[st.emitted_chars:safe], token_ids=(token,)))
        st.emitted_chars = max(st.emitted_chars, safe)
        if finish is not None:
            self._complete(st, finish)

    def _complete(self, st: _Running, reason: str) -> None:
        st.finish_reason = reason
        req = st.handle.request
        inserted = 0
        try:
            if (self.prefix_cache is not None and req.enable_prefix_cache and st.sink_evicted == 0
                    and st.cache.get_seq_length() > 0):
                # Only positions that were fed have KV: the prompt plus all but the last sampled token.
                kv = _kv_layers(st.cache)
                n = kv[0][0].shape[2]
                tokens = (req.prompt_ids + st.generated)[:n]
                insert_started = time.perf_counter()
                inserted = self.prefix_cache.insert(st.namespace, tokens, kv)
                if self.metrics is not None:
                    self.metrics.prefix_op_s.labels(op="insert").observe(time.perf_counter() - insert_started)
        except Exception:  # noqa: BLE001 - a failed insert only costs future hits
            log.exception("prefix-cache insert failed")
        finally:
            self._release(st)
        if self.metrics is not None:
            self._update_cache_metrics()
        result = GenerationResult(
            token_ids=tuple(st.generated), text=st.text, finish_reason=reason,
            prompt_tokens=len(req.prompt_ids),
            cached_tokens=st.cached_tokens,
            ttft_s=st.ttft_s, max_kv_tokens=st.max_kv, sink_evicted_tokens=st.sink_evicted,
            inserted_tokens=inserted,
        )
        st.handle._finish(result, None)

    def _fail(self, st: _Running | None, handle: RequestHandle, exc: BaseException) -> None:
        if st is not None:
            st.finish_reason = "error"
            self._release(st)
        handle._finish(None, exc)

    def _release(self, st: _Running) -> None:
        if st in self._running:
            self._running.remove(st)
            if self.metrics is not None:
                self.metrics.running.dec()
        if st.match is not None and self.prefix_cache is not None:
            self.prefix_cache.release(st.match)
            st.match = None
        st.cache = DynamicCache()  # drop the request's KV promptly

    def _update_cache_metrics(self) -> None:
        assert self.metrics is not None
        pc = self.prefix_cache
        if pc is None:
            return
        self.metrics.prefix_bytes.set(pc.total_bytes)
        self.metrics.prefix_budget_bytes.set(pc.budget_bytes)
        self.metrics.prefix_nodes.set(pc.num_nodes)
        delta = pc.num_evictions - self._evictions_seen
        if delta > 0:
            self.metrics.prefix_evictions.inc(delta)
            self._evictions_seen = pc.num_evictions


def default_budget_bytes(loaded: LoadedModel, fraction: float) -> int:
    """``fraction`` of the device's free memory (MemAvailable on CPU) right now."""
    if loaded.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(loaded.device)
        return int(free * fraction)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * fraction)
    except OSError:
        pass
    return int(1 << 30)  # 1 GiB when the OS will not say
