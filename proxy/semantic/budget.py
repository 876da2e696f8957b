"""Sliding one-minute limits of error-bounded caching's extra work (:mod:`llmcache.proxy.semantic.bound`).

:class:`Budget` caps explorations, the only extra upstream calls, at a share of the requests counted in
the last minute; :class:`RateCap` caps LLM-judge calls per minute. Both are per process and O(1) amortised
(one bucket per second in a deque), and neither ever blocks: a call that does not fit is simply not made.
"""

from __future__ import annotations

import time
from collections import deque

__all__ = ["Budget", "RateCap"]


class RateCap:
    """At most ``per_minute`` events in any sliding minute (LLM-judge calls)."""

    __slots__ = ("_times", "per_minute")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()

    def try_take(self, n: int = 1, now_s: float | None = None) -> bool:
        now = time.monotonic() if now_s is None else now_s
        while self._times and self._times[0] <= now - 60.0:
            self._times.popleft()
        if len(self._times) + n > self.per_minute:
            return False
        self._times.extend([now] * n)
        return True


class Budget:
    """Extra calls allowed in the last minute: at most ``share`` of the requests counted in it."""

    __slots__ = ("_extra", "_requests", "share", "window_s")

    def __init__(self, share: float, *, window_s: int = 60) -> None:
        self.share = share
        self.window_s = window_s
        self._requests: deque[tuple[int, int]] = deque()
        self._extra: deque[tuple[int, int]] = deque()

    @staticmethod
    def _add(q: deque[tuple[int, int]], now: int) -> None:
        if q and q[-1][0] == now:
            q[-1] = (now, q[-1][1] + 1)
        else:
            q.append((now, 1))

    def _trim(self, now: int) -> None:
        for q in (self._requests, self._extra):
            while q and q[0][0] <= now - self.window_s:
                q.popleft()

    def note_request(self, now_s: float | None = None) -> None:
        now = int(time.monotonic() if now_s is None else now_s)
        self._trim(now)
        self._add(self._requests, now)

    def try_take(self, now_s: float | None = None) -> bool:
        """Take one extra call if the window allows it (never more than ``share`` × requests)."""
        now = int(time.monotonic() if now_s is None else now_s)
        self._trim(now)
        requests = sum(n for _, n in self._requests)
        extra = sum(n for _, n in self._extra)
        if extra + 1 > self.share * requests:
            return False
        self._add(self._extra, now)
        return True
