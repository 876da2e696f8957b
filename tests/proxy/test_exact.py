"""Exact entries: JSON schema validation (no pickle) and the Redis store's TTL and bookkeeping."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.proxy import resp
from llmcache.proxy.exact import Entry, InvalidEntry, RedisExactStore, created_now_s

ANSWER = {"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


def entry(**kw) -> Entry:
    return Entry(**{"route": "/v1/chat/completions", "model": "m", "created_s": 100.0,
                    "body": json.dumps(ANSWER), "prompt_tokens": 3, "completion_tokens": 1, **kw})


def test_round_trip_and_validation() -> None:
    e = entry(tenant="t", namespace="ns")
    assert Entry.from_json(e.to_json()) == e
    assert Entry.from_json(e.to_json().encode(), route="/v1/chat/completions").answer() == ANSWER
    with pytest.raises(InvalidEntry):
        Entry.from_json(e.to_json(), route="/v1/embeddings")
    bad = [pickle.dumps(ANSWER), b"{}", b'{"v": 2}', json.dumps({**json.loads(e.to_json()), "body": 5}).encode(),
           json.dumps({**json.loads(e.to_json()), "body": "{\"choices\": [{}]}"}).encode(),
           json.dumps({**json.loads(e.to_json()), "created_s": "yesterday"}).encode()]
    for blob in bad:
        with pytest.raises(InvalidEntry):
            Entry.from_json(blob)


@pytest.mark.parametrize("fields", [
    {}, {"tenant": "t\"é\u2028", "namespace": "ns", "partition": "p\\q", "origin": "sse"},
    {"similarity": 0.8732}, {"similarity": 1}, {"created_s": 1796607408.123456}, {"created_s": 7},
    {"created_s": 1796607408.123}, {"created_s": 1796607408.12}, {"created_s": 1796607408.0}, {"created_s": 0.001},
    {"created_s": 0.0}, {"created_s": 99999999999.999}, {"created_s": 1e11}, {"created_s": 1e-7},
    {"model": "m\x00\n", "body": json.dumps({**ANSWER, "model": "é \"😀\" </script>"}, ensure_ascii=False)},
])
def test_stored_form_is_the_compact_json_of_the_fields_in_schema_order(fields: dict) -> None:
    """to_json is the compact JSON of the fields in schema order, and it reads back."""
    e = entry(**fields)
    generic = {"v": 1 if e.similarity is None else 2, "route": e.route, "model": e.model, "created_s": e.created_s,
               "tenant": e.tenant, "namespace": e.namespace, "partition": e.partition, "origin": e.origin,
               "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens}
    if e.similarity is not None:
        generic["similarity"] = e.similarity
    generic["body"] = e.body
    assert e.to_json() == json.dumps(generic, separators=(",", ":"), ensure_ascii=False)
    assert Entry.from_json(e.to_json().encode()) == e


def test_new_entries_are_created_on_the_millisecond_never_later_than_now() -> None:
    """created_now_s floors time.time() to the millisecond (a short number in the stored text)."""
    before = time.time()
    created = created_now_s()
    assert before - 0.001 < created <= time.time()
    assert round(created * 1000) / 1000 == created
    assert f'"created_s":{created!r},' in entry(created_s=created).to_json()


@pytest.fixture
async def r(redis_plain_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_plain_url)
    yield client
    await client.aclose()


async def test_store_ttl_and_eviction_bookkeeping(r: aioredis.Redis) -> None:
    ks = Keyspace("t1")
    store = RedisExactStore(r, keyspace=ks)
    assert await store.get("abc", group="g") is None
    assert await r.exists(*ks.group_keys("g", "lru")) == 0  # a miss records nothing
    size = await store.put("abc", entry(), ttl_s=50, group="g")
    assert 0 < await r.ttl(ks.entry("abc")) <= 50
    assert int(await r.hget(ks.group_of("g", "size", "abc"), "abc")) == size
    assert await r.zscore(ks.group_of("g", "ctime", "abc"), "abc") is not None
    lru = await r.zscore(ks.group_of("g", "lru", "abc"), "abc")
    assert lru == await r.zscore(ks.group_of("g", "ctime", "abc"), "abc")
    assert await r.zscore(ks.group_of("g", "lfu", "abc"), "abc") == 1
    blob = await store.get("abc", group="g")
    assert Entry.from_json(blob) == entry()
    assert await r.zscore(ks.group_of("g", "lfu", "abc"), "abc") == 2
    await store.delete("abc")
    assert await store.get("abc", group="g") is None


@pytest.mark.parametrize("client", ["redis-py", "resp"])
async def test_access_and_creation_scores_are_seconds_on_the_proxys_clock(r: aioredis.Redis, redis_plain_url: str,
                                                                          client: str) -> None:
    """lru and ctime hold the proxy's time.time() in seconds (the operator's unit; sent as integer ms)."""
    ks = Keyspace(f"t-clock-{client}")
    fast = resp.RespClient.from_url(redis_plain_url) if client == "resp" else None
    store = RedisExactStore(fast or r, keyspace=ks)
    try:
        before = time.time()
        await store.put("abc", entry(), ttl_s=50, group="g", timeout_s=1.0)
        after = time.time()
        created = await r.zscore(ks.group_of("g", "ctime", "abc"), "abc")
        assert before - 0.001 <= created <= after
        assert await r.zscore(ks.group_of("g", "lru", "abc"), "abc") == created
        await asyncio.sleep(0.01)
        before = time.time()
        assert await store.get("abc", group="g", timeout_s=1.0) is not None
        after = time.time()
        used = await r.zscore(ks.group_of("g", "lru", "abc"), "abc")
        assert before - 0.001 <= used <= after and used > created
        assert await r.zscore(ks.group_of("g", "ctime", "abc"), "abc") == created
    finally:
        if fast is not None:
            await fast.aclose()


async def test_scripts_survive_a_script_flush(r: aioredis.Redis) -> None:
    """put/get run as EVALSHA; a Redis that lost its scripts (restart, SCRIPT FLUSH) gets them reloaded."""
    ks = Keyspace("t2")
    store = RedisExactStore(r, keyspace=ks)
    await store.put("k1", entry(), ttl_s=50, group="g")
    await r.script_flush()
    size = await store.put("k2", entry(), ttl_s=50, group="g")
    assert int(await r.hget(ks.group_of("g", "size", "k2"), "k2")) == size
    await r.script_flush()
    assert Entry.from_json(await store.get("k1", group="g")) == entry()
    assert await r.zscore(ks.group_of("g", "lfu", "k1"), "k1") == 2


async def test_put_gives_up_only_its_own_lease(r: aioredis.Redis) -> None:
    """A leased miss's store releases the lease in the same script, where this pod still owns it."""
    ks = Keyspace("t3")
    store = RedisExactStore(r, keyspace=ks)
    await r.set(ks.lease("mine"), "pod-a", px=10_000)
    await r.set(ks.lease("theirs"), "pod-b", px=10_000)  # expired and re-taken by another pod
    await store.put("mine", entry(), ttl_s=50, group="g", lease_owner="pod-a")
    await store.put("theirs", entry(), ttl_s=50, group="g", lease_owner="pod-a")
    assert not await r.exists(ks.lease("mine")) and await r.get(ks.lease("theirs")) == b"pod-b"
    assert Entry.from_json(await store.get("mine", group="g")) == entry()
    await store.put("plain", entry(), ttl_s=50, group="g")  # no lease named: none touched
    assert await r.get(ks.lease("theirs")) == b"pod-b"


async def test_lookup_takes_the_lease_only_on_a_miss(r: aioredis.Redis) -> None:
    """get_or_lease: a missing entry's lease is tried in the lookup's own round trip, for one owner."""
    ks = Keyspace("t4")
    store = RedisExactStore(r, keyspace=ks)
    assert await store.get_or_lease("k", group="g", owner="pod-a", lease_ms=10_000) == (None, True)
    assert await store.get_or_lease("k", group="g", owner="pod-b", lease_ms=10_000) == (None, False)
    assert await r.get(ks.lease("k")) == b"pod-a" and 0 < await r.pttl(ks.lease("k")) <= 10_000
    await store.put("k", entry(), ttl_s=50, group="g", lease_owner="pod-a")
    blob, taken = await store.get_or_lease("k", group="g", owner="pod-b", lease_ms=10_000)
    assert Entry.from_json(blob) == entry() and taken is None
    assert not await r.exists(ks.lease("k"))  # an entry there: no lease taken


def test_the_bytes_sent_are_the_stored_forms_text() -> None:
    """to_bytes (orjson) writes to_json's text, encoded: every code point in the answer and the other
    strings (in runs of 4,096, and each beside quotes), creation times and similarities on both sides
    of where orjson's float text parts from repr's, and a lone surrogate (to_json's own way)."""
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    runs = ["".join(points[i:i + 4096]) for i in range(0, len(points), 4096)]
    runs += [f'"{chr(c)}\\' for c in range(0x80)]
    for i, run in enumerate(runs):
        e = entry(body=run, model=run[:40], tenant=run[-9:], namespace="é", partition=run[:3], origin="sse",
                  similarity=None if i % 2 else 0.5)
        assert e.to_bytes() == e.to_json().encode()
    for created in (1796607408.123, 7, 0.0, 0.0001, 0.00009999, 1e-7, 1e16, 1.5e300, 99999999999.999):
        for similarity in (None, 0.0, 1, 0.8732, 0.0001, 1.2e-5, 1e-7):
            e = entry(created_s=created, similarity=similarity)
            assert e.to_bytes() == e.to_json().encode()
            assert Entry.from_json(e.to_bytes()) == e
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: as to_json().encode() fails
        entry(body="a\ud800b").to_bytes()
