"""``llmcache model-server``: serve the OpenAI-compatible API with the prefix KV cache.

Prints loading progress to stderr, then one line on stdout once ``/healthz`` is 200::

    llmcache model-server ready: http://127.0.0.1:8000/v1 (model default, cpu, float32)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from llmcache.errors import ConfigError
from llmcache.model_server import settings as settings_mod

__all__ = ["configure", "run", "serve"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the model-server flags (each also read from ``LLMCACHE_<FLAG>``)."""
    settings_mod.add_flags(parser)


def _url_host(host: str) -> str:
    if host in {"0.0.0.0", ""}:  # noqa: S104 - maps a wildcard listen address to a URL; binds nothing
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def serve(settings: settings_mod.ModelServerSettings) -> int:
    """Run until SIGINT/SIGTERM; returns 1 when the model fails to load."""
    from llmcache.model_server.handlers import STATE_KEY, create_app

    app = create_app(settings)
    state = app[STATE_KEY]
    host, port = settings.host_port
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {settings.listen} ({exc.strerror}): stop what runs there or "
                              "choose another address with --listen HOST:PORT (env LLMCACHE_LISTEN)") from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        # Wait for the load thread without blocking the loop (healthz answers 503 meanwhile).
        while not (state.ready.is_set() or state.failed.is_set() or stop.is_set()):
            await asyncio.sleep(0.1)
        if state.failed.is_set():
            print(f"llmcache model-server: error: the model failed to load: {state.error}", flush=True)
            return 1
        if state.ready.is_set():
            loaded = state.loaded
            assert loaded is not None
            bound = runner.addresses[0][1] if runner.addresses else port
            print(f"llmcache model-server ready: http://{_url_host(host)}:{bound}/v1 "
                  f"(model {state.model_name}, {loaded.device}, {str(loaded.dtype).removeprefix('torch.')})",
                  flush=True)
        await stop.wait()
        return 0
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``llmcache model-server``."""
    settings = settings_mod.from_args(args)
    return asyncio.run(serve(settings))
