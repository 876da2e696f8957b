"""Parsing and validating OpenAI request bodies: every 400 the generation endpoints give comes from here.

Each function reads one concern of the body (sampling, sink window, options, the prompt)
and raises :class:`HTTPError` naming the offending ``param``; nothing here touches the
engine.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmcache import prompts
from llmcache.errors import LLMCacheError
from llmcache.model_server import loader as loader_mod
from llmcache.model_server import request as req_mod
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.settings import ModelServerSettings

__all__ = ["MAX_N", "HTTPError", "chat_prompt_ids", "common", "completion_prompt_ids", "json_body", "sampling", "sink"]

MAX_N = 8
_MAX_STOP = 4


class HTTPError(Exception):
    """An OpenAI-style error answer: status, message, type, param, code."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code




async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except Exception as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return body


def _opt_number(body: dict[str, Any], name: str, default: float, *, kind: type = float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise HTTPError(400, f"{name} must be {'an integer' if kind is int else 'a number'}", param=name)
    return value


def sampling(settings: ModelServerSettings, body: dict[str, Any]) -> req_mod.SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = settings.model.default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise HTTPError(400, "max_tokens must be an integer", param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= _MAX_STOP:
        stops = tuple(stop)
    else:
        raise HTTPError(400, f"stop must be a string or a list of at most {_MAX_STOP} strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise HTTPError(400, "seed must be an integer", param="seed")
    return req_mod.SamplingParams(
        max_tokens=max_tokens,
        temperature=float(_opt_number(body, "temperature", 1.0)),
        top_p=float(_opt_number(body, "top_p", 1.0)),
        seed=seed,
        stop=stops,
    )


def sink(settings: ModelServerSettings, body: dict[str, Any]) -> sink_mod.SinkWindow | None:
    window = int(_opt_number(body, "sink_window_tokens", settings.sink.window_tokens, kind=int))
    sinks = int(_opt_number(body, "sink_tokens", settings.sink.sink_tokens, kind=int))
    if window <= 0:
        return None
    try:
        return sink_mod.SinkWindow(sink_tokens=sinks, window_tokens=window)
    except LLMCacheError as exc:
        raise HTTPError(400, str(exc), param="sink_window_tokens") from exc


def common(settings: ModelServerSettings, body: dict[str, Any]) -> tuple[int, bool, dict[str, Any]]:
    n = int(_opt_number(body, "n", 1, kind=int))
    if not 1 <= n <= MAX_N:
        raise HTTPError(400, f"n must be between 1 and {MAX_N}", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HTTPError(400, "stream must be a boolean", param="stream")
    salt = body.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise HTTPError(400, "cache_salt must be a string", param="cache_salt")
    use_prefix = body.get("prefix_cache", True)
    if not isinstance(use_prefix, bool):
        raise HTTPError(400, "prefix_cache must be a boolean", param="prefix_cache")
    for unsupported in ("logprobs", "top_logprobs", "echo", "best_of", "tools", "functions", "logit_bias"):
        value = body.get(unsupported)
        if value not in (None, False, 0, [], {}) and not (unsupported == "best_of" and value == 1):
            raise HTTPError(400, f"{unsupported} is not supported by the llmcache model server; remove it",
                             param=unsupported, code="unsupported_parameter")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise HTTPError(400, "stream_options must be an object", param="stream_options")
    extras = {"cache_salt": salt, "enable_prefix_cache": use_prefix and settings.prefix_cache.enable_prefix_cache,
              "include_usage": bool(stream_options.get("include_usage", False))}
    return n, stream, extras


def chat_prompt_ids(loaded: loader_mod.LoadedModel, body: dict[str, Any]) -> list[int]:
    try:
        clean = prompts.chat_messages(body.get("messages"))
    except prompts.PromptError as exc:
        raise HTTPError(400, str(exc), param=exc.param) from exc
    tok = loaded.tokenizer
    if tok is None:
        raise HTTPError(400, "this model has no tokenizer; use /v1/completions with token ids", param="messages")
    # Render the template to text, then tokenize the whole prompt once: tokenizing pieces
    # separately would give different ids at the seams (BPE merges) and break prefix reuse.
    text = tok.apply_chat_template(clean, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def completion_prompt_ids(loaded: loader_mod.LoadedModel, body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if not isinstance(prompt, str):
        raise HTTPError(400, "prompt must be a string, a list with one string, or a list of token ids "
                              "(batches of prompts are not supported; send one request per prompt)", param="prompt")
    if loaded.tokenizer is None:
        raise HTTPError(400, "this model has no tokenizer; send the prompt as token ids", param="prompt")
    return list(loaded.tokenizer(prompt)["input_ids"])
