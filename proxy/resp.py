"""A pipelined RESP connection for the Redis commands on the request path (the exact store's).

redis-py spends ~100 µs of CPU per command here (pool checkout, a Python command packer, its
parser wrapper, retry and socket-timeout machinery), and the exact store sends one command
per hit and two per miss. This client keeps one connection and resolves replies in order
from one hiredis reader: ~15 µs per command. A command issued while the connection is idle
is written at once; while replies are outstanding, the commands issued until the event loop
comes round leave together in one ``send``::

    call(*args) ─▶ hiredis.pack_command ─▶ idle? write now : buffer, one write per loop turn ─┐
                                                                        Redis answers in order ▼
    awaiting caller ◀── future.set_result ◀── hiredis.Reader.gets ◀── data_received ◀────────┘

It offers what :class:`llmcache.proxy.exact.RedisExactStore` calls on a client —
``register_script`` (``EVALSHA``, ``EVAL`` on ``NOSCRIPT``), ``get``, ``delete`` — so the
store takes either this or a redis-py client. Only one Redis over TCP or a Unix socket
(``redis://``, ``unix://``): :func:`supports` says no to TLS and cluster URLs, which keep
redis-py.

Failure is the caller's to judge (the proxy's breaker puts a deadline on every call): a
reply error raises the matching ``redis.exceptions`` class, a lost connection fails every
pending command with ``ConnectionError`` and the next call reconnects. Bounds: at most
``max_pending`` commands wait at once (more raise at once), and when the oldest has waited
``stale_after_s`` the connection is dropped, so a hung Redis never piles up commands.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
import redis.exceptions
from redis.asyncio.connection import Connection, UnixDomainSocketConnection, parse_url

__all__ = ["RespClient", "Script", "bulk", "supports"]

log = logging.getLogger(__name__)

#: Reply-error prefixes with a class of their own (what the store and the breaker tell apart).
_ERRORS: dict[str, type[redis.exceptions.ResponseError]] = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "OOM": redis.exceptions.OutOfMemoryError,
}


def supports(url: str) -> bool:
    """True when ``url`` names one Redis over TCP or a Unix socket (not TLS, not a cluster)."""
    if not url.startswith(("redis://", "unix://")):
        return False
    try:
        options = parse_url(url)
    except ValueError:
        return False
    return options.get("connection_class", Connection) in (Connection, UnixDomainSocketConnection)


def bulk(value: str) -> str:
    """``value`` as one RESP bulk string (``$<length>\\r\\n<value>\\r\\n``); ASCII only, where the length in
    characters is the length in bytes (check the command with ``str.isascii``). See :meth:`Script.start_encoded`."""
    return f"${len(value)}\r\n{value}\r\n"


def _reply_error(err: hiredis.ReplyError) -> redis.exceptions.ResponseError:
    message = str(err)
    return _ERRORS.get(message.split(" ", 1)[0], redis.exceptions.ResponseError)(message)


def _expire(fut: asyncio.Future[Any], timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"no redis reply within {timeout_s * 1000:.0f} ms"))


class _Protocol(asyncio.Protocol):
    """One connection: replies resolve the oldest pending future first (RESP is in order)."""

    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._client.pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._client.drop(self, redis.exceptions.ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self._client.drop(self, redis.exceptions.ConnectionError("redis sent an unexpected reply"))
                return
            fut, _, timer = pending.popleft()
            if timer is not None:
                timer.cancel()
            if fut.done():  # its caller gave up (deadline): the reply is read and dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_reply_error(reply))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.drop(self, redis.exceptions.ConnectionError(
            f"redis connection lost ({type(exc).__name__ if exc else 'closed by the server'})"))


class Script:
    """A Lua script run by SHA (``EVALSHA``); sent whole once when Redis does not know it."""

    __slots__ = ("_client", "_heads", "sha", "source")

    def __init__(self, client: RespClient, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._heads: dict[tuple[int, int], bytes] = {}

    def start_encoded(self, num_keys: int, num_args: int, *parts: bytes,
                      timeout_s: float | None = None) -> asyncio.Future[Any] | None:
        """:meth:`start` for keys and arguments already in RESP: ``parts`` joined are their ``num_keys +
        num_args`` bulk strings in order (:func:`bulk`). Replies and ``None`` as :meth:`start`.

        ``hiredis.pack_command`` formats every argument with ``sprintf`` (~1,000-1,500 instructions
        each); a caller that keeps its constant arguments encoded and writes the others in one
        f-string packs a command in half the instructions.
        """
        return self._client.send_nowait(self.encoded(num_keys, num_args, *parts), timeout_s=timeout_s)

    def encoded(self, num_keys: int, num_args: int, *parts: bytes) -> bytes:
        """The ``EVALSHA`` command of :meth:`start_encoded` in RESP, not sent."""
        head = self._heads.get((num_keys, num_args))
        if head is None:
            head = self._heads[(num_keys, num_args)] = (
                f"*{3 + num_keys + num_args}\r\n{bulk('EVALSHA')}{bulk(self.sha)}{bulk(str(num_keys))}".encode())
        return b"".join((head, *parts))

    def start(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), *,
              timeout_s: float | None = None) -> asyncio.Future[Any] | None:
        """``EVALSHA`` sent now: the future of its reply (``NoScriptError`` where Redis lacks the script:
        then await the script itself, which loads it), or ``None`` (:meth:`RespClient.call_nowait`)."""
        return self._client.call_nowait("EVALSHA", self.sha, len(keys), *keys, *args, timeout_s=timeout_s)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), *,
                       timeout_s: float | None = None) -> Any:
        try:
            return await self._client.call("EVALSHA", self.sha, len(keys), *keys, *args, timeout_s=timeout_s)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: EVAL loads it again
            return await self._client.call("EVAL", self.source, len(keys), *keys, *args, timeout_s=timeout_s)


class RespClient:
    """One pipelined connection to one Redis; see the module docstring."""

    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None,
                 username: str | None = None, password: str | None = None, db: int = 0,
                 connect_timeout_s: float = 1.0, stale_after_s: float = 1.0, max_pending: int = 10_000) -> None:
        self._host, self._port, self._path = host, port, path
        self._username, self._password, self._db = username, password, db
        self._connect_timeout_s = connect_timeout_s
        self.stale_after_s = stale_after_s
        """A command unanswered this long (s) drops the connection and fails every pending command."""
        self.max_pending = max_pending
        """Most commands waiting for replies at once; a call past it raises ``ConnectionError`` at once."""
        self.pending: collections.deque[tuple[asyncio.Future[Any], float, asyncio.TimerHandle | None]] = \
            collections.deque()
        """Commands sent and not answered yet, oldest first: (reply future, sent at (monotonic s), deadline timer)."""
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._out: list[bytes] = []
        self._closed = False
        self.num_connects = 0
        self.on_connect: list[Callable[[RespClient], Awaitable[None]]] = []
        """Run on every new connection after AUTH/SELECT, before any command of a caller is sent (within
        the connect deadline); one may send commands with :meth:`call_on_open`."""

    # -- a second connection to the same Redis (llmcache.proxy.near) -------------------------

    def another(self) -> RespClient:
        """A new client for the same Redis, with the same credentials (its own connection)."""
        return RespClient(host=self._host, port=self._port, path=self._path, username=self._username,
                          password=self._password, db=self._db, connect_timeout_s=self._connect_timeout_s)

    async def open_raw(self, factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """A connection to the same Redis for a protocol of the caller's (within the connect deadline);
        :meth:`auth_command` says what to send first."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            if self._path is not None:
                return await loop.create_unix_connection(factory, self._path)  # type: ignore[return-value]
            return await loop.create_connection(factory, self._host, self._port)  # type: ignore[return-value]

    def auth_command(self) -> tuple[Any, ...] | None:
        """The ``AUTH`` a new connection sends first, or ``None`` without a password."""
        if self._password is None:
            return None
        return ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)

    @property
    def connection_serial(self) -> int:
        """The number of the open connection (1 for the first, counting reconnects), 0 while none is open."""
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            return 0
        return self.num_connects

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RespClient:
        """A client for a ``redis://`` or ``unix://`` URL (check :func:`supports` first)."""
        if not supports(url):
            raise ValueError("RespClient takes one Redis over TCP or a Unix socket (redis://, unix://)")
        o = parse_url(url)
        return cls(host=o.get("host", "localhost") if "path" not in o else None, port=int(o.get("port", 6379)),
                   path=o.get("path"), username=o.get("username"), password=o.get("password"),
                   db=int(o.get("db", 0)), **kwargs)

    # -- the calls the exact store makes ------------------------------------------------------

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def get(self, name: str, *, timeout_s: float | None = None) -> bytes | None:
        return await self.call("GET", name, timeout_s=timeout_s)  # type: ignore[no-any-return]

    async def delete(self, *names: str) -> int:
        return await self.call("DEL", *names)  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        return await self.call("PING") in (b"PONG", "PONG")

    # -- the pipeline -------------------------------------------------------------------------

    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Send one command and return its reply; raises ``redis.exceptions`` errors, and ``TimeoutError``
        when ``timeout_s`` is given and no reply came within it (connecting included)."""
        if timeout_s is not None and (self._proto is None or self._proto.transport is None
                                      or self._proto.transport.is_closing()):
            async with asyncio.timeout(timeout_s):  # connecting: rare, a context is fine here
                return await self.call(*args)
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            proto = await self._connect()
        pending = self.pending
        if pending:
            # Staleness first: a hung Redis must be dropped even when its queue is full.
            if time.monotonic() - pending[0][1] > self.stale_after_s:
                self.drop(proto, redis.exceptions.TimeoutError(
                    f"redis left a command unanswered for {self.stale_after_s:g} s; reconnecting"))
                proto = await self._connect()
            elif len(pending) >= self.max_pending:
                raise redis.exceptions.ConnectionError(
                    f"{len(pending)} redis commands already wait for replies on this connection")
        return await self._send(hiredis.pack_command(args), timeout_s)

    def call_nowait(self, *args: Any, timeout_s: float | None = None) -> asyncio.Future[Any] | None:
        """Send one command now and return the future of its reply, or ``None`` (nothing sent) when
        :meth:`call` would first have to connect, reconnect or refuse: use :meth:`call` then.

        For callers that take the reply in a callback instead of a task of their own."""
        if not self._open_now():
            return None
        return self._send(hiredis.pack_command(args), timeout_s)

    def send_nowait(self, packed: bytes, *, timeout_s: float | None = None,
                    discard: int = 0) -> asyncio.Future[Any] | None:
        """:meth:`call_nowait` for a command already in RESP (``*<n>`` and its ``n`` bulk strings).

        With ``discard``, ``packed`` begins with that many other commands, sent in the same write, whose
        replies are read and dropped (an error too: the caller has the last command tell it); the future
        is the last command's. Those cost no future, timer or callback of their own."""
        if not self._open_now():
            return None
        return self._send(packed, timeout_s, discard)

    def _open_now(self) -> bool:
        """Can a command be sent now, with no connect, reconnect or refusal (:meth:`call`) first?"""
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            return False
        pending = self.pending
        return not (pending and (time.monotonic() - pending[0][1] > self.stale_after_s
                                 or len(pending) >= self.max_pending))

    def _send(self, packed: bytes, timeout_s: float | None = None, discard: int = 0) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        # The deadline is one timer that fails the future (cancelled when the reply comes): cheaper
        # than an asyncio.timeout context around the await.
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, fut, timeout_s)
        idle = not self.pending
        if discard:  # replies to drop: a future already done is what a reply's reader skips
            dropped = loop.create_future()
            dropped.set_result(None)
            now = time.monotonic()
            self.pending.extend((dropped, now, None) for _ in range(discard))
        self.pending.append((fut, time.monotonic(), timer))
        if idle and self._proto is not None and self._proto.transport is not None:
            # Nothing in flight: waiting a loop turn to batch would only add latency.
            self._proto.transport.write(packed)
            return fut
        # Replies are outstanding anyway: commands issued until the loop comes round leave in one send.
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(packed)
        return fut

    def _flush(self) -> None:
        """Write what this loop turn issued in one ``send`` (everything in it is for the current connection:
        :meth:`drop` empties the buffer with the connection)."""
        out, self._out = self._out, []
        proto = self._proto
        if out and proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise redis.exceptions.ConnectionError("redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            connecting = self._connecting
            try:
                proto = await self._open()
            except BaseException as exc:
                err = exc if isinstance(exc, redis.exceptions.RedisError) else redis.exceptions.ConnectionError(
                    f"cannot connect to redis: {type(exc).__name__}: {exc}")
                connecting.set_exception(err)
                connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                if isinstance(exc, (asyncio.CancelledError, redis.exceptions.RedisError)):
                    raise  # this caller's deadline (the others learn the connect failed)
                raise err from exc
            else:
                connecting.set_result(proto)
                return proto
            finally:
                self._connecting = None
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        _, opened = await self.open_raw(lambda: _Protocol(self))
        proto = self._proto = cast(_Protocol, opened)
        self._out = []
        self.num_connects += 1
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                auth = self.auth_command()
                if auth is not None:
                    await self._send(hiredis.pack_command(auth))
                if self._db:
                    await self._send(hiredis.pack_command(("SELECT", self._db)))
                for hook in self.on_connect:
                    await hook(self)
        except BaseException as exc:
            self.drop(proto, redis.exceptions.ConnectionError("redis refused the connection's AUTH/SELECT"))
            if isinstance(exc, redis.exceptions.ResponseError):
                raise redis.exceptions.AuthenticationError(str(exc)) from exc
            raise
        return proto

    async def call_on_open(self, *args: Any) -> Any:
        """Send one command from an :attr:`on_connect` hook (the connection is being opened: :meth:`call`
        would wait for that opening)."""
        return await self._send(hiredis.pack_command(args))

    def drop(self, proto: _Protocol, exc: Exception) -> None:
        """Close ``proto``'s connection (if still ours) and fail every command pending on it."""
        if proto is not self._proto:
            return
        self._proto = None
        self._out = []
        if proto.transport is not None:
            proto.transport.abort()
        pending, self.pending = self.pending, collections.deque()
        for fut, _, timer in pending:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(exc)
        if pending:
            log.info("redis connection dropped with %d commands pending: %s", len(pending), exc)

    async def aclose(self) -> None:
        self._closed = True
        if self._proto is not None:
            self.drop(self._proto, redis.exceptions.ConnectionError("redis client closed"))
