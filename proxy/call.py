"""One cacheable request in progress (:class:`Call`) and the steps every path of it shares.

::

    handlers: admit ─▶ exact lookup ─▶ semantic lookup ─┐
                                                        ├─ Call ─▶ load_entry (validate, tenant, age)
    misses:   join a flight · lead the upstream call ───┘          serve (JSON or SSE replay)
                                                                   count_answer · guarded Redis writes
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from aiohttp import web

from llmcache import keys
from llmcache.proxy import cachecontrol, streaming
from llmcache.proxy.breaker import CacheUnavailable
from llmcache.proxy.exact import Entry, ExactStore, InvalidEntry
from llmcache.proxy.state import EffectiveConfig, ProxyState

__all__ = ["JSON_TYPE", "SIMILARITY_HEADER", "SSE_TYPE", "STATUS_HEADER", "Call", "can_serve", "count_answer",
           "guarded", "load_entry", "note_redis_failure", "salted", "serve", "upstream_body", "upstream_body_waits"]

log = logging.getLogger(__name__)

STATUS_HEADER = "X-LLMCache-Status"
SIMILARITY_HEADER = "X-LLMCache-Similarity"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"


_UNSET: Any = object()


def salted(state: ProxyState, route: str) -> bool:
    """Does every body forwarded on ``route`` carry the tenant's ``cache_salt``? (chat/completions, when enabled)"""
    return route != "/v1/embeddings" and state.settings.upstream.enable_cache_salt


def upstream_body(state: ProxyState, cfg: EffectiveConfig, route: str, raw: bytes, body: dict[str, Any],
                  tenant: str) -> bytes:
    """``raw`` with the tenant's ``cache_salt`` (chat/completions, when enabled); otherwise ``raw`` itself.

    The salt is spliced in after the opening brace, so the client's JSON travels byte for byte;
    a client's own ``cache_salt`` is folded into ours and replaced.
    """
    if not salted(state, route):
        return raw
    client_salt = body.get("cache_salt")
    salt = keys.cache_salt(tenant, state.tenant_salt, partition=cfg.partition,
                           client_salt=client_salt if isinstance(client_salt, str) else None)
    head = raw.lstrip()
    if "cache_salt" in body or not body or not head.startswith(b"{"):
        return json.dumps({**body, "cache_salt": salt}, ensure_ascii=False).encode()
    return b'{"cache_salt":"' + salt.encode() + b'",' + head[1:]


def upstream_body_waits(raw: bytes, body: dict[str, Any]) -> bool:
    """May :func:`upstream_body` wait until the body is forwarded (:attr:`Call.raw`)? Where it cannot fail:
    the salt spliced into a body that opens with its brace and has fields but no ``cache_salt`` (a client's
    own salt, or a body json re-encodes, may hold text that does not encode: that fails before the lookup,
    as it always did)."""
    return raw[:1] == b"{" and bool(body) and "cache_salt" not in body


@dataclass(slots=True)
class Call:
    """One cacheable request in progress."""

    request: web.Request
    state: ProxyState
    cfg: EffectiveConfig
    route: str
    client_raw: bytes
    """The body as the client sent it."""
    body: dict[str, Any]
    key: str
    tenant: str
    namespace: str
    query: str
    upstream_path: str
    """Path and query the upstream gets: the client's, or the canonical route a non-canonical
    path was read as (:func:`llmcache.keys.canonical_route`)."""
    directives: cachecontrol.RequestDirectives
    stream: bool
    include_usage: bool
    stream_shape: str | None
    asked_threshold: float | None = None
    """``X-LLMCache-Similarity-Threshold`` (checked by :mod:`llmcache.proxy.controls`), or ``None``."""
    redis_ok: bool = True
    status: str = "miss"
    similarity: float | None = None
    coalesced: bool = False
    lease_key: str | None = None
    lease_taken: bool | None = None
    """The exact lookup's try at the cross-pod lease: ``True`` taken (and not yet led under),
    ``False`` another holds it, ``None`` not tried there."""
    handed_off: bool = False
    """True once landing the flight is the background store's job."""
    judgement: Any = None
    """A semantic candidate not served under an error bound, to judge against this request's fresh
    answer (:class:`llmcache.proxy.semantic.bound.Pending`), or ``None``."""
    _parts: Any = _UNSET
    """The request's semantic split, computed at most once (lookup, then store)."""
    _raw: bytes | None = None
    """:attr:`raw` once built (or built before the call where it may fail: :func:`upstream_body_waits`)."""

    @property
    def raw(self) -> bytes:
        """The body as forwarded upstream (with ``cache_salt`` when enabled), built on first use: a hit
        forwards nothing, and the salt and the splice cost ~8,000 instructions."""
        raw = self._raw
        if raw is None:
            raw = self._raw = upstream_body(self.state, self.cfg, self.route, self.client_raw, self.body, self.tenant)
        return raw

    def semantic_parts(self) -> keys.SemanticParts | None:
        """:func:`llmcache.keys.semantic_parts` of this request (canonical JSON + SHA-256, done once)."""
        if self._parts is _UNSET:
            try:
                self._parts = keys.semantic_parts(self.route, self.body, tenant=self.tenant, namespace=self.namespace,
                                                  partition=self.cfg.partition, query=self.query, normalised=True)
            except (ValueError, TypeError, RecursionError):
                self._parts = None
        return self._parts

    @property
    def log_key(self) -> str:
        return keys.short(self.key)

    @property
    def similarity_threshold(self) -> float:
        """The similarity a match must reach for this request: the policy's, or the tighter one it asked for."""
        threshold = self.cfg.similarity_threshold
        if self.asked_threshold is not None and self.asked_threshold > threshold:
            threshold = self.asked_threshold  # a request may only tighten it
        return threshold

    @property
    def wants_usage(self) -> bool:
        """A JSON answer always carries usage; a stream only with ``include_usage``."""
        return self.route != "/v1/embeddings" and (not self.stream or self.include_usage)


async def load_entry(call: Call, key_hash: str, *, kind: str, lease_ms: int | None = None) -> Entry | None:
    """Fetch and validate the entry at ``key_hash``; ``None`` on miss, invalid, stale or Redis trouble,
    and for a promoted semantic match (:attr:`Entry.similarity`) below the request's threshold or
    with the semantic cache off for it.

    With ``lease_ms`` (and the cross-pod lease on), a missing entry's lease is tried in the same
    round trip, for this pod; the outcome is in :attr:`Call.lease_taken`."""
    state = call.state
    if state.store is None:
        call.redis_ok = False
        return None
    store = state.store
    near = state.near
    t0 = time.perf_counter()
    try:
        blob = None if near is None else near.get(key_hash, group=call.cfg.group)
        if blob is None:
            lease = (state.lease.owner, lease_ms) if lease_ms is not None and state.lease is not None else None
            # An entry the key filter has never seen is not in Redis: no round trip. Unless a lease is to be
            # taken there, or the breaker says Redis is in trouble (that request is a bypass, as without it).
            if lease is None and near is not None and state.breaker.state == "closed" and near.absent(key_hash):
                return None
            generation = 0 if near is None else near.generation
            blob = await _fetch(call, store, key_hash, lease)
            if blob is _AWAIT_STORE:
                if lease is not None:
                    blob, call.lease_taken = await state.breaker.call_bounded(lambda t: store.get_or_lease(
                        key_hash, group=call.cfg.group, owner=lease[0], lease_ms=lease[1], timeout_s=t))
                else:
                    blob = await state.breaker.call_bounded(
                        lambda t: store.get(key_hash, group=call.cfg.group, timeout_s=t))
            if near is not None and blob is not None:
                near.fill(key_hash, blob, generation=generation)
    except CacheUnavailable:
        call.redis_ok = False
        note_redis_failure(state)
        return None
    finally:
        state.metrics.observe_lookup(kind, time.perf_counter() - t0)
    if blob is None:
        return None
    try:
        # A stored entry is the answer (≤ max_entry_bytes) escaped once inside the entry JSON.
        if len(blob) > 2 * state.settings.cache.max_entry_bytes + 4096:
            raise InvalidEntry(f"entry of {len(blob)} bytes exceeds what the proxy stores")
        entry = state.parsed.parse(key_hash, blob, route=call.route)
        if entry.tenant != call.tenant:
            raise InvalidEntry("entry belongs to another tenant")
        if entry.partition != state.keyspace.partition:
            raise InvalidEntry("entry belongs to another partition")
    except InvalidEntry as exc:
        log.warning("dropping invalid cache entry %s: %s", keys.short(key_hash), exc)
        state.parsed.forget(key_hash)
        if near is not None:
            near.forget(key_hash)
        state.spawn(guarded(state, lambda: store.delete(key_hash)))
        return None
    if call.cfg.invalidate_before_s is not None and entry.created_s < call.cfg.invalidate_before_s:
        return None
    if not call.directives.accepts_age(entry.age_s()):
        return None
    if entry.similarity is not None and not (call.cfg.semantic and entry.similarity >= call.similarity_threshold):
        return None  # a promoted semantic match: only where this request would accept that match
    if not can_serve(call, entry):
        return None
    return entry


#: :func:`_fetch` sent nothing, or its reply needs what the store's own methods do (load the script, a
#: full Redis): await those.
_AWAIT_STORE: Any = object()


async def _fetch(call: Call, store: ExactStore, key_hash: str, lease: tuple[str, int] | None) -> Any:
    """The lookup script's reply awaited directly under the breaker (one future instead of a chain of
    six coroutines to resume: breaker, store, script, connection); ``_AWAIT_STORE`` where it is not
    possible or the reply needs the store's own handling. Raises :class:`CacheUnavailable`."""
    breaker = call.state.breaker
    probe = breaker.enter()
    try:
        fut = store.get_nowait(key_hash, group=call.cfg.group, timeout_s=breaker.deadline_s(), lease=lease)
        if fut is None:
            breaker.abandoned(probe=probe)
            return _AWAIT_STORE
        value = await fut
    except (redis.exceptions.NoScriptError, redis.exceptions.OutOfMemoryError):
        breaker.abandoned(probe=probe)
        return _AWAIT_STORE
    except Exception as exc:
        raise breaker.failed(exc, probe=probe) from exc
    except BaseException:
        breaker.abandoned(probe=probe)
        raise
    breaker.succeeded(probe=probe)
    if lease is not None and isinstance(value, int):
        call.lease_taken = value == 1
        return None
    return value


def can_serve(call: Call, entry: Entry) -> bool:
    """False when the request wants usage (a JSON answer, or a stream with ``include_usage``) and
    ``entry`` was recorded from a stream without it.

    Clients read usage, so such a request is fetched once; its answer (with usage) then replaces
    the entry and serves every shape.
    """
    return not call.wants_usage or entry.has_usage or entry.origin != "sse"


def count_answer(call: Call, status: str, *, tokens_saved: int = 0, bytes_saved: int = 0) -> None:
    """Count one answer with cache ``status`` in the metrics and the per-namespace stats."""
    call.state.metrics.count(call.route, status)
    call.state.stats.add(call.namespace, status, policy=call.cfg.policy_id, tokens_saved=tokens_saved,
                         bytes_saved=bytes_saved)


def note_redis_failure(state: ProxyState) -> None:
    state.metrics.redis_failures.inc()
    state.metrics.breaker_open.set(1 if state.breaker.is_open else 0)


async def guarded(state: ProxyState, op: Callable[[], Awaitable[Any]]) -> Any:
    """Run a Redis operation under the breaker in the background; failures only count."""
    try:
        return await state.breaker.call(op)
    except CacheUnavailable:
        note_redis_failure(state)
        return None


def serve(call: Call, entry: Entry, *, status: str) -> web.Response:
    """Answer from ``entry`` in the shape the request asked for (JSON or SSE)."""
    state = call.state
    call.status = status
    headers = {STATUS_HEADER: status, "Age": str(int(entry.age_s()))}
    if call.similarity is None and entry.similarity is not None:
        call.similarity = entry.similarity  # an exact hit on a promoted match: say how close it was
    if call.similarity is not None:
        headers[SIMILARITY_HEADER] = f"{call.similarity:.4f}"
    if call.stream:
        payload = streaming.replay(call.route, entry.answer(), include_usage=call.include_usage)
        headers["Cache-Control"] = "no-cache"
        resp = web.Response(body=payload, headers=headers, content_type=SSE_TYPE)
    else:
        payload = entry.body.encode()
        resp = web.Response(body=payload, headers=headers, content_type=JSON_TYPE)
    count_answer(call, status, tokens_saved=entry.prompt_tokens + entry.completion_tokens, bytes_saved=len(payload))
    state.metrics.served_from_cache(num_bytes=len(payload), prompt_tokens=entry.prompt_tokens,
                                    completion_tokens=entry.completion_tokens)
    log.debug("%s %s age=%ss", status, call.log_key, headers["Age"])
    return resp
