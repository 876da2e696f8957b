"""Issue 14 item 13: the semantic cache comes back after Redis trouble, as the exact cache does.

Real Valkey + RediSearch, the real MiniLM embedder, the proxy over HTTP. Redis is started late
or killed and restarted (no persistence: the Query Engine index is gone afterwards).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy_helpers import Stack

from llmcache.redis_server import EmbeddedRedis, free_port

SYSTEM = {"role": "system", "content": "You answer questions about data structures."}


def chat(text: str) -> dict[str, Any]:
    return {"model": "stub-model", "temperature": 0, "messages": [SYSTEM, {"role": "user", "content": text}]}


BASE = chat("How do I reverse a linked list in Python?")
PARAPHRASES = [chat("How can I reverse a linked list in Python?"),
               chat("In Python, how do I reverse a linked list?"),
               chat("How would I reverse a linked list in Python?")]
NO_STORE = {"Cache-Control": "no-store"}  # a miss while we wait must not become an exact entry


async def _until(what: str, check: Any, *, timeout_s: float = 60.0) -> Any:
    """Poll ``check()`` until it returns something truthy (a liveness bound, not a latency claim)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.1)


async def _stored(stack: Stack, body: dict[str, Any]) -> bool:
    """Send ``body`` until Redis serves it back as a hit (the entry is stored again)."""
    _, headers, _ = await stack.post("/v1/chat/completions", body)
    return headers["X-LLMCache-Status"] == "hit"


async def _semantic_hit(stack: Stack) -> bool:
    for body in PARAPHRASES:
        _, headers, _ = await stack.post("/v1/chat/completions", body, headers=NO_STORE)
        if headers["X-LLMCache-Status"] == "semantic-hit":
            return True
    return False


async def test_semantic_cache_starts_when_redis_comes_up_after_the_proxy(proxy_stack) -> None:
    port = free_port()
    stack: Stack = await proxy_stack(redis_url=f"redis://127.0.0.1:{port}/0", cache_mode="both",
                                     semantic_timeout_s=5.0, redis_breaker_cooldown_s=0.1)
    assert stack.state.semantic is None  # Redis is not there: exact-only (bypass) for now
    status, headers, _ = await stack.post("/v1/chat/completions", BASE)
    assert status == 200 and headers["X-LLMCache-Status"] == "bypass"
    server = EmbeddedRedis(port=port, with_search=True).start()
    try:
        async def started() -> bool:
            return stack.state.semantic is not None

        await _until("semantic cache started after Redis came up", started)
        await _until("exact entry stored", lambda: _stored(stack, BASE))
        await _until("semantic hit", lambda: _semantic_hit(stack))
    finally:
        server.stop()


async def test_query_engine_index_is_recreated_after_a_redis_restart(proxy_stack, redis_factory) -> None:
    server = redis_factory(with_search=True)
    stack: Stack = await proxy_stack(redis_url=server.url, cache_mode="both", semantic_index="search",
                                     semantic_timeout_s=5.0, redis_breaker_cooldown_s=0.1)
    assert stack.state.semantic is not None
    await _until("exact entry stored", lambda: _stored(stack, BASE))
    await _until("semantic hit before the restart", lambda: _semantic_hit(stack))
    server.kill()
    server.restart()  # no persistence: entries, vector documents and the index are gone
    await _until("exact entry stored again", lambda: _stored(stack, BASE))
    await _until("semantic hit after the restart", lambda: _semantic_hit(stack))
    assert stack.state.semantic.stats()["index_recreated"] >= 1


async def test_client_index_follows_other_pods_after_a_redis_restart(proxy_stack, redis_factory) -> None:
    server = redis_factory(with_search=False)
    stack: Stack = await proxy_stack(redis_url=server.url, cache_mode="both", semantic_index="client",
                                     semantic_timeout_s=5.0, redis_breaker_cooldown_s=0.1)
    other: Stack = await proxy_stack(redis_url=server.url, cache_mode="both", semantic_index="client",
                                     semantic_timeout_s=5.0, redis_breaker_cooldown_s=0.1)
    assert stack.state.semantic is not None and other.state.semantic is not None
    server.kill()
    server.restart()
    # The other pod stores after the restart; this pod learns of it only through the event stream.
    await _until("other pod stored", lambda: _stored(other, BASE))
    await _until("semantic hit on this pod", lambda: _semantic_hit(stack))

    async def rebuilt() -> bool:  # the start, and the resync after the outage (new stream position)
        return stack.state.semantic.stats()["num_rebuilds"] >= 2

    await _until("client index rebuilt after the outage", rebuilt)
