"""A sidecar whose embedder is down still answers, and says so in /metrics (issue 9).

The remote embedder is a small aiohttp server here: the only way to make a real
one fail on cue (fault injection); everything else is the real proxy and Redis.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_helpers import CHAT

from llmcache.redis_server import free_port


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_embedder_down_at_start_serves_and_reports_semantic_down(proxy_stack, redis_search_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_embedder="remote",
                              semantic_embedder_url=dead)
    status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert metric(await r.text(), "llmcache_semantic_up") == 0


async def test_a_sidecar_whose_policy_may_want_semantic_reports_it_down(proxy_stack, redis_search_url: str,
                                                                        tmp_path) -> None:
    """A sidecar runs in mode exact and its CachePolicy turns semantic on: it starts the semantic cache, so
    /metrics says 0 while that cannot run (it said 1, as if nothing were wanted, and a wait on it passed)."""
    labels = tmp_path / "labels"
    labels.write_text('app="chat"\n')
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="exact", semantic_embedder="remote",
                              semantic_embedder_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
                              policy_pod_namespace="team", policy_pod_name="chat-0",
                              policy_pod_labels_file=str(labels))
    assert stack.state.settings.policy.enabled
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert metric(await r.text(), "llmcache_semantic_up") == 0


@pytest.fixture
async def flaky_embedder():
    """An OpenAI-style /v1/embeddings that answers until ``fail`` is set, then 503s."""
    state = {"fail": False}

    async def embeddings(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.json_response({"error": "down"}, status=503)
        body = await request.json()
        return web.json_response({"data": [{"index": i, "embedding": [1.0, 0.0, 0.0, 0.0]}
                                           for i, _ in enumerate(body["input"])]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), state
    await server.close()


async def test_embedder_failing_later_fails_open_and_counts(proxy_stack, redis_search_url: str,
                                                            flaky_embedder) -> None:
    url, state = flaky_embedder
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_embedder="remote",
                              semantic_embedder_url=url, semantic_timeout_s=5.0)
    assert stack.state.semantic is not None
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        text = await r.text()
    assert metric(text, "llmcache_semantic_up") == 1
    assert metric(text, "llmcache_semantic_failures_total") == 0
    state["fail"] = True
    status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"  # served exact-only
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert metric(await r.text(), "llmcache_semantic_failures_total") >= 1


async def test_a_failed_background_add_is_counted(proxy_stack, redis_search_url: str, flaky_embedder) -> None:
    """The add runs after the answer went out; when the embedder fails it, /metrics says so."""
    url, state = flaky_embedder
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_embedder="remote",
                              semantic_embedder_url=url, semantic_timeout_s=5.0)
    state["fail"] = True
    status, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with stack.http.get(stack.proxy_url + "/metrics") as r:
            failed = metric(await r.text(), "llmcache_semantic_adds_failed_total")
        if failed >= 1 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert failed == 1
