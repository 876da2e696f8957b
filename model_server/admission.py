"""Admission for work done on the event loop's behalf in a thread (embeddings): a bounded, timed FIFO of slots.

Generation is admitted by the engine's scheduler; embeddings get the same shape here::

    request ─▶ a slot free and nobody waiting? run
                 else ≤ max_waiting queued (full: 429 queue_full at once)
                      each waits ≤ max_wait_s (then 429 queue_timeout)
    done ─▶ the slot passes to the oldest waiter

Both answer ``429`` with a ``Retry-After`` from :func:`retry_after_s`. Not thread-safe: one
event loop owns an :class:`Admission`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmcache.model_server.request import OverloadedError

__all__ = ["Admission", "retry_after_s"]


def retry_after_s(*, num_waiting: int, num_slots: int, service_s: float, max_wait_s: float) -> int:
    """Seconds until a queue of ``num_waiting`` has likely drained enough to take one more (1 … max wait).

    ``service_s`` is the moving average of one request's service time (0: unknown, 1 s assumed).
    """
    waves = (num_waiting + 1) / max(1, num_slots)
    guess = waves * (service_s or 1.0)
    return int(min(max(1.0, math.ceil(guess)), max(1.0, max_wait_s)))


class Admission:
    """At most ``num_slots`` at once; at most ``max_waiting`` queued, each for at most ``max_wait_s``."""

    def __init__(self, *, num_slots: int, max_waiting: int, max_wait_s: float, what: str) -> None:
        self.num_slots = num_slots
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.what = what
        """Named in 429 messages (``embeddings``)."""
        self.num_running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._service_s = 0.0

    @property
    def num_waiting(self) -> int:
        return len(self._waiters)

    def retry_after_s(self) -> int:
        return retry_after_s(num_waiting=len(self._waiters), num_slots=self.num_slots, service_s=self._service_s,
                             max_wait_s=self.max_wait_s)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; OverloadedError (429) when none comes in time."""
        await self._acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            yield
        finally:
            seconds = loop.time() - started
            self._service_s = seconds if self._service_s == 0.0 else 0.8 * self._service_s + 0.2 * seconds
            self._release()

    async def _acquire(self) -> None:
        if self.num_running < self.num_slots and not self._waiters:
            self.num_running += 1
            return
        if len(self._waiters) >= self.max_waiting:
            retry = self.retry_after_s()
            raise OverloadedError(
                f"the model server is at capacity for {self.what} ({self.num_running} running, "
                f"{len(self._waiters)} waiting, --max-queue-len {self.max_waiting}); retry after {retry} s",
                retry_after_s=retry, code="queue_full")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
        except TimeoutError:
            self._give_up(fut)
            raise OverloadedError(
                f"the {self.what} request waited {self.max_wait_s:g} s (--max-queue-time-s) without being admitted; "
                "the model server is overloaded, retry later", retry_after_s=1 + self.retry_after_s(),
                code="queue_timeout") from None
        except BaseException:
            self._give_up(fut)
            raise

    def _give_up(self, fut: asyncio.Future[None]) -> None:
        """A waiter leaves: out of the queue, and a slot handed to it meanwhile goes on to the next."""
        if fut in self._waiters:
            self._waiters.remove(fut)
        if fut.done() and not fut.cancelled():
            self._release()
        else:
            fut.cancel()

    def _release(self) -> None:
        while self._waiters:
            nxt = self._waiters.popleft()
            if not nxt.done():
                nxt.set_result(None)  # the slot passes on: num_running stays
                return
        self.num_running -= 1
