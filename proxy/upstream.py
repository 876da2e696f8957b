"""Talking to the upstream: pooled connections, header hygiene, error mapping.

Transparent pass-through: any method and path, the request body streamed to
the upstream and the answer streamed back chunk by chunk, status and body
preserved (an upstream 4xx/5xx reaches the client as it was). Hop-by-hop
headers (RFC 9110 §7.6.1, plus any named in ``Connection``) are dropped both
ways. Compressed answers pass through still compressed (``auto_decompress`` is
off); cacheable requests ask for ``identity`` so the proxy can read them.

When no answer arrives: connection refused / reset before headers → 502,
no pooled connection free and no new one within ``connect_timeout_s`` → 503
(``Retry-After``), no byte within the timeout → 504, all with an OpenAI-style error body.

Several model-server replicas (``--upstream`` repeated, ``dns+URL``, ``file:PATH``): each
request goes where :class:`~llmcache.proxy.routing.Router` chooses; a replica that refuses
the connection (nothing was sent yet) is skipped for a while and the request goes once to
another one. Once a request's bytes were sent it is never re-sent. One static upstream: no
router, exactly the behaviour above.

A miss or bypass without ``stream`` (``open(..., pooled=True)``, a body in hand, a plain-HTTP
upstream) goes over :class:`~llmcache.proxy.pool.Pool`'s keep-alive connections, not the session:
the same request bytes (the session's default ``Accept`` and ``Content-Type`` included), the
same timeouts and error mapping, llhttp reading the answer, a fraction of the CPU. Streams,
pass-through and TLS upstreams stay on the session.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from llmcache.proxy import controls, limits, pool

if TYPE_CHECKING:
    from llmcache.proxy.routing import Router

__all__ = ["HOP_BY_HOP", "Answer", "Forwarded", "Upstream", "UpstreamError", "error_response", "filter_headers",
           "relay", "response_for"]

#: Response header of the llmcache model server: prompt tokens served from its prefix cache.
CACHED_TOKENS_HEADER = "X-LLMCache-Cached-Tokens"
_PROMPT_ROUTES = ("/v1/chat/completions", "/v1/completions")
#: Upstream base URLs with a keep-alive pool, at most (beyond: the pools without connections go).
_MAX_POOLS = 64

log = logging.getLogger(__name__)

#: An upstream answer with its headers read: the session's, or the keep-alive pool's (same surface).
Answer = aiohttp.ClientResponse | pool.Response

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Recomputed by the side that writes the message.
_RECOMPUTED = frozenset({"host", "content-length"})


class UpstreamError(Exception):
    """The upstream gave no answer; ``status`` is what the client gets (502 or 504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, *, type_: str = "llmcache_error", code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """An OpenAI-style error JSON response; 429 and 503 carry ``Retry-After: 1`` unless ``headers`` set one."""
    if status in (429, 503) and not (headers and "Retry-After" in headers):
        headers = {**(headers or {}), "Retry-After": "1"}
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}},
                             status=status, headers=headers)


def filter_headers(headers: Mapping[str, str] | CIMultiDictProxy[str], *,
                   drop: frozenset[str] = frozenset(), to_upstream: bool = False) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop ones, those named in ``Connection``, and ``drop``;
    ``to_upstream`` (a request being forwarded) also drops every ``X-LLMCache-*`` header: those are
    addressed to the proxy (controls, the admin token), and a hosted upstream must never see them."""
    if not to_upstream and isinstance(headers, (CIMultiDictProxy, CIMultiDict)) and "Connection" not in headers:
        # An answer's headers (no Connection header naming more): copy them all in C and delete the
        # few skipped names present, instead of a Python test per header (~11,000 → ~6,500
        # instructions for an answer's four headers).
        out: CIMultiDict[str] = CIMultiDict(headers)
        for name in _skipped_names(drop):
            if name in out:
                del out[name]
        return out
    skip = _skipped(drop)
    if "Connection" in headers and isinstance(headers, (CIMultiDictProxy, CIMultiDict)):
        skip = skip | {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    out = CIMultiDict()
    prefix = controls.CONTROL_PREFIX if to_upstream else None
    for k, v in headers.items():
        lk = k.lower()
        if lk in skip or (prefix is not None and lk.startswith(prefix)):
            continue
        out.add(k, v)
    return out


@functools.lru_cache(maxsize=16)
def _skipped(drop: frozenset[str]) -> frozenset[str]:
    """Header names (lower case) never copied: hop-by-hop, recomputed, and ``drop`` (the callers' few sets)."""
    return HOP_BY_HOP | _RECOMPUTED | drop


@functools.lru_cache(maxsize=16)
def _skipped_names(drop: frozenset[str]) -> tuple[istr, ...]:
    """:func:`_skipped` as case-insensitive names, for deleting from a ``CIMultiDict``."""
    return tuple(istr(name) for name in sorted(_skipped(drop)))


@functools.lru_cache(maxsize=16)
def _skipped_wire(drop: frozenset[str]) -> frozenset[bytes]:
    """:func:`_skipped` as the bytes of raw header names."""
    return frozenset(name.encode() for name in _skipped(drop))


_CONTROL_PREFIX_WIRE = controls.CONTROL_PREFIX.encode()


class Forwarded:
    """A client request's headers as forwarded upstream (``to_upstream``, see :func:`filter_headers`):
    ``drop`` left out, ``extra`` set (its names must be in ``drop``).

    Rendered for the session (:meth:`mapping`) or, straight from the raw header bytes the server's
    parser kept, as the pool's header lines (:meth:`wire`: one pass, no header object: 39,700 →
    ~24,800 instructions for a request's six headers, callgrind)."""

    __slots__ = ("drop", "extra", "headers", "raw")

    def __init__(self, request: web.BaseRequest, *, drop: frozenset[str],
                 extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.headers = request.headers
        self.raw = request.raw_headers
        self.drop = drop
        self.extra = extra

    def mapping(self) -> CIMultiDict[str]:
        out = filter_headers(self.headers, drop=self.drop, to_upstream=True)
        for name, value in self.extra:
            out[name] = value
        return out

    def wire(self) -> bytes:
        """The header lines for :meth:`llmcache.proxy.pool.Pool.request` (the same headers as :meth:`mapping`)."""
        headers = self.headers
        if "Connection" in headers:  # names listed there are hop-by-hop too: the general way
            return pool.header_block(self.mapping().items())
        skip = _skipped_wire(self.drop)
        prefix = _CONTROL_PREFIX_WIRE
        # (llhttp admitted no CR, LF or NUL in these bytes: nothing to check again.)
        parts: list[bytes] = []
        for name, value in self.raw:
            lower = name.lower()
            if lower not in skip and not lower.startswith(prefix):
                parts += (name, b": ", value, b"\r\n")
        for name_, value_ in self.extra:
            parts.append(f"{name_}: {value_}\r\n".encode())
        # What aiohttp's client adds when the caller did not set it (so both paths send the same).
        if "Accept" not in headers:
            parts.append(b"Accept: */*\r\n")
        if "Content-Type" not in headers:
            parts.append(b"Content-Type: application/octet-stream\r\n")
        return b"".join(parts)


class Upstream:
    """One pooled :class:`aiohttp.ClientSession` to the upstream base URL, or to replicas a router picks."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, timeout_s: float,
                 connect_timeout_s: float = 10.0, router: Router | None = None, pool_size: int = 256) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.router = router
        """Picks a replica per request when there are several (``None``: one static upstream)."""
        # ``connect`` bounds the wait for a free pooled connection plus connecting: once every
        # pooled connection is busy, a request must not queue forever.
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s,
                                             sock_read=timeout_s)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        """Keep-alive connections at most per replica on the pooled path (as the session's ``limit_per_host``)."""
        self._pools: dict[str, pool.Pool] = {}

    def close(self) -> None:
        """Close the pooled path's connections (the session is closed by its owner)."""
        pools, self._pools = self._pools, {}
        for p in pools.values():
            p.close()

    @staticmethod
    def make_session(*, pool_size: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, keepalive_timeout=60,
                                         enable_cleanup_closed=True)
        # No cookie jar: a shared proxy must not carry one client's cookies to another's request.
        return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))

    def _new_pool(self, base_url: str) -> pool.Pool:
        """A pool for ``base_url``; pools with no connection open are dropped first once there are
        ``_MAX_POOLS`` (replicas come and go with DNS or a file: their pools must not pile up)."""
        if len(self._pools) >= _MAX_POOLS:
            for url in [u for u, p in self._pools.items() if p.num_open == 0]:
                self._pools.pop(url).close()
        p = self._pools[base_url] = pool.Pool(base_url, max_connections=self.pool_size,
                                              connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.timeout_s)
        return p

    async def open(self, method: str, path_qs: str, headers: Mapping[str, str] | Forwarded,
                   body: bytes | AsyncIterable[bytes] | None, *, pooled: bool = False) -> Answer:
        """Send the request; return the response with headers read (body still streaming).

        ``pooled``: the body is in hand and the answer is not a stream kept open for long (a miss or
        bypass without ``stream``): sent over the keep-alive :class:`~llmcache.proxy.pool.Pool` (plain
        HTTP) instead of the session, which costs a fraction of the CPU per request.

        Raise :class:`UpstreamError` (502/503/504) when no response headers arrive.
        """
        if self.router is None:
            try:
                return await self._request(self.base_url, method, path_qs, headers, body, pooled=pooled)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._error(exc, self.base_url) from exc
        return await self._routed(self.router, method, path_qs, headers, body, pooled=pooled)

    async def _request(self, base_url: str, method: str, path_qs: str, headers: Mapping[str, str] | Forwarded,
                       body: bytes | AsyncIterable[bytes] | None, *, pooled: bool = False) -> Answer:
        if pooled and isinstance(body, bytes) and base_url.startswith("http://"):
            p = self._pools.get(base_url)
            if p is None:
                p = self._new_pool(base_url)
            block = headers.wire() if isinstance(headers, Forwarded) else pool.header_block(headers.items())
            return await p.request(method, path_qs, block, body)
        if isinstance(headers, Forwarded):
            headers = headers.mapping()
        # encoded=True: the path and query travel byte for byte as the client wrote them.
        url = URL(base_url + path_qs, encoded=True)
        return await self.session.request(method, url, headers=headers, data=body, timeout=self.timeout,
                                          allow_redirects=False, compress=None)

    def _error(self, exc: BaseException, base_url: str) -> UpstreamError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError(503, f"no connection to upstream {base_url} within {self.connect_timeout_s:g} s "
                                      "(all pooled connections busy, or it does not accept connections); retry "
                                      "shortly")
        if isinstance(exc, TimeoutError):
            return UpstreamError(504, f"upstream {base_url} did not answer in time")
        return UpstreamError(502, f"upstream {base_url} is unreachable or closed the connection "
                                  f"({type(exc).__name__})")

    async def _routed(self, router: Router, method: str, path_qs: str, headers: Mapping[str, str] | Forwarded,
                      body: bytes | AsyncIterable[bytes] | None, *, pooled: bool = False) -> Answer:
        """Send to the replica ``router`` picks; once more to another when the connection is refused."""
        route = path_qs.split("?", 1)[0]
        parsed: dict[str, Any] | None = None
        if method == "POST" and route in _PROMPT_ROUTES and isinstance(body, bytes | bytearray):
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            parsed = obj if isinstance(obj, dict) else None
        key = router.key_for(route, parsed)
        # Only a body we hold can be sent again; a streamed one may have been read.
        resendable = body is None or isinstance(body, bytes | bytearray)
        tried: list[Any] = []
        while True:
            choice = router.choose(key, exclude=tried)
            if choice is None:
                raise UpstreamError(503, "no model-server replica accepts connections "
                                         f"({len(router.replicas.replicas)} known); retry shortly")
            replica = choice.replica
            router.sending(choice)
            replica.num_inflight += 1
            try:
                resp = await self._request(replica.url, method, path_qs, headers, body, pooled=pooled)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, pool.ConnectFailed) as exc:
                # Nothing reached the replica: skip it for a while, and try one other.
                router.not_sent(choice)
                router.replicas.mark_failed(replica, time.monotonic())
                tried.append(replica)
                if resendable and len(tried) == 1 and len(router.replicas.replicas) > 1:
                    log.info("upstream replica %s refused the connection (%s); sending to another",
                             replica.url, type(exc).__name__)
                    if router.metrics is not None:
                        router.metrics.retries.labels(replica.url).inc()
                    continue
                raise self._error(exc, replica.url) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._error(exc, replica.url) from exc
            finally:
                replica.num_inflight -= 1
            router.sent(choice)
            reported = resp.headers.get(CACHED_TOKENS_HEADER, "")
            if router.metrics is not None and reported.isdigit():
                router.metrics.reported_cached_tokens.labels(replica.url).inc(int(reported))
            return resp

    def probe_url(self) -> str:
        """An upstream URL for reachability probes: a routable replica's when there are several."""
        if self.router is None:
            return self.base_url
        now = time.monotonic()
        for r in self.router.replicas.replicas.values():
            if r.is_routable(now):
                return r.url
        return next(iter(self.router.replicas.replicas), self.base_url)


def response_for(resp: Answer, *, extra_headers: Mapping[str, str] | None = None,
                 body: bytes | None = None) -> web.StreamResponse:
    """An unprepared response mirroring ``resp``: status, reason, end-to-end headers (``extra_headers``
    set on top) and, unless the upstream chunked it, its Content-Length (relayed, not re-chunked).

    With ``body`` (the upstream's whole answer, already read) a :class:`web.Response` sent in one write."""
    headers = filter_headers(resp.headers)
    if extra_headers:
        headers.update(extra_headers)
    if body is not None:
        return web.Response(body=body, status=resp.status, reason=resp.reason, headers=headers)
    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
    if resp.headers.get("Content-Length") is not None and "chunked" not in resp.headers.get(
            "Transfer-Encoding", "").lower():
        out.content_length = int(resp.headers["Content-Length"])
    return out


async def relay(request: web.Request, resp: Answer, *, writes: limits.WriteDeadlines,
                extra_headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Stream ``resp`` to the client unchanged; abort the client connection if the upstream breaks,
    and the upstream's (releasing the pooled connection) if the client leaves a write untaken past
    its deadline (``writes``)."""
    out = response_for(resp, extra_headers=extra_headers)
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_any():
            await writes.write(request, out, chunk)
        await writes.finish(request, out)
    except ConnectionResetError:
        # First: aiohttp's ClientConnectionResetError (the *client* left) is also a ClientError.
        return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("upstream broke off a pass-through answer (%s)", type(exc).__name__)
        abort(request)
        return out
    finally:
        resp.release()
    return out


def abort(request: web.Request) -> None:
    """Close the client's connection without finishing the answer (mirrors a truncated upstream)."""
    transport: Any = request.transport
    if transport is not None:
        transport.abort()
