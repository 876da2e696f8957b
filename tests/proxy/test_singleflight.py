"""Flights: followers see every chunk in order, live; failures and landing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.proxy import resp
from llmcache.proxy.exact import Entry
from llmcache.proxy.singleflight import FlightGroup, RedisLease


async def test_followers_get_all_chunks_live_and_the_entry() -> None:
    group = FlightGroup()
    flight = group.lead("k", stream_shape="null")
    assert group.join("k") is flight and group.num_coalesced_total == 1
    flight.push(b"a")
    got: list[bytes] = []

    async def follow() -> None:
        async for chunk in flight.follow():
            got.append(chunk)

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0)
    assert got == [b"a"]  # chunks produced before joining are replayed first
    flight.push(b"b")
    await asyncio.sleep(0)
    assert got == [b"a", b"b"]  # and later ones arrive as they are produced
    entry = Entry(route="/v1/chat/completions", model="m", created_s=0, body="{}")
    flight.finish(entry)
    await task
    assert await flight.wait() is entry and not flight.failed
    group.land(flight)
    assert group.join("k") is None and len(group) == 0


async def test_landing_an_unfinished_flight_fails_it() -> None:
    group = FlightGroup()
    flight = group.lead("k", stream_shape=None)
    waiter = asyncio.ensure_future(flight.wait())
    group.land(flight)
    assert await waiter is None and flight.failed


@pytest.mark.parametrize("client", ["redis-py", "resp"])
async def test_redis_lease_has_one_owner(redis_plain_url: str, client: str) -> None:
    # The proxy leases on its pipelined RESP connection where the URL allows one, else on redis-py.
    r = aioredis.Redis.from_url(redis_plain_url) if client == "redis-py" else resp.RespClient.from_url(redis_plain_url)
    try:
        a = RedisLease(r, keyspace=Keyspace(), owner="pod-a")
        b = RedisLease(r, keyspace=Keyspace(), owner="pod-b")
        assert await a.acquire("k", ttl_s=5)
        assert not await b.acquire("k", ttl_s=5)
        assert await b.held("k")
        await b.release("k")  # not the owner: no effect
        assert await a.held("k")
        await a.release("k")
        assert not await a.held("k") and await b.acquire("k", ttl_s=5)
    finally:
        await r.aclose()


def test_requests_needing_usage_do_not_join_a_flight_without_it() -> None:
    group = FlightGroup()
    group.lead("k", stream_shape="null", with_usage=False)
    assert group.join("k", needs_usage=True) is None
    assert group.join("k", needs_usage=False) is not None
    group.lead("j", stream_shape=None)
    assert group.join("j", needs_usage=True) is not None
