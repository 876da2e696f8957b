"""The request path's pipelined Redis connection (proxy/resp.py), against real servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import hiredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from llmcache.keyspace import TRIM_PER_WRITE, Keyspace, shard_of
from llmcache.proxy import resp
from llmcache.proxy.exact import Entry, RedisExactStore

ANSWER = ('{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}],'
          '"usage":{"prompt_tokens":3,"completion_tokens":1}}')


def test_supports_one_redis_over_tcp_or_unix_only() -> None:
    assert resp.supports("redis://127.0.0.1:6379/0")
    assert resp.supports("redis://user:secret@127.0.0.1:6379/2")
    assert resp.supports("unix:///tmp/redis.sock?db=1")
    assert not resp.supports("rediss://127.0.0.1:6379/0")  # TLS: redis-py
    assert not resp.supports("redis+cluster://127.0.0.1:7000")  # cluster: redis-py


async def test_concurrent_commands_get_their_own_replies(redis_plain_url: str) -> None:
    client = resp.RespClient.from_url(redis_plain_url)
    try:
        await asyncio.gather(*(client.call("SET", f"k{i}", f"v{i}") for i in range(200)))
        values = await asyncio.gather(*(client.get(f"k{i}") for i in range(200)))
        assert values == [f"v{i}".encode() for i in range(200)]
        assert client.num_connects == 1  # all of it pipelined on one connection
        assert await client.get("absent") is None
    finally:
        await client.aclose()


async def test_reply_errors_raise_redis_exceptions(redis_plain_url: str) -> None:
    client = resp.RespClient.from_url(redis_plain_url)
    try:
        await client.call("SET", "s", "text")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await client.call("LPUSH", "s", "x")
        assert await client.get("s") == b"text"  # the connection stays in step after an error
    finally:
        await client.aclose()


async def test_script_is_loaded_again_after_a_flush(redis_plain_url: str) -> None:
    client = resp.RespClient.from_url(redis_plain_url)
    plain = aioredis.Redis.from_url(redis_plain_url)
    try:
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        assert await script(keys=["n"]) == 1
        await plain.script_flush()  # a restarted Redis knows no scripts: EVALSHA says NOSCRIPT
        assert await script(keys=["n"]) == 2
        assert await script(keys=["n"]) == 3
    finally:
        await client.aclose()
        await plain.aclose()


async def test_a_full_redis_raises_out_of_memory(redis_factory) -> None:
    server = redis_factory(with_search=False)
    client = resp.RespClient.from_url(server.url)
    plain = aioredis.Redis.from_url(server.url)
    try:
        await plain.config_set("maxmemory-policy", "noeviction")
        await plain.config_set("maxmemory", "1")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await client.call("SET", "k", "v")
    finally:
        await plain.config_set("maxmemory", "0")
        await client.aclose()
        await plain.aclose()


@pytest.fixture
def silent_server() -> Iterator[tuple[str, socket.socket]]:
    """Accepts connections and never answers: a hung Redis."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0", sock
    finally:
        sock.close()


async def test_deadline_and_a_hung_redis_are_bounded(silent_server: tuple[str, socket.socket]) -> None:
    url, _ = silent_server
    client = resp.RespClient.from_url(url, stale_after_s=0.2, max_pending=5)
    try:
        with pytest.raises(TimeoutError):
            await client.call("PING", timeout_s=0.05)
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await client.call("PING", timeout_s=0.01)
        assert len(client.pending) == 4  # unanswered: still waiting on the connection
        tasks = [asyncio.ensure_future(client.call("PING")) for _ in range(3)]
        await asyncio.sleep(0)
        # the bound: one more may wait (5 in all), the others are refused at once
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 2 and all(isinstance(t.exception(), redis.exceptions.ConnectionError) for t in refused)
        waiting = next(t for t in tasks if not t.done())
        await asyncio.sleep(0.25)
        # the oldest has waited past stale_after_s: the next call drops the connection and fails them all
        with pytest.raises(TimeoutError):
            await client.call("PING", timeout_s=0.05)
        with pytest.raises(redis.exceptions.TimeoutError):
            await waiting
        assert client.num_connects == 2
    finally:
        await client.aclose()


async def test_a_restarted_redis_fails_pending_commands_and_is_reconnected(redis_factory) -> None:
    server = redis_factory(with_search=False)
    client = resp.RespClient.from_url(server.url)
    try:
        await client.call("SET", "k", "v")
        server.kill()
        with pytest.raises((redis.exceptions.ConnectionError, TimeoutError)):
            await client.call("GET", "k", timeout_s=1.0)
        server.restart()
        deadline = time.monotonic() + 20  # liveness bound for the restart, not a latency claim
        while True:
            try:
                assert await client.call("PING", timeout_s=1.0) == b"PONG"
                break
            except (redis.exceptions.ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "never reconnected"
                await asyncio.sleep(0.05)
        assert client.num_connects >= 2
    finally:
        await client.aclose()


async def test_authenticates_with_the_url_credentials(redis_factory) -> None:
    server = redis_factory(with_search=False)
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "sidecar", "on", ">s3cret", "~*", "+@all")
        url = server.url.replace("redis://", "redis://sidecar:s3cret@")
        client = resp.RespClient.from_url(url)
        assert await client.call("ACL", "WHOAMI") == b"sidecar"
        await client.aclose()
        wrong = resp.RespClient.from_url(server.url.replace("redis://", "redis://sidecar:wrong@"))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await wrong.call("PING")
        await wrong.aclose()
    finally:
        await admin.aclose()


async def test_exact_store_reads_and_writes_the_same_through_either_client(redis_plain_url: str) -> None:
    """The store's two scripts behave the same on redis-py and on the pipelined connection."""
    ks = Keyspace()
    fast = resp.RespClient.from_url(redis_plain_url)
    plain = aioredis.Redis.from_url(redis_plain_url)
    try:
        entry = Entry(route="/v1/chat/completions", model="m", created_s=time.time(), body=ANSWER, tenant="t")
        await RedisExactStore(fast, keyspace=ks).put("a" * 64, entry, ttl_s=60, group="_default", timeout_s=1.0)
        blob = await RedisExactStore(plain, keyspace=ks).get("a" * 64, group="_default", timeout_s=1.0)
        assert Entry.from_json(blob) == entry
        await RedisExactStore(plain, keyspace=ks).put("b" * 64, entry, ttl_s=60, group="_default")
        blob = await RedisExactStore(fast, keyspace=ks).get("b" * 64, group="_default", timeout_s=1.0)
        assert Entry.from_json(blob) == entry
        assert await RedisExactStore(fast, keyspace=ks).get("c" * 64, group="_default") is None
        assert 0 < await plain.ttl(ks.entry("a" * 64)) <= 60
    finally:
        await fast.aclose()
        await plain.aclose()


def _command(packed: bytes) -> list[bytes]:
    """The arguments of one packed command; fails unless ``packed`` is exactly one well-formed command."""
    reader = hiredis.Reader()
    reader.feed(packed)
    command = reader.gets()
    assert isinstance(command, list) and reader.gets() is False
    return command


@pytest.mark.parametrize(("prefix", "owner", "num_packed"), [
    ("llmcache", "pod-a", 4),
    ("llmcaché", "pod-a", 0),  # not ASCII: hiredis packs every command
    ("llmcache", "pod-ä", 2),  # only the commands that carry the owner
])
async def test_exact_store_sends_the_commands_hiredis_would_pack(redis_plain_url: str, prefix: str, owner: str,
                                                                 num_packed: int) -> None:
    """get_nowait and put_nowait pack their EVALSHA themselves (constant parts encoded once) where all is
    ASCII: the same command, argument for argument, as hiredis.pack_command of what get/put send."""
    ks = Keyspace(prefix)
    fast = resp.RespClient.from_url(redis_plain_url)
    plain = aioredis.Redis.from_url(redis_plain_url)
    sent: list[bytes] = []
    packed_here: list[bytes] = []
    send, send_nowait = fast._send, fast.send_nowait
    fast._send = lambda packed, timeout_s=None, discard=0: (sent.append(packed), send(packed, timeout_s, discard))[1]
    fast.send_nowait = lambda packed, *, timeout_s=None: (packed_here.append(packed),
                                                          send_nowait(packed, timeout_s=timeout_s))[1]
    try:
        await fast.ping()
        sent.clear()
        store = RedisExactStore(fast, keyspace=ks)
        entry = Entry(route="/v1/chat/completions", model="m", created_s=1796607408.123, body=ANSWER, tenant="tё")
        blob = entry.to_json().encode()
        kh, other = "a" * 64, "b" * 64
        rows, other_rows = ks.bookkeeping("g", shard_of(kh)), ks.bookkeeping("g", shard_of(other))
        lookup, store_ = store._get_and_touch.sha.encode(), store._put_and_record.sha.encode()
        for script in (store._get_and_touch, store._put_and_record):  # (a NOSCRIPT reply is the callers' to handle)
            assert await plain.script_load(script.source) == script.sha

        def expect(*args: object) -> list[bytes]:
            return _command(hiredis.pack_command(args))

        def now_ms(command: list[bytes], index: int, before_s: float) -> int:
            ms = int(command[index])
            assert before_s * 1000 - 1 <= ms <= time.time() * 1000
            return ms

        cases = [
            (lambda: store.put_nowait(kh, entry, ttl_s=60, group="g"), 11,
             lambda ms: expect("EVALSHA", store_, 6, ks.entry(kh), *rows, blob, 60, ms, kh, len(blob), TRIM_PER_WRITE),
             0),
            (lambda: store.get_nowait(kh, group="g"), 7,
             lambda ms: expect("EVALSHA", lookup, 4, ks.entry(kh), rows[0], rows[1], rows[4], ms, kh), blob),
            (lambda: store.get_nowait(other, group="g", lease=(owner, 5000)), 8,
             lambda ms: expect("EVALSHA", lookup, 5, ks.entry(other), other_rows[0], other_rows[1], other_rows[4],
                               ks.lease(other), ms, other, owner, 5000), 1),
            (lambda: store.put_nowait(other, entry, ttl_s=60, group="g", lease_owner=owner), 12,
             lambda ms: expect("EVALSHA", store_, 7, ks.entry(other), *other_rows, ks.lease(other),
                               blob, 60, ms, other, len(blob), TRIM_PER_WRITE, owner), 0),
        ]
        for start, now_at, expected, reply in cases:
            before_s = time.time()
            fut = start()
            assert fut is not None
            assert await fut == reply
            command = _command(sent.pop())
            assert command == expected(now_ms(command, now_at, before_s))
        assert not sent and len(packed_here) == num_packed
        assert await plain.get(ks.lease(other)) is None  # the store gave the lease up
        assert Entry.from_json(await plain.get(ks.entry(other))) == entry
    finally:
        await fast.aclose()
        await plain.aclose()


async def test_a_store_beside_a_near_cache_sets_the_entry_itself_then_records_it(redis_plain_url: str) -> None:
    """With a near cache, put_nowait sends a plain SET (Redis spares its tracking connection the broadcast of
    that, not of a script's write) and the bookkeeping script without the blob, in one write; put does the
    same awaited, loading the script where Redis lost it."""
    ks = Keyspace("llmcache")
    fast = resp.RespClient.from_url(redis_plain_url)
    plain = aioredis.Redis.from_url(redis_plain_url)
    sent: list[tuple[bytes, int]] = []
    send_nowait = fast.send_nowait
    fast.send_nowait = lambda packed, *, timeout_s=None, discard=0: (sent.append((packed, discard)), send_nowait(
        packed, timeout_s=timeout_s, discard=discard))[1]
    written: list[str] = []
    try:
        await fast.ping()
        store = RedisExactStore(fast, keyspace=ks)
        store.near = type("Near", (), {"written": staticmethod(written.append)})()  # type: ignore[assignment]
        entry = Entry(route="/v1/chat/completions", model="m", created_s=1796607408.123, body=ANSWER, tenant="t")
        blob = entry.to_bytes()
        kh, other = "a" * 64, "b" * 64
        rows = ks.bookkeeping("g", shard_of(kh))
        assert await plain.script_load(store._record.source) == store._record.sha
        await plain.set(ks.lease(kh), "pod-a")
        before_s = time.time()
        fut = store.put_nowait(kh, entry, ttl_s=60, group="g", lease_owner="pod-a")
        assert fut is not None and await fut == 0
        ((packed, num),) = sent
        reader = hiredis.Reader()
        reader.feed(packed)
        set_command, record, rest = reader.gets(), reader.gets(), reader.gets()
        assert num == 1 and rest is False
        assert set_command == [b"SET", ks.entry(kh).encode(), blob, b"EX", b"60"]
        ms = int(record[12])
        assert before_s * 1000 - 1 <= ms <= time.time() * 1000
        assert record == _command(hiredis.pack_command((
            "EVALSHA", store._record.sha, 7, ks.entry(kh), *rows, ks.lease(kh), "", 60, ms, kh, len(blob),
            TRIM_PER_WRITE, "pod-a")))
        assert written == [kh]
        assert await plain.get(ks.entry(kh)) == blob and 0 < await plain.ttl(ks.entry(kh)) <= 60
        assert await plain.get(ks.lease(kh)) is None  # given up by the script
        assert await plain.zscore(rows[0], kh) is not None and await plain.hget(rows[3], kh) == str(len(blob)).encode()
        await plain.script_flush()  # a restarted Redis: the awaited way loads the script
        await store.put(other, entry, ttl_s=60, group="g", timeout_s=1.0)
        assert await plain.get(ks.entry(other)) == blob
        assert await plain.zscore(ks.bookkeeping("g", shard_of(other))[0], other) is not None
        assert written == [kh, other] and len(sent) == 1
    finally:
        await fast.aclose()
        await plain.aclose()


async def test_replies_sent_to_be_discarded_are_read_and_dropped_errors_too(redis_plain_url: str) -> None:
    fast = resp.RespClient.from_url(redis_plain_url)
    try:
        await fast.call("SET", "discard-test", "abc")
        packed = b"".join(hiredis.pack_command(c) for c in (("INCR", "discard-test"), ("APPEND", "discard-test", "d"),
                                                            ("GET", "discard-test")))
        fut = fast.send_nowait(packed, discard=2, timeout_s=1.0)
        assert fut is not None and await fut == b"abcd"  # the INCR's error and the APPEND's 4 went nowhere
        assert not fast.pending
        assert await fast.call("GET", "discard-test") == b"abcd"  # still in step
    finally:
        await fast.call("DEL", "discard-test")
        await fast.aclose()


async def test_each_command_fails_at_its_own_deadline(silent_server: tuple[str, socket.socket]) -> None:
    """One timer keeps every pending deadline: a short one sent after a long one fails at its own
    deadline (well within the long one's), and the long one is still waiting then."""
    url, _ = silent_server
    client = resp.RespClient.from_url(url, stale_after_s=60.0)
    try:
        with pytest.raises(TimeoutError):
            await client.call("PING", timeout_s=0.05)  # connects (the connection stays: it is not stale)
        slow = asyncio.ensure_future(client.call("PING", timeout_s=30.0))
        await asyncio.sleep(0)  # sent
        short = asyncio.ensure_future(client.call("PING", timeout_s=0.05))
        done, _ = await asyncio.wait({short}, timeout=10.0)  # liveness bound, far below the long deadline
        assert short in done and isinstance(short.exception(), TimeoutError)
        assert not slow.done()  # its own deadline has not come
    finally:
        await client.aclose()
    with pytest.raises(redis.exceptions.ConnectionError):
        await slow  # closing the client fails what still waits
