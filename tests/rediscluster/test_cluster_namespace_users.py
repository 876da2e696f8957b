"""Namespace isolation on a real Redis Cluster (issue 18, item 1): users on every node, one per namespace.

ACL users are per node on a cluster, replicas included (a promoted replica must know them):
the operator's code applies each namespace's user everywhere and creates that namespace's
vector index on every master. Then a sidecar of namespace B works as B's user through the
cluster (exact and semantic hits), and what namespace A holds reaches none of B's keys,
on whichever master they live, nor its per-master indexes, nor lists any key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from proxy_helpers import CHAT

from llmcache import connection
from llmcache.keyspace import Keyspace
from llmcache.operator import partitions
from llmcache.operator.settings import NamespaceUserSettings
from llmcache.testing.redis_cluster import EmbeddedCluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PARAPHRASE = {**CHAT, "messages": [*CHAT["messages"][:-1],
                                   {"role": "user", "content": CHAT["messages"][-1]["content"] + "?"}]}


def refused(client: redis.RedisCluster, *command: Any, **kwargs: Any) -> bool:
    try:
        client.execute_command(*command, **kwargs)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "no permissions" in str(exc).lower()
    return False


async def _wait(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def test_namespace_users_isolate_namespaces_on_every_node(cluster: EmbeddedCluster, cluster_proxy: Any,
                                                               prefix: str) -> None:
    ks = Keyspace(prefix)
    admin = connection.connect(cluster.url)  # the operator (the embedded cluster's default user)
    try:
        users = partitions.NamespaceUsers(admin, ks, NamespaceUserSettings(mode="namespace", key="k"),
                                          base_url=cluster.url)
        for namespace in ("team-a", "team-b"):
            await users.ensure(namespace)
        for node in cluster.nodes:  # replicas too: a promoted replica must know the users
            with redis.Redis(host=node.host, port=node.port) as r:
                assert {users.user("team-a"), users.user("team-b")} <= set(r.acl_users())

        b = await cluster_proxy(users.url("team-b"), policy_pod_namespace="team-b", cache_mode="both",
                                semantic_timeout_s=5.0)
        part_b = ks.for_partition("team-b")
        await _wait(lambda: admin.exists(part_b.vector_index_spec), "B's sidecar to ask for its index")
        assert await partitions.ensure_vector_indexes(admin, ks, "team-b") == 3  # one per master
        await _wait(lambda: asyncio.sleep(0, result=b.state.semantic is not None), "B's semantic cache")
        _, headers, answer = await b.post("/v1/chat/completions", CHAT)
        assert headers["X-LLMCache-Status"] == "miss"

        async def semantic_hit() -> bool:
            _, h, body = await b.post("/v1/chat/completions", PARAPHRASE,
                                      headers={"Cache-Control": "only-if-cached"})
            return h.get("X-LLMCache-Status") == "semantic-hit" and body == answer
        await _wait(semantic_hit, "B's semantic hit through its per-master indexes")

        entries = [k.decode() async for k in admin.scan_iter(match=part_b.entry_pattern)]
        assert entries  # the miss, and the promoted semantic hit
        key_hashes = [ks.key_hash_of(e) for e in entries]
        index_names = await partitions.search_index.index_names(admin, part_b)
        assert len(index_names) == 3
    finally:
        await admin.aclose()

    a = redis.RedisCluster.from_url(users.url("team-a").replace("redis+cluster://", "redis://"))
    try:
        own = ks.for_partition("team-a").entry("own")
        assert a.set(own, "1") and a.get(own) == b"1"
        for key in [*entries, *(k for h in key_hashes for k in (part_b.vector(h),
                                                                part_b.group_of("_default", "lru", h)))]:
            for command in (("GET", key), ("HGETALL", key), ("ZRANGE", key, 0, -1), ("SET", key, "forged"),
                            ("DEL", key)):
                assert refused(a, *command), command
        for name in index_names:
            assert refused(a, "FT.SEARCH", name, "*", target_nodes=a.get_node_from_key(name))
        for node in a.get_primaries():
            for command in (("SCAN", "0"), ("KEYS", "*"), ("FT._LIST",)):
                assert refused(a, *command, target_nodes=node), command
    finally:
        a.close()
    _, headers, again = await b.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit" and again == answer
