"""What a generation request is and what it yields: the contract between the HTTP layer and the engine.

``GenerationRequest`` (prompt ids, ``SamplingParams``, prefix-cache switches, an ``on_event``
callback) goes in; ``TokenDelta`` events and one ``GenerationResult`` (or an error) come
out, through a thread-safe ``RequestHandle``. Errors carry their HTTP meaning:
``InvalidRequestError`` 400, ``OverloadedError`` 429 (with ``retry_after_s``),
``WorkerFailedError`` 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmcache import prefix_hash
from llmcache.errors import LLMCacheError
from llmcache.model_server import sink as sink_mod
from llmcache.model_server.loader import LoadedModel

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequestError",
    "OverloadedError",
    "RequestHandle",
    "SamplingParams",
    "TokenDelta",
    "WorkerFailedError",
    "cache_namespace",
    "sample_token",
]


class InvalidRequestError(LLMCacheError):
    """The request cannot be served as sent (HTTP 400); ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class OverloadedError(LLMCacheError):
    """The server is at capacity (HTTP 429); retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: int, code: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code


class WorkerFailedError(LLMCacheError):
    """The inference worker stopped on a fatal error (HTTP 500); the server needs a restart."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy (argmax)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be >= 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]", param="top_p")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty", param="stop")


@dataclass(slots=True, kw_only=True)
class GenerationRequest:
    """One completion (one choice) to run."""

    prompt_ids: list[int]
    sampling: SamplingParams
    enable_prefix_cache: bool = True
    """Look up and insert into the prefix cache (False: compute everything, store nothing)."""
    cache_salt: str | None = None
    """Extra namespace: requests with different salts never share KV (tenant isolation)."""
    sink: sink_mod.SinkWindow | None = None
    """Attention-sink window for this request; ``None`` = full attention."""
    on_event: Callable[[TokenDelta | GenerationResult | BaseException], None] | None = None
    """Called from the worker thread with each text delta, then the result or the error."""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New text for a streaming client (may be empty while stop-string matching holds text back)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What one finished request produced and what it cost."""

    token_ids: tuple[int, ...]
    """Generated ids, the stop token included if one ended the generation."""
    text: str
    finish_reason: str
    """``stop`` (EOS or stop string), ``length`` (max_tokens) or ``cancelled``."""
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    max_kv_tokens: int
    """Largest KV length this request held (≤ sink + window with a sink window)."""
    sink_evicted_tokens: int
    inserted_tokens: int
    """Tokens this request added to the prefix cache."""


class RequestHandle:
    """Ties a submitted request to its result, like a ``concurrent.futures.Future``; thread-safe."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self.cancelled = False
        self.cached_tokens: int | None = None
        """Prompt tokens whose KV came from the prefix cache: written by the engine when the lookup ran
        (before the first token), ``None`` until then."""
        self.submitted_at = time.monotonic()
        """When the request was queued: TTFT includes the time spent waiting for the worker."""

    def cancel(self) -> None:
        """Ask the worker to stop this request at its next step (e.g. the client went away)."""
        self.cancelled = True

    def result(self, timeout_s: float | None = None) -> GenerationResult:
        """Block until done; re-raises the request's error."""
        if not self._done.wait(timeout_s):
            raise TimeoutError("generation did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def set_result(self, result: GenerationResult) -> None:
        """Complete the request with ``result`` (the engine calls this once; later calls are ignored)."""
        self._complete(result, None)

    def set_exception(self, error: BaseException) -> None:
        """Complete the request with ``error`` (re-raised by :meth:`result`; later calls are ignored)."""
        self._complete(None, error)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _complete(self, result: GenerationResult | None, error: BaseException | None) -> None:
        if self._done.is_set():
            return
        self._result, self._error = result, error
        self._done.set()
        cb = self.request.on_event
        if cb is not None:
            cb(error if error is not None else result)  # type: ignore[arg-type]


def cache_namespace(loaded: LoadedModel, cache_salt: str | None) -> str:
    """Radix namespace: model revision + dtype, plus a hash of the salt (never the salt itself).

    The rule is :func:`llmcache.prefix_hash.salted_namespace`, which routers use too.
    """
    return prefix_hash.salted_namespace(loaded.namespace, cache_salt)


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from 1-D ``logits``: argmax at temperature 0, else temperature + nucleus (top-p)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_p, dim=-1)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        sorted_p[(cumulative - sorted_p) >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())
