"""The inference worker: continuous batching over the radix prefix cache, with admission control.

One dedicated thread owns the model. Nothing here runs on the event loop: handlers get
events through ``on_event`` (called from the worker thread; the HTTP layer forwards them
with ``call_soon_threadsafe``). Every step of the worker::

    expire/cancel waiting ─▶ admit (scheduler.WaitQueue → running) ─▶ drop cancelled running
      ─▶ plan (every decode + prompt chunks within the token budget, scheduler.plan_step)
      ─▶ ONE forward pass over all of them (forward.packed_forward) ─▶ sample, detokenize
      ─▶ finished sequences leave: prompt + generated KV inserted into the radix tree

Life of a request, for prompt ``P`` with a cached prefix of ``c`` tokens::

    P:      [ 0 ……………………… c | c+1 ……… len(P)-1 ]
             └ KV from radix ┘ └ prefill, in chunks ┘ → logits → token g0
    decode:  feed g0 → g1, feed g1 → g2, …           (g_last is never fed)
    insert:  P once its prefill is done (later requests hit it while this one decodes),
             P + g0 … g_{last-1} when it finishes (exactly the positions that have KV)

The prefix lookup happens when a sequence's first chunk is scheduled, not when it is
queued, so a burst sharing a system prompt hits the KV of the first one to finish its
prefill. KV layout: see :mod:`llmcache.model_server.kv_buffer` (ragged per-sequence
buffers, and why not padded or paged). A fatal error in the worker (the forward pass
raised) fails every running and waiting request with :class:`WorkerFailedError`, marks the
engine ``failed`` (``/healthz`` turns 503) and stops the worker.

Why not ``model.generate``: it appends to the cache it is given (it would mutate stored
prefix tensors) and hides TTFT, streaming and the sink window from us.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence

import torch

from llmcache.errors import LLMCacheError
from llmcache.model_server import detok, forward, kv_estimate
from llmcache.model_server import scheduler as sched
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.kv_buffer import KVSpec, SeqKV
from llmcache.model_server.loader import LoadedModel
from llmcache.model_server.metrics import ModelServerMetrics
from llmcache.model_server.radix import RadixCache
from llmcache.model_server.request import (
    GenerationRequest,
    GenerationResult,
    InvalidRequestError,
    OverloadedError,
    RequestHandle,
    SamplingParams,
    TokenDelta,
    WorkerFailedError,
    cache_namespace,
    sample_token,
)
from llmcache.model_server.settings import BatchingSettings

__all__ = [
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequestError",
    "OverloadedError",
    "RequestHandle",
    "SamplingParams",
    "TokenDelta",
    "WorkerFailedError",
    "cache_namespace",
    "default_budget_bytes",
    "sample_token",
]

log = logging.getLogger(__name__)



class Engine:
    """Owns the model, the prefix cache and the running batch; runs on one worker thread.

    ``start()`` launches the worker, ``submit()``/``submit_many()`` enqueue (any thread,
    never blocking: a full queue raises :class:`OverloadedError`), ``stop()`` joins.
    ``failed`` is set (with the reason) once the worker died; every later submit fails.
    """

    def __init__(self, loaded: LoadedModel, *, prefix_cache: RadixCache | None,
                 metrics: ModelServerMetrics | None = None, batching: BatchingSettings | None = None,
                 kv_budget_bytes: int | None = None) -> None:
        self.loaded = loaded
        self.prefix_cache = prefix_cache
        self.metrics = metrics
        self.settings = batching if batching is not None else BatchingSettings()
        shape = kv_estimate.kv_shape(loaded.model.config)
        self.kv_spec = KVSpec(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                              head_dim=shape.head_dim, dtype=loaded.dtype, device=loaded.device)
        if kv_budget_bytes is None:
            kv_budget_bytes = self.settings.kv_budget_bytes
        if kv_budget_bytes is None:
            kv_budget_bytes = default_budget_bytes(loaded, self.settings.kv_fraction)
        self.kv_budget_bytes = kv_budget_bytes
        reason = forward.packed_unsupported_reason(loaded.model) if self.settings.enable_batching else None
        if reason is not None:
            log.warning("continuous batching is off for this model (%s): one forward pass per sequence", reason)
        self.batched = self.settings.enable_batching and reason is None
        self._forward = forward.packed_forward if self.batched else forward.sequential_forward
        self._lock = threading.Condition()
        self._waiting = sched.WaitQueue(max_len=self.settings.max_queue_len,
                                        max_wait_s=self.settings.max_queue_time_s)
        self._running: list[sched.Sequence] = []
        self._reserved_bytes = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failed: str | None = None
        """Why the worker died (``None`` while healthy)."""
        self._inv_freq: torch.Tensor | None = None
        self._seed_source = random.SystemRandom()
        self._evictions_seen = 0
        if metrics is not None:
            metrics.kv_budget_bytes.set(self.kv_budget_bytes)

    # ------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llmcache-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish nothing new; cancel running requests and join the worker."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Validate and enqueue ``request`` (see :meth:`submit_many`)."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[GenerationRequest]) -> list[RequestHandle]:
        """Enqueue all of ``requests`` or none: InvalidRequestError (400), OverloadedError (429, queue
        full), WorkerFailedError (the worker died)."""
        for r in requests:
            self.validate(r)
        with self._lock:
            if self.failed is not None:
                raise WorkerFailedError(f"the inference worker failed ({self.failed}); restart the model server")
            if self._thread is None or self._stopping:
                raise LLMCacheError("the inference worker is not running; call Engine.start() first")
            if self._waiting.room() < len(requests):
                retry = self._waiting.retry_after_s(self.settings.max_num_seqs)
                if self.metrics is not None:
                    self.metrics.rejected.labels(reason="queue_full").inc(len(requests))
                raise OverloadedError(
                    f"the model server is at capacity ({len(self._running)} running, {len(self._waiting)} waiting, "
                    f"--max-queue-len {self.settings.max_queue_len}); retry after {retry} s",
                    retry_after_s=retry, code="queue_full")
            handles = [RequestHandle(r) for r in requests]
            for h in handles:
                self._waiting.push(h)
            self._set_queue_gauges()
            self._lock.notify_all()
        return handles

    def generate(self, request: GenerationRequest, *, timeout_s: float | None = None) -> GenerationResult:
        """Submit and block until done (tests, benchmarks, scripts)."""
        return self.submit(request).result(timeout_s)

    def reservation_tokens(self, request: GenerationRequest) -> int:
        """KV positions a request may hold at most: prompt + max_tokens, or the sink window's bound."""
        n = len(request.prompt_ids)
        full = n + request.sampling.max_tokens
        if request.sink is not None:
            return min(full, max(n, request.sink.max_tokens) + 1)
        return full

    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequestError (with the numbers) when the prompt cannot fit the context or the KV budget."""
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
        need = self.reservation_tokens(request) * self.kv_spec.bytes_per_token
        if need > self.kv_budget_bytes:
            raise InvalidRequestError(
                f"this request needs {need} bytes of KV ({self.reservation_tokens(request)} tokens: prompt + "
                f"max_tokens), more than the server's KV budget of {self.kv_budget_bytes} bytes; reduce max_tokens "
                "or the prompt (or raise --kv-cache-bytes)", param="max_tokens", code="kv_budget_exceeded")
        vocab = int(self.loaded.model.config.vocab_size)
        if any(t < 0 or t >= vocab for t in request.prompt_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")

    # ---------------------------------------------------------------- worker

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._stopping or len(self._waiting) or self._running):
                        self._lock.wait()
                    if self._stopping:
                        break
                    self._expire_waiting()
                    self._admit()
                self._step()
        except BaseException as exc:  # noqa: BLE001 - the worker must fail every request, never hang them
            self._die(exc)
            return
        for seq in list(self._running):
            self._finish(seq, "cancelled")
        with self._lock:
            pending = self._waiting.drain()
        for h in pending:
            h._finish(None, LLMCacheError("the model server is shutting down; retry the request"))

    def _expire_waiting(self) -> None:
        cancelled, expired = self._waiting.take_expired(time.monotonic())
        for h in cancelled:
            h._finish(None, LLMCacheError("cancelled before it started"))
        for h in expired:
            h._finish(None, OverloadedError(
                f"the request waited {self.settings.max_queue_time_s:g} s (--max-queue-time-s) without being "
                "admitted; the model server is overloaded, retry later", retry_after_s=1 + int(
                    self._waiting.retry_after_s(self.settings.max_num_seqs)), code="queue_timeout"))
        if expired and self.metrics is not None:
            self.metrics.rejected.labels(reason="queue_timeout").inc(len(expired))
        if cancelled or expired:
            self._set_queue_gauges()

    def _admit(self) -> None:
        now = time.monotonic()
        while len(self._running) < self.settings.max_num_seqs and (head := self._waiting.peek()) is not None:
            req = head.request
            tokens = self.reservation_tokens(req)
            need = tokens * self.kv_spec.bytes_per_token
            if self._running and self._reserved_bytes + need > self.kv_budget_bytes:
                break  # first come, first served: wait for KV to free up
            self._waiting.pop()
            seed = req.sampling.seed if req.sampling.seed is not None else self._seed_source.getrandbits(63)
            seq = sched.Sequence(handle=head, namespace=cache_namespace(self.loaded, req.cache_salt),
                                 generator=torch.Generator().manual_seed(seed),
                                 text=detok.TextState(decode=self.loaded.decode, stops=req.sampling.stop),
                                 reserved_bytes=need, reserved_tokens=tokens, admitted_at=now)
            self._reserved_bytes += need
            self._running.append(seq)
            if self.metrics is not None:
                self.metrics.queue_time_s.observe(now - head.submitted_at)
                self.metrics.prompt_tokens.inc(len(req.prompt_ids))
        self._set_queue_gauges()

    def _step(self) -> None:
        for seq in [s for s in self._running if s.handle.cancelled]:
            self._finish(seq, "cancelled")
        segments: list[forward.Segment] = []
        sampled: list[sched.Sequence] = []
        for seq, n in list(sched.plan_step(self._running, max_num_batched_tokens=self.settings.max_num_batched_tokens)):
            if seq.kv is None:
                try:
                    self._start(seq)
                except Exception as exc:
                    log.exception("prefix-cache lookup failed")
                    self._fail(seq, exc)
                    continue
                assert seq.kv is not None
                n = min(n, len(seq.prompt) - seq.kv.length)
            if seq.prefilling:
                ids = seq.prompt[seq.kv.length:seq.kv.length + n]
                want = seq.kv.length + n == len(seq.prompt)
            else:
                self._trim_sink(seq)
                ids, want = [seq.generated[-1]], True
            segments.append(forward.Segment(kv=seq.kv, ids=ids, want_logits=want))
            if want:
                sampled.append(seq)
        if not segments:
            return
        with torch.inference_mode():
            logits = self._forward(self.loaded.model, segments)
        if self.metrics is not None:
            self.metrics.step_batch_size.observe(len(segments))
            self.metrics.step_tokens.observe(sum(len(s.ids) for s in segments))
        now = time.monotonic()
        for row, seq in zip(logits, sampled):
            assert seq.kv is not None
            seq.max_kv = max(seq.max_kv, seq.kv.length)
            token = sample_token(row, seq.handle.request.sampling, seq.generator)
            if seq.prefilling:
                seq.ttft_s = now - seq.handle.submitted_at
                if self.metrics is not None:
                    self.metrics.ttft_s.observe(seq.ttft_s)
                self._insert(seq, seq.prompt)
            elif self.metrics is not None:
                self.metrics.inter_token_s.observe(now - seq.last_token_at)
            seq.last_token_at = now
            self._accept(seq, token)
        self._set_kv_gauges()

    def _start(self, seq: sched.Sequence) -> None:
        """Allocate the sequence's KV and copy in its cached prefix (pinned until it leaves)."""
        req = seq.handle.request
        n = len(req.prompt_ids)
        seq.kv = SeqKV(self.kv_spec, capacity=min(seq.reserved_tokens, n + 64), max_capacity=seq.reserved_tokens)
        if req.enable_prefix_cache and self.prefix_cache is not None:
            started = time.perf_counter()
            seq.match = self.prefix_cache.match_prefix(seq.namespace, req.prompt_ids, lock=True, into=seq.kv.layers)
            seq.cached_tokens = seq.kv.length = seq.match.num_cached_tokens
            if self.metrics is not None:
                self.metrics.prefix_op_s.labels(op="lookup").observe(time.perf_counter() - started)
                self.metrics.prefix_queried_tokens.inc(n)
                self.metrics.prefix_hit_tokens.inc(seq.cached_tokens)

    def _trim_sink(self, seq: sched.Sequence) -> None:
        sink = seq.handle.request.sink
        if sink is None or seq.kv is None:
            return
        assert self._inv_freq is not None
        kv, evicted = sink_mod.trim_kv(list(seq.kv.view()), sink, self._inv_freq)
        if evicted:
            seq.kv.replace(kv)
            seq.sink_evicted += evicted
            if self.metrics is not None:
                self.metrics.sink_evicted_tokens.inc(evicted)

    def _accept(self, seq: sched.Sequence, token: int) -> None:
        """Record a sampled token, emit safe text, finish on EOS / stop string / length."""
        req = seq.handle.request
        seq.generated.append(token)
        if self.metrics is not None:
            self.metrics.generation_tokens.inc()
        finish: str | None = None
        if token in self.loaded.eos_token_ids:
            finish = "stop"
        else:
            seq.text.push(token)
            if seq.text.stopped:
                finish = "stop"
        if finish is None and len(seq.generated) >= req.sampling.max_tokens:
            finish = "length"
        if finish is not None:
            seq.text.finish()
        delta = seq.text.take_delta(final=finish is not None)
        if delta and req.on_event is not None:
            req.on_event(TokenDelta(text=delta, token_ids=(token,)))
        if finish is not None:
            self._finish(seq, finish)

    def _insert(self, seq: sched.Sequence, tokens: list[int]) -> None:
        """Store ``tokens`` (KV must cover them) unless caching is off or a sink window evicted."""
        req = seq.handle.request
        if (self.prefix_cache is None or not req.enable_prefix_cache or (req.sink is not None and tokens is seq.prompt)
                or seq.sink_evicted or seq.kv is None or not tokens):
            return
        try:
            started = time.perf_counter()
            seq.inserted_tokens += self.prefix_cache.insert(seq.namespace, tokens, seq.kv.view(len(tokens)))
            if self.metrics is not None:
                self.metrics.prefix_op_s.labels(op="insert").observe(time.perf_counter() - started)
                self._update_cache_metrics()
        except Exception:
            log.exception("prefix-cache insert failed")

    def _finish(self, seq: sched.Sequence, reason: str) -> None:
        req = seq.handle.request
        if seq.kv is not None and seq.kv.length:
            # Only positions that were fed have KV: the prompt plus all but the last sampled token.
            self._insert(seq, (req.prompt_ids + seq.generated)[:seq.kv.length])
        self._release(seq)
        result = GenerationResult(
            token_ids=tuple(seq.generated), text=seq.text.text, finish_reason=reason,
            prompt_tokens=len(req.prompt_ids), cached_tokens=seq.cached_tokens, ttft_s=seq.ttft_s,
            max_kv_tokens=seq.max_kv, sink_evicted_tokens=seq.sink_evicted, inserted_tokens=seq.inserted_tokens,
        )
        if self.metrics is not None:
            self.metrics.finished.labels(reason=reason).inc()
            self.metrics.e2e_s.observe(time.monotonic() - seq.handle.submitted_at)
        with self._lock:
            self._waiting.observe_service(time.monotonic() - seq.admitted_at)
        seq.handle._finish(result, None)

    def _fail(self, seq: sched.Sequence, exc: BaseException) -> None:
        self._release(seq)
        seq.handle._finish(None, exc)

    def _release(self, seq: sched.Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self._reserved_bytes -= seq.reserved_bytes
        if seq.match is not None and self.prefix_cache is not None:
            self.prefix_cache.release(seq.match)
            seq.match = None
        if seq.kv is not None:
            seq.kv.free()
        self._set_queue_gauges()
        self._set_kv_gauges()

    def _die(self, exc: BaseException) -> None:
        """Fatal worker error: fail everything pending, mark the engine failed, log why."""
        with self._lock:
            self.failed = f"{type(exc).__name__}: {exc}"
            pending = self._waiting.drain()
        log.error("inference worker failed; failing %d running and %d waiting requests; /healthz now reports "
                  "not ready", len(self._running), len(pending), exc_info=exc)
        err = WorkerFailedError(f"the inference worker failed ({self.failed}); the model server is not ready "
                                "and needs a restart")
        for seq in list(self._running):
            try:
                self._fail(seq, err)
            except Exception:  # noqa: BLE001 - keep failing the others
                seq.handle._finish(None, err)
        for h in pending:
            h._finish(None, err)
        if self.metrics is not None:
            self.metrics.loaded.set(0)

    # ---------------------------------------------------------------- metrics

    def _set_queue_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.running.set(len(self._running))
            self.metrics.waiting.set(len(self._waiting))

    def _set_kv_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.kv_bytes.set(sum(s.kv.nbytes for s in self._running if s.kv is not None))
            self.metrics.kv_reserved_bytes.set(self._reserved_bytes)

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
    return 1 << 30  # 1 GiB when the OS will not say
