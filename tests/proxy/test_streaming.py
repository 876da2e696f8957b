"""SSE recording and replay against the stub's real streams and the openai client's parser."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_helpers import CHAT, TOOLS

from llmcache.proxy import streaming
from llmcache.proxy.exact import InvalidEntry, validate_answer
from llmcache.testing.stub_upstream import create_stub_app


@pytest.fixture
async def stub_url():
    server = TestServer(create_stub_app(), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def fetch(url: str, path: str, body: dict) -> bytes:
    async with aiohttp.ClientSession() as c, c.post(url + path, json=body) as r:
        r.raise_for_status()
        return await r.read()


async def serve_bytes(payload: bytes) -> TestServer:
    """A real HTTP server answering every POST with ``payload`` as an SSE stream."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="text/event-stream")
    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS}, {"n": 2}, {"stream_options": {"include_usage": True}}])
async def test_recorded_stream_equals_the_json_answer(stub_url: str, chunk_size: int, extra: dict) -> None:
    body = {**CHAT, **extra}
    sse = await fetch(stub_url, "/v1/chat/completions", {**body, "stream": True})
    answer = json.loads(await fetch(stub_url, "/v1/chat/completions", body))
    rec = streaming.SSERecorder("/v1/chat/completions")
    for i in range(0, len(sse), chunk_size):  # events cut at arbitrary byte boundaries
        rec.feed(sse[i:i + chunk_size])
    assert rec.complete
    got = rec.answer()
    validate_answer("/v1/chat/completions", got)
    assert got["choices"] == answer["choices"]
    assert got["model"] == answer["model"]
    assert ("usage" in got) == ("stream_options" in extra)


async def test_truncated_or_broken_streams_are_not_complete(stub_url: str) -> None:
    sse = await fetch(stub_url, "/v1/chat/completions", {**CHAT, "stream": True})
    cut = streaming.SSERecorder("/v1/chat/completions")
    cut.feed(sse[: len(sse) - len(streaming.DONE)])  # everything but [DONE]
    assert not cut.complete
    bad = streaming.SSERecorder("/v1/chat/completions")
    bad.feed(b"data: {not json}\n\n" + sse)
    assert not bad.complete
    err = streaming.SSERecorder("/v1/chat/completions")
    err.feed(b'data: {"error": {"message": "overloaded"}}\n\ndata: [DONE]\n\n')
    assert not err.complete
    big = streaming.SSERecorder("/v1/chat/completions", max_bytes=100)
    big.feed(sse)
    assert not big.complete


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS}, {"n": 3}])
async def test_replay_parses_back_in_the_openai_client(stub_url: str, include_usage: bool, extra: dict) -> None:
    answer = json.loads(await fetch(stub_url, "/v1/chat/completions", {**CHAT, **extra}))
    answer["choices"][0].setdefault("message", {})
    sse = streaming.replay_chat(answer, include_usage=include_usage)
    assert sse.endswith(b"data: [DONE]\n\n")
    # Parse with the official client, served by a real HTTP server that returns our bytes.
    server = await serve_bytes(sse)
    client = openai.AsyncOpenAI(api_key="x", base_url=str(server.make_url("/v1")), max_retries=0)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    calls: dict[tuple[int, int], list[str]] = {}
    usage = None
    async for chunk in await client.chat.completions.create(**CHAT, stream=True):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
            for tc in c.delta.tool_calls or ():
                slot = calls.setdefault((c.index, tc.index), ["", "", ""])
                slot[0] += tc.id or ""
                slot[1] += (tc.function.name or "") if tc.function else ""
                slot[2] += (tc.function.arguments or "") if tc.function else ""
    await client.close()
    await server.close()
    for choice in answer["choices"]:
        msg = choice["message"]
        assert texts[choice["index"]] == (msg["content"] or "")
        assert finish[choice["index"]] == choice["finish_reason"]
        for j, call in enumerate(msg.get("tool_calls") or ()):
            assert calls[(choice["index"], j)] == [call["id"], call["function"]["name"], call["function"]["arguments"]]
    assert (usage is not None) == include_usage
    if include_usage:
        assert usage.model_dump()["total_tokens"] == answer["usage"]["total_tokens"]
    # And the replay records back into the same answer.
    rec = streaming.SSERecorder("/v1/chat/completions")
    rec.feed(sse)
    assert rec.complete and rec.answer()["choices"] == answer["choices"]


async def test_completion_replay_round_trip(stub_url: str) -> None:
    body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    answer = json.loads(await fetch(stub_url, "/v1/completions", body))
    sse = streaming.replay("/v1/completions", answer, include_usage=True)
    rec = streaming.SSERecorder("/v1/completions")
    rec.feed(sse)
    assert rec.complete and rec.answer()["choices"] == answer["choices"] and rec.usage == answer["usage"]
    live = await fetch(stub_url, "/v1/completions", {**body, "stream": True})
    rec2 = streaming.SSERecorder("/v1/completions")
    rec2.feed(live)
    assert rec2.answer()["choices"] == answer["choices"]


@pytest.mark.parametrize("text", ["", "short", "a " * 200, "x" * 500, "héllo wörld " * 30])
def test_split_text_joins_back(text: str) -> None:
    pieces = streaming.split_text(text, max_chars=16)
    assert "".join(pieces) == text
    assert all(len(p) <= 16 for p in pieces)


def test_validate_answer_rejects_incomplete_answers() -> None:
    for route, bad in [("/v1/chat/completions", {"choices": []}),
                       ("/v1/chat/completions", {"choices": [{"message": {}, "finish_reason": None}]}),
                       ("/v1/completions", {"choices": [{"finish_reason": "stop"}]}),
                       ("/v1/embeddings", {"data": []}),
                       ("/v1/chat/completions", ["not", "an", "object"])]:
        with pytest.raises(InvalidEntry):
            validate_answer(route, bad)


def test_replay_round_trips_logprobs_refusals_and_choices() -> None:
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},
                      {"token": " there", "logprob": -0.5, "bytes": None, "top_logprobs": []}], "refusal": None}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "m",
              "system_fingerprint": "fp", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
              "choices": [
                  {"index": 0, "message": {"role": "assistant", "content": "Hi there " * 20, "refusal": None},
                   "logprobs": lp, "finish_reason": "length"},
                  {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
                   "logprobs": None, "finish_reason": "stop"}]}
    rec = streaming.SSERecorder("/v1/chat/completions")
    rec.feed(streaming.replay_chat(answer, include_usage=True))
    assert rec.complete
    assert rec.answer() == answer


def _record(sse: bytes, chunk_size: int) -> streaming.SSERecorder:
    rec = streaming.SSERecorder("/v1/chat/completions")
    for i in range(0, len(sse), chunk_size):
        rec.feed(sse[i:i + chunk_size])
    return rec


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 10_000])
async def test_every_line_ending_and_cut_records_the_same_answer(stub_url: str, chunk_size: int) -> None:
    """\\n (the fast path), \\r\\n and \\r (the general one), a stream that turns to \\r\\n midway, events of
    several data lines, comments and other fields: one answer, however the bytes are cut."""
    lf = await fetch(stub_url, "/v1/chat/completions", {**CHAT, "stream": True})
    want = _record(lf, 10_000).answer()
    events = lf.split(b"\n\n")
    half = len(events) // 2
    variants = {
        "crlf": lf.replace(b"\n", b"\r\n"), "cr": lf.replace(b"\n", b"\r"),
        "lf then crlf": b"\n\n".join(events[:half]) + b"\n\n" + b"\n\n".join(events[half:]).replace(b"\n", b"\r\n"),
        "fields": lf.replace(b"data: ", b": keep-alive\nevent: message\nid: 7\ndata: "),
        "split data": lf.replace(b',"choices":', b',\ndata: "choices":'),
        "no space": lf.replace(b"data: ", b"data:"),
    }
    for name, sse in variants.items():
        rec = _record(sse, chunk_size)
        assert rec.complete, name
        assert rec.answer() == want, name


def test_numbers_are_recorded_as_the_upstream_wrote_them_and_bad_nesting_is_not_storable() -> None:
    """A 100-digit integer stays an integer (not orjson's float), -0.0 stays a float; a chunk nested past the
    json module's reach makes the stream not storable, and feed does not raise."""
    big = "1" + "0" * 99
    events = [
        f'{{"id":"c","created":{big},"model":"m","choices":[{{"index":0,"delta":{{"role":"assistant","content":"hi"}},'
        '"logprobs":{"content":[{"token":"hi","logprob":-0.0,"bytes":[104,105]}]},"finish_reason":null}]}',
        '{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        f'"usage":{{"prompt_tokens":{big},"completion_tokens":1,"total_tokens":2}}}}',
    ]
    sse = b"".join(b"data: " + e.encode() + b"\n\n" for e in events) + streaming.DONE
    rec = _record(sse, 10_000)
    assert rec.complete
    answer = rec.answer()
    assert answer["created"] == int(big) and isinstance(answer["created"], int)
    assert answer["usage"]["prompt_tokens"] == int(big)
    logprob = answer["choices"][0]["logprobs"]["content"][0]["logprob"]
    assert isinstance(logprob, float) and str(logprob) == "-0.0"
    deep = b"data: " + b'{"choices":' + b"[" * 5000 + b"]" * 5000 + b"}\n\n"
    rec = streaming.SSERecorder("/v1/chat/completions")
    rec.feed(deep)
    assert not rec.ok and not rec.complete
