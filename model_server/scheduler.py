"""Continuous-batching bookkeeping: the bounded wait queue, running sequences, and each step's plan.

Admission control::

    submit ──▶ waiting (≤ max_queue_len, each ≤ max_queue_time_s) ──▶ running (≤ max_num_seqs,
      │                     │                                           Σ reserved KV ≤ kv budget)
      └ full: 429 at once   └ waited too long: 429; cancelled: dropped

A sequence reserves ``(prompt + max_tokens) × bytes/token`` of KV when it is admitted
(first come, first served: a large head of the queue is never overtaken), so an admitted
sequence can never run out of KV mid-generation and no preemption is needed.

Each step (:func:`plan_step`) takes one decode token from every decoding sequence, then
fills the rest of the token budget with prompt chunks, oldest sequence first::

    budget 256:  [d d d d d d d d | c c c c c … (248 prompt tokens of the oldest prefill) ]

so a long prompt is prefilled over several steps while the others keep decoding.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmcache.model_server import detok
from llmcache.model_server.kv_buffer import SeqKV
from llmcache.model_server.radix import PrefixMatch

if TYPE_CHECKING:
    from llmcache.model_server.generate import RequestHandle

__all__ = ["Sequence", "WaitQueue", "plan_step"]


@dataclass(slots=True, eq=False)
class Sequence:
    """A running request: its KV, what it generated, its timings."""

    handle: RequestHandle
    namespace: str
    generator: torch.Generator
    text: detok.TextState
    reserved_bytes: int
    reserved_tokens: int
    admitted_at: float
    kv: SeqKV | None = None
    """Allocated when its first prompt chunk is scheduled (the prefix-cache lookup happens then)."""
    match: PrefixMatch | None = None
    """The pinned radix path (released when the sequence leaves)."""
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    prompt_inserted: bool = False
    ttft_s: float = 0.0
    last_token_at: float = 0.0
    sink_evicted: int = 0
    max_kv: int = 0
    inserted_tokens: int = 0

    @property
    def prompt(self) -> list[int]:
        return self.handle.request.prompt_ids

    @property
    def prefilling(self) -> bool:
        """Still feeding its prompt (no token sampled yet)."""
        return not self.generated


def plan_step(running: list[Sequence], *, max_num_batched_tokens: int) -> Iterator[tuple[Sequence, int]]:
    """``(sequence, tokens to feed)`` for one step: every decode, then prompt chunks within the budget.

    Decodes always run (the budget is at least ``max_num_seqs`` by construction); prompt
    chunks get what is left, but at least a quarter of the budget so prefills never starve.
    Sequences whose KV is not allocated yet yield their whole remaining prompt as the
    chunk bound; the caller allocates and looks up the prefix first, then trims.
    """
    decoding = [s for s in running if not s.prefilling]
    for s in decoding:
        yield s, 1
    left = max(max_num_batched_tokens - len(decoding), max_num_batched_tokens // 4)
    for s in running:
        if left <= 0:
            return
        if s.prefilling:
            done = s.kv.length if s.kv is not None else 0
            chunk = min(len(s.prompt) - done, left)
            if chunk > 0:
                yield s, chunk
                left -= chunk


class WaitQueue:
    """FIFO of submitted requests with a length bound and a wait-time bound; not thread-safe (engine lock)."""

    def __init__(self, *, max_len: int, max_wait_s: float) -> None:
        self.max_len = max_len
        self.max_wait_s = max_wait_s
        self._q: deque[RequestHandle] = deque()
        self._service_s = 0.0
        """Moving average of admitted-to-finished time: the basis of ``Retry-After``."""

    def __len__(self) -> int:
        return len(self._q)

    def room(self) -> int:
        return self.max_len - len(self._q)

    def push(self, handle: RequestHandle) -> None:
        self._q.append(handle)

    def peek(self) -> RequestHandle | None:
        return self._q[0] if self._q else None

    def pop(self) -> RequestHandle:
        return self._q.popleft()

    def drain(self) -> list[RequestHandle]:
        out = list(self._q)
        self._q.clear()
        return out

    def take_expired(self, now: float) -> tuple[list[RequestHandle], list[RequestHandle]]:
        """Remove and return ``(cancelled, waited too long)`` handles."""
        cancelled = [h for h in self._q if h.cancelled]
        expired = [h for h in self._q if not h.cancelled and now - h.submitted_at > self.max_wait_s]
        if cancelled or expired:
            gone = {id(h) for h in cancelled + expired}
            self._q = deque(h for h in self._q if id(h) not in gone)
        return cancelled, expired

    def observe_service(self, seconds: float) -> None:
        self._service_s = seconds if self._service_s == 0.0 else 0.8 * self._service_s + 0.2 * seconds

    def retry_after_s(self, max_num_seqs: int) -> int:
        """Seconds until the queue has likely drained enough to take one more (1 … max wait)."""
        waves = (len(self._q) + 1) / max(1, max_num_seqs)
        guess = waves * (self._service_s or 1.0)
        return int(min(max(1.0, math.ceil(guess)), max(1.0, self.max_wait_s)))

    @staticmethod
    def now() -> float:
        return time.monotonic()
