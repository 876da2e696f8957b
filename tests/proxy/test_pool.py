"""The keep-alive upstream pool (llmcache.proxy.pool) against real local servers: aiohttp's, and raw
asyncio ones where a server must misbehave (close a kept-alive connection, truncate, hang)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_helpers import RawServer, json_answer, read_request

from llmcache.proxy import pool
from llmcache.redis_server import free_port

JSON = pool.header_block([("Content-Type", "application/json")])


async def until(what: str, cond: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)
    assert cond(), what


class Upstream:
    """A real aiohttp server that counts the connections its requests came on."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/chunked", self.chunked)
        app.router.add_post("/close", self.close)
        app.router.add_post("/hang", self.hang)
        app.router.add_post("/big", self.big)
        self.server = TestServer(app, host="127.0.0.1")

    def _seen(self, request: web.Request) -> None:
        transport = request.transport
        assert transport is not None
        self.peers.append(transport.get_extra_info("peername"))

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        body = await request.read()
        return web.json_response({"path": request.path_qs, "body": body.decode(),
                                  "headers": [[k, v] for k, v in request.headers.items()]})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        out = web.StreamResponse(headers={"Content-Type": "application/json"})
        out.enable_chunked_encoding()
        await out.prepare(request)
        for part in (b'{"parts": [', b'"one", "two", ', b'"three"]}'):
            await out.write(part)
        await out.write_eof()
        return out

    async def close(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.json_response({"ok": True}, headers={"Connection": "close"})

    async def hang(self, request: web.Request) -> web.Response:
        self._seen(request)
        await self.release.wait()
        return web.json_response({"late": True})

    async def big(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"x" * (4 << 20), content_type="application/octet-stream")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def up() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.server.start_server()
    yield server
    server.release.set()
    await server.server.close()


def make_pool(url: str, **kw: Any) -> pool.Pool:
    return pool.Pool(url, **{"max_connections": 4, "connect_timeout_s": 5.0, "read_timeout_s": 10.0, **kw})


@contextlib.contextmanager
def opened_pool(url: str, **kw: Any) -> Iterator[pool.Pool]:
    """:func:`make_pool`, closed when the block ends (however the test's assertions went)."""
    p = make_pool(url, **kw)
    try:
        yield p
    finally:
        p.close()


async def test_requests_reuse_one_kept_alive_connection(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        for i in range(3):
            resp = await p.request("POST", f"/echo?n={i}", JSON, json.dumps({"i": i}).encode())
            assert resp.status == 200 and resp.content_length is not None
            doc = json.loads(await resp.read())
            resp.release()
            assert doc["path"] == f"/echo?n={i}" and json.loads(doc["body"]) == {"i": i}
            assert str(resp.url) == f"{up.url}/echo?n={i}"
        assert len(up.peers) == 3 and len(set(up.peers)) == 1  # one connection for all three
        assert p.num_open == 1 and p.num_idle == 1


async def test_headers_sent_as_given_plus_what_the_session_adds(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        block = pool.header_block([("X-Twice", "a"), ("X-Twice", "b"), ("Authorization", "Bearer k")])
        resp = await p.request("POST", "/echo", block, b"{}")
        doc = json.loads(await resp.read())
        resp.release()
        sent = doc["headers"]
        host, port = up.url.removeprefix("http://").split(":")
        assert ["Host", f"{host}:{port}"] in sent
        assert [h for h in sent if h[0] == "X-Twice"] == [["X-Twice", "a"], ["X-Twice", "b"]]
        assert ["Authorization", "Bearer k"] in sent and ["Content-Length", "2"] in sent
        # As aiohttp's client: a body without a Content-Type is sent as octets, Accept defaults to */*.
        assert ["Content-Type", "application/octet-stream"] in sent and ["Accept", "*/*"] in sent
        with pytest.raises(ValueError, match="control character"):
            pool.header_block([("X-Bad", "a\r\nX-Injected: 1")])


async def test_a_connection_the_server_closes_is_not_reused(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        resp = await p.request("POST", "/close", JSON, b"{}")
        assert json.loads(await resp.read()) == {"ok": True}
        resp.release()
        assert p.num_idle == 0  # Connection: close: never back in the pool
        await until("the closed connection is counted out", lambda: p.num_open == 0)
        resp = await p.request("POST", "/echo", JSON, b"{}")
        assert resp.status == 200
        await resp.read()
        resp.release()
        assert len(set(up.peers)) == 2


class OneShot(RawServer):
    """A raw HTTP/1.1 server that answers each connection's first request (keep-alive, by its headers)
    and then closes the connection unannounced: what an upstream's idle timeout does."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.num_connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_connections += 1
        await read_request(reader)
        writer.write(self.answer)
        await writer.drain()
        writer.close()


async def test_a_kept_alive_connection_closed_while_idle_is_replaced() -> None:
    body = b'{"ok": 1}'
    server = OneShot(json_answer(body))
    async with server as url:
        with opened_pool(url) as p:
            resp = await p.request("POST", "/", JSON, b"{}")
            assert await resp.read() == body
            resp.release()
            assert p.num_idle == 1  # kept alive, as the answer allowed…
            await until("the server's close is seen", lambda: p.num_open == 0)  # …until the server closed it
            assert p.num_idle == 0
            resp = await p.request("POST", "/", JSON, b"{}")
            assert await resp.read() == body
            resp.release()
            assert server.num_connections == 2


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        for _ in range(2):
            resp = await p.request("POST", "/chunked", JSON, b"{}")
            assert resp.content_length is None and resp.headers["Transfer-Encoding"] == "chunked"
            assert json.loads(await resp.read()) == {"parts": ["one", "two", "three"]}
            resp.release()
        assert len(set(up.peers)) == 1


async def test_no_byte_within_the_read_timeout_fails_and_closes(up: Upstream) -> None:
    with opened_pool(up.url, read_timeout_s=0.2) as p:
        with pytest.raises(aiohttp.SocketTimeoutError):
            await p.request("POST", "/hang", JSON, b"{}")
        await until("the timed-out connection is closed", lambda: p.num_open == 0)


async def test_a_full_pool_waits_only_connect_timeout_s(up: Upstream) -> None:
    with opened_pool(up.url, max_connections=1, connect_timeout_s=0.2) as p:
        busy = asyncio.ensure_future(p.request("POST", "/hang", JSON, b"{}"))
        await until("the first request holds the only connection", lambda: len(up.peers) == 1)
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await p.request("POST", "/echo", JSON, b"{}")
        # A request waiting for the connection gets it once the busy one is released.
        waiting = asyncio.ensure_future(p.request("POST", "/echo", JSON, b"{}"))
        up.release.set()
        first = await busy
        assert json.loads(await first.read()) == {"late": True}
        first.release()
        second = await waiting
        assert second.status == 200
        await second.read()
        second.release()
        assert len(set(up.peers)) == 1 and p.num_open == 1


async def test_a_refused_connection_raises_connect_failed() -> None:
    with opened_pool(f"http://127.0.0.1:{free_port()}") as p:  # nothing listens there
        with pytest.raises(pool.ConnectFailed):
            await p.request("POST", "/", JSON, b"{}")
        assert p.num_open == 0


async def test_a_large_unread_answer_is_held_to_the_reader_bound(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        resp = await p.request("POST", "/big", JSON, b"{}")
        conn: Any = resp._conn
        await until("reading paused for the slow reader", lambda: conn._reading_paused)
        # 4 MiB sent, but only about twice the reader's limit (plus one socket read) is held.
        assert resp.content.total_bytes <= 2 * pool._READ_LIMIT + (1 << 18)
        assert len(await resp.read()) == 4 << 20
        resp.release()
        assert p.num_idle == 1


async def test_an_answer_released_unread_closes_its_connection(up: Upstream) -> None:
    with opened_pool(up.url) as p:
        resp = await p.request("POST", "/big", JSON, b"{}")
        resp.release()
        assert p.num_idle == 0
        await until("the half-read connection is closed", lambda: p.num_open == 0)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":",  # then closed: a truncated body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",  # chunked, no last chunk
])
async def test_a_truncated_answer_is_a_payload_error(answer: bytes) -> None:
    async with OneShot(answer) as url:
        with opened_pool(url) as p:
            resp = await p.request("POST", "/", JSON, b"{}")
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            resp.release()
            assert p.num_idle == 0


@pytest.mark.parametrize("answer", [
    b"",  # closed unanswered
    b"HTTP/1.1 2x0 nonsense\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",  # a header over 8190 bytes
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"Content-Length: 0\r\n\r\n",
], ids=["nothing", "bad-status", "header-too-long", "too-many-headers"])
async def test_no_or_a_malformed_answer_is_a_client_error(answer: bytes) -> None:
    async with OneShot(answer) as url:
        with opened_pool(url) as p:
            with pytest.raises(aiohttp.ClientError):
                await p.request("POST", "/", JSON, b"{}")
            await until("the connection is closed", lambda: p.num_open == 0)


async def test_closing_the_pool_fails_waiters_and_later_requests(up: Upstream) -> None:
    p = make_pool(up.url, max_connections=1)
    busy = asyncio.ensure_future(p.request("POST", "/hang", JSON, b"{}"))
    await until("the only connection is busy", lambda: len(up.peers) == 1)
    waiting: Awaitable[Any] = asyncio.ensure_future(p.request("POST", "/echo", JSON, b"{}"))
    await until("the second request waits for the connection", lambda: len(p._waiters) == 1)
    p.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await waiting
    with pytest.raises(aiohttp.ClientConnectionError):
        await p.request("POST", "/echo", JSON, b"{}")
    up.release.set()
    resp = await busy
    await resp.read()
    resp.release()
    await until("the busy connection is closed on release", lambda: p.num_open == 0)


@pytest.mark.parametrize("sent", [
    {"Content-Type": "application/json", "Authorization": "Bearer k", "Accept-Encoding": "gzip", "Accept": "x/y"},
    # no Content-Type or Accept; hop-by-hop, proxy controls, and a header that Connection names hop-by-hop
    {"Keep-Alive": "timeout=5", "TE": "trailers", "X-LLMCache-Namespace": "ns", "Connection": "keep-alive, X-Hop",
     "X-Hop": "1", "X-Kept": "2"},
    # the same without Connection (the raw-bytes way): hop-by-hop and proxy controls still left out
    {"Keep-Alive": "timeout=5", "TE": "trailers", "X-LLMCache-Namespace": "ns", "Proxy-Authorization": "p",
     "X-Kept": "2", "Content-Type": "text/plain"},
])
async def test_the_pool_path_forwards_the_headers_the_session_path_does(up: Upstream, sent: dict[str, str]) -> None:
    """upstream.Forwarded rendered for the pool (raw bytes) and for the session: the upstream sees the same."""
    from llmcache.proxy import upstream

    async def front(request: web.Request) -> web.Response:
        body = await request.read()
        seen = []
        async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent",)) as session:
            via = upstream.Upstream(session, base_url=up.url, timeout_s=10)
            for pooled in (False, True):
                headers = upstream.Forwarded(request, drop=frozenset({"accept-encoding"}),
                                             extra=(("Accept-Encoding", "identity"),))
                resp = await via.open("POST", "/echo", headers, body, pooled=pooled)
                seen.append(sorted((k.lower(), v) for k, v in json.loads(await resp.read())["headers"]))
                resp.release()
            via.close()
        return web.json_response(seen)

    app = web.Application()
    app.router.add_post("/front", front)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept", "Content-Type")) as http, \
                http.post(server.make_url("/front"), data=b'{"a": 1}', headers=sent) as r:
            via_session, via_pool = await r.json()
    finally:
        await server.close()
    assert via_pool == via_session
    names = {k for k, _ in via_pool}
    assert not names & {"keep-alive", "te", "connection", "x-hop", "x-llmcache-namespace", "proxy-authorization"}
    assert ["accept-encoding", "identity"] in via_pool and ["content-length", "8"] in via_pool
    assert ("x-kept" in names) == ("X-Kept" in sent)


async def test_pools_of_replicas_that_went_away_do_not_pile_up(up: Upstream) -> None:
    from llmcache.proxy import upstream

    async with aiohttp.ClientSession() as session:
        via = upstream.Upstream(session, base_url=up.url, timeout_s=10)
        try:
            resp = await via.open("POST", "/echo", {"Content-Type": "application/json"}, b"{}", pooled=True)
            await resp.read()
            resp.release()  # this replica's pool keeps an idle connection
            for _ in range(2 * upstream._MAX_POOLS):  # replicas seen once, gone now
                with pytest.raises(aiohttp.ClientError):
                    await via._request(f"http://127.0.0.1:{free_port()}", "POST", "/", {}, b"{}",
                                       pooled=True)
            assert len(via._pools) <= upstream._MAX_POOLS
            assert up.url in via._pools  # the one with a connection stays
        finally:
            via.close()
