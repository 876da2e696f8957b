"""The near cache: exact-hit entries held in the sidecar, kept current by Redis's invalidation pushes.

An exact hit read from Redis costs a round trip (~0.15 ms of a ~0.4 ms hit at one request at a
time on a 2-core machine). Here the entries this sidecar has just read are served from memory,
and Redis itself says when one changes: the request path's connection (:class:`RespClient`) runs
``CLIENT TRACKING on REDIRECT <id> BCAST PREFIX <partition>e: NOLOOP``, so when any other client
writes, deletes, expires or evicts an entry of this partition, Redis sends its name to a second
connection subscribed to ``__redis__:invalidate``::

    request ─▶ near entry, armed? ─yes─▶ serve (bookkeeping touch queued, sent when the loop comes round)
                        │no
                        ▼
               key filter: surely absent? ─yes─▶ miss, no round trip
                        │maybe
                        ▼
                 lookup script ─hit─▶ fill, unless an invalidation came while it ran
    any client writes an entry ─▶ Redis ─▶ "__redis__:invalidate" [key] ─▶ drop it here, add it to the filter

The same messages name every entry another client creates, so a miss needs no round trip either:
:class:`KeyFilter` (a Bloom filter, 16 bits a key: ~1 false "maybe" in 1,000) holds the key hash of
every entry of the partition, read by ``SCAN`` once tracking is on (so nothing created during the
scan is missed) and then kept by the messages and this process's own stores. A key it has never
seen is not in Redis, and the lookup is skipped; a "maybe" (an entry since deleted or expired, or a
false positive) reads Redis as before. It only grows: past its design load it is built again.
A request with the cross-pod single-flight lease still reads Redis (the lease is taken there). An
entry another pod stores reaches the filter one message later (well under a millisecond); a request
for it in that window is a miss, as it would be just before the store.

Safety rules, each because a missed invalidation would serve a stale answer:

* **Armed only while both connections are the ones tracking was set up on.** Redis forgets a
  connection's tracking when it closes, and drops the messages of a redirect connection that is
  gone: so a reconnect of either empties the near cache and drops the key filter, and nothing is
  served from them until tracking is on again on the new pair (and the filter scanned anew).
* **A fill races no invalidation**: every message bumps :attr:`NearCache.generation`; a lookup
  that saw another generation when it began does not fill (its reply may predate the write).
* **Its own writes drop their entry here** (:meth:`NearCache.written`, from the store): ``NOLOOP``
  spares a miss the message for its own store, so the store bumps the generation itself.
* **Checked once at start, before anything is held**: a probe entry key is written from another
  connection, and its invalidation must arrive within 5 s. A Redis or an ACL
  user without ``CLIENT TRACKING`` (``BCAST``) or the ``__redis__:invalidate`` channel turns the near
  cache off for good (logged once); hits and misses then read Redis as before. A user refused
  ``SCAN`` keeps the near cache without the key filter. Any other error (``LOADING`` after a
  restart) is retried.
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

__all__ = ["CHANNEL", "KeyFilter", "NearCache"]

log = logging.getLogger(__name__)

#: The channel Redis sends invalidations on, to a ``REDIRECT`` connection speaking RESP2.
CHANNEL = "__redis__:invalidate"

#: How long the start probe waits for its invalidation (it takes well under a millisecond: this only
#: rules out a busy machine turning the near cache off for good).
_PROBE_WAIT_S = 5.0

#: The key filter's size: bits a key at its design load (~0.1 % false "maybe" with 6 hashes), the fewest
#: bits (1 Mibit: 128 KiB, 65,536 keys), the most (128 Mibit: 16 MiB, 8.4 M keys at the design load; a
#: larger partition, or a Redis shared with much else, only gets more false "maybe"s), and how many keys
#: a ``SCAN`` reply carries.
_FILTER_BITS_PER_KEY = 16
_FILTER_HASHES = 6
_FILTER_MIN_BITS = 1 << 20
_FILTER_MAX_BITS = 1 << 27
_SCAN_COUNT = 1000


class KeyFilter:
    """A Bloom filter of entry key hashes: ``key_hash not in f`` is certain (never added), ``in`` may be
    a false "maybe" (~0.1 % at the design load). Only ever added to.

    Sized for ``capacity`` keys at 16 bits a key (a power of two of bits, from 1 to 128 Mibit); it still
    answers past that, with more false "maybe"s, until it is replaced (:attr:`stale`).
    """

    __slots__ = ("_bits", "_mask", "capacity", "count", "scanned")

    def __init__(self, capacity: int) -> None:
        bits = _FILTER_MIN_BITS
        while bits < capacity * _FILTER_BITS_PER_KEY and bits < _FILTER_MAX_BITS:
            bits <<= 1
        self._bits = bytearray(bits >> 3)
        self._mask = bits - 1
        self.capacity = bits // _FILTER_BITS_PER_KEY
        self.count = 0
        """Keys added (a key added twice counts twice)."""
        self.scanned = 0
        """Keys its scan added: those added since are new entries (or entries changed or gone)."""

    @property
    def stale(self) -> bool:
        """As many keys added since its scan as it was sized for: time for a new scan, which drops the keys
        since gone and sizes the filter for what is there (at most once per ``capacity`` keys, so a
        partition larger than the largest filter is not scanned over and over)."""
        return self.count - self.scanned > self.capacity

    @property
    def num_bytes(self) -> int:
        return len(self._bits)

    def add(self, key_hash: str) -> None:
        h1, h2 = _hashes(key_hash)
        bits, mask = self._bits, self._mask
        for _ in range(_FILTER_HASHES):
            p = h1 & mask
            bits[p >> 3] |= 1 << (p & 7)
            h1 += h2
        self.count += 1

    def __contains__(self, key_hash: object) -> bool:
        if not isinstance(key_hash, str):
            return False
        h1, h2 = _hashes(key_hash)
        bits, mask = self._bits, self._mask
        for _ in range(_FILTER_HASHES):
            p = h1 & mask
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
            h1 += h2
        return True


def _hashes(key_hash: str) -> tuple[int, int]:
    """Two 64-bit hashes of a key hash for the filter's double hashing: its own hex digits (a SHA-256), or a
    BLAKE2b of any other name; the step is odd, so it visits distinct bits of a power-of-two table."""
    try:
        if len(key_hash) >= 32:
            return int(key_hash[:16], 16), int(key_hash[16:32], 16) | 1
    except ValueError:
        pass
    digest = hashlib.blake2b(key_hash.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1


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
        self._verified = False  # the probe passed once: Redis broadcasts the writes of other connections here
        self._probe_key: str | None = None
        self._probe_seen: asyncio.Event | None = None
        self.num_hits = 0
        self.num_invalidations = 0
        self.num_absent = 0
        """Misses the key filter answered without a Redis round trip."""
        self.filter: KeyFilter | None = None
        """The key filter in use, or ``None`` (not scanned yet under the current tracking, or refused): dropped
        with every disarm, and installed only by a scan that ends under the arming it began under."""
        self._building: KeyFilter | None = None  # the one a scan fills (gets every key added meanwhile too)
        self._build_task: asyncio.Task[None] | None = None
        self.filter_off: str | None = None
        """Why the key filter is off for good (``SCAN`` refused), or ``None``."""
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

    @property
    def filter_ready(self) -> bool:
        """The key filter answers misses: scanned under the tracking armed now."""
        return self.filter is not None and self.armed

    def absent(self, key_hash: str) -> bool:
        """True when the entry is surely not in Redis (never written since the key filter's scan began, under
        the tracking still armed): the lookup can be skipped. False: read Redis."""
        if not self.filter_ready or key_hash in self.filter:  # type: ignore[operator]
            return False
        self.num_absent += 1
        return True

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
        self._note_key(key_hash)

    def _note_key(self, key_hash: str) -> None:
        """An entry was (or may have been) written: a filter must never again call it absent."""
        f = self.filter
        if f is not None:
            f.add(key_hash)
            if f.stale and self._build_task is None:
                self._start_build()
        if self._building is not None:
            self._building.add(key_hash)

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
            # Only this partition's entries are tracked (the broadcast prefix); anything else is not ours.
            if text.startswith(prefix):
                self.generation += 1
                key_hash = text.rpartition(":")[2]
                self.forget(key_hash)
                self._note_key(key_hash)
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
        # Messages may be lost until tracking is on again: the filter is no longer complete.
        self.filter = self._building = None
        task, self._build_task = self._build_task, None
        if task is not None:
            task.cancel()

    def _arm(self, armed: tuple[int, _Subscriber]) -> None:
        """Serve from memory under this tracking, and scan the partition's entries into a new key filter."""
        self._armed = armed
        self._start_build()

    async def _arm_connection(self, client: RespClient) -> None:
        """Hook of every new request-path connection (:attr:`RespClient.on_connect`): tracking on it,
        redirected to the current subscriber. What was held is dropped: Redis tracked it on the old one."""
        self._disarm()
        sub, redirect = self._sub, self._redirect_id
        if sub is None or redirect is None or self.disabled:
            return
        try:
            await _track(client.call_on_open, redirect, self._entry_prefix)
        except redis.exceptions.ResponseError as exc:
            if _refusal(exc):
                self._disable(f"CLIENT TRACKING refused: {exc}")
            return
        if sub is self._sub and self._verified:
            self._arm((client.connection_serial, sub))

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
        await _track(functools.partial(client.call, timeout_s=t), self._redirect_id, self._entry_prefix)
        if not self._verified:
            await self._probe()
            if self.disabled:
                return
            self._verified = True
        # Armed only now that the probe showed Redis broadcasts other connections' writes to this one.
        if serial == client.connection_serial and sub is self._sub:
            self.clear()
            self._arm((serial, sub))

    async def _probe(self) -> None:
        """An entry key another connection writes must come back as an invalidation, or no near cache.

        (Broadcast tracking needs no read of the key first: every write under the prefix is reported.)"""
        client = self._client
        name = hashlib.sha256(f"near-probe {os.getpid()} {time.time_ns()}".encode()).hexdigest()
        key = self._ks.entry(name)
        self._probe_key, self._probe_seen = key, asyncio.Event()
        # Written from a connection of its own: tracking is NOLOOP (no message for the tracking one's own writes).
        writer = client.another()
        try:
            await writer.call("SET", key, b"probe", "PX", 1000, timeout_s=self._setup_timeout_s)
            try:
                async with asyncio.timeout(_PROBE_WAIT_S):
                    await self._probe_seen.wait()
            except TimeoutError:
                self._disable("Redis sent no invalidation for an entry another connection wrote (broadcast "
                              "tracking, CLIENT TRACKING … BCAST, needs Redis >= 6 or Valkey)")
                return
        finally:
            with contextlib.suppress(Exception):
                await writer.call("DEL", key, timeout_s=self._setup_timeout_s)
            await writer.aclose()
        log.info("near cache on: up to %d bytes of entries, invalidated by Redis (CLIENT TRACKING)", self.max_bytes)

    # -- the key filter -------------------------------------------------------------------------

    def _start_build(self) -> None:
        if self.filter_off is not None or self._armed is None:
            return
        old, self._build_task = self._build_task, None
        if old is not None:
            old.cancel()
        self._build_task = asyncio.get_running_loop().create_task(self._build_filter(self._armed),
                                                                  name="near-cache-key-filter")

    async def _build_filter(self, armed: tuple[int, _Subscriber]) -> None:
        """``SCAN`` the partition's entries (on a connection of its own: the request path's replies must not
        queue behind ~80 KB scan replies) into a new filter; it is used once the scan ends, if the
        tracking it began under is still armed. Every key a message or a store names meanwhile goes in
        too, so an entry created during the scan is not missed whichever side of the cursor it lands."""
        scanner = self._client.another()
        t = self._setup_timeout_s
        backoff = 1.0
        try:
            while self._armed is armed:
                building: KeyFilter | None = None
                try:
                    size = int(await scanner.call("DBSIZE", timeout_s=t))
                    building = self._building = KeyFilter(2 * size)  # (headroom for what is written next)
                    cursor: Any = b"0"
                    while True:
                        cursor, names = await scanner.call("SCAN", cursor, "MATCH", self._ks.entry_pattern,
                                                           "COUNT", _SCAN_COUNT, timeout_s=t)
                        for name in names:
                            building.add(name.rpartition(b":")[2].decode("utf-8", "replace"))
                        if int(cursor) == 0:
                            break
                except redis.exceptions.ResponseError as exc:
                    if _refusal(exc):
                        self.filter_off = str(exc)
                        log.warning("near cache key filter off: %s; every miss reads Redis", exc)
                        return
                    log.debug("near cache key filter: %s", exc)
                except (OSError, TimeoutError, ConnectionError, redis.exceptions.RedisError) as exc:
                    log.debug("near cache key filter: %s: %s", type(exc).__name__, exc)
                else:
                    if self._armed is armed and self._building is building:
                        building.scanned = building.count
                        self.filter = building
                        log.info("near cache key filter: %d entries, %d KiB", building.count,
                                 building.num_bytes // 1024)
                    return
                finally:
                    if self._building is building:
                        self._building = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        finally:
            if self._build_task is asyncio.current_task():
                self._build_task = None
            await scanner.aclose()

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
        for task in (self._task, self._build_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._build_task = None
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


async def _track(send: Callable[..., Awaitable[Any]], redirect: int, prefix: str) -> None:
    """Tracking of every key under ``prefix`` (broadcast: whoever writes it, read here or not) on a
    request-path connection, its messages to the connection ``redirect``, and the touch script loaded
    there (``send``: the connection's way to send a command now). Off first: Redis refuses a broadcast
    prefix the connection already has (the connect hook and the set-up may both get here); nothing is
    served from memory, nor the filter used, until this arming is done."""
    await send("CLIENT", "TRACKING", "off")
    await send("CLIENT", "TRACKING", "on", "REDIRECT", redirect, "BCAST", "PREFIX", prefix, "NOLOOP")
    await send("SCRIPT", "LOAD", _TOUCH)
