"""Tampered entries: whatever lies under an entry key in Redis (garbage, pickle, wrong schema version,
wrong types, oversized, another tenant's or route's answer), the proxy never serves it, never
answers 5xx, and replaces it with a fresh answer.

Real proxy, real Redis, the stub upstream; the entry is overwritten between two identical requests.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
import redis.asyncio as aioredis
from proxy_helpers import CHAT, Stack

from llmcache.keyspace import Keyspace

ROUTE = "/v1/chat/completions"


def _entry(body: Any, **fields: Any) -> bytes:
    raw = {"v": 1, "route": ROUTE, "model": "stub-model", "created_s": 1.0, "tenant": "?", "namespace": "",
           "origin": "json", "prompt_tokens": 1, "completion_tokens": 1,
           "body": body if isinstance(body, str) else json.dumps(body)}
    raw.update(fields)
    return json.dumps(raw).encode()


def _answer(message: dict[str, Any], **choice: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "stub-model",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


TAMPERED: dict[str, Any] = {
    "garbage": b"\x00\xffnot json at all",
    "pickle": pickle.dumps({"v": 1, "body": "{}"}),
    "schema-version": lambda good: {**good, "v": 99},
    "route": lambda good: {**good, "route": "/v1/completions"},
    "other-tenant": lambda good: {**good, "tenant": "f" * 32},
    "created-type": lambda good: {**good, "created_s": "yesterday"},
    "content-list-of-60": lambda good: {**good, "body": json.dumps(_answer(
        {"role": "assistant", "content": [{"type": "text", "text": str(i)} for i in range(60)]}))},
    "content-number": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant", "content": 7}))},
    "content-null": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant", "content": None}))},
    "arguments-object": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant", "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}))},
    "function-call": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant", "content": None,
        "function_call": {"name": "f", "arguments": "{}"}}))},
    "no-finish-reason": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant", "content": "x"},
                                                                         finish_reason=None))},
    "body-not-json": lambda good: {**good, "body": "{\"choices\": ["},
    "oversized": lambda good: {**good, "body": json.dumps(_answer({"role": "assistant",
                                                                    "content": "x" * (3 * 1024**2)}))},
}


def content_of(payload: bytes, *, stream: bool) -> str:
    """The answer text of a JSON answer or an SSE stream."""
    if not stream:
        return json.loads(payload)["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in payload.decode().splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("tamper", sorted(TAMPERED))
async def test_tampered_entry_is_never_served(proxy_stack, tamper: str, stream: bool) -> None:
    stack: Stack = await proxy_stack(cache_max_entry_bytes=1024**2)
    body = {**CHAT, "stream": stream}
    status, headers, original = await stack.post(ROUTE, body)
    assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    r = aioredis.Redis.from_url(stack.state.settings.redis.url)
    try:
        keys = [k async for k in r.scan_iter(match=Keyspace(stack.state.settings.cache.key_prefix).entry_pattern)]
        assert len(keys) == 1
        good = json.loads(await r.get(keys[0]))
        value = TAMPERED[tamper]
        value = value(good) if callable(value) else value
        await r.set(keys[0], value if isinstance(value, bytes) else json.dumps(value).encode())
        status, headers, served = await stack.post(ROUTE, body)
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"  # refused, fetched again
        assert content_of(served, stream=stream) == content_of(original, stream=stream)
        assert await stack.upstream_count() == 2
        # ...and the fresh answer replaced the tampered value: the next request is a hit.
        status, headers, _ = await stack.post(ROUTE, body)
        assert status == 200 and headers["X-LLMCache-Status"] == "hit"
    finally:
        await r.aclose()
