"""What the prefix cache holds and how busy the server is, for routers (``GET /llmcache/v1/cache-state``).

The log is one of the engine's stat loggers: after every step it takes the step's
:class:`~llmcache.model_server.stats.PrefixBlockEvent` s and the load levels. A router (the
proxy sidecar, :mod:`llmcache.proxy.replicas`) follows it by long polling::

    engine step ─▶ record()   stored/removed block hashes → numbered events (bounded) + the live set
                              running / waiting / KV levels → the load snapshot
    router      ─▶ read(epoch, since, wait_s)
                   same epoch and ``since`` still in the log → the events after ``since``
                                                               (waits up to ``wait_s`` for one)
                   otherwise (first call, restart, fell behind) → ``reset`` + every live hash

Hashes are :mod:`llmcache.prefix_hash` block hashes: salted namespaces hash apart, so a
router without a tenant's salt learns nothing about that tenant's prompts. What is
published follows ``--report-cached-tokens`` (the same side channel as ``cached_tokens``):
``salted`` (default) publishes blocks of salted requests only, ``always`` every block,
``never`` none (routers then balance by load and consistent hashing).

Thread-safe: :meth:`PrefixEventLog.record` runs on the inference worker, :meth:`read` on the
event loop (woken through ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmcache.model_server.stats import IterationStats, PrefixCacheStats, SchedulerStats

__all__ = ["PUBLISH_MODES", "PrefixEventLog"]

PUBLISH_MODES = ("salted", "always", "never")

_MAX_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    op: str
    """``+`` stored, ``-`` removed."""
    hashes: tuple[int, ...]


class PrefixEventLog:
    """Numbered block-hash events (at most ``max_hashes`` retained) and the latest load; see the module doc."""

    def __init__(self, *, base_namespace: str, block_tokens: int, publish: str = "salted", max_num_seqs: int,
                 max_hashes: int = 200_000) -> None:
        if publish not in PUBLISH_MODES:
            raise ValueError(f"publish must be one of {PUBLISH_MODES}")
        self.base_namespace = base_namespace
        self.block_tokens = block_tokens
        self.publish = publish
        self.max_num_seqs = max_num_seqs
        self.max_hashes = max_hashes
        self.epoch = secrets.token_hex(8)
        """Changes when the server restarts: a router holding another epoch's position starts over."""
        self._lock = threading.Lock()
        self._events: deque[_Event] = deque()
        self._num_event_hashes = 0
        self._floor = 0
        """Events after this sequence number are all retained."""
        self._seq = 0
        self._live: set[int] = set()
        self._load: dict[str, int] = {"num_running": 0, "num_waiting": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._num_waiters = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop whose :meth:`read` calls wait for events."""
        self._loop = loop

    # -------------------------------------------------------------- writer

    def _published(self, namespace: str) -> bool:
        if self.publish == "never":
            return False
        return self.publish == "always" or namespace != self.base_namespace

    def record(self, scheduler: SchedulerStats, iteration: IterationStats | None = None,
               prefix_cache: PrefixCacheStats | None = None) -> None:
        """Take one step's block events and load (a :class:`~llmcache.model_server.stats.StatLogger`)."""
        load = {"num_running": scheduler.num_running, "num_waiting": scheduler.num_waiting,
                "max_num_seqs": self.max_num_seqs, "kv_reserved_bytes": scheduler.kv_reserved_bytes,
                "kv_budget_bytes": scheduler.kv_budget_bytes}
        if prefix_cache is not None:
            load["prefix_cache_bytes"] = prefix_cache.total_bytes
            load["prefix_cache_budget_bytes"] = prefix_cache.budget_bytes
        changed = False
        with self._lock:
            self._load = load
            for ev in iteration.prefix_block_events if iteration is not None else ():
                removed = tuple(h for h in ev.removed if h in self._live)
                if removed:
                    self._live.difference_update(removed)
                    self._append("-", removed)
                    changed = True
                if ev.stored and self._published(ev.namespace):
                    self._live.update(ev.stored)
                    self._append("+", ev.stored)
                    changed = True
        if changed and self._num_waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody is waiting any more
                self._loop.call_soon_threadsafe(self._wake)

    def _append(self, op: str, hashes: tuple[int, ...]) -> None:
        self._seq += 1
        self._events.append(_Event(self._seq, op, hashes))
        self._num_event_hashes += len(hashes)
        while self._num_event_hashes > self.max_hashes and len(self._events) > 1:
            old = self._events.popleft()
            self._num_event_hashes -= len(old.hashes)
            self._floor = old.seq

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -------------------------------------------------------------- reader

    def _answer(self, epoch: str | None, since: int | None) -> dict[str, Any] | None:
        """The answer now, or ``None`` when the caller is up to date (there is nothing new to say)."""
        with self._lock:
            base = {"epoch": self.epoch, "seq": self._seq, "namespace": self.base_namespace,
                    "block_tokens": self.block_tokens, "load": dict(self._load)}
            if epoch != self.epoch or since is None or since < self._floor or since > self._seq:
                return {**base, "reset": True, "events": [["+", sorted(self._live)]] if self._live else []}
            if since == self._seq:
                return None
            events = [[e.op, list(e.hashes)] for e in self._events if e.seq > since]
            return {**base, "reset": False, "events": events}

    async def read(self, *, epoch: str | None, since: int | None, wait_s: float) -> dict[str, Any]:
        """Events after ``since`` in ``epoch`` (or a reset with every live hash), waiting up to ``wait_s`` for one."""
        answer = self._answer(epoch, since)
        if answer is not None or wait_s <= 0:
            return answer if answer is not None else self._current()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_s, _MAX_WAIT_S)
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            self._num_waiters += 1
            try:
                answer = self._answer(epoch, since)  # re-check: an event may have landed before we registered
                if answer is not None:
                    return answer
                left = deadline - loop.time()
                if left <= 0:
                    return self._current()
                try:
                    await asyncio.wait_for(fut, left)
                except TimeoutError:
                    return self._current()
            finally:
                self._num_waiters -= 1
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def _current(self) -> dict[str, Any]:
        """No new events: the position and the latest load."""
        with self._lock:
            return {"epoch": self.epoch, "seq": self._seq, "namespace": self.base_namespace,
                    "block_tokens": self.block_tokens, "load": dict(self._load), "reset": False, "events": []}
