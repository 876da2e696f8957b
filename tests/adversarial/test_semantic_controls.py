"""Issue 18 item 3: semantic hits honour the request's controls (same tenant).

Real Valkey + RediSearch, the real MiniLM embedder, the proxy over HTTP in front of the stub.

- ``Cache-Control: no-store`` on a request that got a ``semantic-hit`` promoted the neighbour's
  answer into an exact entry under the new text: nothing about that exchange may be stored.
- after a promotion, the same text with ``X-LLMCache-Similarity-Threshold: 1.0`` got an exact
  ``hit`` with the neighbour's answer: a promoted entry remembers its similarity and is served
  only where the request's threshold accepts it.
"""

from __future__ import annotations

import json

import pytest
from proxy_helpers import Stack

from llmcache.proxy.exact import Entry, InvalidEntry

ROUTE = "/v1/chat/completions"
SYSTEM = {"role": "system", "content": "You answer questions about data structures."}
BASE = {"model": "stub-model", "temperature": 0,
        "messages": [SYSTEM, {"role": "user", "content": "How do I reverse a linked list in Python?"}]}
PARAPHRASE = {**BASE, "messages": [SYSTEM, {"role": "user", "content": "How can I reverse a linked list in Python?"}]}


async def _entries(stack: Stack) -> dict[str, Entry]:
    redis = stack.state.redis
    assert redis is not None
    return {k.decode() if isinstance(k, bytes) else k: Entry.from_json(await redis.get(k))
            async for k in redis.scan_iter(match=stack.state.keyspace.entry_pattern)}


async def _stored_base(stack: Stack) -> bytes:
    _, headers, answer = await stack.post(ROUTE, BASE)
    assert headers["X-LLMCache-Status"] == "miss"
    await stack.flush()
    return answer


async def test_no_store_semantic_hit_stores_nothing(semantic_stack: Stack) -> None:
    stack = semantic_stack
    original = await _stored_base(stack)
    before = await _entries(stack)
    _, headers, served = await stack.post(ROUTE, PARAPHRASE, headers={"Cache-Control": "no-store"})
    assert headers["X-LLMCache-Status"] == "semantic-hit" and served == original
    await stack.flush()
    assert await _entries(stack) == before  # no promoted entry under the paraphrase
    # The paraphrase asked again is a semantic hit once more, never an exact one.
    _, headers, _ = await stack.post(ROUTE, PARAPHRASE, headers={"Cache-Control": "no-store"})
    assert headers["X-LLMCache-Status"] == "semantic-hit"
    assert await stack.upstream_count() == 1


async def test_promoted_entry_is_served_only_where_the_threshold_allows(semantic_stack: Stack) -> None:
    stack = semantic_stack
    original = await _stored_base(stack)
    _, headers, served = await stack.post(ROUTE, PARAPHRASE)
    assert headers["X-LLMCache-Status"] == "semantic-hit" and served == original
    similarity = float(headers["X-LLMCache-Similarity"])
    assert similarity < 1.0
    await stack.flush()
    [promoted] = [e for e in (await _entries(stack)).values() if e.similarity is not None]
    assert promoted.similarity == pytest.approx(similarity, abs=1e-4)

    # The request's own threshold is above the match: the promoted copy must not answer it.
    _, headers, fresh = await stack.post(ROUTE, PARAPHRASE, headers={"X-LLMCache-Similarity-Threshold": "1.0"})
    assert headers["X-LLMCache-Status"] == "miss"
    assert await stack.upstream_count() == 2
    assert json.loads(fresh)["choices"][0]["message"]["content"] != json.loads(original)["choices"][0]["message"][
        "content"]  # the stub echoes the text: this is the paraphrase's own answer
    await stack.flush()
    # Its own answer replaced the promoted copy: an exact entry, served at any threshold.
    _, headers, again = await stack.post(ROUTE, PARAPHRASE, headers={"X-LLMCache-Similarity-Threshold": "1.0"})
    assert headers["X-LLMCache-Status"] == "hit" and again == fresh and "X-LLMCache-Similarity" not in headers


async def test_promoted_entry_is_an_exact_hit_where_the_threshold_allows(semantic_stack: Stack) -> None:
    """Control: without a tighter threshold the promotion still saves the next identical request."""
    stack = semantic_stack
    original = await _stored_base(stack)
    _, headers, _ = await stack.post(ROUTE, PARAPHRASE)
    similarity = headers["X-LLMCache-Similarity"]
    await stack.flush()
    at_most = f"{float(similarity) - 0.0001:.4f}"  # (the header is rounded to 4 digits, maybe up)
    _, headers, served = await stack.post(ROUTE, PARAPHRASE, headers={"X-LLMCache-Similarity-Threshold": at_most})
    assert headers["X-LLMCache-Status"] == "hit" and served == original
    assert headers["X-LLMCache-Similarity"] == similarity  # the hit says it is a neighbour's answer
    assert await stack.upstream_count() == 1


def _entry_json(**fields: object) -> str:
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    return json.dumps({"v": 2, "route": ROUTE, "model": "m", "created_s": 1.0, "tenant": "t", "namespace": "",
                       "origin": "json", "prompt_tokens": 1, "completion_tokens": 1, "body": json.dumps(answer),
                       **fields})


@pytest.mark.parametrize("similarity", [None, "0.9", 1.5, -0.1, True], ids=["missing", "string", "above-1",
                                                                              "negative", "bool"])
def test_a_promoted_entry_without_a_valid_similarity_is_refused(similarity: object) -> None:
    blob = _entry_json() if similarity is None else _entry_json(similarity=similarity)
    with pytest.raises(InvalidEntry):
        Entry.from_json(blob)


def test_entry_versions_round_trip() -> None:
    """Upstream answers stay version 1 (older proxies keep serving them); promoted ones are version 2."""
    entry = Entry.from_json(_entry_json(similarity=0.91))
    assert entry.similarity == 0.91 and json.loads(entry.to_json())["v"] == 2
    exact = Entry.from_json(_entry_json(v=1))
    assert exact.similarity is None and json.loads(exact.to_json())["v"] == 1 and "similarity" not in exact.to_json()
    assert Entry.from_json(exact.to_json()) == exact and Entry.from_json(entry.to_json()) == entry
