"""Error-bounded semantic caching on a real 3-master Redis Cluster: two sidecars learn and serve together."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from proxy_helpers import Stack
from redis.crc import key_slot

from llmcache import connection
from llmcache import errorbound as eb
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.testing.redis_cluster import EmbeddedCluster
from llmcache.testing.stub_upstream import StubConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BASE = "How do I reverse a linked list in Python?"
PARA = "How can I reverse a linked list in Python?"
ANSWER = "Walk the list once, pointing each node's next at the previous node."
DELTA = 0.3
CHAT = "/v1/chat/completions"


def body(text: str) -> dict[str, Any]:
    return {"model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": text}]}


def tenant(i: int) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-tenant-{i}"}


async def test_two_sidecars_learn_and_serve_through_a_cluster(cluster: EmbeddedCluster, cluster_proxy: Any,
                                                              prefix: str) -> None:
    kw = {"cache_mode": "both", "semantic_timeout_s": 5.0, "semantic_max_error_rate": DELTA,
          "judge_refresh_s": 0.2}
    a: Stack = await cluster_proxy(cluster.url, stub=StubConfig(answers={BASE: ANSWER, PARA: ANSWER}), **kw)
    b: Stack = await cluster_proxy(cluster.url, stub=StubConfig(answers={BASE: ANSWER, PARA: ANSWER}), **kw)
    for s in (a, b):
        if s.state.semantic is None or s.state.bound is None:
            pytest.fail("the semantic cache or the error bound did not start on the cluster (see the log)")
    assert a.state.bound is not None and b.state.bound is not None
    # The same pair in every tenant's scope: judged once in the verifier's class, then remembered (class p),
    # whose N_MIN judgements certify it.
    n = eb.min_judged(DELTA) + 1
    for i in range(n):
        await a.post(CHAT, body(BASE), headers=tenant(i))
        await a.flush()
        _, h, _ = await a.post(CHAT, body(PARA), headers=tenant(i))
        assert h["X-LLMCache-Status"] == "miss"
        await a.flush()
        await a.state.bound.drain()
    await a.state.bound.flush_all()
    # The other sidecar reads what the first learned and serves the next tenant's paraphrase.
    await b.post(CHAT, body(BASE), headers=tenant(99))
    deadline = time.monotonic() + 30
    while not ((fit := b.state.bound.fit_for(DEFAULT_GROUP)) is not None and fit.bounded):
        assert time.monotonic() < deadline, f"the second sidecar never saw the certified model: {fit}"
        await asyncio.sleep(0.05)
    await b.flush()
    _, h, served = await b.post(CHAT, body(PARA), headers=tenant(99))
    assert h["X-LLMCache-Status"] == "semantic-hit" and ANSWER in served.decode()
    await b.state.bound.flush_all()  # its served count reaches Redis with its next flush: now, not on the timer
    ks = Keyspace(prefix)
    client = connection.connect(cluster.url)
    try:
        # Each judged entry's outcome record sits in its entry's slot (one-slot scripts, evicted with it).
        judged = [k.decode() async for k in client.scan_iter(match=f"{ks.partition_prefix}j:*")]
        assert len(judged) == n
        for key in judged:
            key_hash = Keyspace.key_hash_of(key)
            assert key_slot(key.encode()) == key_slot(ks.entry(key_hash).encode())
            assert await client.exists(ks.entry(key_hash))
        state = eb.parse(await client.hgetall(ks.bound(DEFAULT_GROUP)))
        assert state.num_judged == n and state.num_served >= 1
        pairs = [k.decode() async for k in client.scan_iter(match=f"{ks.partition_prefix}ap:*")]
        assert len(pairs) == 1 and await client.hlen(pairs[0]) == 1
    finally:
        await client.aclose()
