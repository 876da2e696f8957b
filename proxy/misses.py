"""Misses: one upstream call per key, shared by every identical request (single-flight).

::

    miss ─▶ join a flight running here? ─yes─▶ follow: its chunks as they come / its entry
         └▶ [--single-flight-lease] another pod leads? ─▶ poll for its entry, else lead
            (the lease is tried in the exact lookup's own script where nothing comes between,
             and given up by the script that stores the entry)
         └▶ lead: upstream ─▶ relay chunks while recording ─▶ complete and valid?
                     ─▶ store (fixed TTL) + semantic add in the background ─▶ land the flight

A follower never waits longer than its leader's upstream call; Redis trouble while storing
only costs the entry (the answer was already relayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
import redis.exceptions
from aiohttp import web

from llmcache import keys
from llmcache.proxy import cachecontrol, streaming, upstream
from llmcache.proxy.breaker import CacheUnavailable
from llmcache.proxy.call import (
    JSON_TYPE,
    SSE_TYPE,
    STATUS_HEADER,
    Call,
    can_serve,
    count_answer,
    guarded,
    load_entry,
    note_redis_failure,
    serve,
)
from llmcache.proxy.exact import Entry, created_now_s, validate_answer
from llmcache.proxy.singleflight import Flight
from llmcache.proxy.state import ProxyState

__all__ = ["join_flight", "miss"]

log = logging.getLogger(__name__)


#: Request headers a miss does not forward as the client sent them (it asks for ``identity``).
_NOT_FORWARDED = frozenset({"accept-encoding"})
_IDENTITY = (("Accept-Encoding", "identity"),)  # we must be able to read what we store


async def join_flight(call: Call) -> web.StreamResponse | None:
    """Serve from an identical request's upstream call in this process, if one is running."""
    flight = call.state.flights.join(call.key, needs_usage=call.wants_usage)
    if flight is None:
        return None
    call.state.metrics.coalesced.inc()
    return await _follow(call, flight)


async def miss(call: Call, *, join: bool) -> web.StreamResponse:
    state = call.state
    if join:
        served = await join_flight(call)
        if served is not None:
            return served
    # Lead in-process first, so identical requests here join this flight while it waits for
    # another pod's lease.
    flight = state.flights.lead(call.key, stream_shape=call.stream_shape,
                                with_usage=not call.stream or call.include_usage,
                                max_bytes=state.settings.cache.max_entry_bytes)
    try:
        if state.lease is not None and call.redis_ok and not call.directives.no_store:
            waited = await _cross_pod_wait(call)
            if isinstance(waited, Entry):
                flight.finish(waited)
                call.coalesced = True
                return serve(call, waited, status="hit")
            call.lease_key = waited
        return await _lead(call, flight)
    finally:
        if not call.handed_off:
            _land(call, flight)


def _land(call: Call, flight: Flight) -> None:
    """End ``flight`` (later requests read Redis again) and give up the cross-pod lease."""
    call.state.flights.land(flight)
    if call.lease_key is not None:
        release_lease(call, call.lease_key)


def release_lease(call: Call, key_hash: str) -> None:
    """Give up this pod's cross-pod lease on ``key_hash`` in the background."""
    state = call.state
    call.lease_taken = None
    if state.lease is not None:
        lease = state.lease
        state.spawn(guarded(state, lambda: lease.release(key_hash)))


def _lease_ttl_s(state: ProxyState) -> float:
    """How long a cross-pod lease holds (s): the upstream's timeout, at most a minute."""
    return min(state.settings.upstream.timeout_s, 60.0)


def lookup_lease_ms(call: Call) -> int | None:
    """The lease time to try in the exact lookup itself (ms), or ``None`` where that is not this call's way.

    Only where nothing can come between that lookup and leading the miss: the lease on, the answer
    to be stored, no local flight to join (one here holds the lease already, or needs none), and no
    semantic lookup or only-if-cached answer in between (those await, or end the request). Elsewhere
    :func:`miss` takes the lease as it always did, after leading locally.
    """
    state = call.state
    d = call.directives
    if (state.lease is None or d.no_store or d.only_if_cached or call.cfg.semantic
            or call.key in state.flights):
        return None
    return max(1, int(_lease_ttl_s(state) * 1000))


async def _store_then_land(call: Call, flight: Flight, entry: Entry) -> None:
    """Store after the answer went out, then land: until the entry is in Redis, identical
    requests join the finished flight and are served its entry from memory (no gap, no repeat
    upstream call), and the client's next request on the connection does not wait for Redis."""
    try:
        await _store(call, entry)
    finally:
        _land(call, flight)


async def _cross_pod_wait(call: Call) -> Entry | str | None:
    """Own the miss across pods (return the lease key), or wait for the owner's entry (return it).

    ``None``: no lease (Redis trouble, or the owner gave up without storing): call the upstream.
    """
    state = call.state
    assert state.lease is not None
    lease = state.lease
    ttl_s = _lease_ttl_s(state)
    taken, call.lease_taken = call.lease_taken, None  # (the lookup's try: now this miss's)
    if taken:
        return call.key
    if taken is None:
        try:
            if await state.breaker.call(lambda: lease.acquire(call.key, ttl_s=ttl_s)):
                return call.key
        except CacheUnavailable:
            return None
    deadline = time.monotonic() + ttl_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.025)
        entry = await load_entry(call, call.key, kind="exact")
        if entry is not None:
            return entry
        try:
            if not await state.breaker.call(lambda: lease.held(call.key)):
                break
        except CacheUnavailable:
            break
    return None


async def _follow(call: Call, flight: Flight) -> web.StreamResponse | None:
    """Serve from another request's upstream call; ``None`` when it failed before sending anything."""
    call.coalesced = True
    if call.stream and flight.stream_shape == call.stream_shape:
        out: web.StreamResponse | None = None
        writes = call.state.writes
        try:
            async for chunk in flight.follow():
                if out is None:
                    out = web.StreamResponse(status=200, headers={
                        STATUS_HEADER: "hit", "Age": "0", "Content-Type": SSE_TYPE, "Cache-Control": "no-cache"})
                    await out.prepare(call.request)
                await writes.write(call.request, out, chunk)
        except ConnectionResetError:  # the client left, or stopped reading (limits.WriteStalled)
            flight.leave()  # one reader fewer for the leader to keep the upstream open for
            return out or web.Response(status=499)
        if out is None:  # the flight ended (or overflowed) without a streamed byte
            if flight.overflowed:
                return None  # too long to share: go upstream ourselves
            if flight.entry is not None and can_serve(call, flight.entry):
                return serve(call, flight.entry, status="hit")
            return None  # go upstream ourselves
        if flight.failed or flight.overflowed:
            upstream.abort(call.request)
            return out
        call.status = "hit"
        state = call.state
        state.metrics.count(call.route, "hit")
        entry = flight.entry
        if entry is not None:
            state.metrics.served_from_cache(num_bytes=0, prompt_tokens=entry.prompt_tokens,
                                            completion_tokens=entry.completion_tokens)
            state.stats.add(call.namespace, "hit", policy=call.cfg.policy_id,
                            tokens_saved=entry.prompt_tokens + entry.completion_tokens)
        with contextlib.suppress(ConnectionResetError):
            await writes.finish(call.request, out)
        return out
    request = call.request
    entry = await flight.wait(abandoned=lambda: _client_gone(request))
    if entry is None and _client_gone(request):
        return web.Response(status=499)  # nobody to answer (and no reason to call the upstream)
    if entry is None or not can_serve(call, entry):
        return None
    return serve(call, entry, status="hit")


def _client_gone(request: web.Request) -> bool:
    """Has the client closed its connection? (aiohttp drops the transport when it does.)"""
    transport = request.transport
    return transport is None or transport.is_closing()




async def _lead(call: Call, flight: Flight) -> web.StreamResponse:
    """Call the upstream, relay its answer as it arrives, store it when complete."""
    state = call.state
    assert state.upstream is not None
    request = call.request
    call.status = "miss" if call.redis_ok else "bypass"
    headers = upstream.Forwarded(request, drop=_NOT_FORWARDED, extra=_IDENTITY)
    t0 = time.perf_counter()
    try:
        resp = await state.upstream.open("POST", call.upstream_path, headers, call.raw, pooled=not call.stream)
    except upstream.UpstreamError as exc:
        flight.fail()
        count_answer(call, call.status)
        log.info("upstream failed for %s: %s", call.log_key, exc.message)
        return upstream.error_response(exc.status, exc.message, type_="upstream_error",
                                       headers={STATUS_HEADER: call.status})
    state.metrics.observe_upstream(call.route, time.perf_counter() - t0)
    count_answer(call, call.status)
    ctype = resp.headers.get("Content-Type", "")
    is_sse = ctype.startswith(SSE_TYPE)
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    recording = resp.status == 200 and not encoded and (is_sse or ctype.startswith(JSON_TYPE))
    push = recording and is_sse and flight.stream_shape is not None
    max_bytes = state.settings.cache.max_entry_bytes
    length = resp.content_length
    if not is_sse and length is not None and length <= max_bytes:
        return await _lead_whole(call, flight, resp, recording=recording)
    recorder = streaming.SSERecorder(call.route, max_bytes=max_bytes) if recording and is_sse else None
    parts: list[bytes] = []
    size = 0

    out = upstream.response_for(resp, extra_headers={STATUS_HEADER: call.status})
    writes = state.writes
    client_gone = False
    try:
        try:
            await out.prepare(request)
        except ConnectionResetError:
            client_gone = True
        async for chunk in resp.content.iter_any():
            if push:
                flight.push(chunk)
            if recorder is not None:
                recorder.feed(chunk)
            elif recording:
                size += len(chunk)
                if size > max_bytes:
                    recording = False
                    parts.clear()
                else:
                    parts.append(chunk)
            if not client_gone:
                try:
                    await writes.write(request, out, chunk)
                except ConnectionResetError:  # gone, or not reading (limits.WriteStalled)
                    client_gone = True
            # Keep reading for requests that joined this call; with none left, stop the upstream.
            if client_gone and flight.num_followers == 0:
                break
        else:
            if not client_gone:
                with contextlib.suppress(ConnectionResetError):
                    await writes.finish(request, out)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("upstream broke off the answer for %s (%s); not stored", call.log_key, type(exc).__name__)
        flight.fail()
        upstream.abort(request)
        return out
    finally:
        resp.release()
    if client_gone:
        # A cancelled request is never stored; requests that joined it still get the answer.
        log.info("client left before the answer for %s was complete; not stored", call.log_key)
        entry = _entry_from(call, recorder, parts) if recording and flight.num_followers else None
        if entry is None:
            flight.fail()
        else:
            flight.finish(entry)
        return out
    entry = _entry_from(call, recorder, parts) if recording else None
    flight.finish(entry)
    if call.judgement is not None and entry is not None and state.bound is not None:
        state.bound.submit(call.judgement, entry)  # judged after the answer went out
    if entry is not None and not call.directives.no_store and call.redis_ok:
        call.handed_off = True
        store_in_background(call, flight, entry)
    return out


async def _lead_whole(call: Call, flight: Flight, resp: upstream.Answer, *,
                      recording: bool) -> web.StreamResponse:
    """A JSON (or error) answer of known length within ``max_entry_bytes``: read it, answer in one write.

    The upstream sends such an answer at once, so relaying it chunk by chunk only adds work (a
    prepared stream, a write per chunk, an end marker: ~3 sends instead of 1). It is sent here, then
    read into an entry and stored, like a streamed one, and not when the client left before it
    could be sent.
    """
    request = call.request
    try:
        payload = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("upstream broke off the answer for %s (%s); not stored", call.log_key, type(exc).__name__)
        flight.fail()
        return upstream.error_response(502, f"upstream {call.state.settings.upstream.url} broke off its answer "
                                            f"({type(exc).__name__})", type_="upstream_error",
                                       headers={STATUS_HEADER: call.status})
    finally:
        resp.release()
    out = upstream.response_for(resp, extra_headers={STATUS_HEADER: call.status}, body=payload)
    transport = request.transport
    if transport is None or transport.is_closing():
        # The client left: nothing is stored (as for a stream); requests that joined still get it.
        log.info("client left before the answer for %s was sent; not stored", call.log_key)
        entry = _entry_from(call, None, [payload]) if recording and flight.num_followers else None
        if entry is None:
            flight.fail()
        else:
            flight.finish(entry)
        return out
    # The answer goes out first; the client does not wait for its entry to be parsed, built and
    # stored (~125,000 instructions). Requests that join meanwhile wait for the flight to finish.
    await call.state.writes.send(request, out)
    entry = _entry_from(call, None, [payload]) if recording else None
    flight.finish(entry)
    if call.judgement is not None and entry is not None and call.state.bound is not None:
        call.state.bound.submit(call.judgement, entry)  # queued: judged once the answer is on its way
    if entry is not None and not call.directives.no_store and call.redis_ok:
        call.handed_off = True
        store_in_background(call, flight, entry)
    return out


def _entry_from(call: Call, recorder: streaming.SSERecorder | None, parts: list[bytes]) -> Entry | None:
    """The storable entry of a complete answer, or ``None`` (incomplete, error body, not parseable)."""
    try:
        if recorder is not None:
            if not recorder.complete:
                log.info("stream for %s ended without [DONE]/finish_reason; not stored", call.log_key)
                return None
            answer = recorder.answer()
            text = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
            origin = "sse"
        else:
            text = b"".join(parts).decode()
            answer = keys.read_json(text)  # (checked and read; the text is what is stored)
            origin = "json"
        validate_answer(call.route, answer)
    except (ValueError, UnicodeDecodeError) as exc:  # InvalidEntry is a ValueError
        log.info("answer for %s is not storable: %s", call.log_key, exc)
        return None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    model = answer.get("model") if isinstance(answer.get("model"), str) else str(call.body.get("model", ""))
    return Entry(route=call.route, model=model, created_s=created_now_s(), body=text, tenant=call.tenant,
                 namespace=call.namespace, partition=call.state.keyspace.partition, origin=origin,
                 prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens")))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def store_in_background(call: Call, flight: Flight, entry: Entry) -> None:
    """Store ``entry`` after the answer went out, then land ``flight`` (see :func:`_store_then_land`).

    The store's script is sent at once and its reply taken in a callback: no task, and no chain of
    coroutines (breaker, store, script, connection) to resume when Redis answers, ~20,000
    instructions less per miss than :func:`_store_then_land` in a task of its own, which remains
    the way where that is not possible (a redis-py client, a connection to make, the script to load).
    """
    state = call.state
    store = state.store
    if store is None:
        _land(call, flight)
        return
    ttl_s = cachecontrol.entry_ttl_s(call.directives, ttl_bound_s=call.cfg.ttl_s)
    owner = _lease_owner(call)
    try:
        probe = state.breaker.enter()
    except CacheUnavailable:
        _not_stored(call)
        _land(call, flight)
        return
    try:
        fut = store.put_nowait(call.key, entry, ttl_s=ttl_s, group=call.cfg.group,
                               timeout_s=state.breaker.deadline_s(), lease_owner=owner)
    except Exception as exc:  # noqa: BLE001 - as the breaker would take it from an awaited put
        state.breaker.failed(exc, probe=probe)
        _not_stored(call)
        _land(call, flight)
        return
    if fut is None:  # not possible now: the awaited way (its own breaker call)
        state.breaker.abandoned(probe=probe)
        state.spawn(_store_then_land(call, flight, entry))
        return
    fut.add_done_callback(lambda f: _stored(call, flight, entry, f, probe=probe, owner=owner, ttl_s=ttl_s))
    state.hold(fut)  # (after the callback: whoever waits for the background finds it run)


def _stored(call: Call, flight: Flight, entry: Entry, fut: asyncio.Future[Any], *, probe: bool,
            owner: str | None, ttl_s: int) -> None:
    """The background store's reply came (or its deadline passed): account it, index, land."""
    state = call.state
    if fut.cancelled():  # shutting down
        state.breaker.abandoned(probe=probe)
        _land(call, flight)
        return
    exc = fut.exception()
    if isinstance(exc, redis.exceptions.NoScriptError):
        # A restarted or flushed Redis: the awaited put loads the script (and probes, if this did).
        state.breaker.abandoned(probe=probe)
        state.spawn(_store_then_land(call, flight, entry))
        return
    try:
        if exc is not None:
            state.breaker.failed(exc, probe=probe)
            _not_stored(call)
            return
        state.breaker.succeeded(probe=probe)
        _after_stored(call, owner, ttl_s)
    finally:
        _land(call, flight)


def _lease_owner(call: Call) -> str | None:
    """This pod's lease owner name where the store's script is to give up the cross-pod lease."""
    state = call.state
    return state.lease.owner if call.lease_key is not None and state.lease is not None else None


def _not_stored(call: Call) -> None:
    note_redis_failure(call.state)
    log.info("could not store %s (redis unavailable); served uncached", call.log_key)


async def _store(call: Call, entry: Entry) -> None:
    """Write the entry (fixed TTL) and register it with the semantic index; failures only count."""
    state = call.state
    store = state.store
    if store is None:
        return
    ttl_s = cachecontrol.entry_ttl_s(call.directives, ttl_bound_s=call.cfg.ttl_s)
    # The cross-pod lease is given up by the same script that stores the entry (no round trip of its own).
    owner = _lease_owner(call)
    try:
        await state.breaker.call_bounded(
            lambda t: store.put(call.key, entry, ttl_s=ttl_s, group=call.cfg.group, timeout_s=t, lease_owner=owner))
    except CacheUnavailable:
        _not_stored(call)
        return
    _after_stored(call, owner, ttl_s)


def _after_stored(call: Call, owner: str | None, ttl_s: int) -> None:
    """The entry is in Redis: the lease went with it; index it by meaning (in the background)."""
    state = call.state
    if owner is not None:
        call.lease_key = None  # released: landing has nothing left to give up
    if call.cfg.semantic and state.semantic is not None:
        parts = call.semantic_parts()
        if parts is None:
            return
        if state.num_pending_adds >= state.settings.semantic.max_pending_adds:
            # The embedder is behind: skip indexing rather than queue without bound.
            state.metrics.semantic_adds_skipped.inc()
            log.info("semantic add for %s skipped: %d adds pending", call.log_key, state.num_pending_adds)
            return
        state.num_pending_adds += 1
        state.spawn(_semantic_add(state, state.semantic, parts, call.key, ttl_s))


async def _semantic_add(state: ProxyState, semantic: Any, parts: keys.SemanticParts, key_hash: str,
                        ttl_s: int) -> None:
    """Index the stored entry by meaning, within ``SemanticSettings.add_timeout_s``; failures only log."""
    try:
        async with asyncio.timeout(state.settings.semantic.add_timeout_s):
            await semantic.add(parts, key_hash, ttl_s=ttl_s)
    except TimeoutError:
        state.metrics.semantic_adds_failed.inc()
        log.info("semantic add for %s timed out; the exact entry is stored", keys.short(key_hash))
    except Exception as exc:  # noqa: BLE001 - indexing is best effort; the exact entry is stored
        state.metrics.semantic_adds_failed.inc()
        log.info("semantic add failed for %s (%s: %s)", keys.short(key_hash), type(exc).__name__, exc)
    finally:
        state.num_pending_adds -= 1
