"""Redis Query Engine backend of the semantic ``VectorIndex``: HNSW, COSINE, TAG pre-filter on the scope.

One index (``Keyspace().vector_index``) over every HASH under
``Keyspace().vector_prefix``; a query is a hybrid KNN restricted to one scope::

    (@scope:{<scope hash>})=>[KNN k @vec $blob AS dist]     dist = 1 − cosine

Works on Redis 8, Redis Stack and Valkey with the RediSearch module. Expired
hashes leave the index with their key, so TTL needs no extra work here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmcache.keyspace import Keyspace
from llmcache.proxy.vector_index import Candidate, IndexError_, doc_fields

__all__ = ["SearchIndex"]

log = logging.getLogger(__name__)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _get(mapping: Mapping[Any, Any], key: str) -> Any:
    return mapping.get(key, mapping.get(key.encode()))


class SearchIndex:
    """KNN in Redis itself; nothing is held in the process."""

    name = "search"

    def __init__(self, redis: Any, *, keyspace: Keyspace, dim: int, ef_runtime: int) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._dim = dim
        self._ef_runtime = ef_runtime
        self._num_docs: int | None = None
        self._num_docs_at = 0.0
        self._refresh: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, redis: Any, *, keyspace: Keyspace, dim: int, hnsw_m: int = 16, ef_runtime: int = 64) -> SearchIndex:
        """Create the index if it does not exist (idempotent across pods); refuse one with another dimension."""
        self = cls(redis, keyspace=keyspace, dim=dim, ef_runtime=ef_runtime)
        await self._ensure_index(hnsw_m)
        await self._refresh_count()
        return self

    async def _ensure_index(self, hnsw_m: int) -> None:
        name = self._keyspace.vector_index
        try:
            await self._redis.execute_command(
                "FT.CREATE", name, "ON", "HASH", "PREFIX", 1, self._keyspace.vector_prefix,
                "SCHEMA", "scope", "TAG", "vec", "VECTOR", "HNSW", 8,
                "TYPE", "FLOAT32", "DIM", self._dim, "DISTANCE_METRIC", "COSINE", "M", hnsw_m)
            log.info("created vector index %s (%d dims)", name, self._dim)
        except Exception as exc:  # noqa: BLE001 - "already exists" is the normal multi-pod case
            if "already exists" not in str(exc).lower():
                raise IndexError_(f"FT.CREATE {name} failed: {exc}") from exc
            existing = await self._existing_dim()
            if existing is not None and existing != self._dim:
                raise IndexError_(
                    f"vector index {name} was created for {existing}-dimensional vectors but the embedder gives "
                    f"{self._dim}: use another --key-prefix or drop it with `FT.DROPINDEX {name} DD`") from exc

    async def _existing_dim(self) -> int | None:
        try:
            info = await self._redis.execute_command("FT.INFO", self._keyspace.vector_index)
        except Exception:  # noqa: BLE001 - informational only
            return None
        attrs = _get(info, "attributes") if isinstance(info, Mapping) else _pairs(info).get("attributes")
        for attr in attrs or []:
            fields = attr if isinstance(attr, Mapping) else _pairs(attr)
            fields = {_s(k).lower(): v for k, v in fields.items()}
            if "dim" in fields:
                return int(_s(fields["dim"]))
        return None

    async def search(self, vector: np.ndarray, *, scope_hash: str, k: int, min_similarity: float) -> list[Candidate]:
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        query = f"(@scope:{{{scope_hash}}})=>[KNN {k} @vec $blob EF_RUNTIME {self._ef_runtime} AS dist]"
        try:
            raw = await self._redis.execute_command(
                "FT.SEARCH", self._keyspace.vector_index, query, "PARAMS", 2, "blob", blob,
                "RETURN", 3, "dist", "text", "exp", "SORTBY", "dist", "LIMIT", 0, k, "DIALECT", 2)
        except Exception as exc:
            raise IndexError_(f"FT.SEARCH on {self._keyspace.vector_index} failed: {exc}") from exc
        now = time.time()
        prefix_len = len(self._keyspace.vector_prefix)
        out = []
        for doc_id, fields in _results(raw):
            try:
                similarity = 1.0 - float(_s(fields["dist"]))
                exp = float(_s(fields.get("exp", "inf")))
            except (KeyError, ValueError):
                continue
            if similarity < min_similarity or exp <= now or "text" not in fields:
                continue
            out.append(Candidate(doc_id[prefix_len:], similarity, _s(fields["text"])))
        return out

    async def add(self, key_hash: str, vector: np.ndarray, *, scope_hash: str, text: str, ttl_s: int) -> None:
        key = self._keyspace.vector(key_hash)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=doc_fields(vector, scope_hash=scope_hash, text=text, ttl_s=ttl_s))
            pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()

    async def delete(self, key_hash: str) -> None:
        await self._redis.delete(self._keyspace.vector(key_hash))

    async def _refresh_count(self) -> None:
        try:
            info = await self._redis.execute_command("FT.INFO", self._keyspace.vector_index)
            fields = info if isinstance(info, Mapping) else _pairs(info)
            self._num_docs = int(float(_s(_get(fields, "num_docs"))))
        except Exception:  # noqa: BLE001 - stats only
            pass
        self._num_docs_at = time.monotonic()

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()

    def stats(self) -> dict[str, Any]:
        # stats() is synchronous: serve the last FT.INFO count and refresh it in the background.
        if time.monotonic() - self._num_docs_at > 5 and (self._refresh is None or self._refresh.done()):
            try:
                self._refresh = asyncio.get_running_loop().create_task(self._refresh_count())
            except RuntimeError:
                pass
        return {"index_backend": self.name, "index_name": self._keyspace.vector_index,
                "entries": self._num_docs, "index_memory_bytes": None}


def _pairs(flat: Any) -> dict[str, Any]:
    items = list(flat or [])
    return {_s(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _results(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalise FT.SEARCH output of RESP2 (flat list) and RESP3 (map) to ``[(doc id, fields)]``."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(raw, Mapping):
        for item in _get(raw, "results") or []:
            attrs = _get(item, "extra_attributes") or {}
            out.append((_s(_get(item, "id")), {_s(k): v for k, v in attrs.items()}))
        return out
    items = list(raw or [])[1:]
    for i in range(0, len(items) - 1, 2):
        out.append((_s(items[i]), _pairs(items[i + 1])))
    return out
