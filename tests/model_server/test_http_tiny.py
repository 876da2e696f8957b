"""HTTP layer on the tiny random model (fast): token-id prompts, cached_tokens, SSE framing, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from llmcache.model_server import handlers, loader
from llmcache.model_server import request as rq
from llmcache.model_server.settings import ModelServerSettings, ModelSettings, PrefixCacheSettings, SinkSettings

from .helpers import RunningServer, serve_in_thread

PROMPT = list(range(10, 60))


@pytest.fixture(scope="module")
def server(tiny_model: loader.LoadedModel) -> Iterator[RunningServer]:
    settings = ModelServerSettings(prefix_cache=PrefixCacheSettings(budget_bytes=8 * 2**20),
                                   sink=SinkSettings(sink_tokens=4, window_tokens=0), enable_embeddings=False)
    with serve_in_thread(handlers.create_app(settings, loaded=tiny_model)) as running:
        assert running.state.ready.wait(60)
        yield running


def post(server: RunningServer, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def test_cached_tokens_on_repeat(server: RunningServer) -> None:
    body = {"prompt": PROMPT + [1], "max_tokens": 5, "temperature": 0, "cache_salt": "repeat"}
    status, raw = post(server, "/v1/completions", body)
    assert status == 200
    first = json.loads(raw)
    assert first["object"] == "text_completion" and first["usage"]["prompt_tokens"] == 51
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    second = json.loads(post(server, "/v1/completions", body)[1])
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 50
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
    assert second["usage"]["completion_tokens"] == 5 and second["choices"][0]["finish_reason"] == "length"


def test_sse_stream_framing(server: RunningServer) -> None:
    status, raw = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                   "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    full = json.loads(post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0})[1])
    assert text == full["choices"][0]["text"]


def test_per_request_sink_window(server: RunningServer) -> None:
    status, raw = post(server, "/v1/completions", {"prompt": PROMPT[:8], "max_tokens": 100, "temperature": 0.8,
                                                   "seed": 1, "sink_window_tokens": 16, "cache_salt": "sink"})
    assert status == 200, raw
    engine = server.state.engine
    assert engine is not None and engine.prefix_cache is not None
    # 8 + 100 tokens through a 4 + 16 window: the window evicted, so nothing was stored.
    assert json.loads(raw)["usage"]["completion_tokens"] > 20
    assert engine.prefix_cache.cached_tokens(rq.cache_namespace(engine.loaded, "sink")) == []


@pytest.mark.parametrize(("path", "payload", "status", "param"), [
    ("/v1/completions", {"prompt": [5] * 1100, "max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "n": 99}, 400, "n"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"prompt": PROMPT, "stop": 7}, 400, "stop"),
    ("/v1/completions", {"prompt": [PROMPT, PROMPT]}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "messages"),
    ("/v1/embeddings", {"input": "hi"}, 404, None),
])
def test_errors_are_openai_json(server: RunningServer, path: str, payload: dict[str, Any], status: int,
                                param: str | None) -> None:
    got, raw = post(server, path, payload)
    assert got == status
    err = json.loads(raw)["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_too_long_prompt_message_has_the_numbers(server: RunningServer) -> None:
    _, raw = post(server, "/v1/completions", {"prompt": [5] * 1100, "max_tokens": 4})
    msg = json.loads(raw)["error"]["message"]
    assert "1024" in msg and "1100" in msg


def test_unknown_route_is_json_404(server: RunningServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(server.url + "/v1/nope", timeout=30)
    assert exc.value.code == 404 and "error" in json.loads(exc.value.read())


def test_unknown_model_is_404_model_not_found(server: RunningServer) -> None:
    chat_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    for path, payload in (("/v1/completions", {"model": "gpt-4o", "prompt": PROMPT, "max_tokens": 2}),
                          ("/v1/chat/completions", chat_body)):
        status, raw = post(server, path, payload)
        assert status == 404, raw
        err = json.loads(raw)["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "invalid_request_error"
        assert "gpt-4o" in err["message"] and "--served-model-name" in err["message"]
    # The spec name (what the README and `llmcache up` clients send) and no name at all are served.
    assert post(server, "/v1/completions", {"model": "default", "prompt": PROMPT, "max_tokens": 2})[0] == 200
    assert post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})[0] == 200
    with urllib.request.urlopen(server.url + "/v1/models", timeout=30) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["default"]


def test_served_model_name_aliases(tiny_model: loader.LoadedModel) -> None:
    settings = ModelServerSettings(model=ModelSettings(served_model_name=("smol", "gpt-4o-mini")),
                                   enable_embeddings=False, prefix_cache=PrefixCacheSettings(budget_bytes=1 << 20))
    with serve_in_thread(handlers.create_app(settings, loaded=tiny_model)) as running:
        assert running.state.ready.wait(60)
        with urllib.request.urlopen(running.url + "/v1/models", timeout=30) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == ["smol", "gpt-4o-mini"]
        status, raw = post(running, "/v1/completions", {"model": "gpt-4o-mini", "prompt": PROMPT, "max_tokens": 2})
        assert status == 200 and json.loads(raw)["model"] == "smol"
        assert post(running, "/v1/completions", {"model": "default", "prompt": PROMPT, "max_tokens": 2})[0] == 404


@pytest.mark.parametrize(("mode", "salt", "reported"), [
    ("salted", None, False), ("salted", "tenant-a", True), ("always", None, True), ("never", "tenant-a", False)])
def test_cached_tokens_reported_only_where_configured(tiny_model: loader.LoadedModel, mode: str, salt: str | None,
                                                      reported: bool) -> None:
    settings = ModelServerSettings(enable_embeddings=False, prefix_cache=PrefixCacheSettings(
        budget_bytes=8 * 2**20, report_cached_tokens=mode))
    body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0,
                            "stream": True, "stream_options": {"include_usage": True}}
    if salt is not None:
        body["cache_salt"] = salt
    with serve_in_thread(handlers.create_app(settings, loaded=tiny_model)) as running:
        assert running.state.ready.wait(60)
        assert post(running, "/v1/completions", {**body, "stream": False})[0] == 200
        plain = json.loads(post(running, "/v1/completions", {**body, "stream": False})[1])
        streamed = [json.loads(e.removeprefix("data: ")) for e in
                    post(running, "/v1/completions", body)[1].decode().split("\n\n") if e and "[DONE]" not in e]
        # The cache itself was hit either way; only what the client is told differs.
        assert running.state.metrics.prefix_hit_tokens._value.get() == 2 * (len(PROMPT) - 1)
    want = len(PROMPT) - 1 if reported else 0
    assert plain["usage"]["prompt_tokens_details"]["cached_tokens"] == want
    assert streamed[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == want
