"""The semantic cache facade the proxy calls: embed → KNN within the scope → verify.

::

    lookup(parts) ──embed(parts.text)──▶ vector ──KNN k, scope TAG = parts.scope_hash──▶ candidates ≥ threshold
                                                                                          │ best first
                        SemanticMatch(key_hash, similarity) ◀── first candidate the Verifier accepts

A hit names the exact-cache entry (``Keyspace().entry(key_hash)``) whose answer
may be served; promotion (writing the new prompt's own exact entry) and the
``X-LLMCache-Status: semantic-hit`` / ``X-LLMCache-Similarity`` headers are the
proxy handler's job. ``lookup`` fails open: an embedder or index error, or the
deadline (``timeout_s``, default 100 ms), is logged and returns ``None`` so the
request falls back to exact-only.

Scope (exact before semantic): ``parts.scope_hash`` — tenant, namespace, model,
output-shaping parameters, system prompt and earlier turns — must match
exactly; only ``parts.text`` (the last user message) is compared by meaning.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from llmcache.errors import ConfigError, DependencyError
from llmcache.keys import SemanticParts, short
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic import embedder as embedder_mod
from llmcache.proxy.semantic import index_client, index_search, vector_index
from llmcache.proxy.semantic.verify import Verifier
from llmcache.proxy.settings import SemanticSettings

__all__ = ["SemanticCache", "SemanticMatch", "make_embedder", "open_index", "text_hash"]

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """A verified semantic hit."""

    key_hash: str
    """Exact-cache key hash of the stored answer (``Keyspace().entry(key_hash)``)."""
    similarity: float
    """Cosine similarity in [0, 1] between the query and the stored text."""
    reason: str = "ok"
    """The verifier's verdict (``ok``, ``identical``…), or ``unverified`` with ``verify`` off."""
    score: float | None = None
    """The verifier's pair-model probability when its content stage decided, else ``None``."""
    num_refused_above: int = 0
    """Candidates more similar than this one that the verifier refused (a crowded neighbourhood)."""
    stored_text_hash: str = ""
    """SHA-256 (hex, 16 digits) of the stored text: with the request's, it names the pair being judged."""


@dataclass(slots=True)
class _Counters:
    num_lookups: int = 0
    num_hits: int = 0
    num_misses: int = 0
    num_timeouts: int = 0
    num_errors: int = 0
    num_adds: int = 0
    num_add_errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class SemanticCache:
    """Embedder + vector index + verifier behind four calls; see the module docstring."""

    def __init__(self, *, settings: SemanticSettings, embedder: embedder_mod.Embedder,
                 index: vector_index.VectorIndex, owns_embedder: bool = True) -> None:
        self._settings = settings
        self._embedder = embedder
        self._index = index
        self._owns_embedder = owns_embedder
        self._verifier = Verifier(word_embed=embedder.embed, max_chars=settings.verify_max_chars)
        self._counters = _Counters()
        self._owned_redis: Any | None = None  # a non-decoding twin of the caller's client, closed with us

    @classmethod
    async def create(cls, redis: Any, *, settings: SemanticSettings, keyspace: Keyspace,
                     embedder: embedder_mod.Embedder | None = None) -> SemanticCache:
        """Load (or take) the embedder and open the index backend; raises ``DependencyError``/``ConfigError``.

        ``redis`` is a ``redis.asyncio`` client; vectors are binary, so a client with
        ``decode_responses=True`` is mirrored by one that does not decode. Passing
        ``embedder`` shares one between caches (and lets tests inject faults); it is
        then not closed by :meth:`close`.
        """
        binary = _binary_client(redis)
        owned_redis = binary if binary is not redis else None
        redis = binary
        owns = embedder is None
        if embedder is None:
            embedder = await make_embedder(settings)
        try:
            index = await open_index(
                redis, keyspace=keyspace, dim=embedder.dim, kind=settings.index,
                client_max_entries=settings.client_index_max_entries,
                client_reconcile_interval_s=settings.client_reconcile_interval_s)
        except Exception:
            if owns:
                await embedder.close()
            if owned_redis is not None:
                await owned_redis.aclose()
            raise
        cache = cls(settings=settings, embedder=embedder, index=index, owns_embedder=owns)
        cache._owned_redis = owned_redis
        return cache

    @property
    def settings(self) -> SemanticSettings:
        return self._settings

    async def lookup(self, parts: SemanticParts, *, threshold: float,
                     timeout_s: float | None = None) -> SemanticMatch | None:
        """Best verified stored entry of ``parts.scope_hash`` with similarity ≥ ``threshold``, else ``None``.

        Never raises (fails open); ``timeout_s`` defaults to ``settings.timeout_s``.
        """
        self._counters.num_lookups += 1
        deadline_s = self._settings.timeout_s if timeout_s is None else timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                match = await self._lookup(parts, threshold)
        except TimeoutError:
            self._counters.num_timeouts += 1
            log.warning("semantic lookup for scope %s timed out after %.0f ms; exact-only for this request",
                        short(parts.scope_hash), deadline_s * 1000)
            return None
        except Exception as exc:  # noqa: BLE001 - fail open by contract
            self._counters.num_errors += 1
            log.warning("semantic lookup for scope %s failed (%s: %s); exact-only for this request",
                        short(parts.scope_hash), type(exc).__name__, exc)
            return None
        if match is None:
            self._counters.num_misses += 1
        else:
            self._counters.num_hits += 1
            log.debug("semantic hit %s (similarity %.3f) in %.1f ms", short(match.key_hash), match.similarity,
                      (time.perf_counter() - started) * 1000)
        return match

    async def _lookup(self, parts: SemanticParts, threshold: float) -> SemanticMatch | None:
        vector = (await self._embedder.embed([parts.text]))[0]
        candidates = await self._index.search(vector, scope_hash=parts.scope_hash, k=self._settings.num_candidates,
                                              min_similarity=threshold)
        ranked = sorted(candidates, key=lambda c: -c.similarity)
        if not ranked:
            return None
        if self._settings.verify:
            verdicts = await self._verifier.check_many(parts.text, [c.text for c in ranked],
                                                       similarities=[c.similarity for c in ranked])
        for i, cand in enumerate(ranked):
            similarity = min(1.0, max(0.0, cand.similarity))
            if not self._settings.verify:
                return SemanticMatch(cand.key_hash, similarity, reason="unverified", num_refused_above=i,
                                     stored_text_hash=text_hash(cand.text))
            verdict = verdicts[i]
            if not verdict.ok:
                self._counters.rejected[verdict.reason] += 1
                # The reason only: verdict.detail may quote the texts.
                log.debug("semantic candidate %s refused: %s (similarity %.3f%s)", short(cand.key_hash),
                          verdict.reason, cand.similarity,
                          "" if verdict.score is None else f", pair model {verdict.score:.2f}")
                continue
            return SemanticMatch(cand.key_hash, similarity, reason=verdict.reason, score=verdict.score,
                                 num_refused_above=i, stored_text_hash=text_hash(cand.text))
        return None

    async def add(self, parts: SemanticParts, key_hash: str, *, ttl_s: int) -> None:
        """Make the answer stored under ``key_hash`` findable by meaning for ``ttl_s`` seconds.

        Raises on embedder/Redis failure (the caller stores the exact entry first and may ignore it).
        """
        if ttl_s <= 0:
            raise ConfigError(f"semantic add needs ttl_s > 0, got {ttl_s}")
        vector = (await self._embedder.embed([parts.text]))[0]
        try:
            await self._index.add(key_hash, vector, scope_hash=parts.scope_hash, text=parts.text, ttl_s=ttl_s)
        except Exception:
            self._counters.num_add_errors += 1
            raise
        self._counters.num_adds += 1

    async def delete(self, key_hash: str) -> None:
        """Forget the vector document of ``key_hash`` (invalidation)."""
        await self._index.delete(key_hash)

    async def close(self) -> None:
        await self._index.close()
        if self._owns_embedder:
            await self._embedder.close()
        if self._owned_redis is not None:
            await self._owned_redis.aclose()
            self._owned_redis = None

    def stats(self) -> dict[str, Any]:
        """Backend name, entries, index memory (client backend), embedder cache and lookup counters.

        The threshold is not here: the one in effect depends on the CachePolicy, so the admin
        endpoint reports it from the effective config."""
        c = self._counters
        return {
            **self._index.stats(),
            **self._embedder.stats(),
            "lookups": c.num_lookups, "hits": c.num_hits, "misses": c.num_misses,
            "timeouts": c.num_timeouts, "errors": c.num_errors, "adds": c.num_adds, "add_errors": c.num_add_errors,
            "rejected_by_verifier": dict(c.rejected),
        }


def text_hash(text: str) -> str:
    """Short SHA-256 of a compared text (pairs are remembered by hash, never by text)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


async def make_embedder(settings: SemanticSettings) -> embedder_mod.Embedder:
    """The embedder ``settings`` name (local model or remote endpoint); needs no Redis.

    The proxy loads it once and passes it to every :meth:`SemanticCache.create` attempt, so
    retrying while Redis is away does not reload the model.
    """
    if settings.embedder == "remote":
        assert settings.embedder_url is not None
        return await embedder_mod.RemoteEmbedder.connect(
            url=settings.embedder_url, model=settings.embedder_model, max_batch=settings.max_batch,
            cache_entries=settings.embed_cache_entries)
    return await embedder_mod.LocalEmbedder.load(
        device=settings.device, max_batch=settings.max_batch, cache_entries=settings.embed_cache_entries,
        num_threads=settings.num_threads, backend=settings.embedder_backend)


def _binary_client(redis: Any) -> Any:
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", None)
    if not kwargs or not kwargs.get("decode_responses"):
        return redis
    try:
        from redis.asyncio import ConnectionPool, Redis
    except ImportError as exc:  # pragma: no cover - redis is a core dependency
        raise DependencyError("redis-py is required") from exc
    pool = ConnectionPool(connection_class=redis.connection_pool.connection_class,
                          **{**kwargs, "decode_responses": False})
    return Redis(connection_pool=pool)


async def open_index(redis: Any, *, keyspace: Keyspace, dim: int, kind: Literal["auto", "search", "client"],
                     client_max_entries: int, client_reconcile_interval_s: float,
                     hnsw_m: int = 16, hnsw_ef_runtime: int = 128) -> vector_index.VectorIndex:
    """Open the configured backend; ``auto`` prefers the Query Engine. Logs the choice once."""
    search_ok = await vector_index.has_search_module(redis, index_name=keyspace.vector_index)
    if kind == "search" and not search_ok:
        raise DependencyError(
            "semantic index 'search' needs the Redis Query Engine, and this Redis has no search module: "
            "start Redis with it (`llmcache redis`, redis:8, redis-stack-server) or set "
            "`--semantic-index client` (or auto)")
    if kind == "search" or (kind == "auto" and search_ok):
        index: vector_index.VectorIndex = await index_search.SearchIndex.open(redis, keyspace=keyspace, dim=dim,
                                                                 hnsw_m=hnsw_m, ef_runtime=hnsw_ef_runtime)
        log.info("semantic index: search (Redis Query Engine HNSW COSINE, index %s, %d dims)",
                 ",".join(index.index_names), dim)  # type: ignore[attr-defined]
    else:
        index = await index_client.ClientIndex.open(redis, keyspace=keyspace, dim=dim, max_entries=client_max_entries,
                                                    reconcile_interval_s=client_reconcile_interval_s)
        reason = "requested" if kind == "client" else "Redis has no search module"
        log.info("semantic index: client (%s; vectors in Redis, in-process numpy index of %d entries, max %d)",
                 reason, index.stats()["entries"], client_max_entries)
    return index
