"""The proxy end to end (in-process servers, real Redis, the official openai client)."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from proxy_helpers import ADMIN, CHAT, TOOLS, Stack, wait_until

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction


def chat(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(CHAT)
    body.update(changes)
    return body


async def collect_stream(stream: Any) -> dict[str, Any]:
    """Fold an openai stream into text, tool calls, finish reasons and usage."""
    text: dict[int, str] = {}
    calls: dict[tuple[int, int], dict[str, str]] = {}
    finish: dict[int, str | None] = {}
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            for tc in c.delta.tool_calls or ():
                slot = calls.setdefault((c.index, tc.index), {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return {"text": text, "calls": calls, "finish": finish, "usage": usage}


# --- exact cache, both shapes --------------------------------------------------------------------


async def test_non_streaming_hit_returns_the_original_bytes(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    started = time.time()
    s1, h1, b1 = await stack.post("/v1/chat/completions", CHAT)
    s2, h2, b2 = await stack.post("/v1/chat/completions", CHAT)
    assert (s1, h1["X-LLMCache-Status"]) == (200, "miss")
    assert (s2, h2["X-LLMCache-Status"]) == (200, "hit")
    assert b2 == b1
    # Age is the entry's age: never more than the time since it could have been written.
    assert 0 <= int(h2["Age"]) <= time.time() - started + 1 and "Age" not in h1
    assert await stack.upstream_count() == 1


async def test_openai_client_sees_identical_answers_stream_and_not(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    first = await client.chat.completions.create(**CHAT)
    again = await client.chat.completions.create(**CHAT)
    assert again.model_dump() == first.model_dump()
    # The same stored answer, streamed: same text, finish_reason and usage.
    streamed = await collect_stream(await client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}))
    assert streamed["text"] == {0: first.choices[0].message.content}
    assert streamed["finish"] == {0: "stop"}
    assert streamed["usage"] == first.usage.model_dump()
    assert await stack.upstream_count() == 1


async def test_recorded_stream_serves_stream_and_json(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    live = await collect_stream(await client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}))
    replayed = await collect_stream(await client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}))
    assert replayed == live
    as_json = await client.chat.completions.create(**CHAT)
    assert as_json.choices[0].message.content == live["text"][0]
    assert as_json.choices[0].finish_reason == "stop"
    assert as_json.usage.model_dump() == live["usage"]
    no_usage = await collect_stream(await client.chat.completions.create(**CHAT, stream=True))
    assert no_usage["usage"] is None and no_usage["text"] == live["text"]
    assert await stack.upstream_count() == 1


@pytest.mark.parametrize("first_stream", [False, True])
async def test_tool_calls_survive_both_directions(proxy_stack, first_stream: bool) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    body = chat(tools=TOOLS)
    if first_stream:
        original = await collect_stream(await client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}))
    else:
        msg = await client.chat.completions.create(**body)
        original = {"calls": {(0, i): {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                              for i, c in enumerate(msg.choices[0].message.tool_calls)},
                    "finish": {0: msg.choices[0].finish_reason}}
    assert len(original["calls"]) == 2 and original["finish"] == {0: "tool_calls"}
    streamed = await collect_stream(await client.chat.completions.create(**body, stream=True))
    assert streamed["calls"] == original["calls"] and streamed["finish"] == original["finish"]
    msg = await client.chat.completions.create(**body)
    assert {(0, i): {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for i, c in enumerate(msg.choices[0].message.tool_calls)} == original["calls"]
    assert json.loads(msg.choices[0].message.tool_calls[0].function.arguments)["n"] == 1
    assert await stack.upstream_count() == 1


async def test_completions_and_embeddings_are_cached(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    c1 = await client.completions.create(model="stub-model", prompt="Once upon", temperature=0, max_tokens=5)
    text = ""
    async for chunk in await client.completions.create(model="stub-model", prompt="Once upon", temperature=0,
                                                       max_tokens=5, stream=True):
        text += chunk.choices[0].text if chunk.choices else ""
    assert text == c1.choices[0].text
    e1 = await client.embeddings.create(model="stub-model", input=["a", "b"])
    e2 = await client.embeddings.create(model="stub-model", input=["a", "b"])
    assert e1.model_dump() == e2.model_dump() and len(e1.data) == 2
    assert await stack.upstream_count() == 2


# --- keys ----------------------------------------------------------------------------------------

SHAPING = [
    ("model", "other-model"), ("temperature", 0.0001), ("top_p", 0.5), ("seed", 7), ("n", 2),
    ("stop", ["\n"]), ("max_tokens", 3), ("tools", TOOLS), ("tool_choice", "none"),
    ("response_format", {"type": "json_object"}), ("logprobs", True), ("logit_bias", {"50256": -100}),
    ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("some_future_field", {"x": 1}),
]


async def test_every_output_shaping_change_misses(proxy_stack) -> None:
    stack = await proxy_stack(cache_non_deterministic="cache")
    assert (await stack.post("/v1/chat/completions", CHAT))[1]["X-LLMCache-Status"] == "miss"
    variants = [chat(**{name: value}) for name, value in SHAPING]
    variants.append(chat(messages=[{"role": "system", "content": "You are verbose."}, CHAT["messages"][1]]))
    variants.append(chat(messages=CHAT["messages"][1:]))  # history/system prompt is part of the key
    for body in variants:
        status, headers, _ = await stack.post("/v1/chat/completions", body)
        assert status == 200 and headers["X-LLMCache-Status"] == "miss", body
    for body in variants:  # and each of them is now a hit of its own
        assert (await stack.post("/v1/chat/completions", body))[1]["X-LLMCache-Status"] == "hit"
    assert await stack.upstream_count() == len(variants) + 1


async def test_transport_fields_and_number_spelling_do_not_change_the_key(proxy_stack) -> None:
    stack = await proxy_stack()
    await stack.post("/v1/chat/completions", chat(temperature=0.0))
    for body in (chat(user="alice"), chat(temperature=0), chat(stream=False)):
        assert (await stack.post("/v1/chat/completions", body))[1]["X-LLMCache-Status"] == "hit"
    # Key order and whitespace in the raw JSON do not matter either.
    raw = json.dumps(dict(reversed(list(CHAT.items()))), indent=3).encode()
    _, headers, _ = await stack.post("/v1/chat/completions", None, raw=raw,
                                          headers={"Content-Type": "application/json"})
    assert headers["X-LLMCache-Status"] == "hit"


async def test_unknown_fields_reach_the_upstream(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    a = await client.chat.completions.create(**CHAT, extra_body={"vendor_knob": 1})
    b = await client.chat.completions.create(**CHAT, extra_body={"vendor_knob": 2})
    # The stub's answer is derived from the whole body: a different answer proves the field arrived.
    assert a.choices[0].message.content != b.choices[0].message.content


# --- tenancy -------------------------------------------------------------------------------------


async def test_tenants_never_share_entries(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack()
    alice, bob = stack.openai("sk-alice-1111"), stack.openai("sk-bob-2222")
    a = await alice.chat.completions.with_raw_response.create(**CHAT)
    b = await bob.chat.completions.with_raw_response.create(**CHAT)
    a2 = await alice.chat.completions.with_raw_response.create(**CHAT)
    assert a.headers["X-LLMCache-Status"] == "miss"
    assert b.headers["X-LLMCache-Status"] == "miss"
    assert a2.headers["X-LLMCache-Status"] == "hit"
    assert a.parse().id != b.parse().id
    # Namespaces partition further inside one tenant.
    n = await alice.chat.completions.with_raw_response.create(**CHAT, extra_headers={"X-LLMCache-Namespace": "docs"})
    assert n.headers["X-LLMCache-Status"] == "miss"
    # No key name carries the API key or the prompt.
    await stack.flush()
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        names = b" ".join([k async for k in r.scan_iter(match="*")])
        values = b" ".join([v for k in [k async for k in r.scan_iter(match=Keyspace().entry_pattern)]
                            if (v := await r.get(k)) is not None])
    finally:
        await r.aclose()
    assert b"sk-alice" not in names and b"radix tree" not in names
    assert b"sk-alice" not in values and b"sk-bob" not in values


async def test_configured_tenant_header(proxy_stack) -> None:
    stack = await proxy_stack(cache_tenant_header="X-Team")
    h = {"Authorization": "Bearer same-key"}
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**h, "X-Team": "red"}))[1][
        "X-LLMCache-Status"] == "miss"
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**h, "X-Team": "blue"}))[1][
        "X-LLMCache-Status"] == "miss"
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**h, "X-Team": "red"}))[1][
        "X-LLMCache-Status"] == "hit"


# --- single-flight -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_twenty_concurrent_identical_misses_call_upstream_once(proxy_stack, stream: bool) -> None:
    stack = await proxy_stack()
    stack.stub.latency_ms = 300  # long enough that all 20 arrive while the first is in flight
    stack.stub.chunk_delay_ms = 5
    client = stack.openai()

    async def one() -> Any:
        if stream:
            return await collect_stream(await client.chat.completions.create(
                **CHAT, stream=True, stream_options={"include_usage": True}))
        return (await client.chat.completions.create(**CHAT)).model_dump()

    results = await asyncio.gather(*(one() for _ in range(20)))
    assert await stack.upstream_count() == 1
    assert all(r == results[0] for r in results)
    assert stack.state.flights.num_coalesced_total >= 1


async def test_followers_of_a_mixed_flight_get_the_answer(proxy_stack) -> None:
    stack = await proxy_stack()
    stack.stub.chunk_delay_ms = 50  # the stream lasts long enough for the follower to join it
    client = stack.openai()
    stream = await client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    lead = asyncio.ensure_future(collect_stream(stream))
    follower = await client.chat.completions.create(**CHAT)
    streamed = await lead
    assert follower.choices[0].message.content == streamed["text"][0]
    assert follower.usage.model_dump() == streamed["usage"]
    assert stack.state.flights.num_coalesced_total == 1
    assert await stack.upstream_count() == 1


# --- failures are never cached -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "429", "reset", "truncate"])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failures_are_not_cached(proxy_stack, fault: str, stream: bool) -> None:
    stack = await proxy_stack()
    body = chat(stream=stream)
    status, headers, payload = await _post_tolerant(stack, body, headers={"X-Stub-Fault": fault})
    if fault in ("500", "429"):
        assert status == int(fault)  # status and error body preserved
        assert json.loads(payload)["error"]["message"] == f"injected fault {fault}"
    elif fault == "reset":
        assert status == 502 and json.loads(payload)["error"]["type"] == "upstream_error"
    # Healthy again: the next identical request must go upstream (nothing was stored).
    status, headers, _ = await stack.post("/v1/chat/completions", body)
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    assert await stack.upstream_count() == 2


async def _post_tolerant(stack: Stack, body: Any, *, headers: dict[str, str]) -> tuple[int | None, dict, bytes]:
    """POST and read what arrives, tolerating a connection the proxy cut (truncated upstream)."""
    try:
        return await stack.post("/v1/chat/completions", body, headers=headers)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return None, {}, b""


async def test_upstream_timeout_is_504_and_not_cached(proxy_stack) -> None:
    stack = await proxy_stack(upstream_timeout_s=0.3)
    stack.stub.timeout_s = 2.0
    status, headers, payload = await stack.post("/v1/chat/completions", CHAT, headers={"X-Stub-Fault": "timeout"})
    assert status == 504 and "did not answer in time" in json.loads(payload)["error"]["message"]
    status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "miss"


async def test_unreachable_upstream_is_502(proxy_stack, unused_port: int) -> None:
    stack = await proxy_stack(upstream_url=f"http://127.0.0.1:{unused_port}")
    status, _, payload = await stack.post("/v1/chat/completions", CHAT)
    assert status == 502 and json.loads(payload)["error"]["type"] == "upstream_error"
    async with stack.http.get(stack.proxy_url + "/v1/models") as r:
        assert r.status == 502


async def test_truncated_stream_reaches_the_openai_client_as_an_error(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    with pytest.raises((openai.APIError, aiohttp.ClientError, Exception)):
        await collect_stream(await client.chat.completions.create(
            **CHAT, stream=True, extra_headers={"X-Stub-Fault": "truncate"}))
    assert (await stack.post("/v1/chat/completions", chat(stream=True)))[1]["X-LLMCache-Status"] == "miss"


async def test_client_disconnect_mid_stream_is_not_cached(proxy_stack) -> None:
    stack = await proxy_stack()
    stack.stub.chunk_delay_ms = 100
    body = chat(stream=True, max_tokens=20)
    async with aiohttp.ClientSession() as s, s.post(stack.proxy_url + "/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer sk-test-tenant-a"}) as r:
        assert r.headers["X-LLMCache-Status"] == "miss"
        await r.content.readline()  # first event arrived; now hang up
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30  # wait for the proxy to notice (liveness, not a latency assertion)
    while len(stack.state.flights) or stack.state.background:
        assert time.monotonic() < deadline, "the proxy never ended the abandoned upstream call"
        await asyncio.sleep(0.02)
    stack.stub.chunk_delay_ms = 0
    _, headers, _ = await stack.post("/v1/chat/completions", body)
    assert headers["X-LLMCache-Status"] == "miss"
    assert await stack.upstream_count() == 2


# --- Cache-Control -------------------------------------------------------------------------------


async def test_cache_control_directives(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack(cache_ttl_s=100)
    post = stack.post
    # only-if-cached on a miss → 504, and nothing is fetched.
    status, headers, payload = await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "only-if-cached"})
    assert status == 504 and json.loads(payload)["error"]["code"] == "only_if_cached"
    assert await stack.upstream_count() == 0
    # no-store: fetched, not stored.
    assert (await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "no-store"}))[1][
        "X-LLMCache-Status"] == "miss"
    assert (await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "only-if-cached"}))[0] == 504
    # max-age=N stores with TTL min(N, ttl).
    _, _, first = await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "max-age=30"})
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        keys = [k async for k in r.scan_iter(match=Keyspace().entry_pattern)]
        assert len(keys) == 1
        assert 0 < await r.ttl(keys[0]) <= 30
        await post("/v1/chat/completions", chat(n=1), headers={"Cache-Control": "max-age=100000"})
        ttls = sorted([await r.ttl(k) async for k in r.scan_iter(match=Keyspace().entry_pattern)])
        assert ttls[-1] <= 100  # per-request TTL never exceeds the bound
        # The TTL is fixed at write: a hit does not refresh it.
        await r.expire(keys[0], 20)
        status, headers, body = await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "only-if-cached"})
        assert status == 200 and headers["X-LLMCache-Status"] == "hit" and body == first
        assert await r.ttl(keys[0]) <= 20
    finally:
        await r.aclose()
    # no-cache: goes upstream (a fresh answer) and refreshes the entry.
    _, headers, fresh = await post("/v1/chat/completions", CHAT, headers={"Cache-Control": "no-cache"})
    assert headers["X-LLMCache-Status"] == "miss" and fresh != first
    _, headers, again = await post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit" and again == fresh


async def test_max_age_rejects_older_entries(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT)
    # Age the stored entry by rewriting its creation time (TTL kept).
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        key = await anext(r.scan_iter(match=Keyspace().entry_pattern))
        entry = json.loads(await r.get(key))
        entry["created_s"] -= 120
        await r.set(key, json.dumps(entry), keepttl=True)
    finally:
        await r.aclose()
    _, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit" and int(headers["Age"]) >= 120
    _, headers, _ = await stack.post("/v1/chat/completions", CHAT, headers={"Cache-Control": "max-age=60"})
    assert headers["X-LLMCache-Status"] == "miss"


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b"\"a string\"", b""])
async def test_malformed_bodies_are_refused_on_salted_routes(proxy_stack, raw: bytes) -> None:
    """The tenant's cache_salt needs a JSON object: on chat/completions nothing else goes upstream."""
    stack = await proxy_stack()
    status, _, payload = await stack.post("/v1/chat/completions", None, raw=raw,
                                          headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_json"
    assert await stack.upstream_count() == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]"])
async def test_malformed_bodies_are_forwarded_untouched_where_nothing_is_added(proxy_stack, raw: bytes) -> None:
    stack = await proxy_stack()
    status, headers, payload = await stack.post("/v1/embeddings", None, raw=raw,
                                                headers={"Content-Type": "application/json"})
    assert headers["X-LLMCache-Status"] == "bypass"
    assert status == 400 and "error" in json.loads(payload)  # the upstream's own answer
    assert await stack.upstream_count() == 1


async def test_oversized_body_is_413(proxy_stack) -> None:
    stack = await proxy_stack(cache_max_body_bytes=1000)
    status, _, payload = await stack.post("/v1/chat/completions", chat(padding="x" * 2000))
    assert status == 413 and json.loads(payload)["error"]["code"] == "request_too_large"
    assert await stack.upstream_count() == 0
    assert (await stack.post("/v1/chat/completions", CHAT))[0] == 200


async def test_bypassed_requests_without_stream_share_the_keep_alive_pool(proxy_stack) -> None:
    """A bypass that asks for one JSON answer goes over the pool (one connection reused); a stream stays
    on the session; both answers reach the client whole."""
    stack = await proxy_stack()
    up = stack.state.upstream
    assert up is not None
    answers = []
    for i in range(3):
        status, headers, payload = await stack.post("/v1/chat/completions", chat(temperature=0.8, seed=i))
        assert status == 200 and headers["X-LLMCache-Status"] == "bypass"
        answers.append(json.loads(payload)["choices"][0]["message"]["content"])
    pools = list(up._pools.values())
    assert len(pools) == 1 and pools[0].num_open == 1 and pools[0].num_idle == 1
    assert len(set(answers)) == 3  # three answers, one per request
    status, headers, payload = await stack.post("/v1/chat/completions", chat(temperature=0.8, stream=True))
    assert status == 200 and headers["X-LLMCache-Status"] == "bypass"
    assert headers["Content-Type"].startswith("text/event-stream") and payload.rstrip().endswith(b"data: [DONE]")
    assert pools[0].num_open == 1 and await stack.upstream_count() == 4


async def test_non_deterministic_requests(proxy_stack) -> None:
    stack = await proxy_stack()
    hot = chat(temperature=0.8)
    assert (await stack.post("/v1/chat/completions", hot))[1]["X-LLMCache-Status"] == "bypass"
    assert (await stack.post("/v1/chat/completions", hot))[1]["X-LLMCache-Status"] == "bypass"
    unset = {k: v for k, v in CHAT.items() if k != "temperature"}  # OpenAI's default temperature is 1
    assert (await stack.post("/v1/chat/completions", unset))[1]["X-LLMCache-Status"] == "bypass"
    seeded = await proxy_stack(cache_non_deterministic="cache-if-seeded")
    assert (await seeded.post("/v1/chat/completions", hot))[1]["X-LLMCache-Status"] == "bypass"
    assert (await seeded.post("/v1/chat/completions", chat(temperature=0.8, seed=1)))[1][
        "X-LLMCache-Status"] == "miss"
    assert (await seeded.post("/v1/chat/completions", chat(temperature=0.8, seed=1)))[1][
        "X-LLMCache-Status"] == "hit"


async def test_invalid_entry_in_redis_is_a_miss_and_is_replaced(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        key = await anext(r.scan_iter(match=Keyspace().entry_pattern))
        for bad in (b"\x80\x04pickle", b'{"v": 99}', json.dumps({"v": 1, "route": "/v1/chat/completions",
                    "model": "m", "created_s": 0, "body": '{"choices": [{"message": {}}]}'}).encode()):
            await r.set(key, bad)
            status, headers, payload = await stack.post("/v1/chat/completions", CHAT)
            assert status == 200 and headers["X-LLMCache-Status"] == "miss"
            assert json.loads(payload)["choices"][0]["finish_reason"] == "stop"
    finally:
        await r.aclose()


# --- pass-through --------------------------------------------------------------------------------


async def test_pass_through_is_transparent(proxy_stack) -> None:
    stack = await proxy_stack()
    body = b"\x00binary\xffpayload" * 1000
    headers = {"Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=5",
               "TE": "trailers", "X-Custom": "kept", "Authorization": "Bearer secret"}
    async with stack.http.put(stack.proxy_url + "/stub/echo/any/path?x=1&y=%20", data=body,
                              headers=headers) as r:
        echo = await r.json()
        assert r.status == 200 and r.headers["X-Stub-Echo"] == "1"
        assert "X-LLMCache-Status" not in r.headers
    assert echo["method"] == "PUT" and echo["path"] == "/stub/echo/any/path" and echo["query"] == "x=1&y=%20"
    import hashlib
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest() and echo["body_bytes"] == len(body)
    sent = {k.lower(): v for k, v in echo["headers"].items()}
    assert sent["x-custom"] == "kept" and sent["authorization"] == "Bearer secret"
    for hop in ("keep-alive", "te", "x-drop-me"):
        assert hop not in sent
    # Status codes and error bodies come back as the upstream sent them.
    async with stack.http.delete(stack.proxy_url + "/stub/echo/gone?status=404") as r:
        assert r.status == 404 and (await r.json())["method"] == "DELETE"
    client = stack.openai()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["stub-model"]


async def test_pass_through_streams_chunks_as_they_come(proxy_stack) -> None:
    stack = await proxy_stack()
    async with stack.http.get(stack.proxy_url + "/stub/stream?n=3&size=10&delay_ms=300") as r:
        first = await r.content.readany()
        # The first chunk arrives while the upstream is still producing the rest.
        assert first.startswith(b"A") and len(first) < 30
        rest = await r.read()
    assert first + rest == b"A" * 10 + b"B" * 10 + b"C" * 10


# --- own endpoints -------------------------------------------------------------------------------


async def test_health_metrics_and_stats(proxy_stack) -> None:
    stack = await proxy_stack(obs_price_input_per_1k=1.0, obs_price_output_per_1k=2.0)
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "docs"})
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "docs"})
    await stack.post("/v1/chat/completions", chat(temperature=1))
    async with stack.http.get(stack.proxy_url + "/healthz") as r:
        assert r.status == 200
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        text = await r.text()
    assert 'llmcache_requests_total{cache_status="hit",route="/v1/chat/completions"} 1.0' in text
    assert 'llmcache_requests_total{cache_status="miss",route="/v1/chat/completions"} 1.0' in text
    assert 'llmcache_requests_total{cache_status="bypass",route="/v1/chat/completions"} 1.0' in text
    assert "llmcache_lookup_seconds_bucket" in text and "llmcache_upstream_seconds_bucket" in text
    saved = [line for line in text.splitlines() if line.startswith("llmcache_saved_usd_total")]
    assert saved and float(saved[0].split()[-1]) > 0
    served = [line for line in text.splitlines() if line.startswith("llmcache_served_bytes_total")]
    assert float(served[0].split()[-1]) > 0
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as r:
        data = await r.json()
    rows = {row["namespace"]: row for row in data["namespaces"]}
    assert rows["docs"]["hit"] == 1 and rows["docs"]["miss"] == 1 and rows["docs"]["tokens_saved"] > 0
    assert rows["default"]["bypass"] == 1


async def test_invalidate_needs_the_token_and_deletes_by_filter(proxy_stack) -> None:
    stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "docs"})
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "faq"})
    await stack.post("/v1/chat/completions", chat(model="other"), headers={"Authorization": "Bearer sk-other"})
    url = stack.proxy_url + "/llmcache/v1/invalidate"
    async with stack.http.post(url, json={"all": True}) as r:
        assert r.status == 401
    async with stack.http.post(url, json={"all": True}, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    auth = {"Authorization": "Bearer admin-secret"}
    async with stack.http.post(url, json={}, headers=auth) as r:
        assert r.status == 400
    async with stack.http.post(url, json={"namespace": "docs"}, headers=auth) as r:
        assert (await r.json())["deleted"] == 1
    h = {"Cache-Control": "only-if-cached"}
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**h, "X-LLMCache-Namespace": "docs"}))[0] == 504
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**h, "X-LLMCache-Namespace": "faq"}))[0] == 200
    async with stack.http.post(url, json={"tenant": "Bearer sk-other"}, headers=auth) as r:
        assert (await r.json())["deleted"] == 1
    async with stack.http.post(url, json={"model": "stub-model"}, headers=auth) as r:
        assert (await r.json())["deleted"] == 1
    async with stack.http.post(url, json={"all": True}, headers=auth) as r:
        assert (await r.json())["deleted"] == 0


async def test_invalidate_is_disabled_without_a_token(proxy_stack) -> None:
    stack = await proxy_stack(obs_admin_token=None)
    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"all": True},
                               headers={"Authorization": "Bearer anything"}) as r:
        assert r.status == 403 and "--admin-token" in (await r.json())["error"]["message"]


async def test_logs_carry_no_prompt_or_api_key(proxy_stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await proxy_stack()
    secret_prompt = "my-very-secret-prompt-text"
    body = chat(messages=[{"role": "user", "content": secret_prompt}])
    key = {"Authorization": "Bearer sk-super-secret-key"}
    await stack.post("/v1/chat/completions", body, headers=key)
    await stack.post("/v1/chat/completions", body, headers=key)
    await stack.post("/v1/chat/completions", body, headers={**key, "X-Stub-Fault": "500", "Cache-Control": "no-cache"})
    await stack.post("/v1/chat/completions", chat(stream=True, messages=body["messages"]),
                     headers={**key, "X-Stub-Fault": "truncate"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("llmcache.proxy") for r in caplog.records)
    assert secret_prompt not in text and "sk-super-secret-key" not in text


async def test_spans_carry_cache_attributes(proxy_stack) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    stack = await proxy_stack()
    exporter = InMemorySpanExporter()
    stack.state.telemetry.add_processor(SimpleSpanProcessor(exporter))
    await stack.post("/v1/chat/completions", CHAT)
    await stack.post("/v1/chat/completions", CHAT)
    spans = exporter.get_finished_spans()
    assert [s.attributes["llmcache.status"] for s in spans] == ["miss", "hit"]
    assert spans[0].attributes["llmcache.key"] == spans[1].attributes["llmcache.key"]
    assert len(spans[0].attributes["llmcache.key"]) == 12
    assert all(s.attributes["http.response.status_code"] == 200 for s in spans)


async def test_eviction_bookkeeping_recorded_on_write_and_hit(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack()
    ks = Keyspace()
    await stack.post("/v1/chat/completions", CHAT)
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        key_hash = (await anext(r.scan_iter(match=Keyspace().entry_pattern))).decode().split(":")[-1]
        assert await r.zscore(ks.group_of("_default", "lfu", key_hash), key_hash) == 1
        assert await r.hget(ks.group_of("_default", "size", key_hash), key_hash) is not None
        await stack.post("/v1/chat/completions", CHAT)
        assert await r.zscore(ks.group_of("_default", "lfu", key_hash), key_hash) == 2
        await stack.post("/v1/chat/completions", chat(seed=3), headers={"Cache-Control": "only-if-cached"})
        assert await eviction.group_count(r, ks, "_default") == 1  # a miss leaves no bookkeeping
    finally:
        await r.aclose()


async def test_invalidate_drops_eviction_rows(proxy_stack, redis_plain_url: str) -> None:
    stack = await proxy_stack()
    await stack.post("/v1/chat/completions", CHAT)
    r = aioredis.Redis.from_url(redis_plain_url)
    ks = Keyspace()
    try:
        assert await eviction.group_count(r, ks, "_default") == 1
        async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"all": True},
                                   headers={"Authorization": "Bearer admin-secret"}) as resp:
            assert (await resp.json())["deleted"] == 1
        for kind in ("lru", "lfu", "ctime"):
            assert await eviction.group_count(r, ks, "_default", kind) == 0
        assert not await r.exists(*ks.group_keys("_default", "size"))
    finally:
        await r.aclose()


def test_stats_buffer_caps_namespaces() -> None:
    from llmcache import stats

    buf = stats.StatsBuffer(max_namespaces=2)
    for ns in ("a", "b", "c", "d", "a"):
        buf.add(ns, "hit")
    buf.add("e", "miss", policy="ns/p")  # overflow keeps the policy, so its hitRate stays exact
    assert dict(buf._counts[("a", None)]) == {"hit": 2}
    assert dict(buf._counts[(stats.OVERFLOW_NAMESPACE, None)]) == {"hit": 2}
    assert dict(buf._counts[(stats.OVERFLOW_NAMESPACE, "ns/p")]) == {"miss": 1}
    assert len(buf._counts) == 4


async def test_streaming_miss_relays_chunks_before_the_upstream_finishes(proxy_stack) -> None:
    stack = await proxy_stack()
    stack.stub.chunk_delay_ms = 200
    async with stack.http.post(stack.proxy_url + "/v1/chat/completions", json=chat(stream=True, max_tokens=8),
                               headers={"Authorization": "Bearer k"}) as r:
        first = await r.content.readuntil(b"\n\n")
        assert b'"role":"assistant"' in first
        # The upstream call is still running (its flight is open): the chunk was not held back.
        assert len(stack.state.flights) == 1
        rest = await r.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    await asyncio.sleep(0)
    assert (await stack.post("/v1/chat/completions", chat(stream=True, max_tokens=8),
                             headers={"Authorization": "Bearer k"}))[1]["X-LLMCache-Status"] == "hit"


async def test_stream_recorded_without_usage_does_not_serve_json_without_usage(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    live = await collect_stream(await client.chat.completions.create(**CHAT, stream=True))  # no include_usage
    as_json = await client.chat.completions.with_raw_response.create(**CHAT)
    assert as_json.headers["X-LLMCache-Status"] == "miss"  # fetched once to get usage
    parsed = as_json.parse()
    assert parsed.usage is not None and parsed.choices[0].message.content == live["text"][0]
    again = await client.chat.completions.with_raw_response.create(**CHAT)
    assert again.headers["X-LLMCache-Status"] == "hit" and again.parse().usage == parsed.usage
    streamed = await client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert streamed.headers["X-LLMCache-Status"] == "hit"
    assert await stack.upstream_count() == 2


async def test_stream_without_usage_does_not_answer_a_stream_that_wants_usage(proxy_stack) -> None:
    stack = await proxy_stack()
    client = stack.openai()
    await collect_stream(await client.chat.completions.create(**CHAT, stream=True))
    plain = await client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert plain.headers["X-LLMCache-Status"] == "hit"
    with_usage = await client.chat.completions.with_raw_response.create(
        **CHAT, stream=True, stream_options={"include_usage": True})
    assert with_usage.headers["X-LLMCache-Status"] == "miss"
    assert (await collect_stream(with_usage.parse()))["usage"] is not None
    assert (await client.chat.completions.create(**CHAT)).usage is not None  # the new entry serves JSON too
    assert await stack.upstream_count() == 2


async def test_odd_but_parseable_bodies_never_cause_a_proxy_error(proxy_stack) -> None:
    stack = await proxy_stack()
    seen = []
    for raw in (b'{"model": "m", "temperature": 0, "messages": [], "top_p": NaN}',
                b'{"model": "m", "temperature": 0, "stream": true, "stream_options": {"x": Infinity}, "messages": []}',
                b'{"model": "m", "temperature": "0", "messages": []}',
                ('{"model": "m", "temperature": 0, "messages": [{"role": "user", '
                 '"content": "\u00e9t\u00e9 \ud83d\ude00"}]}').encode("utf-8", "surrogatepass")):
        status, headers, _ = await stack.post("/v1/chat/completions", None, raw=raw,
                                              headers={"Content-Type": "application/json"})
        seen.append((status, headers.get("X-LLMCache-Status")))
    # NaN in a keyed field: forwarded uncached; NaN only in stream_options (not keyed): cached;
    # a string temperature: not provably deterministic; invalid UTF-8: the upstream's own 400.
    assert seen == [(200, "bypass"), (200, "miss"), (200, "bypass"), (400, "bypass")]


async def test_followers_keep_streaming_when_the_leader_hangs_up(proxy_stack) -> None:
    from llmcache.proxy.streaming import SSERecorder

    stack = await proxy_stack()
    stack.stub.chunk_delay_ms = 40
    body = chat(stream=True, max_tokens=10)
    auth = {"Authorization": "Bearer k"}
    url = stack.proxy_url + "/v1/chat/completions"

    async def follow() -> bytes:
        async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=auth) as r:
            return await r.read()

    async with aiohttp.ClientSession() as leader, leader.post(url, json=body, headers=auth) as r:
        await r.content.readuntil(b"\n\n")
        follower = asyncio.ensure_future(follow())
        while stack.state.flights.num_coalesced_total == 0:  # until the follower has joined
            await asyncio.sleep(0.01)
        # leaving the blocks closes the leader's connection mid-stream
    recorder = SSERecorder("/v1/chat/completions")
    recorder.feed(await follower)
    assert recorder.complete  # the follower got the whole answer, [DONE] included
    assert await stack.upstream_count() == 1
    _, headers, _ = await stack.post("/v1/chat/completions", body, headers=auth)
    assert headers["X-LLMCache-Status"] == "miss"  # the leader hung up: nothing was stored


async def test_answer_is_sent_before_the_store_and_no_gap_follows(proxy_stack) -> None:
    stack = await proxy_stack(redis_timeout_ms=5000)
    store = stack.state.store
    gate = asyncio.Event()
    real_put = store.put

    async def gated_put(*args: Any, **kwargs: Any) -> int:  # a Redis write that takes its time
        await gate.wait()
        return await real_put(*args, **kwargs)

    store.put = gated_put
    url = stack.proxy_url + "/v1/chat/completions"
    auth = {"Authorization": "Bearer k"}
    async with stack.http.post(url, json=CHAT, headers=auth) as r:
        first = await r.read()
        assert r.headers["X-LLMCache-Status"] == "miss"  # answered while the write is still pending
    async with stack.http.post(url, json=CHAT, headers=auth) as r:
        assert r.headers["X-LLMCache-Status"] == "hit" and await r.read() == first  # from the flight
    gate.set()
    await stack.flush()
    assert len(stack.state.flights) == 0
    _, headers, body = await stack.post("/v1/chat/completions", CHAT, headers=auth)
    assert headers["X-LLMCache-Status"] == "hit" and body == first  # now from Redis
    assert await stack.upstream_count() == 1


# --- the request path's Redis work -----------------------------------------------------------------


async def _commands_during(redis_url: str, work: Any) -> list[dict[str, Any]]:
    """Every command Redis ran while ``work()`` ran (MONITOR on the real server), scripts' own included."""
    r = aioredis.Redis.from_url(redis_url)
    seen: list[dict[str, Any]] = []
    async with r.monitor() as m:
        async def listen() -> None:
            while True:
                seen.append(await m.next_command())

        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0.05)  # MONITOR is on before the work starts
        await work()
        await r.ping()  # a marker: the monitor has seen everything before it
        while not any(c["command"] == "PING" and c["client_type"] == "tcp" for c in seen[-3:]):
            await asyncio.sleep(0.01)
        listener.cancel()
    await r.aclose()
    return seen


async def test_a_hit_is_one_redis_round_trip_and_a_miss_two(proxy_stack, redis_plain_url: str) -> None:
    # The hit read from Redis (a near-cache hit makes none: test_near).
    stack: Stack = await proxy_stack(redis_near_cache_bytes=0)
    store_conn = stack.state.store._redis  # the pipelined connection (one Redis over TCP)
    auth = {"Authorization": "Bearer k"}
    await stack.post("/v1/chat/completions", chat(), headers=auth)
    await stack.flush()
    local_port = store_conn._proto.transport.get_extra_info("sockname")[1]

    async def hits() -> None:
        for _ in range(3):
            _, headers, _ = await stack.post("/v1/chat/completions", chat(), headers=auth)
            assert headers["X-LLMCache-Status"] == "hit"

    seen = await _commands_during(redis_plain_url, hits)
    ours = [c["command"].split()[0] for c in seen if c["client_type"] != "lua" and c["client_port"] == str(local_port)]
    assert ours == ["EVALSHA"] * 3  # entry + bookkeeping in one script call per hit

    async def misses() -> None:
        for i in range(2):
            _, headers, _ = await stack.post("/v1/chat/completions", chat(max_tokens=10 + i), headers=auth)
            assert headers["X-LLMCache-Status"] == "miss"
        await stack.flush()

    seen = await _commands_during(redis_plain_url, misses)
    ours = [c["command"].split()[0] for c in seen if c["client_type"] != "lua" and c["client_port"] == str(local_port)]
    assert ours == ["EVALSHA"] * 4  # per miss: the lookup, then the write (entry + bookkeeping)


async def test_a_changed_entry_is_served_as_changed(proxy_stack, redis_plain_url: str) -> None:
    """Parsed entries are reused only while Redis returns the same bytes: a rewrite shows at once."""
    stack: Stack = await proxy_stack()
    auth = {"Authorization": "Bearer k"}
    _, _, first = await stack.post("/v1/chat/completions", chat(), headers=auth)
    await stack.flush()
    for _ in range(2):
        _, headers, body = await stack.post("/v1/chat/completions", chat(), headers=auth)
        assert headers["X-LLMCache-Status"] == "hit" and body == first
    assert stack.state.parsed.num_reused >= 1
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        keys_found = [k async for k in r.scan_iter(match=Keyspace().entry_pattern)]
        assert len(keys_found) == 1
        key = keys_found[0]
        stored = json.loads(await r.get(key))
        answer = json.loads(stored["body"])
        answer["choices"][0]["message"]["content"] = "rewritten by another pod"
        stored["body"] = json.dumps(answer)
        await r.set(key, json.dumps(stored), keepttl=True)
        # Another client's write reaches the near cache as Redis's invalidation push (test_near.py):
        # wait for it, as the remembered parse is what this test is about.
        key_hash = key.decode().rsplit(":", 1)[-1]
        near = stack.state.near
        await wait_until("the rewrite's invalidation", lambda: near is None or key_hash not in near.held())
        _, headers, body = await stack.post("/v1/chat/completions", chat(), headers=auth)
        assert headers["X-LLMCache-Status"] == "hit"
        assert json.loads(body)["choices"][0]["message"]["content"] == "rewritten by another pod"
        await r.delete(key)  # invalidated elsewhere: a miss, never the remembered answer
        await wait_until("the delete's invalidation", lambda: near is None or key_hash not in near.held())
        _, headers, _ = await stack.post("/v1/chat/completions", chat(), headers=auth)
        assert headers["X-LLMCache-Status"] == "miss"
    finally:
        await r.aclose()


async def test_a_json_answer_is_not_stored_when_its_client_left(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    stack.stub.latency_ms = 300
    auth = {"Authorization": "Bearer k"}
    with pytest.raises(asyncio.TimeoutError):
        async with stack.http.post(stack.proxy_url + "/v1/chat/completions", json=chat(), headers=auth,
                                   timeout=aiohttp.ClientTimeout(total=0.1)) as r:
            await r.read()
    while await stack.upstream_count() == 0 or len(stack.state.flights):  # the proxy's call ended
        await asyncio.sleep(0.02)
    stack.stub.latency_ms = 0
    _, headers, _ = await stack.post("/v1/chat/completions", chat(), headers=auth)
    assert headers["X-LLMCache-Status"] == "miss"
    assert await stack.upstream_count() == 2
