"""Proxy fixtures: the stub upstream and the proxy as real HTTP servers on 127.0.0.1 free ports.

``proxy_stack(**overrides)`` starts a stub upstream (:mod:`llmcache.testing.stub_upstream`)
and a proxy (``create_app``) in front of it on a real Redis, and returns a
:class:`proxy_helpers.Stack` with both URLs, the proxy state and an ``openai.AsyncOpenAI``
factory. Everything is torn down at the end of the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_helpers import Stack, proxy_settings

from llmcache.proxy.app import create_app
from llmcache.redis_server import free_port
from llmcache.testing.stub_upstream import StubConfig, create_stub_app


@pytest.fixture
async def proxy_stack(redis_plain_url: str) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    servers: list[TestServer] = []
    stacks: list[Stack] = []
    http = aiohttp.ClientSession()

    async def make(*, redis_url: str | None = None, stub: StubConfig | None = None, **overrides: Any) -> Stack:
        stub = stub or StubConfig()
        up = TestServer(create_stub_app(stub), host="127.0.0.1")
        await up.start_server()
        servers.append(up)
        upstream_url = str(up.make_url("")).rstrip("/")
        app = create_app(proxy_settings(redis_url or redis_plain_url, upstream_url, **overrides))
        # Served like `llmcache proxy` serves it (web.run_app): aiohttp's TestServer would turn on
        # handler cancellation, which production does not use.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stack = Stack(proxy_url=f"http://127.0.0.1:{port}", upstream_url=upstream_url, app=app,
                      stub=stub, http=http, runner=runner)
        stacks.append(stack)
        # Wait for readiness like the chart's probe does.
        for _ in range(200):
            async with http.get(stack.proxy_url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.02)
        return stack

    yield make
    for stack in stacks:
        for c in stack.clients:
            await c.close()
    for stack in reversed(stacks):
        await stack.stop()
    for server in reversed(servers):
        await server.close()
    await http.close()


@pytest.fixture
async def semantic_stack(proxy_stack: Callable[..., Awaitable[Stack]], redis_search_url: str) -> Stack:
    """A proxy with the semantic cache on (real MiniLM embedder, Redis with vector search)."""
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_timeout_s=5.0)
    if stack.state.semantic is None:
        pytest.fail("the semantic cache did not start (see the log): the proxy fell back to exact only")
    return stack
