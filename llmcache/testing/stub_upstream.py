"""A small, real OpenAI-speaking upstream for tests, benchmarks and demos.

It answers ``/v1/chat/completions`` (streaming and not, tool calls when
``tools`` are given), ``/v1/completions``, ``/v1/embeddings`` and
``/v1/models`` with *deterministic* content derived from the request body (the
same body always yields the same text, so a cached answer can be compared with
a fresh one), while the ``id`` carries a per-process request counter (so a test
can tell a cached answer from a fresh one).

Fault injection, per request with the header ``X-Stub-Fault`` or for every
request with ``POST /stub/config {"fault": …}``:

=============  ==============================================================
``500``        HTTP 500 with an OpenAI error body
``429``        HTTP 429 with an OpenAI error body
``timeout``    sleep ``timeout_s`` (default 30 s) before answering
``reset``      close the TCP connection without an answer
``truncate``   stream half the answer, then close without ``data: [DONE]``
               (non-streaming: send half the declared Content-Length)
=============  ==============================================================

Meaning-class mode (the stream benchmark): ``answers`` maps a prompt (the last user message, or a
completion's prompt) to its answer text; a request whose prompt is in the map gets that text, so
paraphrases of one question share an answer and its hard negatives get theirs. Set it with
``POST /stub/config {"answers": {…}}`` or ``--answers FILE.json``; other prompts get the hash words.

Control endpoints: ``GET /stub/requests`` → ``{"total": n, "by_path": {…}}``
(the counter single-flight tests read), ``POST /stub/reset`` (zero counters
and faults), ``POST /stub/config {"latency_ms", "chunk_delay_ms", "fault"}``,
``* /stub/echo/…`` (describes the request it got: method, path, query,
headers, body SHA-256 and size: what pass-through tests compare).

Run: ``python -m llmcache.testing.stub_upstream --listen 127.0.0.1:9000 --latency-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["StubConfig", "answer_text", "create_stub_app", "main"]

log = logging.getLogger(__name__)

_WORDS = ("alpha", "bravo", "cache", "delta", "echo", "forest", "gamma", "harbor", "index", "jade",
          "kernel", "lumen", "matrix", "nova", "orbit", "prism", "quartz", "radix", "sigma", "token",
          "umbra", "vector", "wave", "xenon", "yield", "zephyr")

#: Body fields that do not change the stub's answer (mirrors the proxy's key).
_TRANSPORT = frozenset({"stream", "stream_options", "user"})


@dataclass(slots=True)
class StubConfig:
    """Mutable behaviour of the stub (tests change it through ``/stub/config``)."""

    latency_ms: float = 0.0
    """Fixed delay before the first byte of every API answer (ms). Default 0: as fast as possible."""
    chunk_delay_ms: float = 0.0
    """Delay between SSE chunks (ms). Default 0."""
    fault: str | None = None
    """Fault applied to every API request (see module docstring); ``None`` = healthy."""
    timeout_s: float = 30.0
    """How long the ``timeout`` fault sleeps (s)."""
    requests: Counter[str] = field(default_factory=Counter)
    answers: dict[str, str] = field(default_factory=dict)
    """Prompt → answer text (meaning-class mode, see the module docstring); empty = hash words only."""


_CONFIG = web.AppKey("stub_config", StubConfig)


def _digest(body: dict[str, Any]) -> str:
    material = {k: v for k, v in body.items() if k not in _TRANSPORT}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def answer_text(body: dict[str, Any], *, digest: str | None = None) -> str:
    """The deterministic answer for a request body: a few words chosen by the body's hash
    (``digest``: that hash when the caller already has it)."""
    if digest is None:
        digest = _digest(body)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 12
    n_words = max(1, min(int(max_tokens), 64))
    words = [_WORDS[int(digest[i * 2 % 60:i * 2 % 60 + 2], 16) % len(_WORDS)] for i in range(n_words)]
    return f"[{digest[:8]}] " + " ".join(words)


def _prompt_of(body: dict[str, Any]) -> str | None:
    """The last user message's text (chat) or the prompt (completions)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
        return None
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else None


def _text_for(cfg: StubConfig, body: dict[str, Any], digest: str) -> str:
    if cfg.answers:
        prompt = _prompt_of(body)
        if prompt is not None and prompt in cfg.answers:
            return cfg.answers[prompt]
    return answer_text(body, digest=digest)


def _error(status: int, message: str, *, type_: str = "server_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": None}},
                             status=status)


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("messages"), list):
        return sum(_count_tokens(json.dumps(m)) for m in body["messages"])
    return _count_tokens(json.dumps(body.get("prompt", body.get("input", ""))))


async def _read_json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not valid JSON", type_="invalid_request_error")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", type_="invalid_request_error")
    if not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", type_="invalid_request_error")
    return body


async def _apply_fault(request: web.Request, cfg: StubConfig, fault: str | None) -> web.StreamResponse | None:
    """Return a response (or raise) when ``fault`` answers instead; ``None`` to answer normally."""
    latency_ms = float(request.headers.get("X-Stub-Latency-Ms") or cfg.latency_ms)
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)
    if fault in ("500", "429"):
        return _error(int(fault), f"injected fault {fault}")
    if fault == "timeout":
        await asyncio.sleep(cfg.timeout_s)
        return _error(504, "stub timed out")
    if fault == "reset":
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError  # nothing more to send on an aborted connection
    return None


async def _admit(request: web.Request) -> tuple[StubConfig, dict[str, Any], str | None] | web.StreamResponse:
    """The config, JSON body and active fault of an API request (after the configured latency), or
    the response that answers it instead (a 400 for a bad body, or the injected fault)."""
    cfg = request.app[_CONFIG]
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    fault = request.headers.get("X-Stub-Fault") or cfg.fault
    if (faulted := await _apply_fault(request, cfg, fault)) is not None:
        return faulted
    return cfg, body, fault


def _include_usage(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _tool_calls(body: dict[str, Any], digest: str) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    calls = []
    for i, tool in enumerate(tools[:2]):
        name = (tool.get("function") or {}).get("name", f"tool_{i}") if isinstance(tool, dict) else f"tool_{i}"
        args = json.dumps({"query": digest[i * 8:(i + 1) * 8], "n": i + 1})
        calls.append({"id": f"call_{digest[:6]}{i}", "type": "function", "function": {"name": name, "arguments": args}})
    return calls


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(request: web.Request, cfg: StubConfig, chunks: list[dict[str, Any]], *,
                  truncate: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    limit = len(chunks) // 2 if truncate else len(chunks)
    for i, chunk in enumerate(chunks[:limit]):
        if i and cfg.chunk_delay_ms > 0:
            await asyncio.sleep(cfg.chunk_delay_ms / 1000)
        await resp.write(_sse(chunk))
    if truncate:
        assert request.transport is not None
        request.transport.abort()
        return resp
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _next_id(cfg: StubConfig, prefix: str, digest: str) -> str:
    return f"{prefix}-{digest[:10]}-{cfg.requests['__api__']}"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    admitted = await _admit(request)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    cfg, body, fault = admitted
    digest = _digest(body)
    text = _text_for(cfg, body, digest)
    calls = _tool_calls(body, digest)
    n = int(body.get("n") or 1)
    created = int(time.time())
    rid = _next_id(cfg, "chatcmpl", digest)
    finish = "tool_calls" if calls else ("length" if body.get("max_tokens") == 1 else "stop")
    prompt_tokens = _prompt_tokens(body)
    completion_tokens = _count_tokens(text) * n
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens,
             "prompt_tokens_details": {"cached_tokens": 0}}
    base = {"id": rid, "created": created, "model": body["model"], "system_fingerprint": "fp_stub"}
    if not body.get("stream"):
        choices = []
        for i in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": None if calls else text, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        payload = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
        if fault == "truncate":
            return await _truncated_json(request, payload)
        return web.json_response(payload)
    include_usage = _include_usage(body)
    chunk_base = {**base, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    chunks: list[dict[str, Any]] = []
    for i in range(n):
        chunks.append({**chunk_base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}], **extra})
        if calls:
            for j, call in enumerate(calls):
                head = {"index": j, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                chunks.append({**chunk_base, "choices": [{"index": i, "delta": {"tool_calls": [head]},
                                                          "logprobs": None, "finish_reason": None}], **extra})
                args = call["function"]["arguments"]
                for part in (args[: len(args) // 2], args[len(args) // 2:]):
                    chunks.append({**chunk_base, "choices": [{"index": i, "delta": {"tool_calls": [
                        {"index": j, "function": {"arguments": part}}]}, "logprobs": None, "finish_reason": None}],
                        **extra})
        else:
            for piece in _pieces(text):
                chunks.append({**chunk_base, "choices": [{"index": i, "delta": {"content": piece},
                                                          "logprobs": None, "finish_reason": None}], **extra})
        chunks.append({**chunk_base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                  "finish_reason": finish}], **extra})
    if include_usage:
        chunks.append({**chunk_base, "choices": [], "usage": usage})
    return await _stream(request, cfg, chunks, truncate=fault == "truncate")


async def _truncated_json(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    data = json.dumps(payload).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    assert request.transport is not None
    request.transport.abort()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    admitted = await _admit(request)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    cfg, body, fault = admitted
    digest = _digest(body)
    text = _text_for(cfg, body, digest)
    rid = _next_id(cfg, "cmpl", digest)
    base = {"id": rid, "created": int(time.time()), "model": body["model"], "system_fingerprint": "fp_stub"}
    prompt_tokens = _prompt_tokens(body)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _count_tokens(text),
             "total_tokens": prompt_tokens + _count_tokens(text)}
    if not body.get("stream"):
        payload = {**base, "object": "text_completion", "usage": usage,
                   "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}]}
        if fault == "truncate":
            return await _truncated_json(request, payload)
        return web.json_response(payload)
    include_usage = _include_usage(body)
    chunks = [{**base, "object": "text_completion",
               "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
              for piece in _pieces(text)]
    chunks.append({**base, "object": "text_completion",
                   "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**base, "object": "text_completion", "choices": [], "usage": usage})
    return await _stream(request, cfg, chunks, truncate=fault == "truncate")


def _vector(text: str, dim: int = 8) -> list[float]:
    h = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 6) for b in h[:dim]]


async def embeddings(request: web.Request) -> web.StreamResponse:
    admitted = await _admit(request)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    _, body, _ = admitted
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) else [raw]
    data = [{"object": "embedding", "index": i, "embedding": _vector(json.dumps(x))} for i, x in enumerate(inputs)]
    tokens = sum(_count_tokens(json.dumps(x)) for x in inputs)
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "stub-model", "object": "model", "created": 0, "owned_by": "llmcache"}]})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path": request.path,
        "query": request.raw_path.partition("?")[2],
        "headers": dict(request.headers.items()),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_bytes": len(body),
    }, status=int(request.query.get("status", "200")), headers={"X-Stub-Echo": "1"})


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    """Stream ``n`` chunks of ``size`` bytes with ``delay_ms`` between them (pass-through streaming tests)."""
    n = int(request.query.get("n", "4"))
    size = int(request.query.get("size", "1024"))
    delay_ms = float(request.query.get("delay_ms", "0"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for i in range(n):
        if i and delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        await resp.write(bytes([65 + i % 26]) * size)
    await resp.write_eof()
    return resp


async def stub_requests(request: web.Request) -> web.Response:
    cfg = request.app[_CONFIG]
    by_path = {k: v for k, v in cfg.requests.items() if not k.startswith("__")}
    return web.json_response({"total": cfg.requests["__api__"], "by_path": by_path})


async def stub_reset(request: web.Request) -> web.Response:
    cfg = request.app[_CONFIG]
    cfg.requests.clear()
    cfg.fault = None
    return web.json_response({"ok": True})


async def stub_config(request: web.Request) -> web.Response:
    cfg = request.app[_CONFIG]
    body = await request.json()
    if "latency_ms" in body:
        cfg.latency_ms = float(body["latency_ms"])
    if "chunk_delay_ms" in body:
        cfg.chunk_delay_ms = float(body["chunk_delay_ms"])
    if "fault" in body:
        cfg.fault = body["fault"]
    if "timeout_s" in body:
        cfg.timeout_s = float(body["timeout_s"])
    if "answers" in body:
        answers = body["answers"]
        if not isinstance(answers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in answers.items()):
            return web.json_response({"error": "answers must map prompt strings to answer strings"}, status=400)
        cfg.answers = dict(answers)
    return web.json_response({"latency_ms": cfg.latency_ms, "chunk_delay_ms": cfg.chunk_delay_ms,
                              "fault": cfg.fault, "timeout_s": cfg.timeout_s})


@web.middleware
async def _count(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        cfg = request.app[_CONFIG]
        cfg.requests["__api__"] += 1
        cfg.requests[request.path] += 1
    return await handler(request)


def create_stub_app(config: StubConfig | None = None) -> web.Application:
    """The stub upstream as an aiohttp application (tests run it with ``aiohttp.test_utils``)."""
    app = web.Application(middlewares=[_count], client_max_size=64 * 1024**2)
    app[_CONFIG] = config or StubConfig()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stub/requests", stub_requests)
    app.router.add_post("/stub/reset", stub_reset)
    app.router.add_post("/stub/config", stub_config)
    app.router.add_get("/stub/stream", stream_bytes)
    app.router.add_route("*", "/stub/echo{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcache.testing.stub_upstream",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT (default 127.0.0.1:9000)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before each answer (ms)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between SSE chunks (ms)")
    parser.add_argument("--fault", default=None, choices=["500", "429", "timeout", "reset", "truncate"],
                        help="fault injected into every API request")
    parser.add_argument("--answers", default=None,
                        help="JSON file mapping prompts to answer texts (meaning-class mode)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    cfg = StubConfig(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms, fault=args.fault)
    if args.answers:
        with open(args.answers, encoding="utf-8") as fh:
            cfg.answers = dict(json.load(fh))
    logging.basicConfig(level=logging.WARNING)

    async def serve() -> None:
        runner = web.AppRunner(create_stub_app(cfg), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        print(f"stub upstream listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
