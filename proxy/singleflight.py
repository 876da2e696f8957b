"""Single-flight: concurrent identical misses share one upstream call.

The first request for a key becomes the *leader* and opens a :class:`Flight`;
later ones (*followers*) join it instead of calling the upstream::

    leader    ──upstream──▶ push(chunk) … push(chunk) ──▶ finish(entry) | fail()
    follower  ◀── chunks as produced (streaming, same stream shape)
    follower  ◀── entry when finished (non-streaming, or another stream shape)

A follower that joined a flight which then fails (upstream error, truncated
stream, leader's client gone) calls the upstream itself, unless it has already
relayed bytes, in which case its connection ends like the leader's did.

Memory is bounded: a flight keeps at most ``max_bytes`` of chunks (the proxy
passes ``max_entry_bytes``, past which the answer is not stored either). A
longer answer *overflows*: no further chunks are kept, no new follower joins,
and streaming followers end as on a failure (nothing relayed yet: they call the
upstream themselves).

Across pods, :class:`RedisLease` (``SET {p}:lease:{key} NX PX``) lets one pod
own a miss while the others poll for the entry for at most the lease time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import redis.asyncio

from llmcache.keyspace import Keyspace
from llmcache.proxy import resp

if TYPE_CHECKING:
    from llmcache.proxy.exact import Entry

__all__ = ["ABANDON_POLL_S", "Flight", "FlightGroup", "RedisLease"]

log = logging.getLogger(__name__)

#: How often a follower waiting for a flight's entry checks that its client is still there (s).
#: aiohttp tells a handler nothing when its client leaves (handler cancellation is off, so that
#: followers outlive their leader's client), so a waiting follower looks; four times a second
#: costs nothing and frees the upstream call well within a second.
ABANDON_POLL_S = 0.25


class Flight:
    """One in-progress upstream call that followers can subscribe to."""

    __slots__ = (
        "_changed",
        "chunks",
        "entry",
        "failed",
        "finished",
        "key_hash",
        "max_bytes",
        "num_bytes",
        "num_followers",
        "overflowed",
        "stream_shape",
        "with_usage",
    )

    def __init__(self, key_hash: str, *, stream_shape: str | None, with_usage: bool = True,
                 max_bytes: int = 8 * 1024**2) -> None:
        self.key_hash = key_hash
        self.stream_shape = stream_shape
        """``None`` for a non-streaming leader, else a tag of its stream options; followers with the
        same tag receive the raw upstream chunks as they arrive."""
        self.with_usage = with_usage
        """Whether the answer will carry token usage (JSON answers do; streams only with include_usage)."""
        self.chunks: list[bytes] = []
        self.entry: Entry | None = None
        self.failed = False
        self.finished = False
        self.num_followers = 0
        self.max_bytes = max_bytes
        """Most chunk bytes kept for followers; past it the flight overflows."""
        self.num_bytes = 0
        self.overflowed = False
        self._changed: asyncio.Event | None = None
        """Set on the next change; made only once a follower waits (most flights have none)."""

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def push(self, chunk: bytes) -> None:
        """The leader relayed ``chunk``; streaming followers get it next (unless the flight overflowed)."""
        if self.overflowed:
            return
        self.num_bytes += len(chunk)
        if self.num_bytes > self.max_bytes:
            self.overflowed = True
            self.chunks = []  # followers stop at their next wake-up; the memory goes now
        else:
            self.chunks.append(chunk)
        self._wake()

    def finish(self, entry: Entry | None) -> None:
        """The upstream answered completely; ``entry`` is the storable answer (``None``: not storable)."""
        self.entry = entry
        self.failed = entry is None
        self.finished = True
        self._wake()

    def fail(self) -> None:
        """The upstream call did not produce a complete answer."""
        if not self.finished:
            self.failed = True
            self.finished = True
            self._wake()

    def leave(self) -> None:
        """A follower stopped following (its client left): one reader fewer to keep the upstream open for."""
        if self.num_followers > 0:
            self.num_followers -= 1

    async def wait(self, *, abandoned: Callable[[], bool] | None = None,
                   poll_s: float = ABANDON_POLL_S) -> Entry | None:
        """Wait until the flight ends; the entry, or ``None`` when it failed.

        ``abandoned`` (asked every ``poll_s`` seconds) says the follower's client has left: the
        follower then leaves (:meth:`leave`) and ``None`` is returned at once, so a leader whose own
        client left stops reading the upstream when no follower is left.
        """
        while not self.finished:
            if abandoned is None:
                await self._event().wait()
                continue
            if abandoned():
                self.leave()
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    await self._event().wait()
        return self.entry

    async def follow(self) -> AsyncIterator[bytes]:
        """Yield the leader's chunks from the first one, live, until the flight ends."""
        i = 0
        while True:
            changed = self._event()
            if self.overflowed:
                return
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self.finished:
                return
            await changed.wait()


class FlightGroup:
    """The in-process table of flights by key hash."""

    __slots__ = ("_flights", "num_coalesced_total")

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self.num_coalesced_total = 0

    def join(self, key_hash: str, *, needs_usage: bool = False) -> Flight | None:
        """The running flight for ``key_hash`` (counting this follower), or ``None``.

        With ``needs_usage``, a flight whose answer will lack usage is not joined: its answer
        could not serve this request, and waiting for it would only delay the request's own call.
        """
        flight = self._flights.get(key_hash)
        if flight is not None and (flight.overflowed or (needs_usage and not flight.with_usage)):
            return None
        if flight is not None:
            flight.num_followers += 1
            self.num_coalesced_total += 1
        return flight

    def lead(self, key_hash: str, *, stream_shape: str | None, with_usage: bool = True,
             max_bytes: int = 8 * 1024**2) -> Flight:
        """Open a flight for ``key_hash``; the caller must :meth:`land` it in a ``finally``."""
        flight = Flight(key_hash, stream_shape=stream_shape, with_usage=with_usage, max_bytes=max_bytes)
        self._flights[key_hash] = flight
        return flight

    def land(self, flight: Flight) -> None:
        """Remove ``flight`` from the table (failing it if the leader never finished)."""
        flight.fail()
        if self._flights.get(flight.key_hash) is flight:
            del self._flights[flight.key_hash]

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key_hash: str) -> bool:
        return key_hash in self._flights


#: Give up a lease only where this pod still owns it (one that expired and was re-taken is another's).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisLease:
    """Cross-pod single-flight: ``SET lease NX PX``; others poll the entry key while it is held.

    ``client`` is the exact store's: a :class:`llmcache.proxy.resp.RespClient` where the URL allows
    one (~15 µs of CPU per command instead of redis-py's ~100: with redis-py the lease's two commands
    cost a miss ~0.7 M instructions, half again its own work), else a redis-py client. The release is
    ``EVALSHA`` (the script is sent whole once, not on every miss).
    """

    def __init__(self, client: redis.asyncio.Redis | resp.RespClient, *, keyspace: Keyspace, owner: str) -> None:
        self._redis = client
        self._ks = keyspace
        self.owner = owner
        """This pod's name in the leases it takes (``host:pid``)."""
        self._release = client.register_script(_RELEASE)

    async def acquire(self, key_hash: str, *, ttl_s: float) -> bool:
        """True when this pod now owns the miss for ``key_hash``."""
        key, ttl_ms = self._ks.lease(key_hash), max(1, int(ttl_s * 1000))
        if isinstance(self._redis, resp.RespClient):
            return bool(await self._redis.call("SET", key, self.owner, "NX", "PX", ttl_ms))
        return bool(await self._redis.set(key, self.owner, nx=True, px=ttl_ms))

    async def held(self, key_hash: str) -> bool:
        if isinstance(self._redis, resp.RespClient):
            return bool(await self._redis.call("EXISTS", self._ks.lease(key_hash)))
        return bool(await self._redis.exists(self._ks.lease(key_hash)))

    async def release(self, key_hash: str) -> None:
        await self._release(keys=[self._ks.lease(key_hash)], args=[self.owner])
