"""Request control headers: a bad value is a 400 naming the header, on every cacheable route."""

from __future__ import annotations

import json

import pytest
from proxy_helpers import CHAT

from llmcache.proxy import controls


@pytest.mark.parametrize(("header", "value", "says"), [
    ("X-LLMCache-Similarity-Threshold", "banana", "X-LLMCache-Similarity-Threshold: must be a cosine similarity "
                                                  "between 0 and 1 such as 0.95, got 'banana'"),
    ("X-LLMCache-Similarity-Threshold", "1.5", "X-LLMCache-Similarity-Threshold: must be a cosine similarity"),
    ("X-LLMCache-Similarity-Threshold", "nan", "X-LLMCache-Similarity-Threshold: must be a cosine similarity"),
    ("Cache-Control", "max-age=ten", "Cache-Control: max-age must be a whole number of seconds"),
    ("X-LLMCache-Namespace", "x" * 300, "X-LLMCache-Namespace: must be at most 256 printable characters"),
])
async def test_bad_control_header_is_a_400_naming_it(proxy_stack, header: str, value: str, says: str) -> None:
    stack = await proxy_stack()
    for path, body in (("/v1/chat/completions", CHAT),
                       ("/v1/embeddings", {"model": "stub-model", "input": "hello"})):
        status, _headers, raw = await stack.post(path, body, headers={header: value})
        error = json.loads(raw)["error"]
        assert status == 400, raw
        assert error["code"] == "invalid_control_header" and error["message"].startswith(says)
    assert await stack.upstream_count() == 0  # refused before anything was looked up or forwarded


async def test_bypassed_requests_are_checked_too(proxy_stack) -> None:
    stack = await proxy_stack()
    sampled = {**CHAT, "temperature": 0.7}  # a bypass: still no silent ignoring of the header
    status, _, _ = await stack.post("/v1/chat/completions", sampled,
                                    headers={"X-LLMCache-Similarity-Threshold": "banana"})
    assert status == 400


async def test_good_controls_and_unknown_cache_control_directives_pass(proxy_stack) -> None:
    stack = await proxy_stack()
    h = {"X-LLMCache-Similarity-Threshold": "0.97", "Cache-Control": "max-age=600, no-transform",
         "X-LLMCache-Namespace": "docs"}
    assert (await stack.post("/v1/chat/completions", CHAT, headers=h))[1]["X-LLMCache-Status"] == "miss"
    assert (await stack.post("/v1/chat/completions", CHAT, headers=h))[1]["X-LLMCache-Status"] == "hit"


def test_parse_reads_every_control() -> None:
    c = controls.parse({"X-LLMCache-Similarity-Threshold": " 0.9 ", "Cache-Control": "only-if-cached",
                        "X-LLMCache-Namespace": "faq"})
    assert c.similarity_threshold == 0.9 and c.directives.only_if_cached and c.namespace == "faq"
    assert controls.parse({}) == controls.RequestControls()
