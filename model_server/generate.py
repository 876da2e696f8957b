"""The inference engine: one worker thread running ``schedule → execute → update`` over the radix prefix cache.

One dedicated thread owns the model. Nothing here runs on the event loop: handlers get
events through ``on_event`` (called from the worker thread; the HTTP layer forwards them
with ``call_soon_threadsafe``). Every step of the worker (vLLM v1's engine-core loop)::

    schedule  Scheduler.schedule() → SchedulerOutput: expired/cancelled waiting leave,
              what fits is admitted, every decode + prompt chunks within the token budget
    execute   new sequences get their KV buffer and their cached prefix (radix lookup);
              ONE forward pass over every scheduled segment (forward.packed_forward)
    update    sample, detokenize, stream deltas; finished sequences leave the scheduler
              and their prompt + generated KV goes into the radix tree
    record    IterationStats + SchedulerStats + PrefixCacheStats → every StatLogger,
              then the step's results are handed to their requests

Admission, the running set and KV reservations belong to
:class:`~llmcache.model_server.scheduler.Scheduler`; the engine owns the model, the
prefix cache and the worker thread.

Life of a request, for prompt ``P`` with a cached prefix of ``c`` tokens::

    P:      [ 0 ……………………… c | c+1 ……… len(P)-1 ]
             └ KV from radix ┘ └ prefill, in chunks ┘ → logits → token g0
    decode:  feed g0 → g1, feed g1 → g2, …           (g_last is never fed)
    insert:  P once its prefill is done (later requests hit it while this one decodes),
             P + g0 … g_{last-1} when it finishes (exactly the positions that have KV)

The prefix lookup happens when a sequence's first chunk is executed, not when it is
queued, so a burst sharing a system prompt hits the KV of the first one to finish its
prefill. KV layout: see :mod:`llmcache.model_server.kv_buffer` (ragged per-sequence
buffers, and why not padded or paged). A fatal error in the worker (the forward pass
raised) fails every running and waiting request with
:class:`~llmcache.model_server.request.WorkerFailedError`, marks the engine ``failed``
(``/healthz`` turns 503) and stops the worker.

Why not ``model.generate``: it appends to the cache it is given (it would mutate stored
prefix tensors) and hides TTFT, streaming and the sink window from us.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmcache.errors import LLMCacheError
from llmcache.model_server import detok, forward, kv_estimate
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.kv_buffer import SeqKV
from llmcache.model_server.loader import LoadedModel
from llmcache.model_server.radix import RadixCache, RadixKey
from llmcache.model_server.request import (
    GenerationRequest,
    GenerationResult,
    InvalidRequestError,
    OverloadedError,
    RequestHandle,
    TokenDelta,
    WorkerFailedError,
    cache_namespace,
    sample_token,
)
from llmcache.model_server.scheduler import Scheduler, SchedulerOutput, reservation_tokens
from llmcache.model_server.scheduler import Sequence as Seq
from llmcache.model_server.settings import MAX_TOKENS_CONTEXT_MULTIPLE, BatchingSettings
from llmcache.model_server.stats import (
    FinishedRequestStats,
    IterationStats,
    PrefixBlockEvent,
    SchedulerStats,
    StatLogger,
)

__all__ = ["Engine", "default_budget_bytes"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Step:
    """One worker step in progress: its stats, and the results handed out once they are recorded."""

    stats: IterationStats = field(default_factory=IterationStats)
    outcomes: list[tuple[RequestHandle, GenerationResult | BaseException]] = field(default_factory=list)


class Engine:
    """Owns the model, the prefix cache and the scheduler; runs them on one worker thread.

    ``start()`` launches the worker, ``submit()``/``submit_many()`` enqueue (any thread,
    never blocking: a full queue raises :class:`~llmcache.model_server.request.OverloadedError`),
    ``stop()`` joins. ``failed`` is set (with the reason) once the worker died; every later
    submit fails. ``metrics`` and ``stat_loggers`` receive every step's stats
    (:mod:`llmcache.model_server.stats`).
    """

    def __init__(self, loaded: LoadedModel, *, prefix_cache: RadixCache | None,
                 metrics: StatLogger | None = None, batching: BatchingSettings | None = None,
                 kv_budget_bytes: int | None = None, max_tokens_limit: int | None = None,
                 stat_loggers: Sequence[StatLogger] = ()) -> None:
        self.loaded = loaded
        self.max_tokens_limit = (max_tokens_limit if max_tokens_limit is not None
                                 else MAX_TOKENS_CONTEXT_MULTIPLE * loaded.context_tokens)
        """Largest ``max_tokens`` a request may ask for (``--max-tokens-limit``; sink windows included)."""
        self.prefix_cache = prefix_cache
        self.metrics = metrics
        self._stat_loggers: tuple[StatLogger, ...] = ((metrics,) if metrics is not None else ()) + tuple(stat_loggers)
        self.settings = batching if batching is not None else BatchingSettings()
        self.kv_shape = kv_estimate.kv_shape(loaded.model.config)
        self.kv_bytes_per_token = self.kv_shape.bytes_per_token(loaded.dtype.itemsize)
        """K and V bytes of one token across all layers."""
        if kv_budget_bytes is None:
            kv_budget_bytes = self.settings.kv_budget_bytes
        if kv_budget_bytes is None:
            kv_budget_bytes = default_budget_bytes(loaded, self.settings.kv_fraction)
        self.scheduler = Scheduler(self.settings, kv_budget_bytes=kv_budget_bytes,
                                   kv_bytes_per_token=self.kv_bytes_per_token, prefix_cache=prefix_cache)
        reason = forward.packed_unsupported_reason(loaded.model) if self.settings.enable_batching else None
        if reason is not None:
            log.warning("continuous batching is off for this model (%s): one forward pass per sequence", reason)
        self.batched = self.settings.enable_batching and reason is None
        self.forward = forward.packed_forward if self.batched else forward.sequential_forward
        """The forward pass over one step's segments (tests replace it to inject device faults)."""
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failed: str | None = None
        """Why the worker died (``None`` while healthy)."""
        self._inv_freq: torch.Tensor | None = None
        self._seed_source = random.SystemRandom()
        self._record(self.scheduler.stats())

    @property
    def kv_budget_bytes(self) -> int:
        """Bytes of KV the running set may reserve."""
        return self.scheduler.kv_budget_bytes

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
        seqs = [self._sequence(RequestHandle(r)) for r in requests]
        with self._lock:
            if self.failed is not None:
                raise WorkerFailedError(f"the inference worker failed ({self.failed}); restart the model server")
            if self._thread is None or self._stopping:
                raise LLMCacheError("the inference worker is not running; call Engine.start() first")
            if not self.scheduler.add_requests(seqs):
                retry = self.scheduler.retry_after_s()
                stats = self.scheduler.stats()
                self._record(stats, IterationStats(num_rejected={"queue_full": len(requests)}))
                raise OverloadedError(
                    f"the model server is at capacity ({stats.num_running} running, {stats.num_waiting} waiting, "
                    f"--max-queue-len {self.settings.max_queue_len}); retry after {retry} s",
                    retry_after_s=retry, code="queue_full")
            self._record(self.scheduler.stats())
            self._lock.notify_all()
        return [s.handle for s in seqs]

    def generate(self, request: GenerationRequest, *, timeout_s: float | None = None) -> GenerationResult:
        """Submit and block until done (tests, benchmarks, scripts)."""
        return self.submit(request).result(timeout_s)

    def stats(self) -> SchedulerStats:
        """The scheduler's levels right now (running, waiting, KV reserved)."""
        with self._lock:
            return self.scheduler.stats()

    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequestError (with the numbers) when ``max_tokens`` is over the server's limit or the
        request cannot fit the context or the KV budget."""
        n = len(request.prompt_ids)
        ctx = self.loaded.context_tokens
        if n == 0:
            raise InvalidRequestError("the prompt is empty after tokenization", param="messages")
        if request.sampling.max_tokens > self.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens is {request.sampling.max_tokens}, more than this server's limit of "
                f"{self.max_tokens_limit} tokens (--max-tokens-limit, env LLMCACHE_MAX_TOKENS_LIMIT); ask for at "
                f"most {self.max_tokens_limit}", param="max_tokens", code="max_tokens_exceeded")
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
        need = self.scheduler.reservation_bytes(request)
        if need > self.kv_budget_bytes:
            raise InvalidRequestError(
                f"this request needs {need} bytes of KV ({reservation_tokens(request)} tokens: prompt + "
                f"max_tokens), more than the server's KV budget of {self.kv_budget_bytes} bytes; reduce max_tokens "
                "or the prompt (or raise --kv-cache-bytes)", param="max_tokens", code="kv_budget_exceeded")
        vocab = int(self.loaded.model.config.vocab_size)
        if any(t < 0 or t >= vocab for t in request.prompt_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")

    # ---------------------------------------------------------------- worker

    def _sequence(self, handle: RequestHandle) -> Seq:
        req = handle.request
        seed = req.sampling.seed if req.sampling.seed is not None else self._seed_source.getrandbits(63)
        return Seq(handle=handle, key=RadixKey(cache_namespace(self.loaded, req.cache_salt), req.prompt_ids),
                   generator=torch.Generator().manual_seed(seed),
                   text=detok.TextState(decode=self.loaded.decode, stops=req.sampling.stop))

    def _loop(self) -> None:
        step: _Step | None = None
        try:
            while True:
                with self._lock:
                    while not (self._stopping or self.scheduler.has_work()):
                        self._lock.wait()
                    if self._stopping:
                        break
                    out = self.scheduler.schedule(time.monotonic())
                step = _Step()
                self._run(out, step)
                self._end(step)
                step = None
        except BaseException as exc:  # noqa: BLE001 - the worker must fail every request, never hang them
            self._die(exc, step)
            return
        self._shutdown()

    def _run(self, out: SchedulerOutput, step: _Step) -> None:
        """Execute and update one scheduled step."""
        stats = step.stats
        for seq in out.cancelled_waiting:
            step.outcomes.append((seq.handle, LLMCacheError("cancelled before it started")))
        for seq in out.expired_waiting:
            step.outcomes.append((seq.handle, OverloadedError(
                f"the request waited {self.settings.max_queue_time_s:g} s (--max-queue-time-s) without being "
                "admitted; the model server is overloaded, retry later", retry_after_s=out.retry_after_s,
                code="queue_timeout")))
        if out.expired_waiting:
            stats.num_rejected["queue_timeout"] = len(out.expired_waiting)
        for seq in out.admitted:
            stats.queue_times_s.append(seq.admitted_at - seq.handle.submitted_at)
            stats.num_prompt_tokens += len(seq.prompt)
        for seq in out.cancelled_running:
            self._finish(seq, "cancelled", step)
        segments, sampled = self._prepare(out.scheduled, step)
        if not segments:
            return
        with torch.inference_mode():
            logits = self.forward(self.loaded.model, segments)
        stats.batch_size = len(segments)
        stats.num_batched_tokens = sum(len(s.ids) for s in segments)
        self._update(sampled, logits, step)

    def _prepare(self, scheduled: list[tuple[Seq, int]], step: _Step
                 ) -> tuple[list[forward.Segment], list[Seq]]:
        """The step's segments (new sequences get their KV and cached prefix first) and who samples."""
        segments: list[forward.Segment] = []
        sampled: list[Seq] = []
        for seq, planned in scheduled:
            if seq.kv is None:
                try:
                    self._start(seq, step.stats)
                except Exception as exc:
                    log.exception("prefix-cache lookup failed")
                    self._fail(seq, exc, step)
                    continue
            assert seq.kv is not None
            if seq.prefilling:
                n = min(planned, len(seq.prompt) - seq.kv.length)
                ids = seq.prompt[seq.kv.length:seq.kv.length + n]
                want = seq.kv.length + n == len(seq.prompt)
            else:
                self._trim_sink(seq, step.stats)
                ids, want = [seq.generated[-1]], True
            segments.append(forward.Segment(kv=seq.kv, ids=ids, want_logits=want))
            if want:
                sampled.append(seq)
        return segments, sampled

    def _update(self, sampled: list[Seq], logits: torch.Tensor, step: _Step) -> None:
        """Sample one token per sampling sequence; stream, insert and finish."""
        now = time.monotonic()
        for row, seq in zip(logits, sampled):
            assert seq.kv is not None
            seq.max_kv = max(seq.max_kv, seq.kv.length)
            token = sample_token(row, seq.request.sampling, seq.generator)
            if seq.prefilling:
                seq.ttft_s = now - seq.handle.submitted_at
                step.stats.ttfts_s.append(seq.ttft_s)
                self._insert(seq, seq.prompt, step.stats)
            else:
                step.stats.inter_token_latencies_s.append(now - seq.last_token_at)
            seq.last_token_at = now
            self._accept(seq, token, step)

    def _end(self, step: _Step) -> None:
        """Record the step's stats, then hand out its results (a client that has its answer sees it counted)."""
        with self._lock:
            self._record(self.scheduler.stats(), step.stats)
        for handle, outcome in step.outcomes:
            if isinstance(outcome, BaseException):
                handle.set_exception(outcome)
            else:
                handle.set_result(outcome)

    def _start(self, seq: Seq, stats: IterationStats) -> None:
        """Allocate the sequence's KV and copy in its cached prefix (pinned until it leaves)."""
        req = seq.request
        n = len(req.prompt_ids)
        seq.kv = SeqKV(self.kv_shape, dtype=self.loaded.dtype, device=self.loaded.device,
                       capacity=min(seq.reserved_tokens, n + 64), max_capacity=seq.reserved_tokens)
        if req.enable_prefix_cache and self.prefix_cache is not None:
            started = time.perf_counter()
            seq.match = self.prefix_cache.match_prefix(seq.key, lock=True, into=seq.kv.layers)
            seq.cached_tokens = seq.kv.length = seq.match.num_cached_tokens
            stats.prefix_lookup_s.append(time.perf_counter() - started)
            stats.num_prefix_queried_tokens += n
            stats.num_prefix_hit_tokens += seq.cached_tokens
        seq.handle.cached_tokens = seq.cached_tokens

    def _trim_sink(self, seq: Seq, stats: IterationStats) -> None:
        sink = seq.request.sink
        if sink is None or seq.kv is None:
            return
        assert self._inv_freq is not None
        kv, evicted = sink_mod.trim_kv(list(seq.kv.view()), sink, self._inv_freq)
        if evicted:
            seq.kv.replace(kv)
            seq.sink_evicted += evicted
            stats.num_sink_evicted_tokens += evicted

    def _accept(self, seq: Seq, token: int, step: _Step) -> None:
        """Record a sampled token, emit safe text, finish on EOS / stop string / length."""
        req = seq.request
        seq.generated.append(token)
        step.stats.num_generation_tokens += 1
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
            self._finish(seq, finish, step)

    def _insert(self, seq: Seq, tokens: list[int], stats: IterationStats) -> None:
        """Store ``tokens`` (KV must cover them) unless caching is off or a sink window evicted."""
        req = seq.request
        if (self.prefix_cache is None or not req.enable_prefix_cache or (req.sink is not None and tokens is seq.prompt)
                or seq.sink_evicted or seq.kv is None or not tokens):
            return
        try:
            started = time.perf_counter()
            stored = self.prefix_cache.insert(RadixKey(seq.key.namespace, tokens), seq.kv.view(len(tokens)))
            seq.inserted_tokens += stored.num_new_tokens
            stats.prefix_insert_s.append(time.perf_counter() - started)
            if stored.stored_blocks or stored.evicted.removed_blocks:
                stats.prefix_block_events.append(PrefixBlockEvent(
                    namespace=seq.key.namespace, stored=stored.stored_blocks, removed=stored.evicted.removed_blocks))
        except Exception:
            log.exception("prefix-cache insert failed")

    def _finish(self, seq: Seq, reason: str, step: _Step) -> None:
        req = seq.request
        if seq.kv is not None and seq.kv.length:
            # Only positions that were fed have KV: the prompt plus all but the last sampled token.
            self._insert(seq, (req.prompt_ids + seq.generated)[:seq.kv.length], step.stats)
        now = time.monotonic()
        self._release(seq, now, served=True)
        step.stats.finished.append(FinishedRequestStats(finish_reason=reason,
                                                        e2e_latency_s=now - seq.handle.submitted_at))
        step.outcomes.append((seq.handle, GenerationResult(
            token_ids=tuple(seq.generated), text=seq.text.text, finish_reason=reason,
            prompt_tokens=len(req.prompt_ids), cached_tokens=seq.cached_tokens, ttft_s=seq.ttft_s,
            max_kv_tokens=seq.max_kv, sink_evicted_tokens=seq.sink_evicted, inserted_tokens=seq.inserted_tokens,
        )))

    def _fail(self, seq: Seq, exc: BaseException, step: _Step) -> None:
        self._release(seq, time.monotonic(), served=False)
        step.outcomes.append((seq.handle, exc))

    def _release(self, seq: Seq, now: float, *, served: bool) -> None:
        with self._lock:
            self.scheduler.finish(seq, now, served=served)
        if seq.match is not None and self.prefix_cache is not None:
            self.prefix_cache.release(seq.match)
            seq.match = None
        if seq.kv is not None:
            seq.kv.free()

    def _shutdown(self) -> None:
        """Stopped: running requests end ``cancelled`` (their KV is kept), waiting ones get an error."""
        step = _Step()
        for seq in list(self.scheduler.running):
            self._finish(seq, "cancelled", step)
        with self._lock:
            pending = self.scheduler.drain_waiting()
        for seq in pending:
            step.outcomes.append((seq.handle, LLMCacheError("the model server is shutting down; retry the request")))
        self._end(step)

    def _die(self, exc: BaseException, interrupted: _Step | None) -> None:
        """Fatal worker error: fail everything pending, mark the engine failed, log why.

        ``interrupted`` is the step the error cut short: the results it already made are handed out.
        """
        with self._lock:
            self.failed = f"{type(exc).__name__}: {exc}"
            pending = self.scheduler.drain_waiting()
            running = list(self.scheduler.running)
        log.error("inference worker failed; failing %d running and %d waiting requests; /healthz now reports "
                  "not ready", len(running), len(pending), exc_info=exc)
        err = WorkerFailedError(f"the inference worker failed ({self.failed}); the model server is not ready "
                                "and needs a restart")
        step = interrupted if interrupted is not None else _Step()
        for seq in running:
            try:
                self._fail(seq, err, step)
            except Exception:  # noqa: BLE001 - keep failing the others
                seq.handle.set_exception(err)
        for seq in pending:
            step.outcomes.append((seq.handle, err))
        self._end(step)

    # ---------------------------------------------------------------- stats

    def _record(self, scheduler: SchedulerStats, iteration: IterationStats | None = None) -> None:
        prefix = self.prefix_cache.stats() if self.prefix_cache is not None else None
        for logger in self._stat_loggers:
            logger.record(scheduler, iteration, prefix)


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
