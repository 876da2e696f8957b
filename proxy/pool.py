"""Keep-alive HTTP/1.1 connections to one plain-HTTP upstream, for requests whose body is in hand.

A miss sends a body the proxy already holds and reads back one answer. ``aiohttp.ClientSession``
does much more per request (a ``ClientRequest`` and ``ClientResponse``, URL and header copies,
the cookie jar, trace signals, redirect and auth handling, a timer context, a connection
wrapper): this pool does only what such a request needs, with the same C parser (llhttp, as
``aiohttp.http_parser.HttpResponseParser``) reading the answer::

    request ─▶ an idle connection (last in, first out; younger than keepalive_s)
               or a new one (at most max_connections open, else wait ≤ connect_timeout_s)
            ─▶ one write (request line, headers, body)
            ─▶ answer's headers (no byte for read_timeout_s → timeout) ─▶ Response
            ─▶ body from ``Response.content`` (a StreamReader, flow-controlled)
            ─▶ release(): back to the pool when the answer is complete and keep-alive, else closed

Errors are aiohttp's, so callers map them as they map the session's: a connection that cannot
be made raises :class:`ConnectFailed` (nothing was sent: the request may go elsewhere), no
connection within ``connect_timeout_s`` ``aiohttp.ConnectionTimeoutError``, no byte for
``read_timeout_s`` ``aiohttp.SocketTimeoutError``, a connection closed before or during the
answer ``aiohttp.ServerDisconnectedError`` / ``aiohttp.ClientPayloadError``, an answer llhttp
refuses :class:`MalformedAnswer`. A request is never sent twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser
from yarl import URL

__all__ = ["ConnectFailed", "MalformedAnswer", "Pool", "Response", "header_block"]

#: StreamReader limit per answer (bytes): past twice this, unread, the socket stops being read.
_READ_LIMIT = 2**16


class ConnectFailed(aiohttp.ClientConnectionError):
    """No connection to the upstream could be made; nothing was sent."""


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """``headers`` as request header lines for :meth:`Pool.request`, with what aiohttp's client adds
    when the caller did not set it (``Accept: */*``, ``Content-Type: application/octet-stream``), so
    both paths send the same. Raise ``ValueError`` for a CR, LF or NUL in a name or value (it would
    split the request; aiohttp refuses the same)."""
    lines = [f"{k}: {v}\r\n" for k, v in headers]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines) or "\x00" in block:
        raise ValueError("a header holds a control character; refusing to forward it")
    lower = block.lower()
    if "\naccept:" not in lower and not lower.startswith("accept:"):
        block += "Accept: */*\r\n"
    if "\ncontent-type:" not in lower and not lower.startswith("content-type:"):
        block += "Content-Type: application/octet-stream\r\n"
    return block.encode("utf-8", "surrogateescape")


class MalformedAnswer(aiohttp.ClientError):
    """The upstream's answer is not HTTP/1.1 the parser accepts (or comes unasked); the connection is closed."""


class Response:
    """One answer: status, reason and headers read, the body in ``content`` (what the miss path reads
    of an ``aiohttp.ClientResponse``). Call :meth:`release` once done with it."""

    __slots__ = ("_conn", "_target", "content", "headers", "reason", "status")

    def __init__(self, message: Any, payload: Any, conn: _Connection, target: str) -> None:
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers = message.headers
        self.content = payload
        self._conn: _Connection | None = conn
        self._target = target

    @property
    def url(self) -> URL:
        """The URL the request went to."""
        return URL(self._target, encoded=True)

    @property
    def content_length(self) -> int | None:
        """The ``Content-Length`` the upstream declared, or ``None``."""
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body."""
        content = self.content
        if content.is_eof() and content.exception() is None:
            return content.read_nowait()  # all of it arrived: no reads to wait for (~6,000 instructions)
        return await content.read()

    def release(self) -> None:
        """Give the connection back (to the pool when the answer was complete, else closed); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(self.content)


class _Connection(BaseProtocol):
    """One keep-alive connection: at most one request at a time."""

    __slots__ = ("_last_read_s", "_timer", "_waiter", "counted", "idle_since_s", "payload", "pool", "should_close")

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool.loop)
        self.pool = pool
        self._parser: Any = HttpResponseParser(
            self, pool.loop, _READ_LIMIT, payload_exception=aiohttp.ClientPayloadError,
            response_with_body=True, read_until_eof=True, auto_decompress=False)
        self._waiter: asyncio.Future[tuple[Any, Any]] | None = None
        self.payload: Any = None
        """The body being read (a StreamReader), until the answer is complete."""
        self._timer: asyncio.TimerHandle | None = None
        self._last_read_s = 0.0
        self.should_close = False
        self.idle_since_s = 0.0
        self.counted = False
        """Counted in the pool's open connections (set once connecting succeeded)."""

    # -- sending ----------------------------------------------------------------------------

    def send(self, data: bytes, read_timeout_s: float) -> asyncio.Future[tuple[Any, Any]]:
        """Write one request; the future gets the answer's ``(message, payload)``."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        now = self._last_read_s = loop.time()
        self._timer = loop.call_at(now + read_timeout_s, self._on_timer, read_timeout_s)
        return waiter

    def _on_timer(self, read_timeout_s: float) -> None:
        """No byte for ``read_timeout_s``: fail the answer; otherwise wait on from the last byte read."""
        self._timer = None
        now = self._loop.time()
        # While the reader has not taken what came (reading paused), the delay is not the upstream's.
        due = now + read_timeout_s if self._reading_paused else self._last_read_s + read_timeout_s
        if now < due:
            self._timer = self._loop.call_at(due, self._on_timer, read_timeout_s)
            return
        self._fail(aiohttp.SocketTimeoutError(f"no byte from the upstream for {read_timeout_s:g} s"))
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        self.should_close = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        payload, self.payload = self.payload, None
        if payload is not None and not payload.is_eof():
            payload.set_exception(exc)
        self._drop_timer()

    def _drop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        self._last_read_s = self._loop.time()
        try:
            messages, _upgraded, _tail = self._parser.feed_data(data)
        except Exception as exc:  # noqa: BLE001 - a malformed answer: this connection is done
            self._fail(MalformedAnswer(f"malformed answer from the upstream: {exc!r}"))
            if self.transport is not None:
                self.transport.abort()
            return
        for message, payload in messages:
            waiter, self._waiter = self._waiter, None
            if waiter is None or waiter.done():  # an answer nobody asked for
                self._fail(MalformedAnswer("an answer the proxy did not ask for"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if message.should_close:
                self.should_close = True
            self.payload = payload
            waiter.set_result((message, payload))
        payload = self.payload
        if payload is not None and payload.is_eof():
            self.payload = None
            self._drop_timer()

    def eof_received(self) -> None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.should_close = True
        parser, self._parser = self._parser, None
        if parser is not None:
            try:
                parser.feed_eof()
            except Exception as underlying:  # noqa: BLE001 - an incomplete body
                payload, self.payload = self.payload, None
                if payload is not None:
                    payload.set_exception(aiohttp.ClientPayloadError(f"answer incomplete: {underlying!r}"))
        if self.payload is not None and self.payload.is_eof():
            self.payload = None
        self._fail(aiohttp.ServerDisconnectedError("the upstream closed the connection"))
        self.pool.lost(self)
        super().connection_lost(exc)

    # -- back to the pool ------------------------------------------------------------------

    def finished(self, payload: Any) -> None:
        """The caller is done with the answer read as ``payload``."""
        if self.should_close or not payload.is_eof() or self.transport is None or self._waiter is not None:
            self._drop_timer()
            self.should_close = True
            if self.transport is not None:
                self.transport.abort()  # connection_lost frees the slot
            return
        self._drop_timer()
        self.pool.put(self)


class Pool:
    """At most ``max_connections`` keep-alive connections to one ``http://`` upstream."""

    def __init__(self, base_url: str, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float,
                 keepalive_s: float = 60.0) -> None:
        url = URL(base_url)
        if url.scheme != "http" or not url.host:
            raise ValueError(f"the connection pool speaks plain HTTP only, not {base_url!r}")
        self.loop = asyncio.get_running_loop()
        self.host = url.raw_host or url.host
        self.port = url.port or 80
        self.base_path = url.raw_path.rstrip("/")
        self.origin = base_url.rstrip("/")
        """The base URL requests are sent under."""
        self.max_connections = max_connections
        """Open connections at most (busy + idle + connecting)."""
        self.connect_timeout_s = connect_timeout_s
        """Bound on the wait for a free connection plus connecting (s)."""
        self.read_timeout_s = read_timeout_s
        """Bound on the time without a byte from the upstream while an answer is due (s)."""
        self.keepalive_s = keepalive_s
        """An idle connection older than this is closed, not reused (s); aiohttp's connector's default."""
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if url.explicit_port and self.port != 80:
            host_header += f":{self.port}"
        self._host_line = f"Host: {host_header}\r\n".encode()
        self._base_path = self.base_path.encode()
        self._idle: list[_Connection] = []
        self._num_open = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def num_open(self) -> int:
        """Connections open or being opened."""
        return self._num_open

    @property
    def num_idle(self) -> int:
        return len(self._idle)

    async def request(self, method: str, path_qs: str, headers: bytes, body: bytes) -> Response:
        """Send ``method path_qs`` with ``headers`` (a :func:`header_block`: end to end, without Host
        and Content-Length) and ``body``; return the answer once its headers are read."""
        data = b"".join((method.encode(), b" ", self._base_path, path_qs.encode("utf-8", "surrogateescape"),
                         b" HTTP/1.1\r\n", self._host_line, headers, b"Content-Length: %d\r\n\r\n" % len(body), body))
        conn = self._take_idle()
        if conn is None:
            conn = await self._acquire()
        try:
            message, payload = await conn.send(data, self.read_timeout_s)
        except BaseException:
            conn.should_close = True
            if conn.transport is not None:
                conn.transport.abort()
            raise
        return Response(message, payload, conn, self.origin + path_qs)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.should_close:
                if self.loop.time() - conn.idle_since_s < self.keepalive_s:
                    return conn
                conn.should_close = True
                conn.transport.close()
        return None

    async def _acquire(self) -> _Connection:
        """A new connection, or a released one after waiting; within ``connect_timeout_s``."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream connection pool is closed")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                while self._num_open >= self.max_connections:
                    waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        conn = await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                            # Handed a connection (or a slot) as the wait ended: pass it on.
                            got = waiter.result()
                            if got is not None:
                                self.put(got)
                            else:
                                self._wake()
                        else:
                            self._remove_waiter(waiter)
                        raise
                    if conn is not None:
                        return conn
                    conn = self._take_idle()
                    if conn is not None:
                        return conn
                return await self._connect()
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout_s:g} s") from exc

    def _remove_waiter(self, waiter: asyncio.Future[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        self._num_open += 1
        try:
            _transport, conn = await self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            self._num_open -= 1
            self._wake()
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            # (A connection made as the wait was cancelled is closed by asyncio; it was never counted.)
            self._num_open -= 1
            self._wake()
            raise
        conn.counted = True
        return conn

    def put(self, conn: _Connection) -> None:
        """A connection free for the next request: to a waiter, else idle."""
        if self._closed:
            conn.should_close = True
            if conn.transport is not None:
                conn.transport.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since_s = self.loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.keepalive_s, self._expire)

    def lost(self, conn: _Connection) -> None:
        """``conn`` closed: its slot is free."""
        if not conn.counted:
            return
        conn.counted = False
        self._num_open -= 1
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # a slot is free: connect
                return

    def _expire(self) -> None:
        """Close connections idle longer than ``keepalive_s`` (a replica that went away keeps none open)."""
        self._sweep = None
        now = self.loop.time()
        keep = []
        for conn in self._idle:
            if now - conn.idle_since_s >= self.keepalive_s:
                conn.should_close = True
                if conn.transport is not None:
                    conn.transport.close()
            else:
                keep.append(conn)
        self._idle[:] = keep
        if keep:
            self._sweep = self.loop.call_at(min(c.idle_since_s for c in keep) + self.keepalive_s, self._expire)

    def close(self) -> None:
        """Close the idle connections now and the busy ones when released; later requests fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.should_close = True
            if conn.transport is not None:
                conn.transport.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(aiohttp.ClientConnectionError("the upstream connection pool is closed"))
