"""Error-bounded semantic caching through the proxy (real Redis with vector search, real MiniLM, the stub
upstream in meaning-class mode: its answers say which prompts mean the same)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_helpers import ADMIN, Stack

from llmcache import errorbound as eb
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.testing.stub_upstream import StubConfig

BASE = "How do I reverse a linked list in Python?"
PARA = "How can I reverse a linked list in Python?"
ANSWER = "Walk the list once, pointing each node's next at the previous node."
OTHER = "Use a deque and call reverse() on it."
#: δ = 0.3: a clean region passes after 7 judgements (llmcache.errorbound.min_judged), so tests stay short.
DELTA = 0.3


def variant(i: int) -> str:
    """PARA as another request would spell it (trailing spaces): the same embedding, verdict and similarity
    bin, but another pair, so cell-level learning is tested without the pair memory stepping in."""
    return PARA + " " * (i + 1)


VARIANTS = {variant(i): ANSWER for i in range(300)}
N_MIN = eb.min_judged(DELTA)
CHAT = "/v1/chat/completions"


def body(text: str) -> dict[str, Any]:
    return {"model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": text}]}


def tenant(i: int) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-tenant-{i}"}


async def settle(stack: Stack) -> None:
    """Background stores, then queued judgements, then a flush + re-read of the shared model."""
    assert stack.state.bound is not None
    await stack.flush()
    await stack.state.bound.drain()
    await stack.state.bound.flush_all()


async def pair(stack: Stack, i: int, *, query: str | None = None) -> str:
    """Tenant ``i`` asks BASE (stored), then ``query`` (default: its own variant of PARA); the second's status."""
    _, h, _ = await stack.post(CHAT, body(BASE), headers=tenant(i))
    assert h["X-LLMCache-Status"] == "miss"
    await stack.flush()
    _, h, _ = await stack.post(CHAT, body(variant(i) if query is None else query), headers=tenant(i))
    await settle(stack)
    return h["X-LLMCache-Status"]


async def wait_bounded(stack: Stack, *, timeout_s: float = 30.0) -> eb.Fit:
    """Until this proxy's model of the default group certifies something (it refreshes every refresh_s)."""
    assert stack.state.bound is not None
    deadline = time.monotonic() + timeout_s
    while True:
        fit = stack.state.bound.fit_for(DEFAULT_GROUP)
        if fit is not None and fit.bounded:
            return fit
        assert time.monotonic() < deadline, f"model never certified: {fit}"
        await asyncio.sleep(0.05)


@pytest.fixture
def bounded_stack(proxy_stack: Callable[..., Awaitable[Stack]],
                  redis_search_url: str) -> Callable[..., Awaitable[Stack]]:
    async def make(*, answers: dict[str, str] | None = None, **overrides: Any) -> Stack:
        stub = StubConfig(answers=answers if answers is not None else {BASE: ANSWER, PARA: ANSWER, **VARIANTS})
        overrides.setdefault("semantic_max_error_rate", DELTA)
        overrides.setdefault("judge_refresh_s", 0.2)
        stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_timeout_s=5.0,
                                  stub=stub, **overrides)
        if stack.state.semantic is None or stack.state.bound is None:
            pytest.fail("the semantic cache or the error bound did not start (see the log)")
        return stack
    return make


async def test_candidates_are_misses_until_judged_outcomes_certify_them(bounded_stack: Any) -> None:
    stack = await bounded_stack()
    for i in range(N_MIN):
        # The verifier accepts the pair, but nothing is certified yet: a miss, judged afterwards.
        assert await pair(stack, i) == "miss"
    assert stack.state.bound is not None
    fit = stack.state.bound.fit_for(DEFAULT_GROUP)
    assert fit is not None and fit.bounded and fit.num_judged == N_MIN and fit.num_wrong == 0
    assert fit.error_upper is not None and fit.error_upper <= DELTA
    calls = await stack.upstream_count()
    assert await pair(stack, 100) == "semantic-hit"
    assert await stack.upstream_count() == calls + 1  # only the base went upstream
    # A confirmed request's next identical prompt is an exact hit (its answer is under its own key).
    _, h, _ = await stack.post(CHAT, body(variant(0)), headers=tenant(0))
    assert h["X-LLMCache-Status"] == "hit"
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        text = await r.text()
    assert 'llmcache_semantic_bounded{policy="_default"} 1.0' in text
    assert f'llmcache_semantic_judged_total{{outcome="right",policy="_default"}} {float(N_MIN)}' in text
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as r:
        stats = await r.json()
    policy = stats["error_bound"]["policies"][DEFAULT_GROUP]
    assert policy["bounded"] and policy["judged"] == N_MIN and policy["served"] >= 1
    assert policy["state"].startswith("bounded (error ≤ ")
    row = next(r for r in stats["namespaces"] if r["namespace"] == "default")
    assert row["error_bound"][DEFAULT_GROUP]["judged"] == N_MIN


async def test_wrong_answers_keep_a_policy_learning_and_veto_the_entry(bounded_stack: Any,
                                                                       redis_search_url: str) -> None:
    """The verifier accepts the pair, but the upstream answers it differently: never served."""
    stack = await bounded_stack(answers={BASE: ANSWER, PARA: OTHER})
    for i in range(N_MIN + 2):
        assert await pair(stack, i, query=PARA) == "miss"
    assert stack.state.bound is not None
    fit = stack.state.bound.fit_for(DEFAULT_GROUP)
    assert fit is not None and not fit.bounded and fit.num_wrong == N_MIN + 2
    assert fit.describe().startswith(f"learning ({N_MIN + 2} judged, {N_MIN + 2} wrong")
    # After its first judgement the pair is remembered as wrong (class x): never served, whatever else.
    assert stack.state.bound.counters.num_judged == N_MIN + 2
    # Each base entry remembers the similarity it was judged wrong at (its own veto), expiring with it.
    client = aioredis.from_url(redis_search_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{stack.state.keyspace.partition_prefix}j:*")]
        assert len(keys) == N_MIN + 2
        record = await client.hgetall(keys[0])
        assert record[b"wrong"] == b"1" and 0.9 < float(record[b"veto"]) <= 1.0
        assert 0 < await client.ttl(keys[0]) <= 3600
    finally:
        await client.aclose()


async def test_a_pair_judged_right_is_remembered_for_the_whole_policy(bounded_stack: Any,
                                                                      redis_search_url: str) -> None:
    """The same request meeting the same cached text in other tenants' scopes: class p, certified on its own."""
    stack = await bounded_stack()
    statuses = [await pair(stack, i, query=PARA) for i in range(N_MIN + 1)]
    assert statuses == ["miss"] * (N_MIN + 1)
    assert stack.state.bound is not None
    fit = stack.state.bound.fit_for(DEFAULT_GROUP)
    # The first judgement went to the verifier's class; every later one to the remembered pair's.
    assert fit is not None and set(fit.thresholds) == {"p"} and fit.num_judged == N_MIN + 1
    assert await pair(stack, 77, query=PARA) == "semantic-hit"
    client = aioredis.from_url(redis_search_url)
    try:
        # One record for the pair, by hash only: "right,wrong" counts.
        shards = [k async for k in client.scan_iter(match=f"{stack.state.keyspace.partition_prefix}ap:_default:*")]
        assert len(shards) == 1
        (field, counts), = (await client.hgetall(shards[0])).items()
        assert counts == f"{N_MIN + 1},0".encode() and len(field) == 24
        assert PARA.encode() not in field and b"linked" not in field
    finally:
        await client.aclose()


async def test_learning_from_one_proxy_serves_another_sharing_redis(bounded_stack: Any) -> None:
    a = await bounded_stack()
    for i in range(N_MIN):
        assert await pair(a, i) == "miss"
    b = await bounded_stack()  # a second sidecar: same Redis, own process state
    _, h, _ = await b.post(CHAT, body(BASE), headers=tenant(50))  # its first lookup starts reading the model
    assert h["X-LLMCache-Status"] == "miss"
    await wait_bounded(b)
    await b.flush()
    _, h, served = await b.post(CHAT, body(variant(50)), headers=tenant(50))
    assert h["X-LLMCache-Status"] == "semantic-hit"
    assert ANSWER in served.decode()


async def test_learning_survives_a_proxy_restart(bounded_stack: Any) -> None:
    a = await bounded_stack(judge_refresh_s=3600.0)  # nothing flushed by the timer: only at shutdown
    for i in range(N_MIN):
        _, _, _ = await a.post(CHAT, body(BASE), headers=tenant(i))
        await a.flush()
        _, h, _ = await a.post(CHAT, body(variant(i)), headers=tenant(i))
        assert h["X-LLMCache-Status"] == "miss"
        await a.flush()
        assert a.state.bound is not None
        await a.state.bound.drain()
    await a.stop()  # SIGTERM: the cleanup flushes what was judged
    c = await bounded_stack()
    _, h, _ = await c.post(CHAT, body(BASE), headers=tenant(60))
    await wait_bounded(c)
    await c.flush()
    _, h, _ = await c.post(CHAT, body(variant(60)), headers=tenant(60))
    assert h["X-LLMCache-Status"] == "semantic-hit"


async def test_explorations_stay_within_the_budget(bounded_stack: Any) -> None:
    """Every would-be hit asks to explore; the budget (a share of semantic lookups per minute) says no."""
    stack = await bounded_stack(judge_explore_rate=1.0, judge_budget=0.25)
    for i in range(N_MIN):
        await pair(stack, i)
    await wait_bounded(stack)
    assert stack.state.bound is not None
    lookups_before = stack.state.bound.counters.num_admitted
    statuses = [await pair(stack, 200 + i) for i in range(12)]
    bound = stack.state.bound
    explored = bound.counters.num_explored
    # Lookups in the window: every BASE (no candidate) and every PARA of the test so far.
    lookups = 2 * (N_MIN + 12)
    assert 1 <= explored <= 0.25 * lookups
    assert statuses.count("miss") == explored and statuses.count("semantic-hit") == 12 - explored
    assert bound.counters.num_budget_denied == 12 - explored
    assert bound.counters.num_admitted - lookups_before == 12
    # Explored candidates were judged too (right): the estimate keeps receiving samples.
    fit = bound.fit_for(DEFAULT_GROUP)
    assert fit is not None and fit.num_explored == explored and fit.num_judged == N_MIN + explored


async def test_a_failing_judge_fails_open(bounded_stack: Any, unused_port: int) -> None:
    """An LLM judge nobody listens on: requests are answered as before, no outcome is recorded."""
    stack = await bounded_stack(judge_url=f"http://127.0.0.1:{unused_port}", judge_timeout_s=2.0)
    for i in range(3):
        assert await pair(stack, i) == "miss"
    assert stack.state.bound is not None
    counters = stack.state.bound.counters
    assert counters.num_failed == 3 and counters.num_judged == 0
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert 'llmcache_semantic_judge_failures_total{reason="judge"} 3.0' in await r.text()


class HeldJudge:
    """An LLM judge that answers "yes" only once the test lets it (a slow judge, the fault injected)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.asked.set()
        await self.release.wait()
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}}]})


async def test_judging_never_delays_the_client(bounded_stack: Any) -> None:
    """The client has its whole answer while the judge of its candidate has not even replied."""
    held = HeldJudge()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", held.handle)
    judge = TestServer(app, host="127.0.0.1")
    await judge.start_server()
    try:
        stack = await bounded_stack(judge_url=str(judge.make_url("/v1")), judge_timeout_s=60.0)
        bound = stack.state.bound
        assert bound is not None
        _, h, _ = await stack.post(CHAT, body(BASE), headers=tenant(1))
        assert h["X-LLMCache-Status"] == "miss"
        await stack.flush()

        async def ask() -> tuple[str, bytes]:
            async with stack.http.post(stack.proxy_url + CHAT, json=body(variant(1)),
                                       headers={"Authorization": "Bearer sk-tenant-1"}) as r:
                return r.headers["X-LLMCache-Status"], await r.read()

        # A deadline, not a timing: were the answer held back for the judge, this would never return.
        status, answer = await asyncio.wait_for(ask(), timeout=30)
        assert status == "miss" and ANSWER in answer.decode()
        await asyncio.wait_for(held.asked.wait(), timeout=30)  # the candidate is being judged …
        assert bound.counters.num_judged == 0 and not held.release.is_set()  # … and not judged yet
        held.release.set()
        await settle(stack)
        assert bound.counters.num_judged == 1 and bound.counters.num_failed == 0
    finally:
        held.release.set()
        await judge.close()


async def test_a_failing_upstream_is_not_judged(bounded_stack: Any) -> None:
    stack = await bounded_stack()
    _, h, _ = await stack.post(CHAT, body(BASE), headers=tenant(1))
    await stack.flush()
    status, h, _ = await stack.post(CHAT, body(variant(1)), headers={**tenant(1), "X-Stub-Fault": "500"})
    assert status == 500 and h["X-LLMCache-Status"] == "miss"  # the upstream's error, as without a bound
    await settle(stack)
    assert stack.state.bound is not None and stack.state.bound.counters.num_judged == 0


async def test_a_bound_without_its_machinery_serves_no_semantic_hit(bounded_stack: Any) -> None:
    """Fail closed on serving: a request under a bound whose model cannot run is a miss, never a hit."""
    stack = await bounded_stack(semantic_max_error_rate=None)
    _, _, _ = await stack.post(CHAT, body(BASE), headers=tenant(1))
    await stack.flush()
    _, h, _ = await stack.post(CHAT, body(PARA), headers=tenant(1))
    assert h["X-LLMCache-Status"] == "semantic-hit"  # without a bound: the verifier's word suffices
    bounded = await bounded_stack()
    bounded.state.bound = None
    _, _, _ = await bounded.post(CHAT, body(BASE), headers=tenant(2))
    await bounded.flush()
    _, h, _ = await bounded.post(CHAT, body(PARA), headers=tenant(2))
    assert h["X-LLMCache-Status"] == "miss"


async def test_model_hash_is_bounded_and_versioned(bounded_stack: Any, redis_search_url: str) -> None:
    stack = await bounded_stack()
    for i in range(3):
        await pair(stack, i)
    client = aioredis.from_url(redis_search_url)
    try:
        raw = await client.hgetall(Keyspace().bound(DEFAULT_GROUP))
        assert stack.state.bound is not None
        version = stack.state.bound.version
        assert raw[b"current"] == version.encode()
        # Every field is one of the fixed per-version set (cells × 3 + totals + delta + t + current).
        allowed = len(eb.CLASSES) * len(eb.SIMILARITY_EDGES) * 3 + len(eb.TOTALS) + 3
        assert 0 < len(raw) <= allowed
        assert all(k == b"current" or k.startswith(version.encode() + b":") for k in raw)
        assert 0 < await client.ttl(Keyspace().bound(DEFAULT_GROUP)) <= 30 * 86_400
    finally:
        await client.aclose()


async def test_judged_pairs_stay_within_their_cap(redis_plain_url: str) -> None:
    """A policy's pair memory is bounded: past the cap a new pair evicts a random other one."""
    from llmcache.proxy.breaker import Breaker
    from llmcache.proxy.exact import RedisExactStore
    from llmcache.proxy.semantic.bound import ErrorBound
    from llmcache.proxy.settings import JudgeSettings

    client = aioredis.from_url(redis_plain_url)
    try:
        ks = Keyspace()
        bound = ErrorBound(redis=client, store=RedisExactStore(client, keyspace=ks), breaker=Breaker(timeout_s=1.0),
                           keyspace=ks, settings=JudgeSettings())
        key = ks.pairs(DEFAULT_GROUP, "00")
        for i in range(40):
            await bound._record_pair(keys=[key], args=[f"pair{i:03d}", int(i % 3 == 0), 25, 60])
        assert await client.hlen(key) == 25
        await bound._record_pair(keys=[key], args=["pair039", 1, 25, 60])  # an existing pair: counted, none evicted
        assert await client.hlen(key) == 25 and await client.hget(key, "pair039") == b"0,2"
        assert 0 < await client.ttl(key) <= 60
        await bound.judge.close()
    finally:
        await client.aclose()


async def test_an_entry_judged_wrong_serves_nobody_as_similar_again(bounded_stack: Any) -> None:
    """The entry layer: a certified candidate is still refused by an entry judged wrong at its similarity."""
    wrong = variant(250)
    # Every would-be hit explored (and so judged): the cell gathers enough clean evidence that one wrong
    # judgement later leaves it certified.
    stack = await bounded_stack(answers={BASE: ANSWER, **VARIANTS, wrong: OTHER}, judge_explore_rate=1.0,
                                judge_budget=1.0)
    bound = stack.state.bound
    assert bound is not None
    for i in range(3 * N_MIN):
        await pair(stack, i)
    await wait_bounded(stack)
    # Tenant 41 asks `wrong`, which the upstream answers differently (no-store: it must not become tenant
    # 41's nearest entry itself).
    _, h, _ = await stack.post(CHAT, body(BASE), headers=tenant(41))
    await stack.flush()
    _, h, _ = await stack.post(CHAT, body(wrong), headers={**tenant(41), "Cache-Control": "no-store"})
    await settle(stack)
    assert h["X-LLMCache-Status"] == "miss" and bound.counters.num_wrong == 1
    fit = bound.fit_for(DEFAULT_GROUP)
    assert fit is not None and fit.bounded  # one wrong in the cell does not undo its certificate …
    bound.settings = dataclasses.replace(bound.settings, explore_rate=0.0)
    # … but tenant 41's base entry now refuses another, certified variant at the same similarity,
    _, h, _ = await stack.post(CHAT, body(variant(42)), headers=tenant(41))
    assert h["X-LLMCache-Status"] == "miss" and bound.counters.num_vetoed == 1
    # while another tenant's base entry, with no such record, serves it.
    assert await pair(stack, 43) == "semantic-hit"


def test_budget_never_allows_more_than_its_share_of_the_last_minute() -> None:
    from llmcache.proxy.semantic.budget import Budget, RateCap

    budget = Budget(0.05)
    taken = 0
    for second in range(600):  # ten minutes at 20 lookups a second, every one asking for an extra call
        for _ in range(20):
            budget.note_request(now_s=second)
            taken += budget.try_take(now_s=second)
    assert 0.045 * 600 * 20 <= taken <= 0.05 * 600 * 20
    assert not Budget(0.05).try_take(now_s=0)  # nothing counted yet: nothing allowed
    cap = RateCap(3)
    assert [cap.try_take(now_s=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert cap.try_take(now_s=61) and not cap.try_take(2, now_s=61.5)
