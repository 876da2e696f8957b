"""The near cache: exact-hit entries held in the sidecar, kept current by Redis's invalidation pushes.

An exact hit read from Redis costs a round trip (~0.15 ms of a ~0.4 ms hit at one request at a
time on a 2-core machine). Here the entries this sidecar has just read are served from memory,
and Redis itself says when one changes: the request path's connection (:class:`RespClient`) runs
``CLIENT TRACKING on REDIRECT <id> NOLOOP``, so Redis remembers every key it reads (the lookup script's
reads too) and, when any client writes, deletes, expires or evicts one of them, sends its name to
a second connection subscribed to ``__redis__:invalidate``::

    request ─▶ near entry, armed? ─yes─▶ serve (bookkeeping touch queued, sent when the loop comes round)
                        │no
                        ▼
                 lookup script (tracked) ─hit─▶ fill, unless an invalidation came while it ran
    any client writes a tracked key ─▶ Redis ─▶ "__redis__:invalidate" [key] ─▶ drop it here

Safety rules, each because a missed invalidation would serve a stale answer:

* **Armed only while both connections are the ones tracking was set up on.** Redis forgets a
  connection's tracking when it closes, and drops the messages of a redirect connection that is
  gone: so a reconnect of either empties the near cache, and nothing is served from it until
  tracking is on again on the new pair.
* **A fill races no invalidation**: every message bumps :attr:`NearCache.generation`; a lookup
  that saw another generation when it began does not fill (its reply may predate the write).
* **Its own writes drop their entry here** (:meth:`NearCache.written`, from the store): ``NOLOOP``
  spares a miss the message for its own store, so the store bumps the generation itself.
* **Checked once at start, before anything is held**: a probe key is read through a script and
  written from another connection, and its invalidation must arrive within 5 s. A Redis that
  does not track keys read by scripts, or an ACL user without ``CLIENT TRACKING`` / the
  ``__redis__:invalidate`` channel, turns the near cache off for good (logged once); hits then read
  Redis as before. Any other error (``LOADING`` after a restart) is retried.
* **Bounded age**: an entry is read from Redis again after ``max_age_s`` (default 5 s) however
  quiet the invalidations are, so a lost message cannot keep a stale answer for longer.

Hits served here still count for the eviction bookkeeping: the (group, key) touches are sent in
one pipelined batch once the event loop comes round (after the answers went out: no latency), each
only where the entry still exists; the operator's LRU eviction must not see a hot entry as cold. Only one
Redis over TCP or a Unix socket (:func:`llmcache.proxy.resp.supports`): a Redis Cluster or TLS
URL has no near cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
import redis.exceptions

from llmcache.keyspace import Keyspace, shard_of
from llmcache.proxy.resp import RespClient

__all__ = ["CHANNEL", "NearCache"]

log = logging.getLogger(__name__)

#: The channel Redis sends invalidations on, to a ``REDIRECT`` connection speaking RESP2.
CHANNEL = "__redis__:invalidate"

#: How long the start probe waits for its invalidation (it takes well under a millisecond: this only
#: rules out a busy machine turning the near cache off for good).
_PROBE_WAIT_S = 5.0

# Bookkeeping for hits served here: the lookup script's touch (lru at now, lfu + n), only where the
# entry still exists, so no rows are left for a key that is gone. KEYS: entry, lru, lfu. ARGV: now
# (integer ms, as the lookup script takes it), key hash, hits.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) / 1000, ARGV[2])
  redis.call('ZINCRBY', KEYS[3], tonumber(ARGV[3]), ARGV[2])
end
return 0
"""


class _Subscriber(asyncio.Protocol):
    """The redirect connection: ``CLIENT ID``, ``SUBSCRIBE __redis__:invalidate``, then messages."""

    def __init__(self, near: NearCache) -> None:
        self._near = near
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.replies: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)  # set-up replies only
        self.subscribed = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._lost(exc)
                return
            if reply is False:
                return
            if self.subscribed and isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self._near.invalidated(reply[2])
            elif self.replies.full():
                self._lost(ConnectionError("redis sent unexpected replies on the invalidation connection"))
                return
            else:
                self.replies.put_nowait(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        if self.transport is not None:
            self.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)
        self._near.subscriber_lost(self)

    async def call(self, *args: Any, timeout_s: float) -> Any:
        assert self.transport is not None
        self.transport.write(hiredis.pack_command(args))
        async with asyncio.timeout(timeout_s):
            reply = await self.replies.get()
        if isinstance(reply, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(str(reply))
        return reply


class NearCache:
    """Entries read on this connection, served from memory while Redis's invalidations keep them current.

    ``client`` is the request path's connection; :meth:`run` (a background task) keeps the redirect
    connection and tracking up. Bounded by ``max_bytes`` of entries (least recently filled first out).
    """

    def __init__(self, client: RespClient, keyspace: Keyspace, *, max_bytes: int = 32 * 1024**2,
                 max_age_s: float = 5.0, touch_interval_s: float = 0.0, max_touches: int = 10_000,
                 setup_timeout_s: float = 2.0) -> None:
        self._client = client
        self._ks = keyspace
        self._entry_prefix = keyspace.partition_prefix + "e:"
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.touch_interval_s = touch_interval_s
        """Delay of the bookkeeping touches (s); 0 (default): when the event loop comes round."""
        self.max_touches = max_touches
        self._setup_timeout_s = setup_timeout_s
        self._items: dict[str, tuple[bytes, float]] = {}  # key hash → (entry bytes, filled at (monotonic s))
        self.num_bytes = 0
        self.generation = 0
        """Bumped by every invalidation and every disarm: a lookup that began under another does not fill."""
        self._sub: _Subscriber | None = None
        self._redirect_id: int | None = None
        self._armed: tuple[int, _Subscriber] | None = None  # (the client's connection serial, the subscriber)
        self.disabled: str | None = None
        """Why the near cache is off for good (a Redis or ACL that cannot do it), or ``None``."""
        self._touch_script = client.register_script(_TOUCH)
        self._touches: dict[tuple[str, str], int] = {}
        self._flush_due: asyncio.Handle | None = None
        self._loading: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._verified = False  # the probe passed once: Redis reports the keys this connection's scripts read
        self._probe_key: str | None = None
        self._probe_seen: asyncio.Event | None = None
        self.num_hits = 0
        self.num_invalidations = 0
        client.on_connect.append(self._arm_connection)

    # -- the request path -------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        armed = self._armed
        return armed is not None and armed[0] == self._client.connection_serial and armed[1] is self._sub

    def get(self, key_hash: str, *, group: str) -> bytes | None:
        """The entry's bytes if held, current and armed; the hit is queued for the bookkeeping touch."""
        item = self._items.get(key_hash)
        if item is None:
            return None
        if not self.armed or time.monotonic() - item[1] > self.max_age_s:
            self.forget(key_hash)
            return None
        self.num_hits += 1
        touches = self._touches
        key = (group, key_hash)
        touches[key] = touches.get(key, 0) + 1
        if self._flush_due is None:
            loop = asyncio.get_running_loop()
            self._flush_due = (loop.call_later(self.touch_interval_s, self._flush_touches) if self.touch_interval_s > 0
                               else loop.call_soon(self._flush_touches))
        elif len(touches) >= self.max_touches:
            self._flush_touches()
        return item[0]

    def fill(self, key_hash: str, blob: bytes, *, generation: int) -> None:
        """Hold ``blob``, read by a lookup that began at ``generation``, if nothing was invalidated since."""
        if generation != self.generation or not self.armed or len(blob) > self.max_bytes // 16:
            return
        old = self._items.pop(key_hash, None)
        if old is not None:
            self.num_bytes -= len(old[0])
        self._items[key_hash] = (blob, time.monotonic())
        self.num_bytes += len(blob)
        while self.num_bytes > self.max_bytes:
            self.num_bytes -= len(self._items.pop(next(iter(self._items)))[0])

    def forget(self, key_hash: str) -> None:
        item = self._items.pop(key_hash, None)
        if item is not None:
            self.num_bytes -= len(item[0])

    def written(self, key_hash: str) -> None:
        """This process writes or deletes the entry: Redis sends no invalidation for its own writes (``NOLOOP``:
        a miss's store would otherwise cost a message), so drop it here, and refuse the fill of a lookup
        still in flight (its reply may hold the old value)."""
        self.forget(key_hash)
        self.generation += 1

    def clear(self) -> None:
        self._items.clear()
        self.num_bytes = 0
        self.generation += 1

    def __len__(self) -> int:
        return len(self._items)

    def held(self) -> list[str]:
        """The key hashes held, least recently filled first."""
        return list(self._items)

    # -- invalidations ----------------------------------------------------------------------

    def invalidated(self, names: list[bytes] | None) -> None:
        """A message from Redis: these keys changed (``None``: all of them)."""
        self.num_invalidations += 1
        if names is None:  # FLUSHALL / FLUSHDB (or a tracking table overflow): everything
            self.clear()
            return
        prefix = self._entry_prefix
        for name in names:
            text = name.decode("utf-8", "replace")
            # Only entries matter here. The scripts also read bookkeeping rows and leases (PTTL, GET), so
            # their names come too; they must not hold back the fills of lookups in flight.
            if text.startswith(prefix):
                self.generation += 1
                self.forget(text.rpartition(":")[2])
            if text == self._probe_key and self._probe_seen is not None:
                self._probe_seen.set()

    def subscriber_lost(self, sub: _Subscriber) -> None:
        if sub is self._sub:
            self._sub = None
            self._redirect_id = None
            self._disarm()

    def _disarm(self) -> None:
        self._armed = None
        self.clear()

    async def _arm_connection(self, client: RespClient) -> None:
        """Hook of every new request-path connection (:attr:`RespClient.on_connect`): tracking on it,
        redirected to the current subscriber. What was held is dropped: Redis tracked it on the old one."""
        self._disarm()
        sub, redirect = self._sub, self._redirect_id
        if sub is None or redirect is None or self.disabled:
            return
        try:
            await _track(client.call_on_open, redirect)
        except redis.exceptions.ResponseError as exc:
            if _refusal(exc):
                self._disable(f"CLIENT TRACKING refused: {exc}")
            return
        if sub is self._sub and self._verified:
            self._armed = (client.connection_serial, sub)

    # -- the background task ----------------------------------------------------------------

    async def run(self) -> None:
        """Keep the redirect connection, tracking and the probe up until cancelled or disabled."""
        backoff = 0.2
        while not self.disabled:
            try:
                await self._connect_once()
                backoff = 0.2
                assert self._sub is not None
                await self._sub.closed
                log.info("near cache: invalidation connection lost; reading Redis until it is back")
            except asyncio.CancelledError:
                raise
            except redis.exceptions.ResponseError as exc:
                if _refusal(exc):  # NOPERM, an unknown command: this Redis or user cannot, ever
                    self._disable(str(exc))
                else:  # LOADING after a restart, say: try again
                    log.debug("near cache: %s", exc)
            except (OSError, TimeoutError, ConnectionError, redis.exceptions.RedisError) as exc:
                log.debug("near cache: %s: %s", type(exc).__name__, exc)
            finally:
                sub = self._sub
                if sub is not None and (self.disabled or sub.closed.done()):
                    self.subscriber_lost(sub)
                    if sub.transport is not None:
                        sub.transport.abort()
            if not self.disabled:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._disarm()

    async def _connect_once(self) -> None:
        client, t = self._client, self._setup_timeout_s
        _, opened = await client.open_raw(lambda: _Subscriber(self))
        sub = cast(_Subscriber, opened)
        auth = client.auth_command()
        if auth is not None:
            await sub.call(*auth, timeout_s=t)
        redirect = await sub.call("CLIENT", "ID", timeout_s=t)
        await sub.call("SUBSCRIBE", CHANNEL, timeout_s=t)
        sub.subscribed = True
        self._sub, self._redirect_id = sub, int(redirect)
        # Tracking on the request path's connection (connecting it if need be: the hook does it on connect).
        if not client.connection_serial:
            await client.call("PING", timeout_s=t)
        serial = client.connection_serial
        await _track(functools.partial(client.call, timeout_s=t), self._redirect_id)
        if not self._verified:
            await self._probe()
            if self.disabled:
                return
            self._verified = True
        # Armed only now that the probe showed Redis reports what this connection's scripts read.
        if serial == client.connection_serial and sub is self._sub:
            self.clear()
            self._armed = (serial, sub)

    async def _probe(self) -> None:
        """A key read by a script and then written must come back as an invalidation, or no near cache."""
        client = self._client
        name = hashlib.sha256(f"near-probe {os.getpid()} {time.time_ns()}".encode()).hexdigest()
        key = self._ks.entry(name)
        self._probe_key, self._probe_seen = key, asyncio.Event()
        # Written from a connection of its own: tracking is NOLOOP (no message for the reader's own writes).
        writer = client.another()
        try:
            await client.call("EVAL", "return redis.call('EXISTS', KEYS[1])", 1, key, timeout_s=self._setup_timeout_s)
            await writer.call("SET", key, b"probe", "PX", 1000, timeout_s=self._setup_timeout_s)
            try:
                async with asyncio.timeout(_PROBE_WAIT_S):
                    await self._probe_seen.wait()
            except TimeoutError:
                self._disable("Redis sent no invalidation for a key a script read (CLIENT TRACKING of scripts "
                              "needs Redis >= 6.2 or Valkey)")
                return
        finally:
            with contextlib.suppress(Exception):
                await writer.call("DEL", key, timeout_s=self._setup_timeout_s)
            await writer.aclose()
        log.info("near cache on: up to %d bytes of entries, invalidated by Redis (CLIENT TRACKING)", self.max_bytes)

    def _disable(self, why: str) -> None:
        if not self.disabled:
            self.disabled = why
            log.warning("near cache off: %s; every hit reads Redis", why)
        self._disarm()

    def _flush_touches(self) -> None:
        """Send the queued bookkeeping touches, one script call each, in one pipelined write."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        touches, self._touches = self._touches, {}
        if not touches:
            return
        now = int(time.time_ns() // 1_000_000)
        ks = self._ks
        for (group, key_hash), n in touches.items():
            rows = ks.bookkeeping(group, shard_of(key_hash))
            fut = self._touch_script.start(keys=[ks.entry(key_hash), rows[0], rows[1]], args=[now, key_hash, n])
            if fut is None:
                return  # not connected: these touches are lost (the entries are dropped anyway)
            fut.add_done_callback(self._touched)

    def _touched(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()  # a lost touch only ages an entry a little in the bookkeeping
        if isinstance(exc, redis.exceptions.NoScriptError) and self._loading is None:
            # A restarted or flushed Redis: load the script for the next batch.
            self._loading = asyncio.get_running_loop().create_task(self._load_touch_script())

    async def _load_touch_script(self) -> None:
        try:
            await self._client.call("SCRIPT", "LOAD", _TOUCH, timeout_s=self._setup_timeout_s)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.debug("near cache: touch script not loaded: %s", exc)
        finally:
            self._loading = None

    def start(self) -> None:
        """Start :meth:`run` in the background (:meth:`aclose` stops it)."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="near-cache")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        sub, self._sub = self._sub, None
        if sub is not None and sub.transport is not None:
            sub.transport.abort()
        self._disarm()


def _refusal(exc: redis.exceptions.ResponseError) -> bool:
    """Is this error Redis saying it will never do it (no permission, no such command), not a passing state?"""
    message = str(exc).lower()
    return message.startswith("noperm") or "unknown command" in message or "unknown subcommand" in message


async def _track(send: Callable[..., Awaitable[Any]], redirect: int) -> None:
    """Tracking on a request-path connection, its messages to the connection ``redirect``, and the touch
    script loaded there (``send``: the connection's way to send a command now)."""
    await send("CLIENT", "TRACKING", "on", "REDIRECT", redirect, "NOLOOP")
    await send("SCRIPT", "LOAD", _TOUCH)
