"""The exact cache: versioned JSON entries addressed by the request's key hash.

An :class:`Entry` holds the *non-streaming* JSON answer (exactly the bytes the
upstream sent when it was recorded from a JSON answer, or the answer assembled
from a recorded stream) plus what the proxy needs to serve it: route, model,
creation time, usage. One entry serves both streaming and non-streaming
callers (:mod:`llmcache.proxy.streaming` replays it as SSE).

Entries are JSON, never pickle, and are validated before they are served: a
hand-edited, truncated or foreign value in Redis is a miss, not a crash::

    {"v": 1, "route": "/v1/chat/completions", "model": "…", "created_s": 1.7e9,
     "tenant": "<salted hash>", "namespace": "…", "partition": "<pod namespace>", "origin": "json" | "sse",
     "prompt_tokens": 12, "completion_tokens": 30, "body": "<upstream JSON text>"}

    {"v": 2, …the same…, "similarity": 0.93}     a semantic hit promoted under the new text

Version 2 marks an entry that answers its key only by meaning: the similarity of the match it
was promoted from. It is served as an exact hit only to a request whose threshold that
similarity meets (:func:`llmcache.proxy.call.load_entry`). An entry that came from the upstream
is still written as version 1, so a proxy that predates version 2 keeps serving those and
refuses (deletes) promoted ones, whose thresholds it could not honour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio
import redis.exceptions

from llmcache import keys
from llmcache.keyspace import TRIM_PER_WRITE, Keyspace, shard_of
from llmcache.proxy import resp
from llmcache.proxy.near import NearCache

__all__ = ["ENTRY_SCHEMA_VERSION", "READABLE_SCHEMA_VERSIONS", "STORED_FINISH_REASONS", "Entry", "ExactStore",
           "InvalidEntry", "ParsedEntries", "RedisExactStore", "created_now_s", "validate_answer"]

log = logging.getLogger(__name__)

ENTRY_SCHEMA_VERSION = 2
"""The newest entry schema; :data:`READABLE_SCHEMA_VERSIONS` are served."""
READABLE_SCHEMA_VERSIONS = frozenset({1, 2})


#: Bookkeeping key tuples a store keeps (256 shards × 16 eviction groups).
_MAX_ROW_CACHE = 4096

#: The store script's ARGV[6] (:data:`llmcache.keyspace.TRIM_PER_WRITE`) in RESP (:meth:`RedisExactStore.put_nowait`).
_TRIM_ENCODED = resp.bulk(str(TRIM_PER_WRITE))

#: ``json.dumps(…, separators=(",", ":"), ensure_ascii=False)`` without building an encoder per entry.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _plain_number(value: float) -> bool:
    """An int, or a float that orjson writes as ``repr`` does (no negative exponent: 0 or 1e-4 and above)."""
    t = type(value)
    return t is int or (t is float and (value == 0 or abs(value) >= 1e-4) and math.isfinite(value))


def created_now_s() -> float:
    """The time for a new entry's ``created_s``: now, floored to the millisecond (a short number in the
    stored text). Floored, never rounded up: an entry must not look younger than it is to
    ``invalidateBefore``, ``Age`` or its TTL."""
    return time.time_ns() // 1_000_000 / 1000


def _now_ms() -> int:
    """The proxy's clock in integer milliseconds, as the scripts take it (they store seconds: ``ms / 1000``).

    An integer because every script argument is formatted by ``hiredis.pack_command``: a float goes
    through ``repr`` (a shortest round-trip ``dtoa``, ~8,000 instructions), an int through a few
    divisions. The bookkeeping scores keep their unit and lose only the microseconds: the operator
    orders by them, and two accesses within one millisecond now tie (ties order by key hash).
    """
    return time.time_ns() // 1_000_000


class InvalidEntry(ValueError):
    """A stored value is not a valid entry of this schema (treated as a miss and deleted)."""


@dataclass(slots=True)
class Entry:
    """One cached answer. Never changed once built (:class:`ParsedEntries` shares it between requests):
    derive another with :func:`dataclasses.replace`.

    Not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``, and building
    an entry (once per miss, once per entry parsed on a hit) cost ~21,000 instructions instead of ~8,000.
    """

    route: str
    model: str
    created_s: float
    body: str
    """The non-streaming JSON answer as text."""
    tenant: str = ""
    namespace: str = ""
    partition: str = ""
    """The partition (pod namespace, :attr:`llmcache.keyspace.Keyspace.partition`) that stored it: served and
    invalidated only there."""
    origin: str = "json"
    """``json`` (recorded from a JSON answer) or ``sse`` (assembled from a stream)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    similarity: float | None = None
    """``None``: the upstream's answer to this key. A number in [0, 1]: a semantic hit promoted
    under this key, with the similarity of that match (schema version 2)."""

    @property
    def has_usage(self) -> bool:
        """True when the answer carries token usage (a stream recorded without ``include_usage`` has none)."""
        return self.prompt_tokens > 0 or self.completion_tokens > 0

    def age_s(self, now_s: float | None = None) -> float:
        return max(0.0, (time.time() if now_s is None else now_s) - self.created_s)

    def _fields(self) -> dict[str, Any]:
        """The stored form's fields, in schema order."""
        similarity = self.similarity
        fields = {"v": 1 if similarity is None else 2, "route": self.route, "model": self.model,
                  "created_s": self.created_s, "tenant": self.tenant, "namespace": self.namespace,
                  "partition": self.partition, "origin": self.origin, "prompt_tokens": self.prompt_tokens,
                  "completion_tokens": self.completion_tokens}
        if similarity is not None:
            fields["similarity"] = similarity
        fields["body"] = self.body
        return fields

    def to_json(self) -> str:
        """The stored form: ``json.dumps`` of the fields in schema order, compact, not ASCII-escaped."""
        return _ENCODER.encode(self._fields())

    def to_bytes(self) -> bytes:
        """``to_json().encode()``: the stored form as sent to Redis, written by orjson (~12,000 instructions
        instead of ~21,500 for a short chat answer) where its text is the same: strings, integers,
        and a creation time and similarity that Python's ``repr`` writes without an exponent or
        with a positive one (orjson writes ``1e-7`` where ``repr`` writes ``1e-07``); otherwise,
        or for a string orjson refuses (a lone surrogate), the json module's.
        """
        fields = self._fields()
        similarity = self.similarity
        if _plain_number(self.created_s) and (similarity is None or _plain_number(similarity)):
            try:
                return orjson.dumps(fields)
            except TypeError:  # a lone surrogate, an integer beyond 64 bits
                pass
        return _ENCODER.encode(fields).encode()

    def answer(self) -> dict[str, Any]:
        """The parsed non-streaming answer (validated when the entry was loaded)."""
        return keys.loads(self.body)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, blob: bytes | str, *, route: str | None = None) -> Entry:
        """Parse and validate; raise :class:`InvalidEntry` for anything that must not be served."""
        try:
            raw = keys.read_json(blob)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEntry(f"entry is not JSON: {type(exc).__name__}") from exc
        version = raw.get("v") if isinstance(raw, dict) else None
        if type(version) is not int or version not in READABLE_SCHEMA_VERSIONS:
            raise InvalidEntry("entry has an unknown schema version")
        try:
            similarity = _similarity(raw["similarity"]) if version == 2 else None
            entry = cls(route=str(raw["route"]), model=str(raw["model"]), created_s=float(raw["created_s"]),
                        body=raw["body"], tenant=str(raw.get("tenant", "")),
                        namespace=str(raw.get("namespace", "")), partition=str(raw.get("partition", "")),
                        origin=str(raw.get("origin", "json")),
                        prompt_tokens=int(raw.get("prompt_tokens") or 0),
                        completion_tokens=int(raw.get("completion_tokens") or 0), similarity=similarity)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEntry(f"entry lacks or mistypes a field: {exc}") from exc
        if not isinstance(entry.body, str):
            raise InvalidEntry("entry body is not a string")
        if route is not None and entry.route != route:
            raise InvalidEntry(f"entry is for {entry.route}, not {route}")
        try:
            answer = keys.read_json(entry.body)  # (checked; the body's text is what is served)
        except ValueError as exc:
            raise InvalidEntry("entry body is not JSON") from exc
        validate_answer(entry.route, answer)
        return entry


class ParsedEntries:
    """Entries already parsed and validated, by key hash, reused while Redis returns the same bytes.

    A hit reads its entry from Redis (or from the near cache, which Redis's invalidations keep
    current: :mod:`llmcache.proxy.near`); only when the bytes equal the ones parsed last time (one ``memcmp``) is the
    :class:`Entry` taken from here instead of two JSON parses and a validation (~15 µs for a small
    answer, milliseconds for a large one). Bounded by ``max_bytes`` of stored entries, least
    recently used first out.
    """

    __slots__ = ("_items", "max_bytes", "num_bytes", "num_reused")

    def __init__(self, *, max_bytes: int = 32 * 1024**2) -> None:
        self._items: dict[str, tuple[bytes, Entry]] = {}
        self.max_bytes = max_bytes
        """Stored bytes kept (each entry also holds its text once more). Default 32 MiB."""
        self.num_bytes = 0
        self.num_reused = 0

    def parse(self, key_hash: str, blob: bytes, *, route: str) -> Entry:
        """``Entry.from_json(blob, route=route)``, reusing the last parse of ``key_hash`` when ``blob`` is unchanged."""
        known = self._items.pop(key_hash, None)
        if known is not None:
            if known[0] == blob and known[1].route == route:
                self._items[key_hash] = known  # most recently used last
                self.num_reused += 1
                return known[1]
            self.num_bytes -= len(known[0])
        entry = Entry.from_json(blob, route=route)
        if len(blob) <= self.max_bytes // 8:  # one huge entry must not flush everything else
            self._items[key_hash] = (blob, entry)
            self.num_bytes += len(blob)
            while self.num_bytes > self.max_bytes:
                oldest = next(iter(self._items))
                self.num_bytes -= len(self._items.pop(oldest)[0])
        return entry

    def forget(self, key_hash: str) -> None:
        known = self._items.pop(key_hash, None)
        if known is not None:
            self.num_bytes -= len(known[0])

    def __len__(self) -> int:
        return len(self._items)


def _similarity(value: Any) -> float:
    """A version-2 entry's similarity: a number in [0, 1] (anything else is a ValueError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"similarity must be a number in [0, 1], got {value!r}")
    return float(value)


#: The finish reasons of an answer that is stored: a normal end (``stop``), a tool call, or the
#: ``max_tokens`` cut (``length``: the same limit is in the key, so the same request gets the same
#: cut). Anything else (``content_filter``, ``function_call``, an upstream's own ``abort`` or
#: ``error``, a reason this proxy does not know) is relayed, never stored or served from the cache.
STORED_FINISH_REASONS = frozenset({"stop", "tool_calls", "length"})

#: Chat message fields an entry may carry with a value (what :mod:`llmcache.proxy.streaming` replays).
_MESSAGE_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "reasoning_content"})


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


#: The message fields that must be a string or null.
_STRING_FIELDS = ("role", "content", "refusal", "reasoning_content")


def _validate_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise InvalidEntry("chat answer choice has no message")
    if not _MESSAGE_FIELDS.issuperset(message):  # (one C pass where every field is known, as nearly always)
        extra = [k for k, v in message.items() if k not in _MESSAGE_FIELDS and v not in (None, "", [], {})]
        if extra:
            raise InvalidEntry(f"chat message carries fields a replay would drop: {sorted(extra)}")
    get = message.get
    for name in _STRING_FIELDS:
        value = get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidEntry(f"chat message {name} is not a string")
    calls = get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidEntry("chat message tool_calls is not a list")
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(
                    fn.get("arguments"), str) or not _opt_str(call.get("id")) or not _opt_str(call.get("type")):
                raise InvalidEntry("chat message tool call lacks a string function name/arguments")
    content, refusal = get("content"), get("refusal")
    if not calls and not (content and content.strip()) and not (refusal and refusal.strip()):
        raise InvalidEntry("chat message has no content, tool calls or refusal (an empty answer is not stored)")


def validate_answer(route: str, answer: Any) -> None:
    """Raise :class:`InvalidEntry` unless ``answer`` is a complete, well-typed OpenAI answer for ``route``.

    Everything a hit serves or replays is type-checked here (content and arguments are strings,
    nothing a replay would drop), so a stored answer can never turn into a 500 or a partial answer.
    """
    if not isinstance(answer, dict):
        raise InvalidEntry("answer is not a JSON object")
    usage = answer.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise InvalidEntry("answer usage is not an object")
    if route == "/v1/embeddings":
        data = answer.get("data")
        if not isinstance(data, list) or not data or not all(
                isinstance(d, dict) and isinstance(d.get("embedding"), (list, str)) for d in data):
            raise InvalidEntry("embedding answer has no data")
        return
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        raise InvalidEntry("answer has no choices")
    for choice in choices:
        if not isinstance(choice, dict) or not choice.get("finish_reason"):
            raise InvalidEntry("answer has a choice without finish_reason (incomplete)")
        if not isinstance(choice["finish_reason"], str):
            raise InvalidEntry("answer finish_reason is not a string")
        if choice["finish_reason"] not in STORED_FINISH_REASONS:
            raise InvalidEntry(f"answer finished with {choice['finish_reason']!r}, not a normal end "
                               f"({', '.join(sorted(STORED_FINISH_REASONS))})")
        index = choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise InvalidEntry("answer choice index is not an integer")
        if choice.get("logprobs") is not None and not isinstance(choice["logprobs"], dict):
            raise InvalidEntry("answer logprobs is not an object")
        if route == "/v1/chat/completions":
            _validate_message(choice.get("message"))
        if route == "/v1/completions" and not (isinstance(choice.get("text"), str) and choice["text"].strip()):
            raise InvalidEntry("completion answer choice has no text (an empty answer is not stored)")


class ExactStore(Protocol):
    """A backend for exact entries. Methods may raise; the caller wraps them in the breaker
    (:meth:`llmcache.proxy.breaker.Breaker.call_bounded`), which passes its deadline as ``timeout_s``:
    past it a method raises ``TimeoutError``."""

    async def get(self, key_hash: str, *, group: str, timeout_s: float | None = None) -> bytes | None:
        """The raw stored entry, recording the access for eviction when it exists."""

    def get_nowait(self, key_hash: str, *, group: str, timeout_s: float | None = None,
                   lease: tuple[str, int] | None = None) -> asyncio.Future[Any] | None:
        """The lookup sent at once: the future of its raw reply, or ``None`` (nothing sent: await
        :meth:`get` / :meth:`get_or_lease`)."""

    async def get_or_lease(self, key_hash: str, *, group: str, owner: str, lease_ms: int,
                           timeout_s: float | None = None) -> tuple[bytes | None, bool | None]:
        """As :meth:`get`; on a miss also try to take the entry's single-flight lease for ``owner``:
        ``(entry, None)``, ``(None, True)`` (taken) or ``(None, False)`` (another holds it)."""

    async def put(self, key_hash: str, entry: Entry, *, ttl_s: int, group: str, timeout_s: float | None = None,
                  lease_owner: str | None = None) -> int:
        """Store with a fixed TTL; return the stored size in bytes. With ``lease_owner``, also give up the
        entry's single-flight lease (:class:`llmcache.proxy.singleflight.RedisLease`) where that owner holds it."""

    def put_nowait(self, key_hash: str, entry: Entry, *, ttl_s: int, group: str, timeout_s: float | None = None,
                   lease_owner: str | None = None) -> asyncio.Future[Any] | None:
        """:meth:`put` sent at once: the future of its outcome, or ``None`` (nothing sent: await :meth:`put`)."""

    async def delete(self, key_hash: str) -> None:
        """Remove one entry (an invalid value found on read)."""


# GET the entry and, only when it exists, refresh its eviction bookkeeping: one round trip and
# no bookkeeping rows for keys that were never stored (a miss must not leave garbage behind).
# KEYS: entry, then the group shard's lru, lfu, exp. A first access in this group (an entry
# another group wrote) also records the entry's expiry, and makes those row keys outlive it, so
# rows it adds here expire with it too. (Redis's TIME is allowed in scripts since Redis 5.)
# With a 5th key (the entry's single-flight lease, same shard tag), ARGV[3] (owner) and ARGV[4]
# (lease ms), a miss also tries to take the lease: 1 when taken, 0 when another holds it (the
# cross-pod single flight's first step in the lookup's round trip, not one of its own).
# ARGV[1] is the proxy's clock in integer milliseconds (see :func:`_now_ms`); lru stays in seconds.
_GET_AND_TOUCH = """
local v = redis.call('GET', KEYS[1])
if not v and KEYS[5] then
  if redis.call('SET', KEYS[5], ARGV[3], 'NX', 'PX', ARGV[4]) then return 1 end
  return 0
end
if v then
  local first = redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) / 1000, ARGV[2])
  redis.call('ZINCRBY', KEYS[3], 1, ARGV[2])
  if first == 1 then
    local ms = redis.call('PTTL', KEYS[1])
    if ms > 0 then
      local t = redis.call('TIME')
      redis.call('ZADD', KEYS[4], tonumber(t[1]) + tonumber(t[2]) / 1e6 + ms / 1000, ARGV[2])
      for i = 2, 4 do
        if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
      end
    end
  end
end
return v
"""


# SET the entry with its TTL and record its eviction bookkeeping, as
# :meth:`llmcache.keyspace.Keyspace.record_access` does for a created entry, in one script call (a
# pipeline cost ~2x the CPU and wall time on the miss path). KEYS[2..6]: the group shard's rows in
# :data:`llmcache.keyspace.BOOKKEEPING_KINDS` order (lru, lfu, ctime, size, exp). ARGV: blob, TTL s,
# now (the proxy's clock in integer ms, :func:`_now_ms`; lru/ctime get it in s), key hash, size, how many
# expired members to trim.
# Then, so that bookkeeping never outlives what it describes without the operator: the rows of at
# most ARGV[6] members whose expiry (exp, on the Redis clock, like the entry's own TTL) has passed
# are dropped, and every row key is made to live at least as long as this entry (PEXPIRE only ever
# lengthens: the key then lives as long as its longest-lived member). The SET comes first, so a
# full Redis (OOM) refuses the script before it writes anything. With a 7th key (the entry's
# single-flight lease, same shard tag) and ARGV[7] (this pod's owner name), the lease is given up
# in the same call where this pod still owns it: pods waiting on it find the entry stored first,
# and the miss needs no round trip of its own for the release.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"""
# _RECORD alone (ARGV[1] empty) follows a plain ``SET`` of the entry, in the same write, where this process has a
# near cache: its broadcast tracking (llmcache.proxy.near) would otherwise send it a message for its own
# store on every miss: Valkey 8.1 (tested with raw commands) spares a ``NOLOOP`` broadcast-tracking connection
# the message for its own plain writes, not for its scripts'. Under OOM the SET is refused, and so is this
# script's first write.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local at = tonumber(ARGV[3]) / 1000
redis.call('ZADD', KEYS[2], at, ARGV[4])
redis.call('ZINCRBY', KEYS[3], 1, ARGV[4])
redis.call('ZADD', KEYS[4], at, ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[2]), ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
if #dead > 0 then
  for i = 2, 6 do
    if i == 5 then redis.call('HDEL', KEYS[i], unpack(dead)) else redis.call('ZREM', KEYS[i], unpack(dead)) end
  end
end
local ms = tonumber(ARGV[2]) * 1000
for i = 2, 6 do
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
if KEYS[7] and redis.call('GET', KEYS[7]) == ARGV[7] then redis.call('DEL', KEYS[7]) end
return #dead
"""
_PUT_AND_RECORD = _PUT + _RECORD


class RedisExactStore:
    """:class:`ExactStore` on plain Redis strings (``SET … EX``), bookkeeping per eviction group.

    ``client`` is a redis-py client, or a :class:`llmcache.proxy.resp.RespClient` (one Redis:
    ~15 µs of CPU per command instead of ~100, and the deadline kept by one timer per command).
    """

    def __init__(self, client: redis.asyncio.Redis | resp.RespClient, *, keyspace: Keyspace) -> None:
        self._redis = client
        self._ks = keyspace
        self._row_cache: dict[tuple[str, str], tuple[tuple[str, ...], str, str]] = {}
        self._bounded = isinstance(client, resp.RespClient)
        """The client keeps ``timeout_s`` itself; redis-py calls get an ``asyncio.timeout`` around them."""
        self.near: NearCache | None = None
        """The near cache of this store's connection: an entry this process writes or deletes leaves it at
        once (Redis's own invalidation follows)."""
        # register_script: EVALSHA, loading the script on NOSCRIPT (a restarted or flushed Redis).
        self._get_and_touch = client.register_script(_GET_AND_TOUCH)
        self._put_and_record = client.register_script(_PUT_AND_RECORD)
        self._record = client.register_script(_RECORD)

    async def _script(self, script: Any, keys: list[str], args: list[Any], timeout_s: float | None) -> Any:
        if self._bounded:
            return await script(keys=keys, args=args, timeout_s=timeout_s)
        if timeout_s is None:
            return await script(keys=keys, args=args)
        async with asyncio.timeout(timeout_s):
            return await script(keys=keys, args=args)

    def _row_keys(self, group: str, shard: str) -> tuple[tuple[str, ...], str, str]:
        """The bookkeeping keys of one group shard (:data:`llmcache.keyspace.BOOKKEEPING_KINDS` order), and the
        same as RESP bulk strings (:func:`llmcache.proxy.resp.bulk`): the lookup's (lru, lfu, exp) and the
        store's (all five), for :meth:`get_nowait` and :meth:`put_nowait`. Built once per (group, shard): at
        most 256 per eviction group."""
        hit = self._row_cache.get((group, shard))
        if hit is None:
            if len(self._row_cache) >= _MAX_ROW_CACHE:
                self._row_cache.clear()
            rows = tuple(self._ks.bookkeeping(group, shard))
            encoded = [resp.bulk(row) for row in rows]
            hit = self._row_cache[(group, shard)] = (rows, encoded[0] + encoded[1] + encoded[4], "".join(encoded))
        return hit

    def _rows(self, group: str, shard: str) -> tuple[str, ...]:
        """The bookkeeping keys of one group shard (see :meth:`_row_keys`)."""
        return self._row_keys(group, shard)[0]

    async def get(self, key_hash: str, *, group: str, timeout_s: float | None = None) -> bytes | None:
        ks = self._ks
        rows = self._rows(group, shard_of(key_hash))  # lru, lfu, ctime, size, exp
        try:
            value = await self._script(self._get_and_touch, [ks.entry(key_hash), rows[0], rows[1], rows[4]],
                                       [_now_ms(), key_hash], timeout_s)
        except redis.exceptions.OutOfMemoryError:
            # A full Redis refuses the bookkeeping writes; the entry itself can still be read.
            async with asyncio.timeout(timeout_s):
                value = await self._redis.get(ks.entry(key_hash))
        return value  # type: ignore[no-any-return]

    def get_nowait(self, key_hash: str, *, group: str, timeout_s: float | None = None,
                   lease: tuple[str, int] | None = None) -> asyncio.Future[Any] | None:
        """The lookup script sent now, for a caller that awaits its reply directly (no coroutine chain):
        the future of the raw reply (the entry, ``None``, or with ``lease`` = (owner, ms) on a miss 1/0
        as :meth:`get_or_lease` reads it), or ``None`` (nothing sent: await :meth:`get` or
        :meth:`get_or_lease`). A ``NoScriptError`` or ``OutOfMemoryError`` outcome: those handle it."""
        if not self._bounded:
            return None
        ks = self._ks
        shard = shard_of(key_hash)
        # Packed here, the row keys encoded once (resp.Script.start_encoded): ~7,000 instructions less
        # than hiredis.pack_command. Keys and arguments as in get / get_or_lease; anything not ASCII
        # (a keyspace prefix, an owner name) takes the generic way.
        entry_key, now = ks.entry(key_hash), str(_now_ms())
        keys_text = f"${len(entry_key)}\r\n{entry_key}\r\n{self._row_keys(group, shard)[1]}"
        args_text = f"${len(now)}\r\n{now}\r\n${len(key_hash)}\r\n{key_hash}\r\n"
        if lease is None:
            text = keys_text + args_text
            if text.isascii():
                return self._get_and_touch.start_encoded(4, 2, text.encode(), timeout_s=timeout_s)  # type: ignore[union-attr]
            rows = self._rows(group, shard)
            return self._get_and_touch.start(keys=[entry_key, rows[0], rows[1], rows[4]],  # type: ignore[union-attr]
                                             args=[int(now), key_hash], timeout_s=timeout_s)
        lease_key, owner, lease_ms = ks.lease(key_hash), lease[0], str(lease[1])
        text = (f"{keys_text}${len(lease_key)}\r\n{lease_key}\r\n{args_text}"
                f"${len(owner)}\r\n{owner}\r\n${len(lease_ms)}\r\n{lease_ms}\r\n")
        if text.isascii():
            return self._get_and_touch.start_encoded(5, 4, text.encode(), timeout_s=timeout_s)  # type: ignore[union-attr]
        rows = self._rows(group, shard)
        return self._get_and_touch.start(  # type: ignore[union-attr]
            keys=[entry_key, rows[0], rows[1], rows[4], lease_key],
            args=[int(now), key_hash, owner, lease[1]], timeout_s=timeout_s)

    async def get_or_lease(self, key_hash: str, *, group: str, owner: str, lease_ms: int,
                           timeout_s: float | None = None) -> tuple[bytes | None, bool | None]:
        ks = self._ks
        rows = self._rows(group, shard_of(key_hash))
        try:
            value = await self._script(self._get_and_touch,
                                       [ks.entry(key_hash), rows[0], rows[1], rows[4], ks.lease(key_hash)],
                                       [_now_ms(), key_hash, owner, lease_ms], timeout_s)
        except redis.exceptions.OutOfMemoryError:
            return await self.get(key_hash, group=group, timeout_s=timeout_s), None  # the lease: not tried
        if isinstance(value, int):
            return None, value == 1
        return value, None

    async def put(self, key_hash: str, entry: Entry, *, ttl_s: int, group: str, timeout_s: float | None = None,
                  lease_owner: str | None = None) -> int:
        if self.near is not None:
            self.near.written(key_hash)
        blob = entry.to_bytes()
        keys, args = self._put_command(key_hash, blob, _now_ms(), ttl_s=ttl_s, group=group, lease_owner=lease_owner)
        if self.near is not None and self._bounded:  # (a RespClient: as put_nowait, see _RECORD)
            await self._redis.call("SET", keys[0], blob, "EX", ttl_s, timeout_s=timeout_s)
            await self._script(self._record, keys, ["", *args[1:]], timeout_s)
        else:
            await self._script(self._put_and_record, keys, args, timeout_s)
        return args[4]  # type: ignore[no-any-return]

    def put_nowait(self, key_hash: str, entry: Entry, *, ttl_s: int, group: str, timeout_s: float | None = None,
                   lease_owner: str | None = None) -> asyncio.Future[Any] | None:
        """:meth:`put` sent now, for a caller that takes the outcome in a callback (no task, no coroutine):
        the future of the script's reply, or ``None`` (nothing sent: a redis-py client, or the connection
        must be made first) where :meth:`put` must be awaited instead. A ``NoScriptError`` outcome
        means Redis lacks the script: :meth:`put` loads it."""
        if not self._bounded:
            return None
        if self.near is not None:
            self.near.written(key_hash)
        blob = entry.to_bytes()
        ks = self._ks
        shard = shard_of(key_hash)
        # Packed here around the blob, the row keys encoded once (resp.Script.start_encoded): ~10,000
        # instructions less than hiredis.pack_command. Keys and arguments as in _put_command; anything
        # not ASCII (a keyspace prefix, an owner name) takes the generic way.
        entry_key, now, size, ttl = ks.entry(key_hash), str(_now_ms()), str(len(blob)), str(ttl_s)
        head = f"${len(entry_key)}\r\n{entry_key}\r\n{self._row_keys(group, shard)[2]}"
        tail = (f"\r\n${len(ttl)}\r\n{ttl}\r\n${len(now)}\r\n{now}\r\n${len(key_hash)}\r\n{key_hash}\r\n"
                f"${len(size)}\r\n{size}\r\n{_TRIM_ENCODED}")
        num = 6
        if lease_owner is not None:
            head += resp.bulk(ks.lease(key_hash))
            tail += resp.bulk(lease_owner)
            num = 7
        if head.isascii() and tail.isascii():
            if self.near is not None:  # the entry by a plain SET, then the bookkeeping (see _RECORD), in one write
                set_head = f"*5\r\n$3\r\nSET\r\n${len(entry_key)}\r\n{entry_key}\r\n${size}\r\n".encode()
                set_tail = f"\r\n$2\r\nEX\r\n${len(ttl)}\r\n{ttl}\r\n".encode()
                record = self._record.encoded(num, num, f"{head}$0\r\n{tail}".encode())  # type: ignore[union-attr]
                # The SET's reply is dropped: where it is refused (OOM), so is the script's first write.
                return self._redis.send_nowait(b"".join((set_head, blob, set_tail, record)), discard=1,  # type: ignore[union-attr]
                                               timeout_s=timeout_s)
            return self._put_and_record.start_encoded(  # type: ignore[union-attr]
                num, num, f"{head}${size}\r\n".encode(), blob, tail.encode(), timeout_s=timeout_s)
        if self.near is not None:
            return None  # (not ASCII, and a near cache: put splits the store the generic way)
        keys, args = self._put_command(key_hash, blob, int(now), ttl_s=ttl_s, group=group, lease_owner=lease_owner)
        return self._put_and_record.start(keys=keys, args=args, timeout_s=timeout_s)  # type: ignore[union-attr]

    def _put_command(self, key_hash: str, blob: bytes, now_ms: int, *, ttl_s: int, group: str,
                     lease_owner: str | None) -> tuple[list[str], list[Any]]:
        ks = self._ks
        # All keys carry the entry's shard tag: one slot, so the script runs on a cluster too.
        keys = [ks.entry(key_hash), *self._rows(group, shard_of(key_hash))]
        args: list[Any] = [blob, ttl_s, now_ms, key_hash, len(blob), TRIM_PER_WRITE]
        if lease_owner is not None:
            keys.append(ks.lease(key_hash))
            args.append(lease_owner)
        return keys, args

    async def delete(self, key_hash: str) -> None:
        if self.near is not None:
            self.near.written(key_hash)
        await self._redis.delete(self._ks.entry(key_hash))
