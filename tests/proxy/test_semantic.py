"""The SemanticCache facade on real Redis (with and without the search module) and the real MiniLM embedder."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from semantic_helpers import chat_parts, local_embedder

from llmcache.errors import ConfigError
from llmcache.keyspace import Keyspace
from llmcache.policy import DEFAULT_SIMILARITY_THRESHOLD
from llmcache.proxy.semantic import SemanticCache, SemanticMatch
from llmcache.proxy.semantic.embedder import EmbedderError, LocalEmbedder
from llmcache.proxy.settings import SemanticSettings

KS = Keyspace()
# Generous deadline: tests run on a shared 2-core machine; the 100 ms default is for production.
SETTINGS = SemanticSettings(timeout_s=30.0)
STORED = "How do I reverse a list in Python?"
KEY = "a" * 64


@pytest.fixture
async def embedder() -> AsyncIterator[LocalEmbedder]:
    emb = local_embedder()
    yield emb
    await emb.close()


@pytest.fixture(params=["search", "client"])
def redis_url(request: pytest.FixtureRequest, redis_search_url: str, redis_plain_url: str) -> tuple[str, str]:
    return (redis_search_url if request.param == "search" else redis_plain_url), request.param


@pytest.fixture
async def open_cache(redis_url: tuple[str, str], embedder: LocalEmbedder) -> AsyncIterator[Callable[..., Any]]:
    """``await open_cache(**settings)``: a SemanticCache over the parametrised Redis, closed after the test."""
    url, _ = redis_url
    opened: list[SemanticCache] = []
    clients: list[aioredis.Redis] = []

    async def make(**overrides: Any) -> SemanticCache:
        r = aioredis.Redis.from_url(url)
        clients.append(r)
        cache = await SemanticCache.create(r, settings=replace(SETTINGS, **overrides), keyspace=KS, embedder=embedder)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        await cache.close()
    for r in clients:
        await r.aclose()


async def test_paraphrase_hits_with_the_stored_key(open_cache: Callable[..., Any], redis_url: tuple[str, str]) -> None:
    cache: SemanticCache = await open_cache()
    assert cache.stats()["index_backend"] == redis_url[1]
    await cache.add(chat_parts(STORED), KEY, ttl_s=60)
    match = await cache.lookup(chat_parts("How can I reverse a list in Python?"),
                               threshold=DEFAULT_SIMILARITY_THRESHOLD)
    assert isinstance(match, SemanticMatch) and match.key_hash == KEY
    assert DEFAULT_SIMILARITY_THRESHOLD <= match.similarity <= 1.0
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["adds"] == 1 and stats["embed_cache_misses"] >= 2  # both texts embedded
    # The same query again reuses its embedding (the LRU), and finds the same entry.
    again = await cache.lookup(chat_parts("How can I reverse a list in Python?"),
                               threshold=DEFAULT_SIMILARITY_THRESHOLD)
    assert again is not None and again.key_hash == KEY
    assert cache.stats()["embed_cache_hits"] > stats["embed_cache_hits"]


# (category, stored, query): cosine is high for all of them; only verification tells them apart.
HARD_NEGATIVES = [
    ("negation", "How do I enable two-factor authentication on GitHub?",
     "How do I disable two-factor authentication on GitHub?"),
    ("negation", "Why is my laptop fan loud?", "Why is my laptop fan not loud?"),
    ("numbers", "What is 30% of 250?", "What is 35% of 250?"),
    ("units", "How many calories are in 100 grams of rice?", "How many calories are in 100 ounces of rice?"),
    ("entities", "What is the population of Argentina?", "What is the population of Colombia?"),
    ("direction", "How do I convert a dictionary to JSON in Python?",
     "How do I convert JSON to a dictionary in Python?"),
    ("roles", "Did Napoleon defeat Wellington?", "Did Wellington defeat Napoleon?"),
    ("task", "Summarize this customer complaint.", "Analyze this customer complaint."),
    ("related", "How do I install PostgreSQL on Ubuntu?", "How do I uninstall PostgreSQL on Ubuntu?"),
]


@pytest.mark.parametrize(("category", "stored", "query"), HARD_NEGATIVES, ids=[c for c, _, _ in HARD_NEGATIVES])
async def test_hard_negatives_miss_although_cosine_would_hit(open_cache: Callable[..., Any], category: str,
                                                            stored: str, query: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cache: SemanticCache = await open_cache()
    plain: SemanticCache = await open_cache(verify=False)
    await cache.add(chat_parts(stored), KEY, ttl_s=60)
    threshold = 0.7
    # Without verification the near miss would be served: the embedding alone cannot tell.
    # (The client backend learns the other instance's add from the event stream: bounded wait.)
    served = None
    for _ in range(250):
        served = await plain.lookup(chat_parts(query), threshold=threshold)
        if served is not None:
            break
        await asyncio.sleep(0.02)
    assert served is not None
    with caplog.at_level(logging.DEBUG, logger="llmcache.proxy.semantic"):
        assert await cache.lookup(chat_parts(query), threshold=threshold) is None
    assert sum(cache.stats()["rejected_by_verifier"].values()) == 1
    # The refusal is logged with its reason, never with the texts.
    [refusal] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    [reason] = cache.stats()["rejected_by_verifier"]
    assert f"refused: {reason}" in refusal
    assert all(w not in refusal for w in (stored + " " + query).split() if len(w) > 3)


async def test_the_best_verified_candidate_wins(open_cache: Callable[..., Any]) -> None:
    cache: SemanticCache = await open_cache()
    await cache.add(chat_parts("Turn on dark mode in Slack."), "1" * 64, ttl_s=60)
    await cache.add(chat_parts("How can I turn off dark mode in Slack?"), "2" * 64, ttl_s=60)
    match = await cache.lookup(chat_parts("How do I turn off dark mode in Slack?"), threshold=0.6)
    assert match is not None and match.key_hash == "2" * 64
    match = await cache.lookup(chat_parts("Please turn on dark mode in Slack."), threshold=0.6)
    assert match is not None and match.key_hash == "1" * 64


@pytest.mark.parametrize("other", [
    {"tenant": "tenant-b"},
    {"model": "model-b"},
    {"system": "You are a pirate."},
    {"history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"namespace": "team-x"},
    {"temperature": 0.9},
], ids=["tenant", "model", "system-prompt", "history", "namespace", "params"])
async def test_scope_must_match_exactly(open_cache: Callable[..., Any], other: dict[str, Any]) -> None:
    cache: SemanticCache = await open_cache()
    await cache.add(chat_parts(STORED), KEY, ttl_s=60)
    assert await cache.lookup(chat_parts(STORED, **other), threshold=0.0) is None
    assert await cache.lookup(chat_parts(STORED), threshold=0.0) is not None


async def test_entries_expire_and_delete(open_cache: Callable[..., Any]) -> None:
    cache: SemanticCache = await open_cache()
    await cache.add(chat_parts(STORED), KEY, ttl_s=1)
    await cache.add(chat_parts("What is the capital of Kenya?"), "b" * 64, ttl_s=60)
    await asyncio.sleep(1.3)
    assert await cache.lookup(chat_parts(STORED), threshold=0.5) is None
    assert await cache.lookup(chat_parts("What is the capital of Kenya?"), threshold=0.5) is not None
    await cache.delete("b" * 64)
    assert await cache.lookup(chat_parts("What is the capital of Kenya?"), threshold=0.5) is None


async def test_index_survives_a_restart(open_cache: Callable[..., Any]) -> None:
    first: SemanticCache = await open_cache()
    await first.add(chat_parts(STORED), KEY, ttl_s=60)
    await first.close()
    second: SemanticCache = await open_cache()
    match = await second.lookup(chat_parts("How can I reverse a list in Python?"),
                                threshold=DEFAULT_SIMILARITY_THRESHOLD)
    assert match is not None and match.key_hash == KEY


_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    import redis.asyncio as aioredis
    sys.path.insert(0, sys.argv[4])
    from semantic_helpers import chat_parts
    from llmcache.keyspace import Keyspace
    from llmcache.proxy.semantic import SemanticCache
    from llmcache.proxy.settings import SemanticSettings

    async def main():
        url, action, text = sys.argv[1], sys.argv[2], sys.argv[3]
        r = aioredis.Redis.from_url(url)
        cache = await SemanticCache.create(r, settings=SemanticSettings(timeout_s=60), keyspace=Keyspace())
        try:
            if action == "add":
                await cache.add(chat_parts(text), "c" * 64, ttl_s=120)
                out = {"added": True}
            else:
                m = await cache.lookup(chat_parts(text), threshold=0.8)
                out = {"key_hash": m.key_hash if m else None}
            out["backend"] = cache.stats()["index_backend"]
        finally:
            await cache.close()
            await r.aclose()
        print(json.dumps(out))

    asyncio.run(main())
""")


def _child(url: str, action: str, text: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    here = os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", _CHILD, url, action, text, here], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def test_a_second_process_shares_the_index(open_cache: Callable[..., Any], redis_url: tuple[str, str]) -> None:
    url, backend = redis_url
    cache: SemanticCache = await open_cache()  # open before the other process writes: must follow it live
    out = await asyncio.to_thread(_child, url, "add", "What is the boiling point of water at sea level?")
    assert out == {"added": True, "backend": backend}
    query = chat_parts("At sea level, what is the boiling point of water?")
    match = None
    for _ in range(250):  # liveness bound for the client backend's event stream
        match = await cache.lookup(query, threshold=0.8)
        if match is not None:
            break
        await asyncio.sleep(0.02)
    assert match is not None and match.key_hash == "c" * 64
    await cache.add(chat_parts(STORED), KEY, ttl_s=60)
    seen = await asyncio.to_thread(_child, url, "lookup", "How can I reverse a list in Python?")
    assert seen == {"key_hash": KEY, "backend": backend}


class _FailingEmbedder:
    """Fault injection: every embedding call fails."""

    name = "failing"
    dim = 384

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise EmbedderError("embedding server down")

    async def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"embedder": self.name}


class _SlowEmbedder(_FailingEmbedder):
    name = "slow"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        await asyncio.sleep(5)
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)


@pytest.mark.parametrize("broken", [_FailingEmbedder, _SlowEmbedder])
async def test_embedder_failure_or_timeout_fails_open(redis_search_url: str, broken: type[_FailingEmbedder]) -> None:
    r = aioredis.Redis.from_url(redis_search_url)
    cache = await SemanticCache.create(r, settings=SemanticSettings(), keyspace=KS, embedder=broken())
    try:
        assert await cache.lookup(chat_parts(STORED), threshold=0.9, timeout_s=0.1) is None
        stats = cache.stats()
        assert (stats["errors"], stats["timeouts"]) == ((1, 0) if broken is _FailingEmbedder else (0, 1))
    finally:
        await cache.close()
        await r.aclose()


async def test_redis_failure_fails_open(redis_factory: Callable[..., Any], embedder: LocalEmbedder) -> None:
    server = redis_factory(with_search=False)
    r = aioredis.Redis.from_url(server.url)
    cache = await SemanticCache.create(r, settings=SETTINGS, keyspace=KS, embedder=embedder)
    try:
        await cache.add(chat_parts(STORED), KEY, ttl_s=60)
        server.stop()
        assert await cache.lookup(chat_parts("How can I reverse a list in Python?"), threshold=0.8) is None
        assert cache.stats()["errors"] == 1
        # add reports the failure (Redis is gone); the proxy counts it and moves on
        with pytest.raises((redis.exceptions.ConnectionError, OSError)):
            await cache.add(chat_parts("another question"), "d" * 64, ttl_s=60)
        assert cache.stats()["add_errors"] == 1
    finally:
        await cache.close()
        await r.aclose()


async def test_a_decoding_redis_client_is_accepted(redis_plain_url: str, embedder: LocalEmbedder) -> None:
    r = aioredis.Redis.from_url(redis_plain_url, decode_responses=True)
    cache = await SemanticCache.create(r, settings=SETTINGS, keyspace=KS, embedder=embedder)
    try:
        await cache.add(chat_parts(STORED), KEY, ttl_s=60)
        assert await cache.lookup(chat_parts(STORED), threshold=0.9) is not None
    finally:
        await cache.close()
        await r.aclose()


def test_documented_defaults() -> None:
    s = SemanticSettings()
    assert (s.similarity_threshold, s.embedder, s.index, s.timeout_s, s.max_batch, s.num_candidates) == \
        (0.70, "local", "auto", 0.1, 64, 5)
    assert s.client_index_max_entries == 200_000 and s.verify is True


@pytest.mark.parametrize("bad", [{"similarity_threshold": 1.5}, {"similarity_threshold": -0.1}, {"embedder": "remote"},
                                 {"index": "faiss"}, {"timeout_s": 0}, {"max_batch": 0}])
def test_bad_settings_say_what_is_wrong(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SemanticSettings(**bad)
