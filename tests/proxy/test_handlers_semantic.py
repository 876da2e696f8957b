"""The proxy with the semantic cache (real MiniLM embedder, Redis with vector search)."""

from __future__ import annotations

import asyncio
import time

import pytest
from proxy_helpers import ADMIN, Stack

BASE = {"model": "stub-model", "temperature": 0, "messages": [
    {"role": "system", "content": "You answer questions about data structures."},
    {"role": "user", "content": "How do I reverse a linked list in Python?"}]}
PARAPHRASE = {**BASE, "messages": [BASE["messages"][0],
                                   {"role": "user", "content": "How can I reverse a linked list in Python?"}]}


async def test_paraphrase_is_a_semantic_hit_and_is_promoted(semantic_stack: Stack) -> None:
    stack = semantic_stack
    status, headers, original = await stack.post("/v1/chat/completions", BASE)
    assert headers["X-LLMCache-Status"] == "miss"
    await stack.flush()
    status, headers, served = await stack.post("/v1/chat/completions", PARAPHRASE)
    assert status == 200 and headers["X-LLMCache-Status"] == "semantic-hit"
    assert 0.9 <= float(headers["X-LLMCache-Similarity"]) <= 1.0
    assert served == original and "Age" in headers
    await stack.flush()  # promotion is written in the background
    _, headers, again = await stack.post("/v1/chat/completions", PARAPHRASE)
    assert headers["X-LLMCache-Status"] == "hit" and again == original
    assert await stack.upstream_count() == 1
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as r:
        await r.json()
    async with stack.http.get(stack.proxy_url + "/metrics") as r:
        assert 'cache_status="semantic-hit"' in await r.text()


async def test_threshold_header_only_tightens_and_scope_is_exact(semantic_stack: Stack) -> None:
    stack = semantic_stack
    await stack.post("/v1/chat/completions", BASE)
    await stack.flush()
    _, headers, _ = await stack.post("/v1/chat/completions", PARAPHRASE,
                                     headers={"X-LLMCache-Similarity-Threshold": "0.99999"})
    assert headers["X-LLMCache-Status"] == "miss"  # tightened past the pair's similarity
    # Only the tenant changes: a semantic match across tenants would be a leak, at any threshold.
    other_tenant = {"Authorization": "Bearer sk-someone-else", "Cache-Control": "no-store"}
    for body in (BASE, PARAPHRASE):
        _, headers, _ = await stack.post("/v1/chat/completions", body,
                                         headers={**other_tenant, "X-LLMCache-Similarity-Threshold": "0.1"})
        assert headers["X-LLMCache-Status"] == "miss"
    # Only the parameters change (same tenant): not a semantic match either.
    _, headers, _ = await stack.post("/v1/chat/completions", {**PARAPHRASE, "max_tokens": 3},
                                     headers={"X-LLMCache-Similarity-Threshold": "0.1"})
    assert headers["X-LLMCache-Status"] == "miss"
    # Control: the same tenant with the same parameters does match (a paraphrase not sent before).
    fresh = {**BASE, "messages": [BASE["messages"][0],
                                  {"role": "user", "content": "In Python, how do I reverse a linked list?"}]}
    _, headers, _ = await stack.post("/v1/chat/completions", fresh)
    assert headers["X-LLMCache-Status"] == "semantic-hit"


async def test_promoted_entry_expires_and_is_invalidated_with_its_source(semantic_stack: Stack) -> None:
    """A semantic hit's promoted exact entry never outlives its source, and goes when its source is invalidated."""
    stack = semantic_stack
    redis = stack.state.redis
    pattern = stack.state.keyspace.entry_pattern
    await stack.post("/v1/chat/completions", BASE)
    await stack.flush()
    [source] = [k async for k in redis.scan_iter(match=pattern)]
    _, headers, _ = await stack.post("/v1/chat/completions", PARAPHRASE)
    assert headers["X-LLMCache-Status"] == "semantic-hit"
    await stack.flush()
    keys = [k async for k in redis.scan_iter(match=pattern)]
    assert len(keys) == 2, keys
    [promoted] = [k for k in keys if k != source]
    source_ttl, promoted_ttl = await redis.pttl(source), await redis.pttl(promoted)
    assert 0 < promoted_ttl <= source_ttl  # expires no later than the answer it copies
    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"model": "stub-model"},
                               headers={"Authorization": "Bearer admin-secret"}) as r:
        assert r.status == 200 and (await r.json())["deleted"] == 2
    assert [k async for k in redis.scan_iter(match=pattern)] == []
    _, headers, _ = await stack.post("/v1/chat/completions", PARAPHRASE)
    assert headers["X-LLMCache-Status"] == "miss"  # neither the copy nor the source's vector serves it


async def test_stats_report_the_threshold_in_effect(proxy_stack, redis_search_url: str, tmp_path) -> None:
    """``/llmcache/v1/stats`` reports the similarity threshold requests get: the flag's, then the
    applied CachePolicy's (it reported the start-up flag even under a policy)."""
    import json

    import redis.asyncio as aioredis

    from llmcache import policy
    from llmcache.keyspace import Keyspace

    labels = tmp_path / "labels"
    labels.write_text('app="chat"\n')
    stack = await proxy_stack(redis_url=redis_search_url, cache_mode="both", semantic_timeout_s=5.0,
                              semantic_similarity_threshold=0.85, policy_pod_namespace="team-t",
                              policy_pod_name="chat-0", policy_pod_labels_file=str(labels))
    if stack.state.semantic is None:
        pytest.fail("the semantic cache did not start (see the log)")

    async def threshold() -> float:
        async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN) as r:
            return (await r.json())["semantic"]["threshold"]

    assert await threshold() == 0.85
    doc = policy.PolicyDocument("team-t", "sem", 1, policy.parse_spec(
        {"selector": {"matchLabels": {"app": "chat"}}, "mode": "Both", "semantic": {"similarityThreshold": 0.93}}))
    ks = Keyspace()
    r = aioredis.Redis.from_url(redis_search_url)
    try:
        await r.hset(ks.policies("team-t"), doc.name, doc.to_json())
        await r.publish(ks.policy_channel("team-t"),
                        json.dumps({"namespace": "team-t", "name": doc.name, "generation": 1}))
        deadline = time.monotonic() + 15  # liveness bound for pub/sub delivery
        while (w := stack.state.policy_watcher) is None or w.current is None:
            assert time.monotonic() < deadline, "policy never applied"
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()
    assert await threshold() == 0.93
