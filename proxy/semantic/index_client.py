"""Client-side backend of the semantic ``VectorIndex`` for plain Redis/Valkey (no search module).

Vectors live in Redis (same HASH documents as the Query Engine backend), so
any pod can rebuild; each pod keeps an in-process numpy copy to search::

    start:    id₀ = last id of {p}:vevents;  SCAN {p}:v:* → rows
    steady:   XREAD {p}:vevents from id₀ every poll_interval_s → add / delete rows (other pods' writes)
    a read fails, or Redis's run_id changed (it restarted): full rebuild, new id₀
    every reconcile_interval_s: full SCAN rebuild, swapped in (repairs a trimmed stream, lost events)
    lookup:   dot products over the scope's live rows → top k → HMGET their documents
              (a missing or expired document drops the row: TTL needs no event)

Memory is bounded by ``max_entries`` rows (``dim × 4`` bytes each plus
bookkeeping); beyond it the row expiring soonest leaves the local copy (the
document stays in Redis) and ``num_evicted_local`` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import numpy as np
import redis.exceptions

from llmcache.connection import as_text
from llmcache.keys import short
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic.vector_index import Candidate, IndexError_, doc_fields, parse_doc

__all__ = ["EVENTS_MAXLEN", "ClientIndex"]

log = logging.getLogger(__name__)

#: Approximate length the event stream is trimmed to; a pod that falls further behind reconciles.
EVENTS_MAXLEN = 100_000
#: How often the follower asks Redis for its run_id (s): a changed one means a restart, so rebuild.
RUN_ID_CHECK_INTERVAL_S = 5.0
#: Above this many rows the dot products run in a worker thread instead of on the event loop.
_THREAD_ABOVE_ROWS = 20_000
_FIELDS = ("vec", "scope", "text", "exp", "v")
_ROW_OVERHEAD_BYTES = 200  # dict entry + key string, measured roughly with sys.getsizeof




class _Rows:
    """Fixed-width row storage: vectors, expiry, scope ids; a free list reuses deleted rows."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.vecs = np.zeros((capacity, dim), dtype=np.float32)
        self.exp = np.zeros(capacity, dtype=np.float64)
        self.scope = np.full(capacity, -1, dtype=np.int64)
        self.keys: list[str | None] = [None] * capacity
        self.row_of: dict[str, int] = {}
        self.free: list[int] = []
        self.high = 0  # rows [0, high) have been used at least once
        self.scope_ids: dict[str, int] = {}
        self.scope_refs: dict[int, int] = {}
        self._next_scope = 0

    def __len__(self) -> int:
        return len(self.row_of)

    def _grow(self) -> None:
        cap = self.vecs.shape[0] * 2
        for name in ("vecs", "exp", "scope"):
            old = getattr(self, name)
            new = np.full((cap, *old.shape[1:]), -1 if name == "scope" else 0, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.keys.extend([None] * (cap - len(self.keys)))

    def put(self, key_hash: str, vec: np.ndarray, scope_hash: str, exp_s: float) -> None:
        row = self.row_of.get(key_hash)
        if row is not None:
            self._release_scope(int(self.scope[row]))
        elif self.free:
            row = self.free.pop()
        else:
            if self.high == self.vecs.shape[0]:
                self._grow()
            row = self.high
            self.high += 1
        sid = self.scope_ids.get(scope_hash)
        if sid is None:
            sid = self.scope_ids[scope_hash] = self._next_scope
            self._next_scope += 1
        self.scope_refs[sid] = self.scope_refs.get(sid, 0) + 1
        self.vecs[row] = vec
        self.exp[row] = exp_s
        self.scope[row] = sid
        self.keys[row] = key_hash
        self.row_of[key_hash] = row

    def remove(self, key_hash: str) -> bool:
        row = self.row_of.pop(key_hash, None)
        if row is None:
            return False
        self._release_scope(int(self.scope[row]))
        self.scope[row] = -1
        self.exp[row] = 0
        self.keys[row] = None
        self.free.append(row)
        return True

    def _release_scope(self, sid: int) -> None:
        refs = self.scope_refs.get(sid, 0) - 1
        if refs > 0:
            self.scope_refs[sid] = refs
            return
        self.scope_refs.pop(sid, None)
        for name, value in list(self.scope_ids.items()):
            if value == sid:
                del self.scope_ids[name]
                break

    def soonest_expiring(self) -> str | None:
        live = np.flatnonzero(self.scope[: self.high] >= 0)
        if live.size == 0:
            return None
        return self.keys[int(live[np.argmin(self.exp[live])])]

    def memory_bytes(self) -> int:
        return int(self.vecs.nbytes + self.exp.nbytes + self.scope.nbytes
                   + 8 * len(self.keys) + _ROW_OVERHEAD_BYTES * len(self.row_of))


class ClientIndex:
    """numpy dot-product KNN over a local copy of the vectors stored in Redis."""

    name = "client"

    def __init__(self, redis: Any, *, keyspace: Keyspace, dim: int, max_entries: int, reconcile_interval_s: float,
                 poll_interval_s: float = 0.05) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._dim = dim
        self._max_entries = max_entries
        self._reconcile_interval_s = reconcile_interval_s
        self._rows = _Rows(dim)
        self._last_event_id = "0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._instance_id = uuid.uuid4().hex[:16]
        self._poll_interval_s = poll_interval_s
        self.num_evicted_local = 0
        self.num_dropped_expired = 0
        self.num_rebuilds = 0
        self.num_events_applied = 0

    @classmethod
    async def open(cls, redis: Any, *, keyspace: Keyspace, dim: int, max_entries: int = 200_000,
                   reconcile_interval_s: float = 300.0) -> ClientIndex:
        """Rebuild from Redis, then follow other pods' writes in the background."""
        self = cls(redis, keyspace=keyspace, dim=dim, max_entries=max_entries,
                   reconcile_interval_s=reconcile_interval_s)
        await self.rebuild()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._follow(), name="client-index-follow"))
        if reconcile_interval_s > 0:
            self._tasks.append(loop.create_task(self._reconcile_forever(), name="client-index-reconcile"))
        return self

    # -- rebuild / sync -------------------------------------------------------------

    async def rebuild(self) -> None:
        """Replace the local copy with every live document in Redis (events after the snapshot are replayed)."""
        last = await self._redis.xrevrange(self._keyspace.vector_events, count=1)
        start_id = as_text(last[0][0]) if last else "0-0"
        rows = _Rows(self._dim)
        keys: list[str] = []
        try:
            async for key in self._redis.scan_iter(match=self._keyspace.vector_prefix + "*", count=1000):
                keys.append(as_text(key))
                if len(keys) >= 1000:
                    await self._load_into(rows, keys)
                    keys = []
        except redis.exceptions.NoPermissionError:
            # A namespace's Redis user may not SCAN (it would list every namespace's keys): the
            # partition's own event stream names its documents instead, as far back as it reaches.
            keys = await self._streamed_keys()
        if keys:
            await self._load_into(rows, keys)
        self._rows = rows
        # Replaying from the snapshot id is idempotent: adds re-read the document, deletes remove.
        self._last_event_id = start_id
        self.num_rebuilds += 1
        log.info("client vector index rebuilt: %d entries, %d bytes", len(rows), rows.memory_bytes())

    async def _streamed_keys(self) -> list[str]:
        """The documents the partition's event stream says exist (added, not deleted since), oldest first."""
        live: dict[str, None] = {}
        start = "-"
        while True:
            page = await self._redis.xrange(self._keyspace.vector_events, min=start, count=1000)
            for event_id, fields in page:
                event = {as_text(k): as_text(v) for k, v in fields.items()}
                if event.get("op") == "add":
                    live[event.get("k", "")] = None
                else:
                    live.pop(event.get("k", ""), None)
                start = "(" + as_text(event_id)
            if len(page) < 1000:
                return [self._keyspace.vector(k) for k in live if k]

    async def _load_into(self, rows: _Rows, keys: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, *_FIELDS)
            results = await pipe.execute()
        now = time.time()
        for key, raw in zip(keys, results, strict=True):
            doc = parse_doc(raw, dim=self._dim)
            if doc is None or doc[3] <= now:
                continue
            self._put(rows, self._keyspace.key_hash_of(key), doc[0], doc[1], doc[3])

    def _put(self, rows: _Rows, key_hash: str, vec: np.ndarray, scope_hash: str, exp_s: float) -> None:
        if key_hash not in rows.row_of and len(rows) >= self._max_entries:
            victim = rows.soonest_expiring()
            if victim is not None:
                rows.remove(victim)
                self.num_evicted_local += 1
                if self.num_evicted_local == 1:
                    log.warning("client vector index is full (%d entries): dropping the entries expiring soonest "
                                "from this pod's copy; raise client_index_max_entries or use the search backend",
                                self._max_entries)
        rows.put(key_hash, vec, scope_hash, exp_s)

    async def _follow(self) -> None:
        # Short non-blocking reads and an interruptible wait: cancelling a blocking XREAD inside
        # redis-py can leave the task stuck, so close() asks this loop to stop instead.
        # After a failed read Redis may have restarted (empty, or from an older snapshot): events
        # were lost and the stream position may point past the new stream's ids, so the first
        # read that works again is a full rebuild, which also resets the position.
        # The pool reconnects silently, so a restart is also recognised by the server's run_id,
        # checked every RUN_ID_CHECK_INTERVAL_S.
        stream = self._keyspace.vector_events
        stale = False
        run_id: str | None = None
        checked_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if run_id != "" and (run_id is None or time.monotonic() - checked_at >= RUN_ID_CHECK_INTERVAL_S):
                    checked_at = time.monotonic()
                    try:
                        now_id = str((await self._redis.info("server")).get("run_id", ""))
                    except redis.exceptions.NoPermissionError:
                        now_id = ""  # a namespace's user may not run INFO: failed reads still rebuild
                    if run_id is not None and now_id != run_id:
                        log.warning("client vector index: Redis restarted (new run_id); rebuilding")
                        stale = True
                    run_id = now_id
                if stale:
                    await self.rebuild()
                    stale = False
                reply = await self._redis.xread({stream: self._last_event_id}, count=500)
                await self._apply(reply)
                if reply:
                    continue
            except Exception as exc:  # noqa: BLE001 - keep following; the rebuild repairs gaps
                if not stale:
                    log.warning("client vector index: event stream read failed (%s); rebuilding when Redis "
                                "answers again", type(exc).__name__)
                stale = True
                await self._sleep(1.0)
                continue
            await self._sleep(self._poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):  # the wait ended: time to work again
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _apply(self, reply: Any) -> None:
        entries: list[Any] = []
        if isinstance(reply, dict):
            for value in reply.values():  # RESP3: {stream: [[(id, fields), …]]}
                entries.extend(value[0] if value else [])
        else:
            for _, stream_entries in reply or []:
                entries.extend(stream_entries)
        if not entries:
            return
        adds: list[str] = []
        for event_id, fields in entries:
            self._last_event_id = as_text(event_id)
            f = {as_text(k): as_text(v) for k, v in fields.items()}
            if f.get("src") == self._instance_id:
                continue  # this process's own write, already applied
            key_hash, op = f.get("k"), f.get("op")
            if not key_hash:
                continue
            if op == "del":
                self._rows.remove(key_hash)
                if key_hash in adds:
                    adds.remove(key_hash)
            elif op == "add":
                adds.append(key_hash)
            self.num_events_applied += 1
        if adds:
            await self._load_into(self._rows, [self._keyspace.vector(k) for k in dict.fromkeys(adds)])

    async def _reconcile_forever(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self._reconcile_interval_s)
            if self._stop.is_set():
                return
            try:
                await self.rebuild()
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("client vector index: reconciliation failed (%s)", type(exc).__name__)

    # -- VectorIndex -------------------------------------------------------------------

    async def search(self, vector: np.ndarray, *, scope_hash: str, k: int, min_similarity: float) -> list[Candidate]:
        rows = self._rows
        sid = rows.scope_ids.get(scope_hash)
        if sid is None:
            return []
        q = np.asarray(vector, dtype=np.float32)
        n = rows.high
        if n > _THREAD_ABOVE_ROWS:
            picked = await asyncio.to_thread(_top_k, rows, q, sid, n, k, min_similarity, time.time())
        else:
            picked = _top_k(rows, q, sid, n, k, min_similarity, time.time())
        expired, best = picked
        for key_hash in expired:
            rows.remove(key_hash)
            self.num_dropped_expired += 1
        if not best:
            return []
        keys = [self._keyspace.vector(key_hash) for key_hash, _ in best]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "scope", "text", "exp")
                docs = await pipe.execute()
        except Exception as exc:
            raise IndexError_(f"reading vector documents failed: {exc}") from exc
        now = time.time()
        out = []
        for (key_hash, similarity), raw in zip(best, docs, strict=True):
            scope, text, exp = raw
            if scope is None or text is None or exp is None or float(as_text(exp)) <= now:
                # Gone from Redis (TTL, eviction, another pod's delete): forget the row.
                if rows.remove(key_hash):
                    self.num_dropped_expired += 1
                continue
            if as_text(scope) != scope_hash:  # a row rewritten meanwhile: never serve across scopes
                continue
            out.append(Candidate(key_hash, similarity, as_text(text)))
        return out

    async def add(self, key_hash: str, vector: np.ndarray, *, scope_hash: str, text: str, ttl_s: int) -> None:
        key = self._keyspace.vector(key_hash)
        fields = doc_fields(vector, scope_hash=scope_hash, text=text, ttl_s=ttl_s)
        # Document first, then the event (two slots on a cluster, so no MULTI): a reader woken by
        # the event always finds the document.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()
        await self._redis.xadd(self._keyspace.vector_events, {"op": "add", "k": key_hash, "src": self._instance_id},
                               maxlen=EVENTS_MAXLEN, approximate=True)
        self._put(self._rows, key_hash, np.asarray(vector, dtype=np.float32), scope_hash, float(fields["exp"]))
        log.debug("client vector index: added %s", short(key_hash))

    async def delete(self, key_hash: str) -> None:
        await self._redis.delete(self._keyspace.vector(key_hash))
        await self._redis.xadd(self._keyspace.vector_events, {"op": "del", "k": key_hash, "src": self._instance_id},
                               maxlen=EVENTS_MAXLEN, approximate=True)
        self._rows.remove(key_hash)

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                task.cancel()
            except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - shutting down
                log.debug("client index task ended with %s while closing", type(exc).__name__)
        self._tasks.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "index_backend": self.name,
            "entries": len(self._rows),
            "index_memory_bytes": self._rows.memory_bytes(),
            "max_entries": self._max_entries,
            "num_evicted_local": self.num_evicted_local,
            "num_dropped_expired": self.num_dropped_expired,
            "num_rebuilds": self.num_rebuilds,
            "num_events_applied": self.num_events_applied,
        }


def _top_k(rows: _Rows, q: np.ndarray, sid: int, n: int, k: int, min_similarity: float,
           now_s: float) -> tuple[list[str], list[tuple[str, float]]]:
    """Expired rows of the scope, and the best ``k`` live rows with similarity ≥ ``min_similarity``."""
    in_scope = np.flatnonzero(rows.scope[:n] == sid)
    if in_scope.size == 0:
        return [], []
    exp = rows.exp[in_scope]
    expired = [rows.keys[int(r)] for r in in_scope[exp <= now_s]]
    live = in_scope[exp > now_s]
    # Gather only when the scope is a small part of the index; else one matvec over everything.
    sims = rows.vecs[live] @ q if live.size * 4 < n else (rows.vecs[:n] @ q)[live]
    keep = sims >= min_similarity
    live, sims = live[keep], sims[keep]
    if live.size > k:
        part = np.argpartition(-sims, k - 1)[:k]
        live, sims = live[part], sims[part]
    order = np.argsort(-sims)
    return [k_ for k_ in expired if k_ is not None], [(rows.keys[int(live[i])], float(sims[i])) for i in order]  # type: ignore[misc]
