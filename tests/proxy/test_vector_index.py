"""Vector indexes on real Redis: Query Engine (Valkey + RediSearch) and client-side (plain Valkey)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from llmcache.errors import DependencyError
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic import cache, index_client, index_search, vector_index
from llmcache.proxy.semantic.index_search import SearchIndex

DIM = 8
KS = Keyspace(prefix="t")


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


@pytest.fixture(params=["search", "client"])
async def index(request: pytest.FixtureRequest, redis_search_url: str,
                redis_plain_url: str) -> AsyncIterator[vector_index.VectorIndex]:
    url = redis_search_url if request.param == "search" else redis_plain_url
    r = aioredis.Redis.from_url(url)
    idx = await cache.open_index(r, keyspace=KS, dim=DIM, kind="auto", client_max_entries=1000,
                                 client_reconcile_interval_s=0)
    assert idx.name == request.param  # auto picks search exactly when the module is there
    yield idx
    await idx.close()
    await r.aclose()


async def test_knn_within_scope_best_first(index: vector_index.VectorIndex) -> None:
    await index.add("k1", unit(1, 0), scope_hash="s1", text="first", ttl_s=60)
    await index.add("k2", unit(1, 0.3), scope_hash="s1", text="second", ttl_s=60)
    await index.add("k3", unit(1, 0), scope_hash="s2", text="other scope", ttl_s=60)
    await index.add("k4", unit(0, 1), scope_hash="s1", text="far away", ttl_s=60)
    got = await index.search(unit(1, 0.05), scope_hash="s1", k=5, min_similarity=0.9)
    assert [c.key_hash for c in got] == ["k1", "k2"]
    assert got[0].text == "first" and 0.99 < got[0].similarity <= 1.0001
    assert got[0].similarity >= got[1].similarity >= 0.9
    assert await index.search(unit(1, 0), scope_hash="nope", k=5, min_similarity=0.0) == []


async def test_replace_and_delete(index: vector_index.VectorIndex) -> None:
    await index.add("k1", unit(1, 0), scope_hash="s1", text="v1", ttl_s=60)
    await index.add("k1", unit(0, 1), scope_hash="s1", text="v2", ttl_s=60)
    got = await index.search(unit(0, 1), scope_hash="s1", k=5, min_similarity=0.9)
    assert [(c.key_hash, c.text) for c in got] == [("k1", "v2")]
    await index.delete("k1")
    assert await index.search(unit(0, 1), scope_hash="s1", k=5, min_similarity=0.0) == []


async def test_expired_entries_are_not_returned(index: vector_index.VectorIndex) -> None:
    await index.add("short", unit(1, 0), scope_hash="s1", text="short-lived", ttl_s=1)
    await index.add("long", unit(1, 0.1), scope_hash="s1", text="long-lived", ttl_s=60)
    await asyncio.sleep(1.3)
    got = await index.search(unit(1, 0), scope_hash="s1", k=5, min_similarity=0.0)
    assert [c.key_hash for c in got] == ["long"]
    if isinstance(index, index_client.ClientIndex):
        assert index.stats()["entries"] == 1  # the expired row left the local copy on lookup


async def test_forced_search_backend_on_plain_redis_says_what_to_do(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    try:
        with pytest.raises(DependencyError, match="--semantic-index client"):
            await cache.open_index(r, keyspace=KS, dim=DIM, kind="search", client_max_entries=10,
                                   client_reconcile_interval_s=0)
    finally:
        await r.aclose()


async def test_choice_is_logged_once(redis_search_url: str, caplog: pytest.LogCaptureFixture) -> None:
    r = aioredis.Redis.from_url(redis_search_url)
    caplog.set_level(logging.INFO, logger="llmcache.proxy.semantic.cache")
    try:
        idx = await cache.open_index(r, keyspace=KS, dim=DIM, kind="client", client_max_entries=10,
                                     client_reconcile_interval_s=0)
        await idx.close()
    finally:
        await r.aclose()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "llmcache.proxy.semantic.cache"]
    assert len(lines) == 1 and lines[0].startswith("semantic index: client (requested")


async def test_search_index_refuses_another_dimension(redis_search_url: str) -> None:
    r = aioredis.Redis.from_url(redis_search_url)
    try:
        await SearchIndex.open(r, keyspace=KS, dim=DIM)
        with pytest.raises(Exception, match=r"FT\.DROPINDEX"):
            await SearchIndex.open(r, keyspace=KS, dim=DIM * 2)
    finally:
        await r.aclose()


async def test_client_index_follows_other_pods_and_rebuilds(redis_plain_url: str) -> None:
    r1, r2 = aioredis.Redis.from_url(redis_plain_url), aioredis.Redis.from_url(redis_plain_url)
    a = await index_client.ClientIndex.open(r1, keyspace=KS, dim=DIM, reconcile_interval_s=0)
    b = await index_client.ClientIndex.open(r2, keyspace=KS, dim=DIM, reconcile_interval_s=0)
    try:
        await a.add("k1", unit(1, 0), scope_hash="s1", text="written by a", ttl_s=60)
        for _ in range(300):  # liveness bound: b applies a's event from the stream
            if b.stats()["entries"] == 1:
                break
            await asyncio.sleep(0.02)
        got = await b.search(unit(1, 0), scope_hash="s1", k=3, min_similarity=0.9)
        assert [c.text for c in got] == ["written by a"]
        await a.delete("k1")
        for _ in range(300):
            if b.stats()["entries"] == 0:
                break
            await asyncio.sleep(0.02)
        assert b.stats()["entries"] == 0
        await a.add("k2", unit(0, 1), scope_hash="s1", text="after restart", ttl_s=60)
    finally:
        await a.close()
        await b.close()
    c = await index_client.ClientIndex.open(r1, keyspace=KS, dim=DIM, reconcile_interval_s=0)
    try:
        assert c.stats()["entries"] == 1 and c.stats()["num_rebuilds"] == 1
        assert [x.key_hash for x in await c.search(unit(0, 1), scope_hash="s1", k=3, min_similarity=0.5)] == ["k2"]
    finally:
        await c.close()
        await r1.aclose()
        await r2.aclose()


async def test_client_index_memory_is_bounded_and_reported(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    idx = await index_client.ClientIndex.open(r, keyspace=KS, dim=DIM, max_entries=3, reconcile_interval_s=0)
    try:
        for i in range(5):
            await idx.add(f"k{i}", unit(1, i / 10), scope_hash="s1", text=f"t{i}", ttl_s=100 + i)
        stats = idx.stats()
        assert stats["entries"] == 3 and stats["num_evicted_local"] == 2
        assert stats["index_memory_bytes"] >= 3 * DIM * 4
        # The soonest-expiring rows left this pod's copy; their documents stay in Redis for others.
        assert await r.exists(KS.vector("k0")) == 1
        got = await idx.search(unit(1, 0), scope_hash="s1", k=5, min_similarity=0.0)
        assert sorted(c.key_hash for c in got) == ["k2", "k3", "k4"]
    finally:
        await idx.close()
        await r.aclose()


async def test_client_index_reconciles_missed_writes(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    idx = await index_client.ClientIndex.open(r, keyspace=KS, dim=DIM, reconcile_interval_s=0.2)
    try:
        # A document written without an event (a lost message): only reconciliation can find it.
        fields = vector_index.doc_fields(unit(1, 0), scope_hash="s1", text="silent", ttl_s=60)
        await r.hset(KS.vector("silent"), mapping=fields)
        for _ in range(300):
            if idx.stats()["entries"] == 1:
                break
            await asyncio.sleep(0.02)
        assert [c.text for c in await idx.search(unit(1, 0), scope_hash="s1", k=1, min_similarity=0.5)] == ["silent"]
    finally:
        await idx.close()
        await r.aclose()


async def test_foreign_or_corrupt_documents_are_ignored(redis_plain_url: str) -> None:
    r = aioredis.Redis.from_url(redis_plain_url)
    await r.hset(KS.vector("bad"), mapping={"vec": b"short", "scope": "s1", "text": "x", "exp": "9e12", "v": "1"})
    await r.hset(KS.vector("future"),
                 mapping={**vector_index.doc_fields(unit(1), scope_hash="s1", text="x", ttl_s=60), "v": "99"})
    idx = await index_client.ClientIndex.open(r, keyspace=KS, dim=DIM, reconcile_interval_s=0)
    try:
        assert idx.stats()["entries"] == 0
    finally:
        await idx.close()
        await r.aclose()


async def test_hybrid_policy_follows_the_scope_size(redis_search_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small scope is scanned (ADHOC_BF), a large one walked in HNSW batches; each finds its own
    scope's true nearest documents and no other scope's, and a scope is counted once per TTL."""
    # Scans made dear, so that 5 documents are scanned and 115 of 120 walked in batches.
    monkeypatch.setattr(index_search, "ADHOC_MS_PER_DOC", 0.1)
    r = aioredis.Redis.from_url(redis_search_url)
    idx = await SearchIndex.open(r, keyspace=Keyspace(prefix="hybrid"), dim=DIM)
    rng = np.random.default_rng(3)
    docs: dict[str, tuple[str, np.ndarray]] = {}
    for i in range(120):
        v = rng.normal(size=DIM).astype(np.float32)
        docs[f"k{i}"] = ("small" if i < 5 else "big", v / np.linalg.norm(v))
        await idx.add(f"k{i}", docs[f"k{i}"][1], scope_hash=docs[f"k{i}"][0], text=f"t{i}", ttl_s=60)
    sent: list[tuple[Any, ...]] = []
    query = idx._query

    async def recording(names: list[str], args: list[tuple[Any, ...]]) -> list[Any]:
        sent.extend(args)
        return await query(names, args)

    monkeypatch.setattr(idx, "_query", recording)
    try:
        for scope in ("small", "big"):
            for _ in range(4):
                q = rng.normal(size=DIM).astype(np.float32)
                got = await idx.search(q / np.linalg.norm(q), scope_hash=scope, k=3, min_similarity=-1.0)
                want = sorted((k for k, (s, _) in docs.items() if s == scope),
                              key=lambda k: -float(docs[k][1] @ (q / np.linalg.norm(q))))[:3]
                assert [c.key_hash for c in got] == want
    finally:
        await idx.close()
        await r.aclose()
    knn = [str(a[0]) for a in sent if "KNN" in str(a[0])]
    assert len(knn) == 8
    assert all("ADHOC_BF" in q for q in knn if "{small}" in q)
    assert all("BATCHES" in q for q in knn if "{big}" in q)
    counts = [a for a in sent if "LIMIT" in a and "KNN" not in str(a[0])]
    assert len(counts) == 2  # one count per scope, reused within SCOPE_SIZE_TTL_S


def test_hybrid_policy_cost_model() -> None:
    assert index_search.hybrid_policy(100, 1_000_000) == "ADHOC_BF"  # a rare scope: batches would be huge
    assert index_search.hybrid_policy(62_500, 1_000_000) == "BATCHES"  # a scan would read 62,500 vectors
    assert index_search.hybrid_policy(2_000, 100_000) == "ADHOC_BF"  # measured: scan 2.6 ms, batches 2.8 ms
    assert index_search.hybrid_policy(5_000, 100_000) == "BATCHES"  # measured: scan 6.4 ms, batches 1.5 ms
    assert index_search.hybrid_policy(0, 0) == "ADHOC_BF"
