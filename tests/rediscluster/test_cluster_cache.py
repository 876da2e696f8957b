"""The cache on a real 3-master Redis Cluster: every path a sidecar, the operator and the CLI take.

Each test uses its own key prefix on the shared cluster. Assertions look into the
cluster itself: which master holds what, and that nothing was lost or left behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import redis
from proxy_helpers import CHAT
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from llmcache import connection, stats
from llmcache.keyspace import Keyspace, shard_of
from llmcache.operator import eviction, publish
from llmcache.policy import PolicyDocument
from llmcache.proxy.exact import Entry, RedisExactStore
from llmcache.proxy.policy_watch import PolicyWatcher, WatchSettings
from llmcache.proxy.semantic.index_search import SearchIndex
from llmcache.proxy.singleflight import RedisLease
from llmcache.testing.redis_cluster import EmbeddedCluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def chat(i: int, *, stream: bool = False) -> dict[str, Any]:
    body = {**CHAT, "messages": [{"role": "user", "content": f"question number {i}: what is {i} squared?"}]}
    if stream:
        body["stream"] = True
    return body


def masters_of(c: EmbeddedCluster, keys: list[str]) -> Counter[int]:
    """How many of ``keys`` each live master holds (asked node by node, not through the router)."""
    held: Counter[int] = Counter()
    for i in c.master_indexes():
        with redis.Redis(host=c.nodes[i].host, port=c.nodes[i].port) as r:
            for key in keys:
                try:
                    if r.exists(key):
                        held[i] += 1
                except redis.exceptions.ResponseError:  # MOVED: another master's key
                    pass
    return held


async def test_cluster_url_connects_and_refuses_a_database_number(cluster: EmbeddedCluster) -> None:
    client = connection.connect(cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        assert await client.ping()
        assert len(await connection.primaries(client)) == 3
    finally:
        await client.aclose()
    with pytest.raises(Exception, match="only database 0"):
        connection.connect(cluster.url + "/3")


async def test_every_key_of_an_entry_shares_one_slot() -> None:
    ks = Keyspace("x")
    for h in (f"{i:064x}" for i in range(50)):
        for part in (ks, ks.for_partition("team-a")):  # the partition part of a name carries no hash tag
            keys = (part.entry(h), part.vector(h), part.lease(h),
                    *(part.group_of("ns/p", kind, h) for kind in ("lru", "lfu", "ctime", "size")))
            assert len({key_slot(k.encode()) for k in keys}) == 1
    assert len({shard_of(f"{i:064x}") for i in range(5000)}) == 256


async def test_exact_and_streaming_hits_through_a_cluster(cluster: EmbeddedCluster, cluster_proxy: Any,
                                                          prefix: str) -> None:
    stack = await cluster_proxy(cluster.url)
    for i in range(40):
        status, headers, _ = await stack.post("/v1/chat/completions", chat(i))
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    hits = 0
    for i in range(40):
        status, headers, body = await stack.post("/v1/chat/completions", chat(i))
        assert status == 200
        hits += headers["X-LLMCache-Status"] == "hit"
        assert json.loads(body)["choices"][0]["message"]["content"]
    assert hits == 40
    # The entries are spread over all three masters, each with its bookkeeping beside it.
    client = connection.connect(cluster.url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=Keyspace(prefix).entry_pattern)]
        assert len(keys) == 40
        assert len(masters_of(cluster, keys)) == 3
        # Streaming: the recorded JSON entry replays as SSE; a streamed miss is stored and served.
        status, headers, body = await stack.post("/v1/chat/completions", chat(1, stream=True))
        assert status == 200 and headers["X-LLMCache-Status"] == "hit" and b"data: [DONE]" in body
        status, headers, _ = await stack.post("/v1/chat/completions", chat(100, stream=True))
        assert headers["X-LLMCache-Status"] == "miss"
        status, headers, body = await stack.post("/v1/chat/completions", chat(100, stream=True))
        assert headers["X-LLMCache-Status"] == "hit" and b"data: [DONE]" in body
        assert stack.state.breaker.num_failures_total == 0
    finally:
        await client.aclose()


async def test_stats_and_invalidation_on_a_cluster(cluster: EmbeddedCluster, cluster_proxy: Any, prefix: str) -> None:
    stack = await cluster_proxy(cluster.url)
    for i in range(30):
        await stack.post("/v1/chat/completions", chat(i))
        await stack.post("/v1/chat/completions", chat(i))
    await stack.state.stats.flush(stack.state.redis, keyspace=stack.state.keyspace)
    rows = await stats._read(cluster.url, prefix)  # what `llmcache stats --redis-url redis+cluster://…` prints
    assert sum(r["hit"] for r in rows) == 30 and sum(r["miss"] for r in rows) == 30
    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"all": True},
                               headers={"Authorization": "Bearer admin-secret"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["deleted"] == 30
    client = connection.connect(cluster.url)
    try:
        assert [k async for k in client.scan_iter(match=Keyspace(prefix).entry_pattern)] == []
        assert await eviction.group_count(client, Keyspace(prefix), "_default") == 0
    finally:
        await client.aclose()
    _, headers, _ = await stack.post("/v1/chat/completions", chat(3))
    assert headers["X-LLMCache-Status"] == "miss"


async def test_single_flight_lease_on_a_cluster(cluster: EmbeddedCluster, prefix: str) -> None:
    client = connection.connect(cluster.url)
    ks = Keyspace(prefix)
    a, b = RedisLease(client, keyspace=ks, owner="pod-a"), RedisLease(client, keyspace=ks, owner="pod-b")
    try:
        for h in (f"{i:064x}" for i in range(20)):  # leases on every master
            assert await a.acquire(h, ttl_s=10)
            assert not await b.acquire(h, ttl_s=10) and await b.held(h)
            await b.release(h)  # not the owner: the lease stays
            assert await a.held(h)
            await a.release(h)
            assert not await a.held(h) and await b.acquire(h, ttl_s=10)
    finally:
        await client.aclose()


async def test_eviction_shard_by_shard_across_masters(cluster: EmbeddedCluster, prefix: str) -> None:
    client = connection.connect(cluster.url)
    ks = Keyspace(prefix)
    store = RedisExactStore(client, keyspace=ks)
    entry = Entry(route="/v1/chat/completions", model="m", created_s=time.time(), body=json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}))
    group = "ns/big"
    try:
        hashes = [f"{i:064x}" for i in range(300)]
        for h in hashes:
            await store.put(h, entry, ttl_s=300, group=group)
        hot = hashes[:20]
        await asyncio.sleep(0.01)
        for h in hot:  # recently used: LRU keeps them
            assert await store.get(h, group=group) is not None
        result = await eviction.enforce_limits(client, ks, group, eviction.EvictionLimits(max_entries=100))
        assert result.num_evicted == 200 and result.num_entries == 100
        left = [h for h in hashes if await client.exists(ks.entry(h))]
        assert len(left) == 100 and set(hot) <= set(left)
        assert await eviction.group_count(client, ks, group) == 100
        assert len(masters_of(cluster, [ks.entry(h) for h in left])) == 3
        usage = await eviction.group_usage(client, ks, group)
        assert usage[0] == 100 and usage[1] > 0
        assert await eviction.purge_group(client, ks, group) == 100
        assert not any([await client.exists(ks.entry(h)) for h in left])
    finally:
        await client.aclose()


async def test_policy_change_reaches_watchers_on_every_node(cluster: EmbeddedCluster, prefix: str) -> None:
    ks = Keyspace(prefix)
    operator_client = connection.connect(cluster.url)
    seen: list[list[str | None]] = [[] for _ in range(6)]
    watchers = []
    clients = []
    try:
        for i in range(6):  # several sidecars; their pub/sub connections land on random nodes
            c = connection.connect(cluster.url)
            clients.append(c)
            await c.ping()
            w = PolicyWatcher(c, keyspace=ks, namespace="team", pod_name=f"pod-{i}", labels_file=None,
                              on_change=lambda doc, i=i: seen[i].append(doc.name if doc else None),
                              settings=WatchSettings(poll_interval_s=0.2))
            await w.start()
            watchers.append(w)
        deadline = time.monotonic() + 20
        while not all(w.subscribed for w in watchers):
            assert time.monotonic() < deadline, "watchers did not subscribe"
            await asyncio.sleep(0.05)
        doc = PolicyDocument.from_json(json.dumps({"schema": 1, "namespace": "team", "name": "chat",
                                                   "generation": 1, "spec": {}}))
        await publish.publish_policy(operator_client, ks, doc)
        while not all(s == ["chat"] for s in seen):
            assert time.monotonic() < deadline, f"not every watcher applied the policy: {seen}"
            await asyncio.sleep(0.05)
    finally:
        for w in watchers:
            await w.stop()
        for c in clients:
            await c.aclose()
        await operator_client.aclose()


async def test_semantic_search_finds_entries_on_every_master(cluster: EmbeddedCluster, prefix: str) -> None:
    client = connection.connect(cluster.url)
    ks = Keyspace(prefix)
    dim = 32
    rng = np.random.default_rng(7)
    try:
        index = await SearchIndex.open(client, keyspace=ks, dim=dim)
        assert len(index.index_names) == 3  # one per master, each named into its own slots
        vecs = rng.normal(size=(60, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        hashes = [f"{i:064x}" for i in range(60)]
        for h, v in zip(hashes, vecs, strict=True):
            await index.add(h, v, scope_hash="s1", text=f"t-{h[-4:]}", ttl_s=300)
        assert len(masters_of(cluster, [ks.vector(h) for h in hashes])) == 3
        for h, v in zip(hashes, vecs, strict=True):
            found = await _search_until(index, v)
            assert found[0].key_hash == h and found[0].similarity > 0.999
        assert await index.search(vecs[0], scope_hash="other", k=3, min_similarity=0.0) == []
        # A second process opening the index reuses the same names.
        again = await SearchIndex.open(client, keyspace=ks, dim=dim)
        assert sorted(again.index_names) == sorted(index.index_names)
    finally:
        await client.aclose()


async def _search_until(index: SearchIndex, v: np.ndarray, *, timeout_s: float = 10.0) -> list[Any]:
    # RediSearch indexes a new hash asynchronously on some builds: wait for it, bounded.
    deadline = time.monotonic() + timeout_s
    while True:
        found = await index.search(v, scope_hash="s1", k=3, min_similarity=0.0)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


PAIRS = [("How do I reverse a linked list in Python?", "How can I reverse a linked list in Python?"),
         ("What is the capital city of France?", "Which city is the capital of France?"),
         ("How do I sort a dictionary by value in Python?", "How can I sort a Python dictionary by its values?"),
         ("What does HTTP status code 404 mean?", "What is the meaning of the HTTP 404 status code?"),
         ("How many bytes are in a kilobyte?", "How many bytes does a kilobyte have?"),
         ("How do I undo the last git commit?", "How can I undo my last commit in git?")]


async def test_semantic_hits_through_a_proxy_on_a_cluster(cluster: EmbeddedCluster, cluster_proxy: Any,
                                                          prefix: str) -> None:
    """The real embedder and verifier; each paraphrase must find its original on whichever master holds it."""
    stack = await cluster_proxy(cluster.url, cache_mode="both", semantic_timeout_s=5.0)
    if stack.state.semantic is None:
        pytest.fail("the semantic cache did not start on the cluster (see the log)")
    for original, _ in PAIRS:
        _, headers, _ = await stack.post("/v1/chat/completions", {**CHAT, "messages": [
            {"role": "user", "content": original}]})
        assert headers["X-LLMCache-Status"] == "miss"
    client = connection.connect(cluster.url)
    try:
        docs = [k.decode() async for k in client.scan_iter(match=Keyspace(prefix).vector_prefix + "*")]
        assert len(docs) == len(PAIRS)
        assert len(masters_of(cluster, docs)) >= 2  # the entries live on more than one master
    finally:
        await client.aclose()
    statuses = []
    for _, paraphrase in PAIRS:
        status, headers, _ = await stack.post("/v1/chat/completions", {**CHAT, "messages": [
            {"role": "user", "content": paraphrase}]})
        assert status == 200
        statuses.append(headers["X-LLMCache-Status"])
    assert statuses == ["semantic-hit"] * len(PAIRS), statuses
    assert stack.state.semantic.stats()["index_backend"] == "search"
