"""Issue 14 items 2, 3 and 6, and cross-tenant probes that must learn nothing.

- no credential: not cached by default; ``anonymous: PerNamespace`` (policy) or ``--anonymous
  per-namespace`` caches per pod namespace only;
- the same tenant in two namespaces never shares an entry (the key includes the pod namespace);
- the query string is part of the key;
- every forwarded chat/completions body carries a per-tenant ``cache_salt``, and the real model
  server then reports no ``cached_tokens`` for another tenant's prefix;
- exact, semantic and ``Age`` probes by another tenant see a plain miss.

Real proxy, real Redis (two proxies share one, as two pods do), stub or scripted upstream, the
real model server on the tiny random model, the real MiniLM embedder.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from proxy_helpers import CHAT, Stack, proxy_settings

from llmcache import policy
from llmcache.keyspace import Keyspace

ROUTE = "/v1/chat/completions"
NO_AUTH: dict[str, str] = {}


async def post(stack: Stack, body: dict[str, Any], *, auth: str | None, path: str = ROUTE,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """POST with ``Authorization: Bearer auth`` (none when ``auth`` is None)."""
    h = dict(headers or {})
    if auth is not None:
        h["Authorization"] = f"Bearer {auth}"
    async with stack.http.post(stack.proxy_url + path, json=body, headers=h) as r:
        out = r.status, dict(r.headers), await r.read()
    await stack.flush()
    return out


def statuses(results: list[tuple[int, dict[str, str], bytes]]) -> list[str]:
    return [headers["X-LLMCache-Status"] for _, headers, _ in results]


async def test_requests_without_a_credential_are_not_cached_by_default(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    results = [await post(stack, CHAT, auth=None) for _ in range(2)]
    assert statuses(results) == ["bypass", "bypass"] and {s for s, _, _ in results} == {200}
    assert await stack.upstream_count() == 2
    assert statuses([await post(stack, CHAT, auth="sk-a") for _ in range(2)]) == ["miss", "hit"]  # control


async def test_anonymous_per_namespace_never_crosses_namespaces(proxy_stack, redis_plain_url: str) -> None:
    a: Stack = await proxy_stack(cache_anonymous="per-namespace", policy_pod_namespace="team-a")
    b: Stack = await proxy_stack(cache_anonymous="per-namespace", policy_pod_namespace="team-b")
    assert statuses([await post(a, CHAT, auth=None) for _ in range(2)]) == ["miss", "hit"]
    assert statuses([await post(b, CHAT, auth=None)]) == ["miss"]  # same Redis, same salt, other namespace


async def test_policy_opts_anonymous_requests_in(proxy_stack, redis_plain_url: str, tmp_path) -> None:
    labels = tmp_path / "labels"
    labels.write_text('app="chat"\n')
    r = aioredis.Redis.from_url(redis_plain_url)
    ks = Keyspace()
    try:
        doc = policy.PolicyDocument("team-a", "p", 1, policy.parse_spec(
            {"selector": {"matchLabels": {"app": "chat"}}, "mode": "Exact", "scope": {"anonymous": "PerNamespace"}}))
        await r.hset(ks.policies("team-a"), doc.name, doc.to_json())
        stack: Stack = await proxy_stack(policy_pod_namespace="team-a", policy_pod_name="p-0",
                                         policy_pod_labels_file=str(labels))
        deadline = time.monotonic() + 15  # liveness bound for the watcher's first read
        while stack.state.policy_watcher.current is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert statuses([await post(stack, CHAT, auth=None) for _ in range(2)]) == ["miss", "hit"]
    finally:
        await r.aclose()


async def test_the_same_tenant_in_two_namespaces_shares_nothing(proxy_stack) -> None:
    a: Stack = await proxy_stack(policy_pod_namespace="team-a")
    b: Stack = await proxy_stack(policy_pod_namespace="team-b")
    assert statuses([await post(a, CHAT, auth="sk-same") for _ in range(2)]) == ["miss", "hit"]
    _, headers, _ = await post(b, CHAT, auth="sk-same")
    assert headers["X-LLMCache-Status"] == "miss" and "Age" not in headers


async def test_a_proxys_admin_api_reaches_only_its_own_partition(proxy_stack, redis_plain_url: str) -> None:
    """Issue 18, item 2, with the review's trigger: proxy A (pod namespace team-a) asks to invalidate
    ``{"namespace": "payroll-team"}`` and then ``{"all": true}``; entries stored through proxy B in
    team-b survive both, and A's stats show A's partition only. (Here Redis lets every proxy touch
    every key, as one shared sidecar user did: the scope is the admin API's own.)"""
    a: Stack = await proxy_stack(policy_pod_namespace="team-a", admin_token="admin-secret")
    b: Stack = await proxy_stack(policy_pod_namespace="team-b", admin_token="admin-secret")
    admin = {"Authorization": "Bearer admin-secret"}
    payroll = {"X-LLMCache-Namespace": "payroll-team"}
    for stack in (a, b):
        for headers in (NO_AUTH, payroll):
            assert statuses([await post(stack, CHAT, auth="sk-x", headers=headers)]) == ["miss"]
    for body, deleted in (({"namespace": "payroll-team"}, 1), ({"all": True}, 1)):
        async with a.http.post(a.proxy_url + "/llmcache/v1/invalidate", json=body, headers=admin) as r:
            assert r.status == 200 and (await r.json())["deleted"] == deleted, await r.text()  # A's own only
    for headers in (NO_AUTH, payroll):
        assert statuses([await post(b, CHAT, auth="sk-x", headers=headers)]) == ["hit"]  # B's survived
        assert statuses([await post(a, CHAT, auth="sk-x", headers=headers)]) == ["miss"]  # A's are gone
    async with b.http.get(b.proxy_url + "/llmcache/v1/stats", headers=admin) as r:
        assert {row["partition"] for row in (await r.json())["namespaces"]} == {"team-b"}  # flushed B's counters
    async with a.http.get(a.proxy_url + "/llmcache/v1/stats", headers=admin) as r:
        rows = (await r.json())["namespaces"]
    assert rows and {row["partition"] for row in rows} == {"team-a"}
    assert sum(row["hit"] for row in rows) == 0  # B's hits are B's to count
    # Entries say which partition stored them; B's are B's.
    client = aioredis.Redis.from_url(redis_plain_url)
    try:
        for key in [k async for k in client.scan_iter(match=Keyspace(partition="team-b").entry_pattern)]:
            assert json.loads(await client.get(key))["partition"] == "team-b"
    finally:
        await client.aclose()


async def test_the_query_string_is_part_of_the_key(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    first = await post(stack, CHAT, auth="sk-a", path=ROUTE + "?api-version=1")
    again = await post(stack, CHAT, auth="sk-a", path=ROUTE + "?api-version=1")
    other = await post(stack, CHAT, auth="sk-a", path=ROUTE + "?api-version=2")
    assert statuses([first, again, other]) == ["miss", "hit", "miss"]


async def test_cross_tenant_exact_and_age_probes_learn_nothing(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    await post(stack, CHAT, auth="sk-victim")
    await asyncio.sleep(1.1)  # so a leaked hit would carry Age ≥ 1
    _, headers, _ = await post(stack, CHAT, auth="sk-victim")
    assert headers["X-LLMCache-Status"] == "hit" and int(headers["Age"]) >= 1  # control: Age does leak age
    # The attacker's own probes must not store anything they could then hit themselves.
    for probe in ({"Cache-Control": "only-if-cached"}, {"Cache-Control": "max-age=100, no-store"},
                  {"Cache-Control": "no-store"}):
        status, headers, _ = await post(stack, CHAT, auth="sk-attacker", headers=probe)
        assert headers["X-LLMCache-Status"] == "miss" and "Age" not in headers
        if probe.get("Cache-Control") == "only-if-cached":
            assert status == 504  # indistinguishable from a prompt nobody ever sent


# --- cache_salt -------------------------------------------------------------------------------------


async def _echo_ok(request: web.Request, body: dict) -> web.StreamResponse:
    return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


async def test_every_forwarded_body_carries_a_per_tenant_cache_salt(scripted_stack) -> None:
    stack, seen = await scripted_stack(_echo_ok)
    hot = {**CHAT, "temperature": 0.7}  # a bypass is salted too
    for auth, body in (("sk-a", CHAT), ("sk-b", CHAT), ("sk-a", hot), ("sk-a", {**CHAT, "cache_salt": "mine"})):
        await post(stack, body, auth=auth)
    await post(stack, CHAT, auth=None)  # anonymous: bypassed, still salted (per namespace)
    salts = [b.get("cache_salt") for b in seen]
    assert all(isinstance(s, str) and len(s) == 32 for s in salts)
    assert salts[0] == salts[2]  # one tenant, one salt
    assert len({salts[0], salts[1], salts[3], salts[4]}) == 4  # tenants, client salts, anonymous: apart
    assert seen[3]["messages"] == CHAT["messages"]  # the rest of the body travels unchanged


async def test_cache_salt_can_be_turned_off_for_strict_upstreams(scripted_stack) -> None:
    stack, seen = await scripted_stack(_echo_ok, upstream_enable_cache_salt=False)
    await post(stack, CHAT, auth="sk-a")
    assert "cache_salt" not in seen[0]


@pytest.fixture(scope="module")
def model_server_url():
    """The real model server (tiny random model, prefix cache on) on a free port in a thread."""
    import torch

    from llmcache.model_server import handlers as ms_handlers
    from llmcache.model_server import loader
    from llmcache.model_server.settings import ModelServerSettings
    from llmcache.testing import threaded

    torch.set_num_threads(1)
    loaded = loader.load_model("random-tiny", device="cpu", dtype="float32", seed=0)
    app = ms_handlers.create_app(ModelServerSettings(enable_embeddings=False), loaded=loaded)
    with threaded.serve_in_thread(app) as url:
        assert app[ms_handlers.STATE_KEY].ready.wait(120)
        yield url


async def test_prefix_cache_probe_by_another_tenant_sees_no_cached_tokens(proxy_stack, model_server_url,
                                                                        redis_plain_url: str) -> None:
    from aiohttp import web as _web

    from llmcache.proxy.app import create_app
    from llmcache.redis_server import free_port

    app = create_app(proxy_settings(redis_plain_url, model_server_url.rstrip("/")))
    runner = _web.AppRunner(app, access_log=None, handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await _web.TCPSite(runner, "127.0.0.1", port).start()
    stack = Stack(proxy_url=f"http://127.0.0.1:{port}", upstream_url=model_server_url, app=app, stub=None,
                  http=(await proxy_stack()).http)
    try:
        async with stack.http.get(model_server_url.rstrip("/") + "/v1/models") as r:
            model = (await r.json())["data"][0]["id"]
        secret = list(range(10, 74))  # the victim's "system prompt", as token ids
        body = {"model": model, "prompt": secret + [1], "max_tokens": 2, "temperature": 0}
        status, headers, _ = await post(stack, body, auth="sk-victim", path="/v1/completions")
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"

        def cached(payload: bytes) -> int:
            usage = json.loads(payload).get("usage") or {}
            return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)

        probe = {**body, "prompt": secret + [2]}
        status, headers, attacker = await post(stack, probe, auth="sk-attacker", path="/v1/completions")
        assert status == 200 and headers["X-LLMCache-Status"] == "miss" and cached(attacker) == 0
        status, _, victim = await post(stack, {**probe, "prompt": secret + [3]}, auth="sk-victim",
                                       path="/v1/completions")
        # Control: the victim's own prefix is reused (and reported).
        assert status == 200 and cached(victim) >= len(secret)
    finally:
        await runner.cleanup()
