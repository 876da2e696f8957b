"""Status pieces (llmcache.operator.status) and publishing (llmcache.operator.publish) on a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.operator import publish, status
from llmcache.policy import PolicyDocument, parse_spec
from llmcache.proxy.policy_watch import load_policy_file

KS = Keyspace()


@pytest.fixture
async def r(redis_plain_url: str):
    client = aioredis.from_url(redis_plain_url)
    yield client
    await client.aclose()


def doc(name: str = "p", generation: int = 1, **spec: object) -> PolicyDocument:
    return PolicyDocument("ns", name, generation, parse_spec(spec), created_s=100.0)


async def test_synced_pods_counts_current_hash_of_existing_pods_only(r: aioredis.Redis) -> None:
    await r.hset(KS.acks("ns", "p"), mapping={
        "a": json.dumps({"configHash": "new", "appliedAt": 1}),
        "b": json.dumps({"configHash": "old", "appliedAt": 1}),
        "gone": json.dumps({"configHash": "new", "appliedAt": 1}),
        "junk": "not json",
    })
    assert await status.synced_pods(r, KS, "ns", "p", "new", pods={"a", "b", "junk"}) == 1
    assert await status.synced_pods(r, KS, "ns", "p", "new") == 2


async def test_hit_counters_read_only_stats_tagged_with_the_policy(r: aioredis.Redis) -> None:
    await r.hset(KS.stats("x1"), mapping={"policy": "ns/p", "hit": 6, "semantic_hit": 2, "miss": 2})
    await r.hset(KS.stats("x2"), mapping={"namespace": "default", "hit": 100, "miss": 1})
    counters = await status.hit_counters(r, KS, "ns/p")
    assert (counters.num_hits, counters.num_misses, counters.hit_rate) == (8, 2, 0.8)
    assert (await status.hit_counters(r, KS, "ns/other")).hit_rate is None


async def test_hit_counters_read_what_the_proxy_stats_buffer_writes(r: aioredis.Redis) -> None:
    from llmcache import stats

    buf = stats.StatsBuffer()
    for st in ("hit", "semantic-hit", "miss", "bypass"):
        buf.add("docs", st, policy="ns/p")
    buf.add("faq", "hit", policy="ns/p")
    buf.add("docs", "hit")  # no policy applied: not this policy's
    buf.add("docs", "miss", policy="ns/other")
    await buf.flush(r, keyspace=KS)
    counters = await status.policy_counters(r, KS, "ns/p")
    assert (counters.num_hits, counters.num_misses) == (3, 1)


async def test_group_counters_estimate_hits_from_bookkeeping(r: aioredis.Redis) -> None:
    group = "ns/p"
    async with r.pipeline() as pipe:
        for h in ("a", "b"):
            KS.record_access(pipe, group, h, size_bytes=1, created=True)  # two misses, cached
        for _ in range(3):
            KS.record_access(pipe, group, "a")  # three hits
        await pipe.execute()
    counters = await status.policy_counters(r, KS, group)
    assert (counters.num_hits, counters.num_misses) == (3, 2)
    # Above the sample size Σ lfu is estimated from a sample; with equal scores it is exact.
    async with r.pipeline() as pipe:
        for i in range(50):
            KS.record_access(pipe, "ns/big", f"m{i}", size_bytes=1, created=True)
            KS.record_access(pipe, "ns/big", f"m{i}")
        await pipe.execute()
    big = await status.group_counters(r, KS, "ns/big", sample_size=10)
    assert (big.num_hits, big.num_misses) == (50, 50)
    assert (await status.policy_counters(r, KS, "ns/empty")).hit_rate is None


def test_conditions_and_transition_times() -> None:
    first = status.conditions_for(generation=1, published=True, selected=2, synced=1)
    by_type = {c["type"]: c for c in first}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "Syncing"
    assert by_type["Propagated"]["status"] == "True" and by_type["Degraded"]["status"] == "False"
    old = [dict(c, lastTransitionTime="2000-01-01T00:00:00Z") for c in first]
    later = status.conditions_for(generation=1, published=True, selected=2, synced=2)
    merged = {c["type"]: c for c in status.merge_conditions(old, later)}
    assert merged["Ready"]["status"] == "True" and merged["Ready"]["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert merged["Propagated"]["lastTransitionTime"] == "2000-01-01T00:00:00Z"  # unchanged status keeps it
    down = {c["type"]: c for c in status.conditions_for(generation=1, published=False, selected=0, synced=0,
                                                        problem="Redis unreachable", problem_reason="RedisUnavailable")}
    assert down["Degraded"]["status"] == "True" and down["Degraded"]["reason"] == "RedisUnavailable"
    assert down["Ready"]["status"] == "False"


async def test_publish_stores_document_and_announces_it(r: aioredis.Redis) -> None:
    sub = r.pubsub(ignore_subscribe_messages=True)
    await sub.subscribe(KS.policy_channel("ns"))
    d = doc(ttlSeconds=60)
    assert await publish.publish_policy(r, KS, d) == 1
    assert PolicyDocument.from_json(await r.hget(KS.policies("ns"), "p")) == d
    msg = None
    for _ in range(50):
        msg = await sub.get_message(timeout=0.1)
        if msg:
            break
    assert json.loads(msg["data"]) == {"namespace": "ns", "name": "p", "generation": 1}

    await r.hset(KS.acks("ns", "p"), "pod", "{}")
    await publish.unpublish_policy(r, KS, "ns", "p", generation=1)
    assert await r.hget(KS.policies("ns"), "p") is None and not await r.exists(KS.acks("ns", "p"))
    await sub.aclose()


async def test_configmap_copy_round_trips_through_the_proxy_loader(r: aioredis.Redis, tmp_path: Path) -> None:
    docs = [doc("b", 3, mode="Exact"), doc("a", 1)]
    for d in docs:
        await publish.publish_policy(r, KS, d)
    await r.hset(KS.policies("ns"), "broken", "{not json")  # a hand-edited value is skipped, not fatal
    stored = await publish.namespace_documents(r, KS, "ns")
    assert [d.name for d in stored] == ["a", "b"]
    path = tmp_path / "policies.json"
    path.write_text(publish.render_configmap(stored)[publish.CONFIGMAP_KEY])
    assert load_policy_file(path, namespace="ns") == sorted(docs, key=lambda d: d.name)


async def test_semantic_status_reads_what_the_sidecars_learned(r: aioredis.Redis) -> None:
    """status.semantic …: the same fit every sidecar computes from the shared counters (llmcache.errorbound)."""
    from llmcache import errorbound as eb

    assert await status.semantic_status(r, KS, "ns/p", None) == dict.fromkeys(status.SEMANTIC_FIELDS)
    learning = await status.semantic_status(r, KS, "ns/p", 0.05)
    assert learning["semantic"] == "learning (0 judged)" and learning["judgedSamples"] == 0
    assert learning["errorRate"] is None and learning["errorRateUpper"] is None
    v = "v9"
    await r.hset(KS.bound("ns/p"), mapping={
        "current": v, eb.cell_field(v, "a", eb.similarity_bin(0.95), "n"): 60,
        eb.cell_field(v, "a", eb.similarity_bin(0.95), "j"): 50,
        eb.total_field(v, "explored"): 3, eb.total_field(v, "gained"): 11, eb.total_field(v, "served"): 40})
    bounded = await status.semantic_status(r, KS, "ns/p", 0.05)
    assert bounded["semantic"].startswith("bounded (error ≤ ") and "50 judged" in bounded["semantic"]
    assert 0 < bounded["errorRate"] < bounded["errorRateUpper"] <= 0.05
    assert (bounded["judgedSamples"], bounded["explorationCalls"], bounded["hitsGained"]) == (50, 3, 11)
    # A stricter bound than the same evidence supports is still learning.
    assert (await status.semantic_status(r, KS, "ns/p", 0.01))["semantic"].startswith("learning (50 judged")
