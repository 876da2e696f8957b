"""What the model server publishes for routers (``/llmcache/v1/cache-state``), over real HTTP on the tiny model.

The published block hashes must be exactly the cached full-block prefixes of salted
requests (their ``cache_salt`` in the hash), follow evictions, never include an unsalted
prompt under the default ``--report-cached-tokens salted``, and a long poll must wake on news.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import aiohttp

from llmcache import prefix_hash
from llmcache.model_server import handlers, loader
from llmcache.model_server.request import cache_namespace
from llmcache.model_server.settings import ModelServerSettings, PrefixCacheSettings

from .helpers import serve_in_thread

PROMPT = list(range(10, 74))  # 64 tokens: four full blocks of 16


def settings(**prefix: Any) -> ModelServerSettings:
    return ModelServerSettings(enable_embeddings=False, prefix_cache=PrefixCacheSettings(**prefix))


def complete(url: str, prompt: list[int], salt: str | None, *, max_tokens: int = 3) -> tuple[dict[str, Any], str]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if salt is not None:
        body["cache_salt"] = salt
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r), r.headers.get(handlers.CACHED_TOKENS_HEADER, "")


def state(url: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{url}/llmcache/v1/cache-state?{query}", timeout=60) as r:
        return json.load(r)


def published(answer: dict[str, Any], into: set[int] | None = None) -> set[int]:
    held = set() if answer["reset"] or into is None else set(into)
    for op, hashes in answer["events"]:
        (held.update if op == "+" else held.difference_update)(hashes)
    return held


def test_salted_prefixes_are_published_as_their_block_hashes(tiny_model: loader.LoadedModel) -> None:
    with serve_in_thread(handlers.create_app(settings(), loaded=tiny_model)) as server:
        assert server.state.ready.wait(60)
        body, header = complete(server.url, PROMPT, "tenant-a")
        ns = cache_namespace(tiny_model, "tenant-a")
        answer = state(server.url)
        assert answer["reset"] and answer["namespace"] == tiny_model.namespace and answer["block_tokens"] == 16
        held = published(answer)
        # Cached: the prompt plus all generated tokens but the last (66 positions: still four full blocks).
        assert held == set(prefix_hash.block_hashes(ns, PROMPT))
        assert header == "0" == str(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        # The router's view: the same prompt under another salt shares no hash.
        assert not held & set(prefix_hash.block_hashes(cache_namespace(tiny_model, "tenant-b"), PROMPT))
        _, header = complete(server.url, PROMPT + [5], "tenant-a")
        assert int(header) == len(PROMPT)  # the header says what usage says, on the way in
        stream = urllib.request.Request(server.url + "/v1/completions", headers={"Content-Type": "application/json"},
                                        data=json.dumps({"prompt": PROMPT + [6], "max_tokens": 2, "stream": True,
                                                         "cache_salt": "tenant-a"}).encode())
        with urllib.request.urlopen(stream, timeout=60) as r:  # streams carry it too, before the first token
            assert r.headers[handlers.CACHED_TOKENS_HEADER] == str(len(PROMPT))
            r.read()
        # An unsalted request is not published under --report-cached-tokens salted (the default).
        complete(server.url, [7] * 64, None)
        after = state(server.url, epoch=answer["epoch"], since=answer["seq"])
        unsalted = set(prefix_hash.block_hashes(tiny_model.namespace, [7] * 64))
        assert not published(after, held) & unsalted
        assert after["load"]["num_running"] == 0 and after["load"]["max_num_seqs"] == 16


def test_unsalted_prefixes_are_published_with_report_always(tiny_model: loader.LoadedModel) -> None:
    with serve_in_thread(handlers.create_app(settings(report_cached_tokens="always"), loaded=tiny_model)) as server:
        assert server.state.ready.wait(60)
        complete(server.url, PROMPT, None)
        assert published(state(server.url)) == set(prefix_hash.block_hashes(tiny_model.namespace, PROMPT))


def test_evictions_are_published_and_a_long_poll_wakes_on_news(tiny_model: loader.LoadedModel) -> None:
    per_token = 2 * 2 * 2 * 16 * 4  # K+V · layers · KV heads · head_dim · float32 of the tiny model
    with serve_in_thread(handlers.create_app(settings(budget_bytes=100 * per_token), loaded=tiny_model)) as server:
        assert server.state.ready.wait(60)
        complete(server.url, PROMPT, "a", max_tokens=1)
        first = state(server.url)
        held = published(first)
        assert held == set(prefix_hash.block_hashes(cache_namespace(tiny_model, "a"), PROMPT))

        async def poll_then_request() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                params = {"epoch": first["epoch"], "since": str(first["seq"]), "wait_s": "30"}
                waiting = asyncio.ensure_future(http.get(server.url + "/llmcache/v1/cache-state", params=params))
                await asyncio.sleep(0)  # the poll is on its way before the news exists
                other = [p + 100 for p in PROMPT]  # 64 more tokens: the budget (100) forces out "a"'s leaf
                await asyncio.to_thread(complete, server.url, other, "b", max_tokens=1)
                async with await waiting as r:
                    return await r.json()

        news = asyncio.run(poll_then_request())
        now = published(news, held)
        b_blocks = set(prefix_hash.block_hashes(cache_namespace(tiny_model, "b"), [p + 100 for p in PROMPT]))
        assert b_blocks <= now and not held & now  # "a" was evicted and its blocks withdrawn
        # Starting over (wrong epoch) gives the same set as following the events.
        assert published(state(server.url, epoch="stale", since=1)) == now
