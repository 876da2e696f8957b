"""Fixtures for the Redis Cluster suite: a real 3-master + 3-replica Valkey cluster.

- ``cluster`` — session-scoped, with the RediSearch module on every node; tests use their
  own key prefix (``prefix``) instead of flushing, so they never see each other's keys.
- ``own_cluster`` — a fresh cluster a test may wound (kill a master, move slots).
- ``cluster_proxy`` — proxies (the real aiohttp app) in this process, pointed at a
  ``redis+cluster://`` URL, with the stub upstream.

Every node is started with PR_SET_PDEATHSIG (see :mod:`llmcache.redis_server`), so a killed
test run leaves no server behind; fixtures stop them all on exit.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmcache.redis_server import free_port
from llmcache.testing.redis_cluster import EmbeddedCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "proxy"))
from proxy_helpers import Stack, proxy_settings

from llmcache.proxy.app import create_app
from llmcache.testing.stub_upstream import StubConfig, create_stub_app


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(with_search=True) as c:
        yield c


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(with_search=True) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def cluster_proxy(prefix: str) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    servers: list[TestServer] = []
    runners: list[web.AppRunner] = []
    stacks: list[Stack] = []
    http = aiohttp.ClientSession()

    async def make(redis_url: str, *, stub: StubConfig | None = None, **overrides: Any) -> Stack:
        stub = stub or StubConfig()
        up = TestServer(create_stub_app(stub), host="127.0.0.1")
        await up.start_server()
        servers.append(up)
        upstream_url = str(up.make_url("")).rstrip("/")
        overrides.setdefault("cache_key_prefix", prefix)
        app = create_app(proxy_settings(redis_url, upstream_url, **overrides))
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stack = Stack(proxy_url=f"http://127.0.0.1:{port}", upstream_url=upstream_url, app=app, stub=stub, http=http)
        stacks.append(stack)
        for _ in range(500):
            async with http.get(stack.proxy_url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.02)
        return stack

    yield make
    for stack in stacks:
        for c in stack.clients:
            await c.close()
    for runner in reversed(runners):
        await runner.cleanup()
    for server in reversed(servers):
        await server.close()
    await http.close()
