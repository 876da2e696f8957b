"""OpenAI-compatible HTTP surface of the model server (aiohttp).

``create_app(settings)`` returns an app that loads the model in a background thread on
start-up: ``GET /healthz`` answers 503 ``{"status": "loading"}`` until the model is
ready, then 200. Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both
with ``stream``), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /metrics``,
``GET /healthz``. Errors are OpenAI error objects
(``{"error": {"message", "type", "param", "code"}}``).

Request extensions (all optional, ignored by other servers):

- ``cache_salt`` — isolate this request's prefix KV (e.g. per tenant);
- ``prefix_cache: false`` — neither use nor fill the prefix cache (benchmarks, debugging);
- ``sink_window_tokens`` / ``sink_tokens`` — attention-sink sliding window for this request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from llmcache import prefix_hash
from llmcache.errors import LLMCacheError
from llmcache.model_server import generate as gen
from llmcache.model_server import loader as loader_mod
from llmcache.model_server import parsing
from llmcache.model_server import radix as radix_mod
from llmcache.model_server import request as rq
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.admission import Admission
from llmcache.model_server.embeddings import EMBEDDING_MODEL_NAME, Embedder
from llmcache.model_server.metrics import PROMETHEUS_CONTENT_TYPE, ModelServerMetrics
from llmcache.model_server.prefix_events import PrefixEventLog
from llmcache.model_server.settings import ModelServerSettings

__all__ = ["CACHED_TOKENS_HEADER", "STATE_KEY", "ServerState", "create_app"]

CACHED_TOKENS_HEADER = "X-LLMCache-Cached-Tokens"
"""Response header: prompt tokens whose KV came from the prefix cache (reported as ``usage`` is, see
``--report-cached-tokens``); on streams too, where ``usage`` comes last or not at all. Routers compare it
with what they predicted."""

log = logging.getLogger(__name__)



@dataclass(slots=True, eq=False)
class ServerState:
    """Everything one app instance owns; ``ready`` is set once the engine serves."""

    settings: ModelServerSettings
    metrics: ModelServerMetrics
    embedding_admission: Admission
    """One encode at a time (the encoder is not re-entrant); queue bounds from the batching settings."""
    loaded: loader_mod.LoadedModel | None = None
    engine: gen.Engine | None = None
    embedder: Embedder | None = None
    prefix_events: PrefixEventLog | None = None
    """What routers follow (``GET /llmcache/v1/cache-state``); set once the model is loaded."""
    tokenizer_json: bytes | None = None
    """``GET /llmcache/v1/tokenizer``'s answer, built on first use."""
    ready: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        """The name reported in responses: the first served name, else the model spec."""
        return self.model_names[0]

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a client may send as ``model`` (``--served-model-name``, else the spec)."""
        if self.settings.model.served_model_name:
            return self.settings.model.served_model_name
        return (self.settings.model.model,)

    def reported_cached(self, cached_tokens: int, cache_salt: str | None) -> int:
        """``cached_tokens`` as the client may see it (see ``PrefixCacheSettings.report_cached_tokens``)."""
        mode = self.settings.prefix_cache.report_cached_tokens
        if mode == "always" or (mode == "salted" and cache_salt):
            return cached_tokens
        return 0

    def check_model(self, body: dict[str, Any], *, embeddings: bool = False) -> None:
        """404 ``model_not_found`` (OpenAI's shape) for a ``model`` this server does not serve.

        A missing ``model`` is accepted (the one model served here); a wrong one is not: an app
        asking for ``gpt-4o`` must not silently get SmolLM2.
        """
        name = body.get("model")
        if name is None:
            return
        known = ((EMBEDDING_MODEL_NAME, f"sentence-transformers/{EMBEDDING_MODEL_NAME}") if embeddings
                 else self.model_names)
        if not isinstance(name, str) or name not in known:
            shown = name if isinstance(name, str) else json.dumps(name)
            raise parsing.HTTPError(404, f"The model `{shown[:200]}` does not exist on this server; it serves "
                                  f"{', '.join(known)} (GET /v1/models). Send one of those, or start the "
                                  "server with --served-model-name NAME (repeatable) to accept NAME as an alias.",
                             param="model", code="model_not_found")


STATE_KEY = web.AppKey("llmcache_model_server_state", ServerState)


def _error_response(status: int, message: str, *, type_: str, param: str | None = None,
                    code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}},
                             status=status)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
    try:
        resp = await handler(request)
    except parsing.HTTPError as exc:
        resp = _error_response(exc.status, exc.message, type_=exc.type, param=exc.param, code=exc.code)
    except rq.InvalidRequestError as exc:
        resp = _error_response(400, str(exc), type_="invalid_request_error", param=exc.param, code=exc.code)
    except ConnectionResetError:
        # The client went away (its requests are already cancelled); 499 as nginx logs it, for the metrics.
        resp = web.Response(status=499)
    except rq.OverloadedError as exc:
        resp = _error_response(429, str(exc), type_="server_overloaded", code=exc.code)
        resp.headers["Retry-After"] = str(exc.retry_after_s)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _error_response(exc.status, exc.reason, type_="invalid_request_error" if exc.status < 500
                               else "server_error")
    except LLMCacheError as exc:
        log.warning("request failed: %s", exc)
        resp = _error_response(500, str(exc), type_="server_error")
    except Exception:
        log.exception("unhandled error in %s", endpoint)
        resp = _error_response(500, "internal error in the model server; see its log", type_="server_error")
    state.metrics.requests.labels(endpoint=endpoint, status=str(resp.status)).inc()
    return resp


# ------------------------------------------------------------------ running

def _engine(state: ServerState) -> gen.Engine:
    if state.engine is not None and state.engine.failed is not None:
        raise parsing.HTTPError(500, f"the inference worker failed ({state.engine.failed}); the model server needs a "
                              "restart (GET /healthz reports it)", type_="server_error", code="worker_failed")
    if state.engine is None or not state.ready.is_set():
        msg = "the model is still loading; retry when GET /healthz returns 200"
        if state.error:
            msg = f"the model failed to load: {state.error}"
        raise parsing.HTTPError(503, msg, type_="server_error", code="model_not_ready")
    return state.engine




class _Choices:
    """Submits ``n`` generation requests and funnels their worker-thread events to the loop."""

    def __init__(self, engine: gen.Engine, prompt_ids: list[int], sampling: rq.SamplingParams, n: int,
                 *, enable_prefix_cache: bool, cache_salt: str | None, sink: sink_mod.SinkWindow | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, rq.TokenDelta | rq.GenerationResult | BaseException]] = asyncio.Queue()
        self.handles: list[rq.RequestHandle] = []
        reqs = []
        for i in range(n):
            # Choice i gets seed + i so that n seeded choices differ yet stay reproducible.
            params = replace(sampling, seed=sampling.seed + i) if sampling.seed is not None else sampling
            reqs.append(rq.GenerationRequest(prompt_ids=prompt_ids, sampling=params,
                                              enable_prefix_cache=enable_prefix_cache, cache_salt=cache_salt,
                                              sink=sink, on_event=self._forwarder(i)))
        # All or nothing: a 400 or 429 before anything is queued.
        self.handles = engine.submit_many(reqs)

    def _forwarder(self, index: int) -> Callable[[rq.TokenDelta | rq.GenerationResult | BaseException], None]:
        def forward(event: rq.TokenDelta | rq.GenerationResult | BaseException) -> None:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
        return forward

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


_DISCONNECT_POLL_S = 0.25


def _gone(request: web.Request) -> bool:
    """The client closed its connection (aiohttp does not cancel handlers for that by default)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _next_event(request: web.Request, choices: _Choices
                      ) -> tuple[int, rq.TokenDelta | rq.GenerationResult | BaseException]:
    """The next worker event; cancels the choices and raises ConnectionResetError once the client is gone."""
    while True:
        # Checked on every event too: a busy generation never lets the wait time out.
        if _gone(request):
            choices.cancel()  # the worker drops them at its next step
            raise ConnectionResetError("the client disconnected")
        try:
            return await asyncio.wait_for(choices.events.get(), _DISCONNECT_POLL_S)
        except TimeoutError:
            pass


async def _collect(request: web.Request, choices: _Choices, n: int) -> list[rq.GenerationResult]:
    results: list[rq.GenerationResult | None] = [None] * n
    remaining = n
    try:
        while remaining:
            index, event = await _next_event(request, choices)
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, rq.GenerationResult):
                results[index] = event
                remaining -= 1
    except BaseException:
        choices.cancel()
        raise
    return [r for r in results if r is not None]


async def _handle_generation(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    engine = _engine(state)
    assert state.loaded is not None
    body = await parsing.json_body(request)
    state.check_model(body)
    n, stream, extras = parsing.common(state.settings, body)
    sampling = parsing.sampling(state.settings, body)
    sink = parsing.sink(state.settings, body)
    # Tokenizing a long prompt takes milliseconds: keep it off the event loop too.
    to_ids = parsing.chat_prompt_ids if chat else parsing.completion_prompt_ids
    prompt_ids = await asyncio.to_thread(to_ids, state.loaded, body)
    try:
        choices = _Choices(engine, prompt_ids, sampling, n, enable_prefix_cache=extras["enable_prefix_cache"],
                           cache_salt=extras["cache_salt"], sink=sink)
    except rq.InvalidRequestError as exc:
        if not chat and exc.param == "messages":
            exc.param = "prompt"
        raise
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    model = state.model_name
    if not stream:
        results = await _collect(request, choices, n)
        usage = _usage(len(prompt_ids), sum(len(r.token_ids) for r in results),
                       state.reported_cached(results[0].cached_tokens, extras["cache_salt"]))
        if chat:
            out_choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                            "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)]
            obj = "chat.completion"
        else:
            out_choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                           for i, r in enumerate(results)]
            obj = "text_completion"
        return web.json_response({"id": rid, "object": obj, "created": created, "model": model,
                                  "system_fingerprint": state.loaded.revision,
                                  "choices": out_choices, "usage": usage},
                                 headers={CACHED_TOKENS_HEADER: str(usage["prompt_tokens_details"]["cached_tokens"])})
    return await _stream(request, choices, n, chat=chat, rid=rid, created=created, model=model,
                         prompt_tokens=len(prompt_ids), include_usage=extras["include_usage"],
                         report_cached=lambda c: state.reported_cached(c, extras["cache_salt"]))


async def _stream(request: web.Request, choices: _Choices, n: int, *, chat: bool, rid: str, created: int,
                  model: str, prompt_tokens: int, include_usage: bool,
                  report_cached: Callable[[int], int]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice_list: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                   "choices": choice_list}
        if usage is not None:
            payload["usage"] = usage
        return b"data: " + web_json_dumps(payload) + b"\n\n"

    # Headers wait for the first event: an error before the first token (429 after the queue
    # time bound, 500 when the worker failed) still gets its HTTP status.
    first: tuple[int, rq.TokenDelta | rq.GenerationResult | BaseException] | None
    first = await _next_event(request, choices)
    if isinstance(first[1], BaseException):
        choices.cancel()
        raise first[1]
    # The prefix lookup ran before the first token: the header can say what it found.
    resp.headers[CACHED_TOKENS_HEADER] = str(report_cached(choices.handles[0].cached_tokens or 0))
    await resp.prepare(request)
    results: list[rq.GenerationResult | None] = [None] * n
    remaining = n
    try:
        if chat:
            await resp.write(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None} for i in range(n)]))
        while remaining:
            if first is not None:
                (index, event), first = first, None
            else:
                index, event = await _next_event(request, choices)
            if isinstance(event, BaseException):
                # Headers are gone; report the error in-band as OpenAI does, then stop.
                err = {"error": {"message": str(event), "type": "server_error", "param": None, "code": None}}
                await resp.write(b"data: " + web_json_dumps(err) + b"\n\n")
                choices.cancel()
                break
            if isinstance(event, rq.TokenDelta):
                if not event.text:
                    continue
                if chat:
                    c = {"index": index, "delta": {"content": event.text}, "logprobs": None, "finish_reason": None}
                else:
                    c = {"index": index, "text": event.text, "logprobs": None, "finish_reason": None}
                await resp.write(chunk([c]))
            else:
                results[index] = event
                remaining -= 1
                if chat:
                    c = {"index": index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}
                else:
                    c = {"index": index, "text": "", "logprobs": None, "finish_reason": event.finish_reason}
                await resp.write(chunk([c]))
        done = [r for r in results if r is not None]
        if include_usage and done:
            await resp.write(chunk([], _usage(prompt_tokens, sum(len(r.token_ids) for r in done),
                                              report_cached(done[0].cached_tokens))))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        choices.cancel()  # the client went away: free the worker
        raise
    return resp


def web_json_dumps(obj: Any) -> bytes:
    """Compact JSON bytes (the SSE payload format)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------ routes


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await _handle_generation(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    return await _handle_generation(request, chat=False)


async def embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings`` with the bundled all-MiniLM-L6-v2, admitted like generation (429 when full)."""
    state = request.app[STATE_KEY]
    if state.embedder is None:
        raise parsing.HTTPError(404, "embeddings are disabled on this server (--enable-embeddings false)",
                         code="embeddings_disabled")
    body = await parsing.json_body(request)
    state.check_model(body, embeddings=True)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise parsing.HTTPError(400, "input must be a string or a non-empty list of strings", param="input")
    limits = state.settings.embeddings
    if len(texts) > limits.max_inputs:
        raise parsing.HTTPError(400, f"input has {len(texts)} items, more than this server's limit of "
                                f"{limits.max_inputs} per request (--embeddings-max-inputs, env "
                                "LLMCACHE_EMBEDDINGS_MAX_INPUTS); split it across requests",
                                param="input", code="too_many_inputs")
    fmt = body.get("encoding_format", "float")
    if fmt not in {"float", "base64"}:
        raise parsing.HTTPError(400, "encoding_format must be float or base64", param="encoding_format")
    async with state.embedding_admission.slot():
        vectors, num_tokens = await state.embedder.aembed(texts, max_tokens=limits.max_tokens)
    data = []
    for i, v in enumerate(vectors):
        emb: Any = v if fmt == "float" else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return web.json_response({"object": "list", "data": data, "model": EMBEDDING_MODEL_NAME,
                              "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}})


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the generation model (and the embedder when enabled)."""
    state = request.app[STATE_KEY]
    created = int(state.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "llmcache"} for name in state.model_names]
    if state.embedder is not None:
        data.append({"id": EMBEDDING_MODEL_NAME, "object": "model", "created": created, "owned_by": "llmcache"})
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 once the model serves, 503 while loading or after a failed load."""
    state = request.app[STATE_KEY]
    if state.engine is not None and state.engine.failed is not None:
        return web.json_response({"status": "failed", "error": f"inference worker: {state.engine.failed}"}, status=503)
    if state.ready.is_set():
        return web.json_response({"status": "ok", "model": state.model_name})
    if state.failed.is_set():
        return web.json_response({"status": "failed", "error": state.error}, status=503)
    return web.json_response({"status": "loading", "model": state.model_name}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus text format."""
    state = request.app[STATE_KEY]
    serving = state.ready.is_set() and state.engine is not None and state.engine.failed is None
    state.metrics.loaded.set(1 if serving else 0)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def cache_state(request: web.Request) -> web.Response:
    """``GET /llmcache/v1/cache-state?epoch=E&since=S&wait_s=W``: prefix-cache block events and load, for routers.

    See :mod:`llmcache.model_server.prefix_events`. Answers at once when there is news after ``since``
    (or the caller must start over), else after up to ``wait_s`` seconds (≤ 30) with the load only.
    """
    state = request.app[STATE_KEY]
    events = state.prefix_events
    if events is None or not state.ready.is_set():
        raise parsing.HTTPError(503, "the model is still loading; retry when GET /healthz returns 200",
                                type_="server_error", code="model_not_ready")
    q = request.query
    try:
        since = int(q["since"]) if q.get("since") else None
        wait_s = float(q.get("wait_s") or 0)
    except ValueError as exc:
        raise parsing.HTTPError(400, "since must be an integer and wait_s a number of seconds", param="since") from exc
    if not 0 <= wait_s <= 30 or wait_s != wait_s:
        raise parsing.HTTPError(400, "wait_s must be between 0 and 30 seconds", param="wait_s")
    answer = await events.read(epoch=q.get("epoch"), since=since, wait_s=wait_s)
    return web.json_response(answer, dumps=lambda o: json.dumps(o, separators=(",", ":")))


async def tokenizer(request: web.Request) -> web.Response:
    """``GET /llmcache/v1/tokenizer``: what a router needs to turn a request into this server's token ids.

    ``tokenizer`` (the fast tokenizer's JSON), ``chat_template`` and the ``special_tokens`` the
    template sees, with the ``namespace`` they belong to. 404 for a model without a tokenizer
    (its clients send token ids, which routers hash as they are).
    """
    state = request.app[STATE_KEY]
    _engine(state)
    loaded = state.loaded
    assert loaded is not None
    if state.tokenizer_json is None:
        tok = loaded.tokenizer
        backend = getattr(tok, "backend_tokenizer", None) if tok is not None else None
        if backend is None:
            raise parsing.HTTPError(404, "this model has no fast tokenizer to share; requests to it carry token ids",
                                    code="no_tokenizer")
        special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
        state.tokenizer_json = web_json_dumps({
            "namespace": loaded.namespace, "tokenizer": backend.to_str(), "chat_template": tok.chat_template,
            "special_tokens": special})
    return web.Response(body=state.tokenizer_json, content_type="application/json")


# -------------------------------------------------------------- lifecycle


def _load_into(state: ServerState, preloaded: loader_mod.LoadedModel | None, loop: asyncio.AbstractEventLoop) -> None:
    """Load the model (unless given), build the prefix cache and start the engine; runs in a thread."""
    try:
        s = state.settings
        loaded = preloaded or loader_mod.load_model(s.model.model, device=s.model.device, dtype=s.model.dtype,
                                                    name=state.model_name,
                                                    num_threads=s.model.num_threads)
        state.loaded = loaded
        cache: radix_mod.RadixCache | None = None
        if s.prefix_cache.enable_prefix_cache:
            budget = s.prefix_cache.budget_bytes
            if budget is None:
                budget = gen.default_budget_bytes(loaded, s.prefix_cache.budget_fraction)
            cache = radix_mod.RadixCache(budget, block_tokens=prefix_hash.DEFAULT_BLOCK_TOKENS)
            log.info("prefix cache budget %.1f MiB", budget / 2**20)
        events = PrefixEventLog(base_namespace=loaded.namespace, block_tokens=prefix_hash.DEFAULT_BLOCK_TOKENS,
                                publish=s.prefix_cache.report_cached_tokens, max_num_seqs=s.batching.max_num_seqs)
        events.bind(loop)
        state.prefix_events = events
        kv_budget = s.batching.kv_budget_bytes
        if kv_budget is None:
            kv_budget = gen.default_budget_bytes(loaded, s.batching.kv_fraction)
        engine = gen.Engine(loaded, prefix_cache=cache, metrics=state.metrics, batching=s.batching,
                            kv_budget_bytes=kv_budget, max_tokens_limit=s.model.max_tokens_limit,
                            stat_loggers=(events,))
        log.info("continuous batching %s: up to %d sequences, %d tokens per step, KV budget %.1f MiB",
                 "on" if engine.batched else "off", s.batching.max_num_seqs, s.batching.max_num_batched_tokens,
                 kv_budget / 2**20)
        engine.start()
        state.engine = engine
        state.ready.set()
    except Exception as exc:
        log.exception("model load failed")
        state.error = str(exc)
        state.failed.set()


def create_app(settings: ModelServerSettings, *, loaded: loader_mod.LoadedModel | None = None) -> web.Application:
    """The model-server app. Pass ``loaded`` to serve an already-loaded model (tests, benchmarks).

    The model loads in a background thread when the app starts; ``app[STATE_KEY].ready``
    is set (and ``/healthz`` turns 200) once requests can be served.
    """
    app = web.Application(middlewares=[_errors_middleware], client_max_size=16 * 2**20)
    state = ServerState(settings=settings, metrics=ModelServerMetrics(),
                        embedder=Embedder() if settings.enable_embeddings else None,
                        embedding_admission=Admission(num_slots=1, max_waiting=settings.batching.max_queue_len,
                                                      max_wait_s=settings.batching.max_queue_time_s,
                                                      what="embeddings"))
    app[STATE_KEY] = state

    async def lifecycle(_app: web.Application) -> Any:
        thread = threading.Thread(target=_load_into, args=(state, loaded, asyncio.get_running_loop()),
                                  name="llmcache-model-load", daemon=True)
        thread.start()
        yield
        # Loading cannot be interrupted; wait for it so the engine is not left running.
        await asyncio.to_thread(thread.join)
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/llmcache/v1/cache-state", cache_state)
    app.router.add_get("/llmcache/v1/tokenizer", tokenizer)
    return app
