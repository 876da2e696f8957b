#!/usr/bin/env python3
"""Control servers for ``scale_bench.py``: what P Python event loops cost here without llmcache.

    python benchmarks/helpers/scale_control.py --listen 127.0.0.1:PORT                  # parse JSON, answer JSON
    python benchmarks/helpers/scale_control.py --listen 127.0.0.1:PORT --redis-url URL  # the same + one Redis GET

Both answer ``POST /v1/chat/completions`` with a fixed chat completion of the size the cache
serves; the second first awaits one ``GET`` on the target (a cluster with ``redis+cluster://``),
so each request waits on Redis once, as a cache hit does. Read llmcache's curve against them.
A server for the benchmark to start, not a benchmark: it writes no results (hence no ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from aiohttp import web

from llmcache import connection

ANSWER = json.dumps({"id": "c", "object": "chat.completion", "model": "bench", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "answer " + "lorem ipsum " * 20},
     "finish_reason": "stop"}], "usage": {"prompt_tokens": 40, "completion_tokens": 60, "total_tokens": 100}})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--redis-url", help="await one GET here per request")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = web.Application()
    clients: list[Any] = []

    async def connect(_: web.Application) -> None:
        if args.redis_url:  # in the serving loop (a cluster client binds to it), topology read first
            clients.append(connection.connect(args.redis_url))
            await clients[0].get("scale-control:warm")

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if clients:
            await clients[0].get("scale-control:" + hashlib.sha256(json.dumps(body).encode()).hexdigest())
        return web.Response(body=ANSWER, content_type="application/json", headers={"X-LLMCache-Status": "hit"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app.on_startup.append(connect)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
