"""Deadlines and a circuit breaker around every Redis operation: the cache fails open.

::

    closed ──N consecutive failures──▶ open ──cooldown elapsed──▶ half-open
      ▲                                 ▲                           │ one probe
      └──────────── probe succeeds ─────┴──── probe fails (cooldown ×2, ≤ 30 s)

While open, :meth:`Breaker.call` raises :class:`CacheUnavailable` at once (no
network), so a dead Redis costs nothing per request; callers turn it into a
``bypass``. A slow Redis (past the deadline) and an unreachable one count as
failures. A full one (``OOM command not allowed``) fails the write only: it
still answers reads, so it does not open the breaker and hits keep coming.

The deadline is stretched by the event loop's own lateness (:class:`LoopLag`):
when the proxy's CPU is saturated, a reply that Redis sent in time can wait in
the loop's ready queue past 50 ms, and that must not be mistaken for a slow
Redis (turning overload into bypasses would add upstream load exactly when the
proxy is busiest). The stretch is capped, so a hung Redis still trips quickly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

__all__ = ["Breaker", "CacheUnavailable", "LoopLag"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_COOLDOWN_S = 30.0


#: Upper bound of a lag-stretched deadline (s): a dead Redis is still detected within it.
_MAX_STRETCHED_S = 1.0


class LoopLag:
    """How late this event loop runs its timers right now (s): CPU starvation, not Redis time.

    A task wakes every ``interval_s`` and records how late it woke; the value decays (halving
    every ~60 ms), so one stall does not stretch deadlines for long.

    ``interval_s`` defaults to 0.25 s: every wake-up of an otherwise idle process costs ~0.1 ms
    of CPU on a VM (timer, context switch, a loop turn), and at the former 20 ms that was 7 ms of
    CPU per second, ~190 µs per request at 37 requests/s. A saturated loop runs every timer late,
    so a sparser timer still sees it; it only notices a saturation up to ``interval_s`` later.
    """

    __slots__ = ("interval_s", "lag_s")

    #: The reading halves this often (s) once the loop keeps time again.
    HALF_LIFE_S = 0.06

    def __init__(self, *, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            elapsed = loop.time() - start
            late = max(0.0, elapsed - self.interval_s)
            self.lag_s = max(late, self.lag_s * 0.5 ** (elapsed / self.HALF_LIFE_S))


async def _within(deadline_s: float, op: Callable[[], Awaitable[T]]) -> T:
    async with asyncio.timeout(deadline_s):
        return await op()


class CacheUnavailable(Exception):
    """Redis did not answer in time, failed, or the breaker is open: serve without the cache."""


class Breaker:
    """Per-process breaker; :meth:`call` runs one Redis operation under a deadline."""

    __slots__ = (
        "_clock",
        "_cooldown_s",
        "_failures",
        "_open_until",
        "_probing",
        "base_cooldown_s",
        "failure_threshold",
        "lag",
        "num_failures_total",
        "num_opened_total",
        "settled",
        "timeout_s",
    )

    def __init__(self, *, timeout_s: float = 0.05, failure_threshold: int = 3, cooldown_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, lag: LoopLag | None = None) -> None:
        self.timeout_s = timeout_s
        self.failure_threshold = failure_threshold
        self.base_cooldown_s = cooldown_s
        self._failures = 0
        self._open_until: float | None = None
        self._cooldown_s = cooldown_s
        self._probing = False
        self.num_failures_total = 0
        self.num_opened_total = 0
        self.settled = False
        """True once any operation has succeeded or the breaker has opened (what ``/readyz`` waits for)."""
        self._clock = clock
        self.lag = lag
        """Event-loop lag monitor whose reading stretches the deadline (``None``: fixed deadline)."""

    def deadline_s(self, timeout_s: float | None = None) -> float:
        """The deadline of one operation now: ``timeout_s`` (default :attr:`timeout_s`) plus twice the
        loop lag (a reply waits for the loop once to be read and once to resume the caller), capped."""
        base = self.timeout_s if timeout_s is None else timeout_s
        if self.lag is None or self.lag.lag_s <= 0:
            return base
        return max(base, min(base + 2 * self.lag.lag_s, _MAX_STRETCHED_S))

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    @property
    def is_open(self) -> bool:
        """True while calls are refused without touching Redis."""
        return self._open_until is not None and (self._clock() < self._open_until or self._probing)

    async def call(self, op: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        """Run ``op()`` under the deadline; raise :class:`CacheUnavailable` on any failure or when open."""
        # asyncio.timeout, not wait_for: no extra task per operation on the hit path.
        return await self._run(lambda deadline_s: _within(deadline_s, op), timeout_s)

    async def call_bounded(self, op: Callable[[float], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        """As :meth:`call`, for an operation that keeps the deadline itself: ``op(deadline_s)`` must raise
        ``TimeoutError`` once ``deadline_s`` seconds have passed.

        The exact store's lookups and writes take this way (:mod:`llmcache.proxy.resp` keeps the deadline
        with one timer per command): no ``asyncio.timeout`` context per operation on the request path.
        """
        return await self._run(op, timeout_s)

    async def _run(self, op: Callable[[float], Awaitable[T]], timeout_s: float | None) -> T:
        probe = self.enter()
        try:
            result = await op(self.deadline_s(timeout_s))
        except Exception as exc:
            raise self.failed(exc, probe=probe) from exc
        except BaseException:  # cancelled: neither outcome, but the probe is over
            self.abandoned(probe=probe)
            raise
        self.succeeded(probe=probe)
        return result

    def enter(self) -> bool:
        """Start one operation by hand (:meth:`call` does this itself): raise :class:`CacheUnavailable`
        while open; True when this operation is the half-open probe. End it with exactly one of
        :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`, passing that flag back.

        For an operation that is a future with a callback rather than an awaited coroutine (the
        background store of a miss: :func:`llmcache.proxy.misses.store_in_background`)."""
        if self._open_until is not None:
            if self.is_open:
                raise CacheUnavailable("redis circuit breaker is open")
            self._probing = True  # half-open: exactly one request tries
            return True
        return False

    def abandoned(self, *, probe: bool) -> None:
        """End an operation :meth:`enter` started without an outcome (never sent, or cancelled)."""
        if probe:
            self._probing = False

    def succeeded(self, *, probe: bool) -> None:
        if probe:
            self._probing = False
        self._on_success(probe=probe)

    def failed(self, exc: BaseException, *, probe: bool) -> CacheUnavailable:
        """Count the failure ``exc`` of an operation :meth:`enter` started; the :class:`CacheUnavailable` to raise."""
        if probe:
            self._probing = False
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            # A full Redis refuses writes but still answers reads: keep serving hits.
            self.num_failures_total += 1
            return CacheUnavailable("redis is full (maxmemory reached); entry not stored")
        if not isinstance(exc, (TimeoutError, redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
                                OSError)):
            # Fail open on anything else too: redis-py's cluster client can raise AttributeError on a
            # connection torn down by a failover mid-command. Logged with its traceback, since it may
            # also be a bug of ours; the request still turns into a bypass, never a 500.
            # (RedisClusterException, no node serves a slot mid-failover, is not a RedisError.)
            log.warning("redis operation raised %s: treating it as a cache failure", type(exc).__name__,
                        exc_info=exc)
        self._on_failure(exc, probe=probe)
        return CacheUnavailable(f"redis operation failed: {type(exc).__name__}")

    def _on_success(self, *, probe: bool) -> None:
        self.settled = True
        self._failures = 0
        if self._open_until is not None:
            log.info("redis is back: circuit breaker closed")
        self._open_until = None
        self._cooldown_s = self.base_cooldown_s

    def _on_failure(self, exc: BaseException, *, probe: bool) -> None:
        self.num_failures_total += 1
        self._failures += 1
        if probe:
            self._cooldown_s = min(self._cooldown_s * 2, _MAX_COOLDOWN_S)
            self._open_until = self._clock() + self._cooldown_s
            log.debug("redis probe failed (%s); next probe in %.1fs", type(exc).__name__, self._cooldown_s)
        elif self._failures >= self.failure_threshold and self._open_until is None:
            self.num_opened_total += 1
            self._open_until = self._clock() + self._cooldown_s
            self.settled = True
            log.warning("redis failed %d times in a row (%s): bypassing the cache, probing again in %.1fs",
                        self._failures, type(exc).__name__, self._cooldown_s)
