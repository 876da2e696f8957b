"""Test helpers: run a model-server app on a real 127.0.0.1 port in a thread; engine factory type."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from llmcache.model_server.generate import Engine
from llmcache.model_server.handlers import STATE_KEY, ServerState
from llmcache.redis_server import free_port

#: ``make_engine(model, *, budget_bytes=…, enable_prefix_cache=…)`` (fixture in conftest.py).
EngineFactory = Callable[..., Engine]


@dataclass
class RunningServer:
    url: str
    state: ServerState


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(app)
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(60), "server did not start"
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", state=app[STATE_KEY])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
