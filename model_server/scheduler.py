"""The scheduler: owns the waiting queue, the running set and their KV reservations, and plans each step.

vLLM v1's shape. The engine loop is ``schedule → execute → update``; only the scheduler
decides who waits, who runs and how many tokens each feeds::

    Engine.submit_many ──▶ Scheduler.add_requests ──▶ waiting (≤ max_queue_len; full: False → 429 at once)
                                                          │ each waits ≤ max_queue_time_s (then 429)
    Engine worker, every step:                            ▼
      Scheduler.schedule() ─▶ SchedulerOutput   admit: running ≤ max_num_seqs, Σ reserved KV ≤ budget
                               │                plan:  every decode + prompt chunks within the token budget
      execute (forward pass) ◀─┘
      update (sample, finish) ─▶ Scheduler.finish(seq): the reservation is released

A sequence reserves ``reservation_tokens × bytes/token`` of KV when it is admitted
(prompt + max_tokens, or the sink window's bound; first come, first served: a large head
of the queue is never overtaken), so an admitted sequence can never run out of KV
mid-generation and no preemption is needed.

Each step's plan (:func:`plan_step`) takes one decode token from every decoding sequence,
then fills the rest of the token budget with prompt chunks::

    budget 256:  [d d d d d d d d | o o o … (a quarter: the oldest prefill) | s s … l l l … (the rest) ]

so a long prompt is prefilled over several steps while the others keep decoding. The rest
goes to the prefill with the least left to feed first, its cached prefix counted (the
radix tree is asked, without side effects, before the sequence's KV exists): a request
whose system prompt is cached gets its first token in the next step instead of queueing
behind another tenant's cold 1,000-token prefill. Shortest-remaining-first is the order
that minimises mean time to first token (SGLang's cache-aware policy orders by longest
cached prefix for the same reason); the oldest prefill's quarter means a stream of short
prompts can slow a long one down but never starve it. A request that shares a long uncached
prefix with one already prefilling (the same tenant asking twice at once) waits for that
prefill and then finds the prefix cached, instead of computing the same tokens again.

Not thread-safe: the engine calls every method under its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from llmcache.model_server import admission, detok
from llmcache.model_server.kv_buffer import SeqKV
from llmcache.model_server.radix import MatchResult, RadixCache, RadixKey, common_prefix_len
from llmcache.model_server.request import GenerationRequest, RequestHandle
from llmcache.model_server.settings import BatchingSettings
from llmcache.model_server.stats import SchedulerStats

__all__ = ["Scheduler", "SchedulerOutput", "Sequence", "WaitQueue", "plan_step", "reservation_tokens"]


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the engine: its KV, what it generated, its timings (identity-compared)."""

    handle: RequestHandle
    key: RadixKey
    """The prompt in its prefix-cache namespace (model revision + dtype + salt hash)."""
    generator: torch.Generator
    text: detok.TextState
    reserved_bytes: int = 0
    """KV bytes reserved while running (set at admission)."""
    reserved_tokens: int = 0
    admitted_at: float = 0.0
    kv: SeqKV | None = None
    """Allocated when its first prompt chunk is scheduled (the prefix-cache lookup happens then)."""
    match: MatchResult | None = None
    """The pinned radix path (released when the sequence leaves)."""
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    ttft_s: float = 0.0
    last_token_at: float = 0.0
    sink_evicted: int = 0
    max_kv: int = 0
    inserted_tokens: int = 0

    @property
    def request(self) -> GenerationRequest:
        return self.handle.request

    @property
    def prompt(self) -> list[int]:
        return self.handle.request.prompt_ids

    @property
    def prefilling(self) -> bool:
        """Still feeding its prompt (no token sampled yet)."""
        return not self.generated


def reservation_tokens(request: GenerationRequest) -> int:
    """KV positions a request may hold at most: prompt + max_tokens, or the sink window's bound."""
    n = len(request.prompt_ids)
    full = n + request.sampling.max_tokens
    if request.sink is not None:
        return min(full, max(n, request.sink.max_tokens) + 1)
    return full


@dataclass(slots=True)
class SchedulerOutput:
    """What one step runs, and who left the queue or the running set without running."""

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    """``(sequence, tokens to feed)``: every decode first, then prompt chunks (see :func:`plan_step`)."""
    admitted: list[Sequence] = field(default_factory=list)
    """Joined the running set in this step (their KV is allocated when first executed)."""
    cancelled_running: list[Sequence] = field(default_factory=list)
    """Running, cancelled by their client: the engine finishes them (``cancelled``); not in ``scheduled``."""
    cancelled_waiting: list[Sequence] = field(default_factory=list)
    """Left the queue before they ran (cancelled by their client)."""
    expired_waiting: list[Sequence] = field(default_factory=list)
    """Left the queue after waiting longer than ``max_queue_time_s`` (429 ``queue_timeout``)."""
    retry_after_s: int = 1
    """What to tell the expired ones."""


def plan_step(running: list[Sequence], *, max_num_batched_tokens: int,
              cached_length: Callable[[Sequence], int] | None = None) -> Iterator[tuple[Sequence, int]]:
    """``(sequence, tokens to feed)`` for one step: every decode, then prompt chunks within the budget.

    Decodes always run (the budget is at least ``max_num_seqs`` by construction); prompt
    chunks get what is left, but at least a quarter of the budget so prefills never starve.
    Of that, the oldest prefill gets up to a quarter of the budget first, then the prefills
    take the rest in order of tokens left to feed, fewest first (ties: oldest first). A
    sequence whose KV is not allocated yet counts ``cached_length(seq)`` tokens as already
    cached (the prefix the engine's lookup will find in this same step; ``None``: none), so
    its chunk bound is exactly what it has left; the engine allocates, looks up the prefix,
    then trims.
    """
    decoding = [s for s in running if not s.prefilling]
    for s in decoding:
        yield s, 1
    prefilling = [s for s in running if s.prefilling]
    if not prefilling:
        return
    left = max(max_num_batched_tokens - len(decoding), max_num_batched_tokens // 4)
    peek = cached_length if len(prefilling) > 1 else None  # order matters only among several
    rem: dict[Sequence, int] = {}
    for s in prefilling:
        if s.kv is not None:
            rem[s] = len(s.prompt) - s.kv.length
        else:
            rem[s] = len(s.prompt) - (peek(s) if peek is not None else 0)
    if peek is not None:
        waits = _waiting_for_a_shared_prefill(prefilling, rem)
        if waits:
            prefilling = [s for s in prefilling if s not in waits]
    oldest = prefilling[0]
    grant = {oldest: min(rem[oldest], max(max_num_batched_tokens // 4, 1), left)}
    left -= grant[oldest]
    for s in sorted(prefilling, key=rem.__getitem__):
        if left <= 0:
            break
        more = min(rem[s] - grant.get(s, 0), left)
        if more > 0:
            grant[s] = grant.get(s, 0) + more
            left -= more
    for s in prefilling:
        if s in grant:
            yield s, grant[s]


SHARED_PREFILL_MIN_TOKENS = 32
"""A sequence not started yet waits for another's prefill when they share at least this many
uncached tokens (and at least half of what it has left): SGLang's in-batch prefix check."""


def _waiting_for_a_shared_prefill(prefilling: list[Sequence], rem: dict[Sequence, int]) -> set[Sequence]:
    """Sequences not started yet that should wait one more step for an earlier sequence's prefill.

    A burst of requests sharing a prompt nobody has cached yet (a tenant's system prompt,
    asked twice at once): the first prefills it and inserts it into the prefix cache when
    its prefill ends; a second one started meanwhile would find nothing and prefill the
    same tokens again. So a sequence whose KV is not allocated waits while a prefilling one
    that has started (or an earlier one starting in this step) shares at least
    :data:`SHARED_PREFILL_MIN_TOKENS` more tokens with it than the cache holds, and at
    least half of what it has left: in the step after that prefill it finds them cached.
    It cannot wait for ever: the one it waits for is never made to wait itself.
    """
    waits: set[Sequence] = set()
    ahead = [p for p in prefilling if p.kv is not None and p.request.enable_prefix_cache]
    for s in prefilling:
        if s.kv is not None or not s.request.enable_prefix_cache:
            continue
        cached = len(s.prompt) - rem[s]
        need = max(SHARED_PREFILL_MIN_TOKENS, rem[s] // 2)
        if any(p.key.namespace == s.key.namespace and common_prefix_len(s.prompt, p.prompt) - cached >= need
               for p in ahead):
            waits.add(s)
        else:
            ahead.append(s)
    return waits


class WaitQueue:
    """FIFO of submitted sequences with a length bound and a wait-time bound."""

    def __init__(self, *, max_len: int, max_wait_s: float) -> None:
        self.max_len = max_len
        self.max_wait_s = max_wait_s
        self._q: deque[Sequence] = deque()
        self._service_s = 0.0
        """Moving average of admitted-to-finished time: the basis of ``Retry-After``."""

    def __len__(self) -> int:
        return len(self._q)

    def room(self) -> int:
        return self.max_len - len(self._q)

    def push(self, seq: Sequence) -> None:
        self._q.append(seq)

    def peek(self) -> Sequence | None:
        return self._q[0] if self._q else None

    def pop(self) -> Sequence:
        return self._q.popleft()

    def drain(self) -> list[Sequence]:
        out = list(self._q)
        self._q.clear()
        return out

    def take_expired(self, now: float) -> tuple[list[Sequence], list[Sequence]]:
        """Remove and return ``(cancelled, waited too long)`` sequences."""
        cancelled = [s for s in self._q if s.handle.cancelled]
        expired = [s for s in self._q if not s.handle.cancelled and now - s.handle.submitted_at > self.max_wait_s]
        if cancelled or expired:
            gone = {id(s) for s in cancelled + expired}
            self._q = deque(s for s in self._q if id(s) not in gone)
        return cancelled, expired

    def observe_service(self, seconds: float) -> None:
        self._service_s = seconds if self._service_s == 0.0 else 0.8 * self._service_s + 0.2 * seconds

    def retry_after_s(self, max_num_seqs: int) -> int:
        """Seconds until the queue has likely drained enough to take one more (1 … max wait)."""
        return admission.retry_after_s(num_waiting=len(self._q), num_slots=max_num_seqs, service_s=self._service_s,
                                       max_wait_s=self.max_wait_s)


class Scheduler:
    """Waiting queue, running set and KV reservations; :meth:`schedule` plans one step."""

    def __init__(self, settings: BatchingSettings, *, kv_budget_bytes: int, kv_bytes_per_token: int,
                 prefix_cache: RadixCache | None = None) -> None:
        self.settings = settings
        self.prefix_cache = prefix_cache
        """Asked (read-only) how much of a waiting prompt is cached, to order prompt chunks."""
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self.waiting = WaitQueue(max_len=settings.max_queue_len, max_wait_s=settings.max_queue_time_s)
        self.running: list[Sequence] = []
        self.reserved_bytes = 0

    # ------------------------------------------------------------------ queue

    def reservation_bytes(self, request: GenerationRequest) -> int:
        """KV bytes ``request`` reserves while it runs."""
        return reservation_tokens(request) * self.kv_bytes_per_token

    def add_requests(self, seqs: Iterable[Sequence]) -> bool:
        """Queue all of ``seqs`` or none; ``False`` when the queue lacks room (back-pressure as a value)."""
        batch = list(seqs)
        if self.waiting.room() < len(batch):
            return False
        for s in batch:
            self.waiting.push(s)
        return True

    def retry_after_s(self) -> int:
        """What a refused request should wait before retrying (seconds, ≥ 1)."""
        return self.waiting.retry_after_s(self.settings.max_num_seqs)

    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    def drain_waiting(self) -> list[Sequence]:
        """Empty the queue (shutdown, worker failure) and return what it held."""
        return self.waiting.drain()

    # ------------------------------------------------------------------- step

    def schedule(self, now: float) -> SchedulerOutput:
        """Expire the queue, admit what fits, and plan one step over the running set."""
        out = SchedulerOutput()
        out.cancelled_waiting, out.expired_waiting = self.waiting.take_expired(now)
        if out.expired_waiting:
            out.retry_after_s = 1 + self.retry_after_s()
        while len(self.running) < self.settings.max_num_seqs and (head := self.waiting.peek()) is not None:
            tokens = reservation_tokens(head.request)
            need = tokens * self.kv_bytes_per_token
            if self.running and self.reserved_bytes + need > self.kv_budget_bytes:
                break  # first come, first served: wait for KV to free up
            self.waiting.pop()
            head.reserved_bytes, head.reserved_tokens, head.admitted_at = need, tokens, now
            self.reserved_bytes += need
            self.running.append(head)
            out.admitted.append(head)
        out.cancelled_running = [s for s in self.running if s.handle.cancelled]
        live = [s for s in self.running if not s.handle.cancelled] if out.cancelled_running else self.running
        out.scheduled = list(plan_step(live, max_num_batched_tokens=self.settings.max_num_batched_tokens,
                                       cached_length=self._cached_length if self.prefix_cache is not None else None))
        return out

    def _cached_length(self, seq: Sequence) -> int:
        """Tokens of ``seq``'s prompt the prefix cache holds now (0 when it may not use the cache)."""
        assert self.prefix_cache is not None  # passed to plan_step only with a cache
        return self.prefix_cache.cached_length(seq.key) if seq.request.enable_prefix_cache else 0

    def finish(self, seq: Sequence, now: float, *, served: bool = True) -> None:
        """``seq`` left the running set: release its reservation; learn its service time when it was ``served``."""
        if seq in self.running:
            self.running.remove(seq)
            self.reserved_bytes -= seq.reserved_bytes
            if served:
                self.waiting.observe_service(now - seq.admitted_at)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(num_running=len(self.running), num_waiting=len(self.waiting),
                              kv_allocated_bytes=sum(s.kv.nbytes for s in self.running if s.kv is not None),
                              kv_reserved_bytes=self.reserved_bytes, kv_budget_bytes=self.kv_budget_bytes)
