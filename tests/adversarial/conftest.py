"""The adversarial suite reuses the proxy suite's fixtures: a stub upstream and a real proxy on real Redis.

``proxy_stack`` comes from ``tests/proxy/conftest.py`` (loaded under another module name, as two
``conftest`` modules cannot share one); ``proxy_helpers`` from the same folder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmcache.proxy.app import create_app
from llmcache.redis_server import free_port
from llmcache.testing.stub_upstream import StubConfig

_PROXY_TESTS = Path(__file__).resolve().parent.parent / "proxy"
if str(_PROXY_TESTS) not in sys.path:
    sys.path.insert(0, str(_PROXY_TESTS))

_spec = importlib.util.spec_from_file_location("proxy_tests_conftest", _PROXY_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_proxy_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_proxy_conftest)

proxy_stack = _proxy_conftest.proxy_stack
semantic_stack = _proxy_conftest.semantic_stack

from proxy_helpers import Stack, proxy_settings  # noqa: E402 - importable once the path is set

# --- a scripted upstream: fault injection where the stub upstream is too well-behaved ------------




Script = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
"""Answers one upstream request (given its parsed JSON body) however a test needs to."""


@pytest.fixture
async def scripted_stack(redis_plain_url: str) -> AsyncIterator[Callable[..., Awaitable[tuple[Stack, list[dict]]]]]:
    """``await scripted_stack(script, **overrides)`` → (proxy Stack, bodies the upstream received).

    The upstream is a real HTTP server on a free port whose answers come from ``script``: it
    writes what real servers write when things go wrong (error events, cut streams, odd deltas).
    """
    runners: list[web.AppRunner] = []
    http = aiohttp.ClientSession()

    async def make(script: Script, **overrides: Any) -> tuple[Stack, list[dict]]:
        seen: list[dict] = []

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            seen.append(body)
            return await script(request, body)

        up = web.Application()
        up.router.add_post("/v1/{tail:.*}", handle)
        up_runner = web.AppRunner(up, access_log=None)
        await up_runner.setup()
        runners.append(up_runner)
        up_port = free_port()
        await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
        upstream_url = f"http://127.0.0.1:{up_port}"
        app = create_app(proxy_settings(overrides.pop("redis_url", redis_plain_url), upstream_url, **overrides))
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stack = Stack(proxy_url=f"http://127.0.0.1:{port}", upstream_url=upstream_url, app=app,
                      stub=StubConfig(), http=http)
        for _ in range(200):
            async with http.get(stack.proxy_url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.02)
        return stack, seen

    yield make
    for runner in reversed(runners):
        await runner.cleanup()
    await http.close()
