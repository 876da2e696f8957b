"""Issue 14 item 5 and "the stub upstream only produces well-formed streams": streamed answers that
real servers end badly, or fill with fields the recorder does not fold, are relayed but never stored.

Each test sends the same streaming request twice through the real proxy (real Redis) in front of a
scripted upstream; a stored answer would make the second one a ``hit``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

CHAT = {"model": "m", "temperature": 0, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({**BASE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


GOOD = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}), chunk({"content": " there"}),
        chunk({}, "stop")]
DONE = b"data: [DONE]\n\n"


def scripted(body: bytes, *, abort: bool = False):
    async def script(request: web.Request, _: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        if abort:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
    return script


async def twice(stack) -> list[str]:
    """Send CHAT twice; the cache statuses (a cut stream reaches the client cut: that is expected)."""
    statuses = []
    for _ in range(2):
        async with stack.http.post(stack.proxy_url + "/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": "Bearer sk-a"}) as r:
            statuses.append(r.headers.get("X-LLMCache-Status"))
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await r.read()
        await stack.flush()
    return statuses


ENDINGS = {
    # An error event after some content, then [DONE]: what vLLM/OpenAI send when generation fails.
    "error-event-then-done": b"".join(GOOD[:2]) + sse({"error": {"message": "boom", "type": "server_error"}}) + DONE,
    # The server closes cleanly without [DONE] (finish_reason present, stream not terminated).
    "clean-close-without-done": b"".join(GOOD),
    # The connection is cut in the middle of an event.
    "cut-mid-chunk": b"".join(GOOD[:2]) + GOOD[2][: len(GOOD[2]) // 2],
    # No finish_reason at all, but [DONE].
    "done-without-finish-reason": b"".join(GOOD[:3]) + DONE,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_badly_ended_streams_are_relayed_but_never_stored(scripted_stack, ending: str) -> None:
    stack, seen = await scripted_stack(scripted(ENDINGS[ending], abort=ending == "cut-mid-chunk"))
    assert await twice(stack) == ["miss", "miss"]
    assert len(seen) == 2  # both went upstream: nothing was stored


def test_the_good_stream_of_these_tests_is_storable() -> None:
    """Control: the same chunks, properly ended, are what the recorder stores (see the next test)."""
    from llmcache.proxy.streaming import SSERecorder

    rec = SSERecorder("/v1/chat/completions")
    rec.feed(b"".join(GOOD) + DONE)
    assert rec.complete and rec.answer()["choices"][0]["message"]["content"] == "Hello there"


async def test_a_well_formed_stream_is_stored(scripted_stack) -> None:
    stack, seen = await scripted_stack(scripted(b"".join(GOOD) + DONE))
    assert await twice(stack) == ["miss", "hit"]
    assert len(seen) == 1


@pytest.mark.parametrize("delta", [
    {"function_call": {"name": "f", "arguments": "{}"}},
    {"audio": {"id": "a1", "data": "AAAA"}},
    {"annotations": [{"type": "url_citation"}]},
    {"some_future_field": "x"},
], ids=["function_call", "audio", "annotations", "unknown"])
async def test_deltas_the_recorder_cannot_fold_are_not_stored(scripted_stack, delta: dict) -> None:
    body = b"".join([GOOD[0], chunk(delta), chunk({"content": "ok"}), GOOD[3], DONE])
    stack, _seen = await scripted_stack(scripted(body))
    assert await twice(stack) == ["miss", "miss"]


@pytest.mark.parametrize("delta", [{"content": ["a", "list"]}, {"content": 7},
                                   {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"a": 1}}}]}],
                         ids=["content-list", "content-number", "arguments-object"])
async def test_mistyped_deltas_are_not_stored(scripted_stack, delta: dict) -> None:
    body = b"".join([GOOD[0], chunk(delta), GOOD[3], DONE])
    stack, _seen = await scripted_stack(scripted(body))
    assert await twice(stack) == ["miss", "miss"]


async def test_reasoning_content_is_recorded_and_replayed(scripted_stack) -> None:
    usage = sse({**BASE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    body = b"".join([GOOD[0], chunk({"reasoning_content": "Think first. "}), chunk({"reasoning_content": "Done."}),
                     chunk({"content": "Answer"}), GOOD[3], usage, DONE])
    stack, seen = await scripted_stack(scripted(body))
    await stack.post("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}})
    _status, headers, payload = await stack.post("/v1/chat/completions", {**CHAT, "stream": False})
    assert headers["X-LLMCache-Status"] == "hit"
    message = json.loads(payload)["choices"][0]["message"]
    assert message["reasoning_content"] == "Think first. Done." and message["content"] == "Answer"
    _status, headers, payload = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit"
    events = [json.loads(line[6:]) for line in payload.decode().splitlines()
              if line.startswith("data: {")]
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in events if e["choices"])
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert reasoning == "Think first. Done." and content == "Answer"
    assert len(seen) == 1
