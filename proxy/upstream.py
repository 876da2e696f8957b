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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmcache.proxy import controls, limits

__all__ = ["HOP_BY_HOP", "Upstream", "UpstreamError", "error_response", "filter_headers", "relay", "response_for"]

log = logging.getLogger(__name__)

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
    named = {t.strip().lower() for v in headers.getall("Connection", ())  # type: ignore[union-attr]
             for t in v.split(",")} if isinstance(headers, (CIMultiDictProxy, CIMultiDict)) else set()
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in _RECOMPUTED or lk in named or lk in drop or (
                to_upstream and lk.startswith(controls.CONTROL_PREFIX)):
            continue
        out.add(k, v)
    return out


class Upstream:
    """One pooled :class:`aiohttp.ClientSession` to the upstream base URL."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, timeout_s: float,
                 connect_timeout_s: float = 10.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        # ``connect`` bounds the wait for a free pooled connection plus connecting: once every
        # pooled connection is busy, a request must not queue forever.
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s,
                                             sock_read=timeout_s)
        self.connect_timeout_s = connect_timeout_s

    @staticmethod
    def make_session(*, pool_size: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, keepalive_timeout=60,
                                         enable_cleanup_closed=True)
        # No cookie jar: a shared proxy must not carry one client's cookies to another's request.
        return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))

    async def open(self, method: str, path_qs: str, headers: Mapping[str, str],
                   body: bytes | AsyncIterable[bytes] | None) -> aiohttp.ClientResponse:
        """Send the request; return the response with headers read (body still streaming).

        Raise :class:`UpstreamError` (502/504) when no response headers arrive.
        """
        # encoded=True: the path and query travel byte for byte as the client wrote them.
        url = URL(self.base_url + path_qs, encoded=True)
        try:
            return await self.session.request(method, url, headers=headers, data=body, timeout=self.timeout,
                                              allow_redirects=False, compress=None)
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamError(503, f"no connection to upstream {self.base_url} within {self.connect_timeout_s:g} s "
                                     "(all pooled connections busy, or it does not accept connections); retry "
                                     "shortly") from exc
        except TimeoutError as exc:
            raise UpstreamError(504, f"upstream {self.base_url} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"upstream {self.base_url} is unreachable or closed the connection "
                                     f"({type(exc).__name__})") from exc


def response_for(resp: aiohttp.ClientResponse, *, extra_headers: Mapping[str, str] | None = None,
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


async def relay(request: web.Request, resp: aiohttp.ClientResponse, *, writes: limits.WriteDeadlines,
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
