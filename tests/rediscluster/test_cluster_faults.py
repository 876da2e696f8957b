"""A failover and a resharding during traffic: clients see no error, and hits come back.

Each test owns a fresh 3-master + 3-replica cluster (it wounds it). Load runs
through a real proxy on a ``redis+cluster://`` URL while a master is SIGKILLed
(its replica is promoted) or while slots move between masters with
``valkey-cli --cluster reshard``. Every answer must be a 200 (misses and bypasses
are fine: the cache fails open), and afterwards every cached prompt must be a
hit again, wherever its entry now lives.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import redis
from test_cluster_cache import chat, masters_of

from llmcache import connection
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic.index_search import SearchIndex
from llmcache.testing.redis_cluster import EmbeddedCluster, find_valkey_cli

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]

NUM_PROMPTS = 60


class Load:
    """Concurrent clients replaying the prompts through the proxy until stopped."""

    def __init__(self, stack: Any, *, workers: int = 6) -> None:
        self.stack = stack
        self.statuses: Counter[int] = Counter()
        self.cache: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(workers)]

    async def _run(self, worker: int) -> None:
        i = worker
        while not self._stop.is_set():
            try:
                async with self.stack.http.post(self.stack.proxy_url + "/v1/chat/completions",
                                                json=chat(i % NUM_PROMPTS),
                                                headers={"Authorization": "Bearer sk-test-tenant-a"}) as r:
                    await r.read()
                    self.statuses[r.status] += 1
                    self.cache[r.headers.get("X-LLMCache-Status", "?")] += 1
            except Exception as exc:  # noqa: BLE001 - a transport error is a client error too
                self.errors.append(repr(exc))
            i += 7

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    async def wait_requests(self, n: int, *, timeout_s: float = 60) -> None:
        start, deadline = self.total, time.monotonic() + timeout_s
        while self.total < start + n:
            assert time.monotonic() < deadline, f"load stalled at {self.total}"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def warm(stack: Any) -> None:
    for i in range(NUM_PROMPTS):
        status, headers, _ = await stack.post("/v1/chat/completions", chat(i))
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"


async def all_hit_again(stack: Any, *, timeout_s: float = 120) -> None:
    """Every prompt is a hit (bounded wait: the breaker half-opens, the client learns the topology)."""
    deadline = time.monotonic() + timeout_s
    pending = set(range(NUM_PROMPTS))
    while pending:
        seen: Counter[str] = Counter()
        for i in sorted(pending):
            status, headers, _ = await stack.post("/v1/chat/completions", chat(i))
            assert status == 200
            seen[headers["X-LLMCache-Status"]] += 1
            if headers["X-LLMCache-Status"] == "hit":
                pending.discard(i)
        if pending:
            assert time.monotonic() < deadline, (f"{len(pending)} prompts never hit again: last round {dict(seen)}, "
                                                 f"breaker {stack.state.breaker.state}")
            await asyncio.sleep(0.2)


async def wait_replicated(c: EmbeddedCluster, *, timeout_s: float = 30) -> None:
    """Replicas have every write (WAIT on each master), so a promoted replica holds the cache."""
    for i in c.master_indexes():
        with redis.Redis(host=c.nodes[i].host, port=c.nodes[i].port) as r:
            assert r.execute_command("WAIT", 1, int(timeout_s * 1000)) >= 1


async def test_master_killed_mid_load_zero_client_errors(own_cluster: EmbeddedCluster, cluster_proxy: Any,
                                                          prefix: str) -> None:
    stack = await cluster_proxy(own_cluster.url)
    await warm(stack)
    await wait_replicated(own_cluster)
    load = Load(stack)
    await load.wait_requests(100)
    victim = own_cluster.master_indexes()[0]
    own_cluster.kill(victim)
    await asyncio.get_running_loop().run_in_executor(None, own_cluster.wait_failover, victim)
    await load.wait_requests(200)
    await load.stop()
    print("load:", dict(load.statuses), dict(load.cache))
    assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:3])
    assert load.cache["hit"] > 0
    await all_hit_again(stack)
    assert len(own_cluster.master_indexes()) == 3  # the replica took over


def _node_id(c: EmbeddedCluster, i: int) -> str:
    with redis.Redis(host=c.nodes[i].host, port=c.nodes[i].port) as r:
        return r.execute_command("CLUSTER", "MYID").decode()


def _reshard(c: EmbeddedCluster, src: int, dst: int, num_slots: int) -> subprocess.CompletedProcess[str]:
    n = c.nodes[src]
    return subprocess.run([find_valkey_cli(), "--cluster", "reshard", f"{n.host}:{n.port}",
                           "--cluster-from", _node_id(c, src), "--cluster-to", _node_id(c, dst),
                           "--cluster-slots", str(num_slots), "--cluster-yes", "--cluster-pipeline", "20"],
                          capture_output=True, text=True, timeout=300)


async def test_slots_migrated_mid_load_zero_client_errors(own_cluster: EmbeddedCluster, cluster_proxy: Any,
                                                           prefix: str) -> None:
    ks = Keyspace(prefix)
    stack = await cluster_proxy(own_cluster.url)
    await warm(stack)
    # Vector documents too: a semantic candidate must be found after its document moved.
    client = connection.connect(own_cluster.url)
    index = await SearchIndex.open(client, keyspace=ks, dim=16)
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(40, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    hashes = [f"{i:064x}" for i in range(40)]
    for h, v in zip(hashes, vecs, strict=True):
        await index.add(h, v, scope_hash="s", text="t", ttl_s=600)
    src, dst = own_cluster.master_indexes()[:2]
    before = masters_of(own_cluster, [ks.vector(h) for h in hashes])
    load = Load(stack)
    try:
        await load.wait_requests(50)
        # Move a fifth of the source's slots (with their entries, docs and bookkeeping) during the load.
        proc = await asyncio.get_running_loop().run_in_executor(None, _reshard, own_cluster, src, dst, 1000)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        await load.wait_requests(100)
    finally:
        await load.stop()
    print("load:", dict(load.statuses), dict(load.cache))
    assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:3])
    assert load.cache["hit"] > 0
    await all_hit_again(stack)
    after = masters_of(own_cluster, [ks.vector(h) for h in hashes])
    assert after[src] < before[src] and after[dst] > before[dst]  # documents did move
    try:
        deadline = time.monotonic() + 30
        for h, v in zip(hashes, vecs, strict=True):
            while True:
                found = await index.search(v, scope_hash="s", k=1, min_similarity=0.0)
                if found and found[0].key_hash == h:
                    break
                assert time.monotonic() < deadline, f"document {h[-6:]} not found after the resharding"
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()
