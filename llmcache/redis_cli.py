"""``llmcache redis``: an embedded Valkey with the RediSearch module, in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading

from llmcache.errors import ConfigError
from llmcache.redis_server import EmbeddedRedis
from llmcache.settings import add_flag, parse_listen, port_in_use


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--listen", default="127.0.0.1:6379", help="HOST:PORT to listen on")
    add_flag(parser, "--no-search", action="store_true",
             help="plain Valkey without the search module (semantic index falls back to client-side)")
    add_flag(parser, "--maxmemory", default=None, help="Redis maxmemory, e.g. 512mb (allkeys-lru)")


def run(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    if port and port_in_use(host, port):
        raise ConfigError(f"port {port} on {host} is already in use: stop what runs there, choose another port "
                          "with --listen HOST:PORT (env LLMCACHE_LISTEN), or point --redis-url of the other "
                          "commands at that server")
    server = EmbeddedRedis(host=host, port=port, with_search=not args.no_search, maxmemory=args.maxmemory)
    server.start()
    print(f"redis ready at {server.url} (vector search: {'off' if args.no_search else 'on'}); Ctrl-C to stop",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if server._proc is None or server._proc.poll() is not None:  # noqa: SLF001
                print("redis exited unexpectedly", flush=True)
                return 1
    finally:
        server.stop()
    return 0

