"""Vector indexes for the semantic cache: the ``VectorIndex`` protocol and backend selection.

Every backend stores one Redis HASH per cached answer under
``Keyspace().vector(key_hash)`` (so the Query Engine indexes it, and so plain
Redis keeps it for client-side indexes), expiring with the answer::

    {p}:v:{key_hash}   vec   float32 × dim, L2-normalised (cosine = dot product)
                       scope scope hash (tenant, namespace, model, params, history)
                       text  the compared text (needed to verify a candidate; a value, never a key or a log)
                       exp   absolute expiry, Unix seconds (client indexes skip expired rows)
                       v     document schema version

Backends: :mod:`llmcache.proxy.semantic.index_search` (Redis Query Engine, HNSW, TAG
pre-filter) and :mod:`llmcache.proxy.semantic.index_client` (plain Redis/Valkey, numpy
in-process, kept in sync through a Redis stream). :func:`llmcache.proxy.semantic.cache.open_index` picks one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmcache import connection
from llmcache.errors import LLMCacheError

__all__ = [
    "DOC_SCHEMA_VERSION",
    "Candidate",
    "IndexError_",
    "VectorIndex",
    "doc_fields",
    "has_search_module",
    "parse_doc",
]

log = logging.getLogger(__name__)

DOC_SCHEMA_VERSION = 1


class IndexError_(LLMCacheError):  # noqa: N801 - ``IndexError`` is a builtin
    """The vector index failed (Redis down, index missing); the cache fails open."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A KNN neighbour inside the requested scope, with the stored text for verification."""

    key_hash: str
    similarity: float
    """Cosine similarity in [-1, 1] (1 = identical direction)."""
    text: str


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest stored texts within one scope."""

    name: str

    async def search(self, vector: np.ndarray, *, scope_hash: str, k: int, min_similarity: float) -> list[Candidate]:
        """Up to ``k`` live entries of ``scope_hash`` with similarity ≥ ``min_similarity``, best first."""
        ...

    async def add(self, key_hash: str, vector: np.ndarray, *, scope_hash: str, text: str, ttl_s: int) -> None:
        """Store (or replace) the vector document of ``key_hash``; it expires after ``ttl_s`` seconds."""
        ...

    async def delete(self, key_hash: str) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def doc_fields(vector: np.ndarray, *, scope_hash: str, text: str, ttl_s: int,
               now_s: float | None = None) -> dict[str, Any]:
    """The HASH fields of one vector document."""
    now = time.time() if now_s is None else now_s
    return {
        "vec": np.asarray(vector, dtype=np.float32).tobytes(),
        "scope": scope_hash,
        "text": text.encode(),
        "exp": f"{now + ttl_s:.3f}",
        "v": str(DOC_SCHEMA_VERSION),
    }




def parse_doc(raw: Mapping[Any, Any] | list[Any], *, dim: int) -> tuple[np.ndarray, str, str, float] | None:
    """``(vector, scope, text, exp)`` from HGETALL/HMGET output, or ``None`` for a missing or foreign document."""
    if isinstance(raw, list):  # HMGET vec scope text exp v
        fields = dict(zip(("vec", "scope", "text", "exp", "v"), raw, strict=False))
    else:
        fields = {connection.as_text(k): v for k, v in raw.items()}
    vec_raw, scope, text, exp, ver = (fields.get(f) for f in ("vec", "scope", "text", "exp", "v"))
    if vec_raw is None or scope is None or text is None or exp is None:
        return None
    if ver is not None and connection.as_text(ver) != str(DOC_SCHEMA_VERSION):
        return None
    if not isinstance(vec_raw, (bytes, bytearray)) or len(vec_raw) != dim * 4:
        return None
    try:
        return (np.frombuffer(vec_raw, dtype=np.float32), connection.as_text(scope), connection.as_text(text),
                float(connection.as_text(exp)))
    except ValueError:
        return None


async def has_search_module(redis: Any, *, index_name: str) -> bool:
    """Whether the server answers Query Engine commands (Redis 8, Redis Stack, Valkey + RediSearch).

    Asked with ``FT.INFO`` of the partition's own index (``index_name``), not ``FT._LIST``: a
    namespace's Redis user may run the first on its own index names only, and never the second
    (it lists every namespace's indexes). A missing index still proves the module is there.
    """
    for _, target in await connection.primaries(redis):  # on a cluster: every master must have it
        try:
            if target is None:
                await redis.execute_command("FT.INFO", index_name)
            else:
                await redis.execute_command("FT.INFO", index_name, target_nodes=target)
        except Exception as exc:
            text = str(exc).lower()
            if "unknown command" in text or "err unknown" in text:
                return False
            if "unknown index" in text or "no such index" in text or "not found" in text:
                continue
            raise
    return True
