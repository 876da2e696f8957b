"""Admission limits of the request pipeline: a shared body-byte budget and a deadline-bound body read.

Memory per cacheable request is dominated by its body (held raw for forwarding and
storing, parsed for the key; parsing peaks at ~15× the body). Two bounds keep the
sidecar inside its memory limit whatever the clients do::

    Content-Length > max_body_bytes ─────────────────────────────▶ 413
    Content-Length: budget.try_take(Content-Length) fails ────────▶ 429 Retry-After: 1 (shed, never queued)
    chunked (no Content-Length): the reservation grows with each
      chunk received; no room for the next chunk ────────────────▶ 429 Retry-After: 1, connection closed
    read body within body_timeout_s ─────────── too slow ────────▶ 408 (slowloris)
    … request runs …  reservation.release() when it ends

A body without ``Content-Length`` costs what it has sent so far, not ``max_body_bytes``: idle
chunked uploads cannot reserve the budget away from everyone else.

The other direction has a deadline too: every write to a client (each streamed chunk via
:meth:`WriteDeadlines.write`, a whole answer via :func:`write_deadline_middleware`) must be taken
within ``write_timeout_s``, or the connection is aborted and :class:`WriteStalled` (a
``ConnectionResetError``: the client is gone) is raised. A client that stops reading therefore
cannot hold an upstream connection, or stall the requests that joined its upstream call, for
longer than that.

Back-pressure is a value (:class:`BodyRead`), not an exception, as in vLLM's block pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["BodyBudget", "BodyRead", "Reservation", "WriteDeadlines", "WriteStalled", "read_body",
           "write_deadline_middleware"]


class BodyBudget:
    """Bytes of request bodies held by requests in progress, capped at ``capacity_bytes``."""

    __slots__ = ("capacity_bytes", "num_shed_total", "used_bytes")

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.num_shed_total = 0

    def try_take(self, num_bytes: int) -> bool:
        """Reserve ``num_bytes``; False (and counted as shed) when that would exceed the capacity."""
        if self.used_bytes + num_bytes > self.capacity_bytes:
            self.num_shed_total += 1
            return False
        self.used_bytes += num_bytes
        return True

    def give(self, num_bytes: int) -> None:
        """Return bytes taken with :meth:`try_take`."""
        self.used_bytes = max(0, self.used_bytes - num_bytes)


class Reservation:
    """The bytes one request holds in a :class:`BodyBudget`: taken up front (``Content-Length``) or
    grown as a chunked body arrives, and given back once with :meth:`release`."""

    __slots__ = ("_budget", "num_bytes")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.num_bytes = 0

    def grow_to(self, num_bytes: int) -> bool:
        """Hold ``num_bytes`` in all; False (nothing more taken, counted as shed) when the budget lacks room."""
        more = num_bytes - self.num_bytes
        if more <= 0:
            return True
        if not self._budget.try_take(more):
            return False
        self.num_bytes = num_bytes
        return True

    def release(self) -> None:
        self._budget.give(self.num_bytes)
        self.num_bytes = 0


@dataclass(slots=True)
class BodyRead:
    """Outcome of :func:`read_body`: the body, or the HTTP status that refuses it. (Not ``frozen``:
    built once per request, and a frozen dataclass sets each field through ``object.__setattr__``.)"""

    body: bytes | None
    status: int = 200
    """200 (``body`` is set), 413 (too large), 408 (not received in time), 429 (a chunked body
    outgrew what the body budget had left) or 499 (the client closed the connection mid-body)."""


async def read_body(request: web.Request, *, limit_bytes: int, timeout_s: float,
                    reservation: Reservation | None = None) -> BodyRead:
    """The whole request body if it is at most ``limit_bytes`` and arrives within ``timeout_s``.

    Without ``Content-Length``, ``reservation`` (when given) grows with the bytes received; a
    body with one was reserved whole before reading.
    """
    length = request.content_length  # (a property that parses the header on every read)
    if length is not None and length > limit_bytes:
        return BodyRead(None, 413)
    grow = reservation.grow_to if reservation is not None and length is None else None
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (a typical API request): take it without a deadline,
        # a timer and an async loop (~20 µs of CPU per request).
        body = content.read_nowait()
        if len(body) > limit_bytes:
            return BodyRead(None, 413)
        if grow is not None and not grow(len(body)):
            return BodyRead(None, 429)
        return BodyRead(body)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit_bytes:
                    return BodyRead(None, 413)
                if grow is not None and not grow(size):
                    return BodyRead(None, 429)
                chunks.append(chunk)
    except TimeoutError:
        return BodyRead(None, 408)
    except ConnectionResetError:  # the client left mid-body: nobody to answer
        return BodyRead(None, 499)
    return BodyRead(b"".join(chunks))


class BodyStalled(Exception):
    """A streamed request body sent nothing for longer than its idle deadline."""


class StreamedBody:
    """A pass-through request body, streamed upstream as it arrives, each chunk awaited at most ``idle_s``.

    Pass-through bodies (file and audio uploads …) have no size limit and can take long, so the
    deadline is on silence, not on the whole body: a client that stops sending releases its
    upstream connection after ``idle_s`` instead of holding it for as long as it likes.
    """

    def __init__(self, request: web.Request, *, idle_s: float) -> None:
        self._request = request
        self._idle_s = idle_s
        self.stalled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await self._request.content.readany()
            except TimeoutError:
                self.stalled = True
                raise BodyStalled(f"no request body bytes for {self._idle_s:g} s") from None
            if not chunk:
                return
            yield chunk


class WriteStalled(ConnectionResetError):
    """The client took no bytes of a response for ``write_timeout_s``; its connection was aborted.

    A ``ConnectionResetError``, so every writer treats it as a client that left.
    """


class WriteDeadlines:
    """Every write to a client is taken within ``timeout_s``, or its connection is aborted.

    A write registers its connection with a deadline for as long as it is pending; a watchdog
    (:meth:`run`, one task per process) aborts the connections past theirs every ``check_s``, so
    a client that stops reading goes after ``timeout_s`` to ``timeout_s + check_s``. This costs a
    dict insert and delete per write instead of a timer: most writes never wait at all.
    """

    __slots__ = ("_pending", "check_s", "num_aborted_total", "timeout_s")

    def __init__(self, timeout_s: float, *, check_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.check_s = check_s if check_s is not None else min(1.0, timeout_s / 4)
        self.num_aborted_total = 0
        self._pending: dict[Any, float] = {}
        """Transport of a pending write → its deadline (``time.monotonic``)."""

    async def write(self, request: web.Request, out: web.StreamResponse, data: bytes) -> None:
        """``out.write(data)``; :class:`WriteStalled` if the client did not take it in time."""
        transport = self._enter(request)
        try:
            await out.write(data)
        finally:
            self._pending.pop(transport, None)
        self._check(transport)

    async def finish(self, request: web.Request, out: web.StreamResponse) -> None:
        """``out.write_eof()`` under the same deadline as :meth:`write`."""
        transport = self._enter(request)
        try:
            await out.write_eof()
        finally:
            self._pending.pop(transport, None)
        self._check(transport)

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        """Send a whole answer a handler returned unsent (hits, errors, own endpoints) under the deadline."""
        try:
            transport = self._enter(request)
        except ConnectionResetError:
            return  # nobody to send it to; aiohttp's own finish stops at once too
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left (or was cut off): aiohttp's own finish then stops at once
        finally:
            self._pending.pop(transport, None)

    def _enter(self, request: web.Request) -> Any:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self._pending[transport] = time.monotonic() + self.timeout_s
        return transport

    def _check(self, transport: Any) -> None:
        # An aborted connection wakes its pending write without an error (aiohttp resolves the
        # drain on connection loss): the closed transport is what tells.
        if transport.is_closing():
            raise WriteStalled(f"the client took no bytes for {self.timeout_s:g} s (--write-timeout-seconds)")

    def sweep(self, now_s: float | None = None) -> int:
        """Abort every connection whose pending write is past its deadline; how many."""
        now = time.monotonic() if now_s is None else now_s
        late = [t for t, deadline in self._pending.items() if deadline <= now]
        for transport in late:
            del self._pending[transport]
            transport.abort()
        self.num_aborted_total += len(late)
        return len(late)

    async def run(self) -> None:
        """The watchdog: :meth:`sweep` every ``check_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.check_s)
            self.sweep()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def write_deadline_middleware(deadlines: WriteDeadlines) -> Callable[[web.Request, Handler],
                                                                      Awaitable[web.StreamResponse]]:
    """Send every answer a handler returns unsent (hits, errors, the proxy's own endpoints) under
    ``deadlines``; streamed answers use :meth:`WriteDeadlines.write` themselves."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            await deadlines.send(request, response)
        return response

    return middleware
