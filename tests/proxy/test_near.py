"""The near cache (llmcache.proxy.near) on a real Redis: hits served from the proxy's memory, and every
change another client makes to an entry reaching it through Redis's invalidation pushes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from proxy_helpers import CHAT, Stack, wait_until

from llmcache.keyspace import shard_of
from llmcache.proxy import near as near_module
from llmcache.proxy.near import NearCache


async def armed_stack(proxy_stack: Callable[..., Awaitable[Stack]], **overrides) -> tuple[Stack, NearCache]:
    stack = await proxy_stack(**overrides)
    near = stack.state.near
    assert near is not None
    await wait_until("the near cache armed", lambda: near.armed, timeout_s=15.0)
    return stack, near


async def held_hit(stack: Stack, near: NearCache, body: dict = CHAT) -> str:
    """Miss, then a hit read from Redis that fills the near cache: the key hash held."""
    assert (await stack.post("/v1/chat/completions", body))[1]["X-LLMCache-Status"] == "miss"
    assert (await stack.post("/v1/chat/completions", body))[1]["X-LLMCache-Status"] == "hit"
    (key_hash,) = near.held()
    return key_hash


async def evalsha_calls(r: aioredis.Redis) -> int:
    return int((await r.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_held_hit_is_answered_without_a_redis_round_trip(proxy_stack, redis_plain_url) -> None:
    stack, near = await armed_stack(proxy_stack)
    near.touch_interval_s = 60.0  # no bookkeeping flush inside the measured request
    await held_hit(stack, near)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        before, hits = await evalsha_calls(r), near.num_hits
        status, headers, body = await stack.post("/v1/chat/completions", CHAT)
        assert (status, headers["X-LLMCache-Status"]) == (200, "hit")
        assert json.loads(body)["choices"][0]["message"]["content"]
        assert near.num_hits == hits + 1
        assert await evalsha_calls(r) == before  # the lookup script did not run
        assert await stack.upstream_count() == 1
    finally:
        await r.aclose()


async def test_another_clients_write_and_delete_reach_the_next_request(proxy_stack, redis_plain_url) -> None:
    stack, near = await armed_stack(proxy_stack)
    key_hash = await held_hit(stack, near)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        name = stack.state.keyspace.entry(key_hash)
        stored = json.loads(await r.get(name))
        answer = json.loads(stored["body"])
        answer["choices"][0]["message"]["content"] = "rewritten elsewhere"
        stored["body"] = json.dumps(answer)
        await r.set(name, json.dumps(stored), keepttl=True)  # another pod's write, say
        await wait_until("the invalidation of the rewritten entry", lambda: key_hash not in near.held())
        _, headers, body = await stack.post("/v1/chat/completions", CHAT)
        assert headers["X-LLMCache-Status"] == "hit"
        assert json.loads(body)["choices"][0]["message"]["content"] == "rewritten elsewhere"
        assert key_hash in near.held()  # read from Redis again, held again

        await r.delete(name)  # a purge by the operator, say
        await wait_until("the invalidation of the deleted entry", lambda: key_hash not in near.held())
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        assert await stack.upstream_count() == 2
    finally:
        await r.aclose()


async def test_a_lookup_that_raced_an_invalidation_does_not_fill(proxy_stack) -> None:
    stack, near = await armed_stack(proxy_stack)
    key_hash = await held_hit(stack, near)
    near.forget(key_hash)
    near.fill(key_hash, b"{}", generation=near.generation - 1)  # its lookup began before a message
    assert key_hash not in near.held()
    near.fill(key_hash, b"{}", generation=near.generation)
    assert key_hash in near.held()
    # A name that is not an entry's (none comes under the broadcast prefix) holds back no fill; an entry's does.
    ks = stack.state.keyspace
    generation = near.generation
    near.invalidated([ks.bookkeeping("default", shard_of(key_hash))[0].encode()])
    assert near.generation == generation and key_hash in near.held()
    near.invalidated([ks.entry(key_hash).encode()])
    assert near.generation > generation and key_hash not in near.held()


async def test_losing_the_invalidation_connection_empties_it_until_tracking_is_back(proxy_stack,
                                                                                    redis_plain_url) -> None:
    stack, near = await armed_stack(proxy_stack)
    key_hash = await held_hit(stack, near)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        assert await r.client_kill_filter(_type="pubsub") >= 1
        await wait_until("the near cache disarmed", lambda: not near.armed)
        assert near.held() == []
        # Meanwhile hits read Redis, and nothing is held while no invalidation could arrive.
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        await wait_until("the near cache armed again", lambda: near.armed, timeout_s=15.0)
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert near.held() == [key_hash]
        # And tracking works on the new pair: a write elsewhere still reaches it.
        await r.delete(stack.state.keyspace.entry(key_hash))
        await wait_until("the invalidation after reconnecting", lambda: near.held() == [])
    finally:
        await r.aclose()


async def test_a_new_request_connection_drops_what_the_old_one_tracked(proxy_stack, redis_plain_url) -> None:
    stack, near = await armed_stack(proxy_stack)
    await held_hit(stack, near)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        await r.client_kill_filter(_type="normal", skipme=True)
        await wait_until("the request connection closed", lambda: not near.armed)
        assert near.get(near.held()[0] if near.held() else "x", group="default") is None
        assert near.held() == []
        # The next request reconnects; tracking is set on the new connection before it reads.
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert near.armed
    finally:
        await r.aclose()


async def test_hits_served_from_it_still_count_in_the_eviction_bookkeeping(proxy_stack, redis_plain_url) -> None:
    stack, near = await armed_stack(proxy_stack)
    near.touch_interval_s = 0.05
    key_hash = await held_hit(stack, near)
    state = stack.state
    lfu = state.keyspace.bookkeeping(state.config().group, shard_of(key_hash))[1]
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        before = await r.zscore(lfu, key_hash)
        for _ in range(3):
            assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        await wait_until("the touches flushed", lambda: _score_is(r, lfu, key_hash, before + 3))
    finally:
        await r.aclose()


async def _score_is(r: aioredis.Redis, row: str, member: str, expected: float) -> bool:
    return await r.zscore(row, member) == expected


async def test_an_acl_user_without_tracking_rights_turns_it_off_and_hits_read_redis(proxy_stack,
                                                                                   redis_plain_url) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    await r.acl_setuser("no-tracking", enabled=True, passwords=["+pw"], keys=["*"],
                        commands=["+@all", "-client|tracking"], channels=["*"])
    try:
        url = redis_plain_url.replace("redis://", "redis://no-tracking:pw@", 1)
        stack = await proxy_stack(redis_url=url)
        near = stack.state.near
        assert near is not None
        await wait_until("the near cache turned off", lambda: near.disabled is not None)
        assert "TRACKING" in near.disabled.upper() or "permission" in near.disabled.lower()
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert near.held() == [] and not near.armed
    finally:
        await r.acl_deluser("no-tracking")
        await r.aclose()


@pytest.mark.parametrize("near_cache_bytes", [0])
async def test_zero_bytes_is_no_near_cache(proxy_stack, near_cache_bytes: int) -> None:
    stack = await proxy_stack(redis_near_cache_bytes=near_cache_bytes)
    assert stack.state.near is None
    assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
    assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"


async def test_its_own_store_drops_the_held_entry(proxy_stack, redis_plain_url) -> None:
    """Redis sends no invalidation for this connection's own writes (NOLOOP): the store itself drops it."""
    stack, near = await armed_stack(proxy_stack)
    near.touch_interval_s = 60.0
    key_hash = await held_hit(stack, near)
    generation = near.generation
    # no-cache: fetched again and stored over the held entry, on the same connection.
    _, headers, _ = await stack.post("/v1/chat/completions", CHAT, headers={"Cache-Control": "no-cache"})
    assert headers["X-LLMCache-Status"] == "miss"
    assert key_hash not in near.held() and near.generation > generation
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        before = await evalsha_calls(r)
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert await evalsha_calls(r) == before + 1  # read from Redis again: the stored entry
        assert key_hash in near.held()
    finally:
        await r.aclose()


@pytest.mark.parametrize(("message", "for_good"), [
    ("NOPERM User llmcache-ns-a has no permissions to run the 'client|tracking' command", True),
    ("NOPERM No permissions to access a channel", True),
    ("ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'", True),
    ("ERR unknown subcommand 'TRACKING'. Try CLIENT HELP.", True),
    ("LOADING Redis is loading the dataset in memory", False),
    ("BUSY Redis is busy running a script", False),
])
def test_only_a_refusal_turns_it_off_for_good(message: str, for_good: bool) -> None:
    """A Redis that will never track (no permission, no command) turns it off; a passing state is retried."""
    assert near_module._refusal(redis.exceptions.ResponseError(message)) is for_good


# -- the key filter: misses that need no round trip ----------------------------------------------


def chat(text: str) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": text}]}


async def filtered_stack(proxy_stack: Callable[..., Awaitable[Stack]], **overrides) -> tuple[Stack, NearCache]:
    stack, near = await armed_stack(proxy_stack, **overrides)
    await wait_until("the key filter scanned", lambda: near.filter is not None, timeout_s=15.0)
    return stack, near


async def test_a_miss_the_key_filter_never_saw_makes_no_lookup(proxy_stack, redis_plain_url) -> None:
    stack, near = await filtered_stack(proxy_stack)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        before, absent = await evalsha_calls(r), near.num_absent
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        assert near.num_absent == absent + 1
        await wait_until("the miss stored", lambda: _entries(r, stack))
        assert await evalsha_calls(r) == before + 1  # its store; no lookup script ran
        # Its own store put the key in the filter: the next request reads Redis and hits.
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert near.num_absent == absent + 1
        assert await stack.upstream_count() == 1
        async with stack.http.get(stack.proxy_url + "/metrics") as resp:
            text = await resp.text()
        assert "llmcache_near_cache_absent_total 1.0" in text
        assert "llmcache_near_cache_hits_total 0.0" in text
        assert "llmcache_near_cache_armed 1.0" in text and "llmcache_near_cache_filter_ready 1.0" in text
    finally:
        await r.aclose()


async def _entries(r: aioredis.Redis, stack: Stack) -> int:
    return len([k async for k in r.scan_iter(match=stack.state.keyspace.entry_pattern)])


async def test_entries_other_pods_wrote_before_and_after_it_started_are_hits(proxy_stack) -> None:
    """The scan finds what was there; the broadcast names what another pod stores later."""
    other = await proxy_stack()
    assert (await other.post("/v1/chat/completions", chat("stored before")))[1]["X-LLMCache-Status"] == "miss"
    assert (await other.post("/v1/chat/completions", chat("stored before")))[1]["X-LLMCache-Status"] == "hit"
    stack, near = await filtered_stack(proxy_stack)
    assert (await stack.post("/v1/chat/completions", chat("stored before")))[1]["X-LLMCache-Status"] == "hit"
    messages = near.num_invalidations
    assert (await other.post("/v1/chat/completions", chat("stored after")))[1]["X-LLMCache-Status"] == "miss"
    await wait_until("the other pod's store broadcast", lambda: near.num_invalidations > messages)
    assert (await stack.post("/v1/chat/completions", chat("stored after")))[1]["X-LLMCache-Status"] == "hit"
    assert await stack.upstream_count() == 0
    assert near.num_absent == 0


async def test_losing_tracking_drops_the_filter_until_it_is_scanned_again(proxy_stack, redis_plain_url) -> None:
    stack, near = await filtered_stack(proxy_stack)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        assert await r.client_kill_filter(_type="pubsub") >= 1
        await wait_until("the near cache disarmed", lambda: not near.armed)
        assert near.filter is None and not near.filter_ready and not near.absent("0" * 64)
        # Meanwhile misses read Redis; what another client writes then is found by the new scan.
        assert (await stack.post("/v1/chat/completions", chat("while down")))[1]["X-LLMCache-Status"] in {
            "miss", "hit"}
        await wait_until("the key filter scanned again", lambda: near.armed and near.filter is not None,
                         timeout_s=15.0)
        assert (await stack.post("/v1/chat/completions", chat("while down")))[1]["X-LLMCache-Status"] == "hit"
    finally:
        await r.aclose()


async def test_a_filter_past_its_design_load_is_built_again_larger(proxy_stack, monkeypatch) -> None:
    monkeypatch.setattr(near_module, "_FILTER_MIN_BITS", 64)  # 4 keys at 16 bits a key
    stack, near = await filtered_stack(proxy_stack)
    first = near.filter
    assert first is not None and first.capacity == 4
    texts = [f"question {i}" for i in range(12)]
    for text in texts:
        assert (await stack.post("/v1/chat/completions", chat(text)))[1]["X-LLMCache-Status"] == "miss"
    await wait_until("a larger filter", lambda: near.filter is not None and near.filter.capacity >= 12)
    for text in texts:  # none of them lost in the change
        assert (await stack.post("/v1/chat/completions", chat(text)))[1]["X-LLMCache-Status"] == "hit"


async def test_a_user_refused_scan_keeps_the_near_cache_without_the_filter(proxy_stack, redis_plain_url) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    await r.acl_setuser("no-scan", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-scan"],
                        channels=["*"])
    try:
        url = redis_plain_url.replace("redis://", "redis://no-scan:pw@", 1)
        stack, near = await armed_stack(proxy_stack, redis_url=url)
        await wait_until("the key filter turned off", lambda: near.filter_off is not None)
        assert near.filter is None and near.disabled is None
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
        assert near.num_absent == 0
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "hit"
        assert near.num_hits == 1  # the near cache still serves
    finally:
        await r.acl_deluser("no-scan")
        await r.aclose()


def test_the_key_filter_never_forgets_a_key_and_rarely_invents_one() -> None:
    import hashlib
    import os

    f = near_module.KeyFilter(10_000)
    added = [hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(f.capacity)]
    for key in added:
        f.add(key)
    assert all(key in f for key in added)
    others = [hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(20_000)]
    false_maybe = sum(key in f for key in others) / len(others)
    assert false_maybe < 0.005  # ~0.1 % at the design load
    assert not f.stale
    f.add("not-a-sha256: any name")  # a name that is not hex still works, through its own hash
    assert "not-a-sha256: any name" in f and f.stale
    assert 12345 not in f
    f.scanned = f.count  # (as a scan leaves it)
    assert not f.stale
    assert near_module.KeyFilter(10**12).num_bytes == 16 * 1024**2  # the largest, whatever the Redis holds


@pytest.mark.parametrize("lease", [False, True])
async def test_its_own_stores_cost_it_no_invalidation_message(proxy_stack, redis_plain_url, lease: bool) -> None:
    """Valkey spares a NOLOOP connection the broadcast of its own writes, but not of a script's: the store
    sets the entry itself and leaves only the bookkeeping (and the lease) to the script."""
    stack, near = await filtered_stack(proxy_stack, cache_single_flight_lease=lease)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        before = near.num_invalidations
        for i in range(3):
            assert (await stack.post("/v1/chat/completions", chat(f"own {i}")))[1]["X-LLMCache-Status"] == "miss"
        assert await _entries(r, stack) == 3
        assert await r.keys(stack.state.keyspace.partition_prefix + "lease:*") == []  # given up by the script
        # Another client's write after them: messages keep their order, so theirs would have come first.
        await r.set(stack.state.keyspace.entry("f" * 64), b"marker", px=5000)
        await wait_until("the marker's invalidation", lambda: near.filter is not None and "f" * 64 in near.filter)
        assert near.num_invalidations == before + 1
        for i in range(3):
            assert (await stack.post("/v1/chat/completions", chat(f"own {i}")))[1]["X-LLMCache-Status"] == "hit"
    finally:
        await r.aclose()


async def test_a_partition_larger_than_the_largest_filter_is_not_scanned_over_and_over(proxy_stack,
                                                                                        monkeypatch) -> None:
    """At the largest size a filter is scanned anew once per capacity's worth of new keys, not on every store."""
    monkeypatch.setattr(near_module, "_FILTER_MIN_BITS", 64)
    monkeypatch.setattr(near_module, "_FILTER_MAX_BITS", 64)  # 4 keys at the design load
    scans = 0
    build = NearCache._build_filter

    async def counted(self, armed):
        nonlocal scans
        scans += 1
        await build(self, armed)

    monkeypatch.setattr(NearCache, "_build_filter", counted)
    stack, near = await filtered_stack(proxy_stack)
    texts = [f"question {i}" for i in range(20)]
    for text in texts:
        assert (await stack.post("/v1/chat/completions", chat(text)))[1]["X-LLMCache-Status"] == "miss"
        await wait_until("no scan running", lambda: near._build_task is None)
    assert near.filter is not None and near.filter.capacity == 4
    assert 2 <= scans <= 1 + 20 // 4  # the first scan, then at most one per 4 new keys (not one per store)
    for text in texts:  # still never a wrong "absent"
        assert (await stack.post("/v1/chat/completions", chat(text)))[1]["X-LLMCache-Status"] == "hit"
