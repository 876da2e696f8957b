"""Run an aiohttp app on a free 127.0.0.1 port in a background thread (tests and benchmarks).

One helper for every in-process caller that needs a real HTTP server next to synchronous
code (the OpenAI client, ``requests``-style calls): the model-server tests and
``benchmarks/prefix_bench.py`` both use it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from llmcache.errors import LLMCacheError
from llmcache.redis_server import free_port

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(app: web.Application, *, start_timeout_s: float = 60.0,
                    shutdown_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port in a daemon thread; yields its base URL.

    Raises :class:`~llmcache.errors.LLMCacheError` if the site is not listening within
    ``start_timeout_s``. On exit the app is cleaned up (its ``on_cleanup`` hooks run,
    waited for up to ``shutdown_timeout_s``), the loop stops and is closed.
    """
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
    if not started.wait(start_timeout_s):
        raise LLMCacheError(f"server on 127.0.0.1:{port} did not start within {start_timeout_s}s; "
                            "see the log above for the app's startup error")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(shutdown_timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
