"""Issue 18 item 5: bad input that ended as a 500 or a wrong entry, against the real proxy.

- a header value that is not UTF-8 (the admin token, the tenant header, a control) was a 500;
- an answer the upstream filtered (``finish_reason: content_filter``) or left empty was cached;
- ``X-LLMCache-*`` request headers, the admin token among them, reached the upstream;
- a chat/completions path spelled another way was forwarded uncached and without ``cache_salt``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from proxy_helpers import ADMIN_TOKEN, CHAT, Stack

ROUTE = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer sk-a"}


async def raw_request(stack: Stack, method: str, path: str, headers: list[tuple[bytes, bytes]],
                      body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes an HTTP client library would not (header values that are not UTF-8); (status, body)."""
    port = int(stack.proxy_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: x", b"Connection: close",
                f"Content-Length: {len(body)}".encode(), *(k + b": " + v for k, v in headers)]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)  # liveness bound
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


BAD = b"\xff\xfe"

# (method, path, headers, body): each decodes the header that carries BAD.
UNDECODABLE = {
    "admin-token-on-stats": ("GET", "/llmcache/v1/stats", [(b"X-LLMCache-Admin-Token", BAD)], b""),
    "admin-token-on-invalidate": ("POST", "/llmcache/v1/invalidate", [(b"X-LLMCache-Admin-Token", BAD)],
                                  b'{"all": true}'),
    "admin-bearer-on-stats": ("GET", "/llmcache/v1/stats", [(b"Authorization", b"Bearer " + BAD)], b""),
    "tenant-authorization": ("POST", ROUTE, [(b"Authorization", b"Bearer sk-" + BAD)], json.dumps(CHAT).encode()),
    "tenant-custom-header": ("POST", ROUTE, [(b"Authorization", b"Bearer sk-a"), (b"X-Team", BAD)],
                             json.dumps(CHAT).encode()),
    "namespace-control": ("POST", ROUTE, [(b"Authorization", b"Bearer sk-a"), (b"X-LLMCache-Namespace", BAD)],
                          json.dumps(CHAT).encode()),
    "cache-control": ("POST", ROUTE, [(b"Authorization", b"Bearer sk-a"), (b"Cache-Control", b"max-age=" + BAD)],
                      json.dumps(CHAT).encode()),
    "threshold-control": ("POST", ROUTE, [(b"Authorization", b"Bearer sk-a"),
                                          (b"X-LLMCache-Similarity-Threshold", BAD)], json.dumps(CHAT).encode()),
}


@pytest.mark.parametrize("case", sorted(UNDECODABLE))
async def test_header_values_that_are_not_utf8_are_a_clear_400(proxy_stack, case: str) -> None:
    method, path, headers, body = UNDECODABLE[case]
    tenant_header = "X-Team" if case == "tenant-custom-header" else "Authorization"
    stack: Stack = await proxy_stack(cache_tenant_header=tenant_header)
    status, payload = await raw_request(stack, method, path, [*headers, (b"Content-Type", b"application/json")], body)
    assert status == 400, payload
    error = json.loads(payload)["error"]
    name = headers[-1][0].decode()
    assert name in error["message"] and "UTF-8" in error["message"], error
    assert await stack.upstream_count() == 0
    # The same request with a readable value works (the test's other headers are fine).
    fixed = [(k, v.replace(BAD, b"ok")) for k, v in headers]
    if case.startswith("admin"):
        fixed = [(b"Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    status, payload = await raw_request(stack, method, path, [*fixed, (b"Content-Type", b"application/json")], body)
    assert status in (200, 400) and status == (400 if case in ("cache-control", "threshold-control") else 200), payload


async def test_pass_through_header_that_is_not_utf8_is_a_400_not_a_mangled_forward(proxy_stack) -> None:
    stack: Stack = await proxy_stack()
    status, payload = await raw_request(stack, "GET", "/v1/models", [(b"X-Custom", BAD)])
    assert status == 400 and b"X-Custom" in payload
    assert await stack.upstream_count() == 0


# --- answers that must not be stored ------------------------------------------------------------


def _answer(content: str | None, finish: str, **message: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}}


def _stream(content: str, finish: str) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    if content:
        events.append({**base, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def answering(answer: dict[str, Any] | None = None, stream: bytes | None = None):
    async def script(request: web.Request, body: dict) -> web.StreamResponse:
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(stream or b"")
            await resp.write_eof()
            return resp
        return web.json_response(answer)
    return script


NOT_STORED = {
    "content-filter-empty": (_answer("", "content_filter"), _stream("", "content_filter")),
    "content-filter-partial": (_answer("Here is how", "content_filter"), _stream("Here is how", "content_filter")),
    "stop-but-empty": (_answer("", "stop"), _stream("", "stop")),
    "stop-but-blank": (_answer(" \n", "stop"), _stream(" \n", "stop")),
    "unknown-finish-reason": (_answer("ok", "abort"), _stream("ok", "abort")),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", sorted(NOT_STORED))
async def test_filtered_or_empty_answers_are_relayed_but_never_stored(scripted_stack, case: str,
                                                                      stream: bool) -> None:
    answer, events = NOT_STORED[case]
    stack, seen = await scripted_stack(answering(answer, events))
    body = {**CHAT, "stream": stream}
    for _ in range(2):
        status, headers, payload = await stack.post(ROUTE, body, headers=AUTH)
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"
        if not stream:
            assert json.loads(payload) == answer  # relayed as the upstream sent it
    assert len(seen) == 2


@pytest.mark.parametrize("finish", ["stop", "length"])
async def test_normal_finishes_are_stored(scripted_stack, finish: str) -> None:
    """Control: the same upstream with a normal end is stored (stop, length; tool_calls: tests/proxy)."""
    stack, seen = await scripted_stack(answering(_answer("Hello", finish), _stream("Hello", finish)))
    statuses = [(await stack.post(ROUTE, {**CHAT, "stream": s}, headers=AUTH))[1]["X-LLMCache-Status"]
                for s in (False, True)]
    assert statuses == ["miss", "hit"] and len(seen) == 1


async def test_a_refusal_without_content_is_a_normal_answer(scripted_stack) -> None:
    stack, seen = await scripted_stack(answering(_answer(None, "stop", refusal="I can't help with that.")))
    statuses = [(await stack.post(ROUTE, CHAT, headers=AUTH))[1]["X-LLMCache-Status"] for _ in range(2)]
    assert statuses == ["miss", "hit"] and len(seen) == 1


# --- control headers stay with the proxy -------------------------------------------------------


CONTROL_HEADERS = {"X-LLMCache-Admin-Token": ADMIN_TOKEN, "X-LLMCache-Namespace": "docs",
                   "X-LLMCache-Similarity-Threshold": "0.99", "x-llmcache-anything": "y"}


@pytest.mark.parametrize("path", ["miss", "bypass", "pass-through"])
async def test_control_headers_are_never_forwarded(scripted_stack, path: str) -> None:
    received: list[dict[str, str]] = []

    async def script(request: web.Request, body: dict) -> web.StreamResponse:
        received.append(dict(request.headers))
        return web.json_response(_answer("Hello", "stop"))

    stack, _ = await scripted_stack(script)
    route, body = {"miss": (ROUTE, CHAT), "bypass": (ROUTE, {**CHAT, "temperature": 1}),
                   "pass-through": ("/v1/responses", {"input": "hi"})}[path]
    status, _, _ = await stack.post(route, body, headers={**AUTH, **CONTROL_HEADERS})
    assert status == 200
    [seen] = received
    assert not [k for k in seen if k.lower().startswith("x-llmcache-")], seen
    assert seen["Authorization"] == "Bearer sk-a"  # the credential itself still goes upstream


# --- paths an upstream may normalise into a cacheable route -----------------------------------


ODD_PATHS = ["/v1/chat/completions/", "//v1/chat/completions", "/v1/chat%2Fcompletions", "/v1/chat%2fcompletions",
             "/v1/./chat/completions", "/v1/chat/completions;x=1", "/v1/chat%252Fcompletions"]


@pytest.mark.parametrize("odd", ODD_PATHS)
async def test_odd_spellings_of_chat_completions_are_served_as_it_with_the_salt(scripted_stack, odd: str) -> None:
    received: list[tuple[str, dict]] = []

    async def script(request: web.Request, body: dict) -> web.StreamResponse:
        received.append((request.raw_path, body))
        return web.json_response(_answer("Hello", "stop"))

    stack, _ = await scripted_stack(script)
    for path in (odd, ROUTE):  # (raw: an HTTP client library would normalise the odd path itself)
        status, payload = await raw_request(stack, "POST", path, [(b"Authorization", b"Bearer sk-a"),
                                                                  (b"Content-Type", b"application/json")],
                                            json.dumps(CHAT).encode())
        assert status == 200, payload
        await stack.flush()
    [(upstream_path, forwarded)] = received  # cached under the route: the canonical spelling was a hit
    assert upstream_path == ROUTE
    assert isinstance(forwarded.get("cache_salt"), str) and len(forwarded["cache_salt"]) == 32


async def test_a_body_the_salt_cannot_go_into_is_refused_not_forwarded(scripted_stack) -> None:
    stack, seen = await scripted_stack(answering(_answer("Hello", "stop")))
    for raw in (b"[1, 2]", b"\"text\"", b'{"model": "m", "messages": "\xff"}', b"{not json"):
        status, _, payload = await stack.post(ROUTE, None, raw=raw,
                                              headers={**AUTH, "Content-Type": "application/json"})
        assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_json", payload
    assert seen == []
