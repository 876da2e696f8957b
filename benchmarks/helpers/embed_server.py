"""An OpenAI-compatible ``/v1/embeddings`` server for benchmarks: all-MiniLM-L6-v2, every text embedded once.

    .venv/bin/python benchmarks/helpers/embed_server.py --listen 127.0.0.1:9100

Proxies started with ``--embedder remote --embedder-url http://127.0.0.1:9100`` get the same
normalised MiniLM vectors as the local embedder (the sidecar's setup in a pod), while the model
runs once for all of them: a benchmark that runs many proxies side by side on one small machine
spends its CPU on the proxies, not on embedding the same texts again in each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from typing import Any

import numpy as np
from aiohttp import web

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Embeddings:
    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        from llmcache.proxy.semantic.embedder import find_local_model_dir

        self.model = SentenceTransformer(str(find_local_model_dir()), device="cpu", local_files_only=True)
        self.cache: dict[str, np.ndarray] = {}
        self.lock = asyncio.Lock()
        self.num_computed = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        raw = body.get("input")
        texts: list[str] = raw if isinstance(raw, list) else [raw]
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            async with self.lock:
                missing = [t for t in missing if t not in self.cache]
                if missing:
                    vectors = await asyncio.to_thread(self.model.encode, missing, batch_size=64,
                                                      normalize_embeddings=True, show_progress_bar=False)
                    for t, v in zip(missing, vectors, strict=True):
                        self.cache[t] = np.asarray(v, dtype="<f4")
                    self.num_computed += len(missing)
        # base64 when asked (the proxy's remote embedder asks: 4 bytes a dimension, little-endian float32).
        as_b64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(self.cache[t].tobytes()).decode() if as_b64 else self.cache[t].tolist()}
            for i, t in enumerate(texts)]
        return web.json_response({"object": "list", "data": data, "model": body.get("model", "all-MiniLM-L6-v2"),
                                  "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "all-MiniLM-L6-v2", "object": "model"}],
                                  "computed": self.num_computed})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:9100")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    emb = Embeddings()
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/embeddings", emb.handle)
    app.router.add_get("/v1/models", emb.models)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
