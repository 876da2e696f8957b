"""The stub upstream speaks real OpenAI JSON/SSE, deterministically, with injectable faults."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from proxy_helpers import CHAT, TOOLS

from llmcache.testing.stub_upstream import StubConfig, create_stub_app


@pytest.fixture
async def stub():
    cfg = StubConfig()
    server = TestServer(create_stub_app(cfg), host="127.0.0.1")
    await server.start_server()
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)
    yield server, cfg, client
    await client.close()
    await server.close()


async def test_answers_are_deterministic_and_ids_count(stub) -> None:
    server, _cfg, client = stub
    a = await client.chat.completions.create(**CHAT)
    b = await client.chat.completions.create(**CHAT)
    c = await client.chat.completions.create(**{**CHAT, "max_tokens": 4})
    assert a.choices[0].message.content == b.choices[0].message.content != c.choices[0].message.content
    assert len(c.choices[0].message.content.split()) == 5 and c.choices[0].finish_reason == "stop"
    assert a.id != b.id and a.usage.total_tokens > 0
    tools = await client.chat.completions.create(**CHAT, tools=TOOLS)
    assert tools.choices[0].finish_reason == "tool_calls"
    assert [t.function.name for t in tools.choices[0].message.tool_calls] == ["lookup", "count"]
    assert len((await client.embeddings.create(model="m", input="x")).data[0].embedding) == 8
    assert (await client.completions.create(model="m", prompt="p", max_tokens=3)).choices[0].text
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/stub/requests")) as r:
        counts = await r.json()
    assert counts["total"] == 6 and counts["by_path"]["/v1/chat/completions"] == 4


async def test_faults(stub) -> None:
    server, _cfg, client = stub
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(**CHAT, extra_headers={"X-Stub-Fault": "500"})
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(**CHAT, extra_headers={"X-Stub-Fault": "reset"})
    with pytest.raises(openai.APIConnectionError):  # a cut stream surfaces as a transport error
        async for _ in await client.chat.completions.create(**CHAT, stream=True,
                                                              extra_headers={"X-Stub-Fault": "truncate"}):
            pass
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/stub/config"), json={"fault": "429"}) as r:
            assert (await r.json())["fault"] == "429"
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**CHAT)
        async with s.post(server.make_url("/stub/reset")) as r:
            assert r.status == 200
        async with s.get(server.make_url("/stub/requests")) as r:
            assert (await r.json())["total"] == 0
    assert (await client.chat.completions.create(**CHAT)).choices[0].finish_reason == "stop"
