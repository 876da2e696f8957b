"""Server-sent events: record a relayed stream into an answer, and replay an answer as a stream.

Recording never delays the relay: the proxy writes each upstream chunk to the
client first-come, and feeds the same bytes to :class:`SSERecorder`, which
splits events on blank lines (chunks may cut an event anywhere) and folds the
``data:`` payloads into the non-streaming answer. A stream is complete only
after ``data: [DONE]`` with a ``finish_reason`` on every choice, and only if every
delta field was understood: a delta carrying anything but :data:`CHAT_DELTA_FIELDS`
(``function_call``, ``audio``, ``annotations``, …) makes the stream *not storable*,
since an answer folded without it would be served incomplete.

Replay (:func:`replay_chat` / :func:`replay_completion`) produces what the
OpenAI API sends::

    role chunk ─▶ reasoning chunks ─▶ content chunks | tool-call chunks ─▶ finish chunk ─▶ [usage] ─▶ [DONE]
    (per choice)                                                                  (include_usage)
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmcache import keys

__all__ = ["CHAT_DELTA_FIELDS", "DONE", "SSERecorder", "replay", "replay_chat", "replay_completion", "split_text"]

DONE = b"data: [DONE]\n\n"

#: Chat delta fields the recorder folds into the answer (and replay reproduces). A delta with any
#: other non-empty field is not storable.
CHAT_DELTA_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "reasoning_content"})

#: Characters per replayed content chunk: several chunks per answer, like a real model, without
#: paying one write per token on the hit path.
_PIECE_CHARS = 48

_EVENT_SPLIT = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_MAX_SEPARATOR_BYTES = 4


class SSERecorder:
    """Incrementally parse an OpenAI SSE stream and assemble the equivalent non-streaming answer.

    :meth:`feed` never raises: a malformed stream just becomes *not storable*
    (``ok`` is False), because the bytes were relayed to the client untouched anyway.
    """

    __slots__ = ("_base", "_buf", "_choices", "_cr", "_max_bytes", "_size", "_usage", "done", "ok", "route")

    def __init__(self, route: str, *, max_bytes: int = 8 * 1024**2) -> None:
        self.route = route
        self._buf = bytearray()
        self.ok = True
        self.done = False
        self._base: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._size = 0
        self._max_bytes = max_bytes
        self._cr = False  # a carriage return seen: events may end in \r\n\r\n or \r\r too

    def feed(self, data: bytes) -> None:
        if not self.ok:
            return
        self._size += len(data)
        if self._size > self._max_bytes or (self.done and data.strip()):
            self.ok = False
            return
        buf = self._buf
        # Only the new bytes need scanning, plus the last 3 of the old ones (a 4-byte separator may
        # straddle two chunks): each byte is scanned about once however the stream is cut, where
        # rescanning the whole buffer on every chunk was quadratic in a long event.
        start = max(0, len(buf) - _MAX_SEPARATOR_BYTES + 1)
        buf += data
        end = 0
        if not self._cr and b"\r" not in data:
            # Lines end in \n alone (as OpenAI-style servers send them): events end at the first \n\n, found
            # by bytes.find (a regular expression of three separators costs ~60 instructions a byte).
            at = buf.find(b"\n\n", start)
            while at >= 0:
                self._event(bytes(buf[end:at]))
                end = at + 2
                at = buf.find(b"\n\n", end)
        else:
            self._cr = True
            for match in _EVENT_SPLIT.finditer(buf, start):
                self._event(bytes(buf[end:match.start()]))
                end = match.end()
        if end:
            del buf[:end]  # O(1) amortised: a bytearray drops its head in place

    def _event(self, event: bytes) -> None:
        if event.startswith(b"data:") and b"\n" not in event and b"\r" not in event:
            data = event[5:].lstrip(b" ")  # one data line, as nearly every event is
        else:
            payload = []
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    payload.append(line[5:].lstrip(b" "))
                # comments (":") and other fields (event:, id:, retry:) carry no answer data
            if not payload:
                return
            data = b"\n".join(payload)
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = keys.loads_exact(data)  # (UTF-8, as SSE is; a UnicodeDecodeError is a ValueError)
        except (ValueError, RecursionError):  # (RecursionError: nested past the json module's reach)
            self.ok = False
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self.ok = False
            return
        try:
            self._chunk(chunk)
        except (TypeError, ValueError, KeyError, AttributeError):
            self.ok = False

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if not self._base:
            self._base = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = self._choices
        for c in chunk.get("choices") or ():
            idx = int(c.get("index", 0))
            acc = choices.get(idx)
            if acc is None:
                acc = choices[idx] = {"index": idx, "content": [], "tool_calls": {}, "role": None, "refusal": [],
                                      "reasoning": [], "logprobs": None, "finish_reason": None}
            if c.get("finish_reason"):
                acc["finish_reason"] = c["finish_reason"]
            if c.get("logprobs"):
                lp = acc["logprobs"] or {}
                for field_name, value in c["logprobs"].items():
                    if isinstance(value, list):
                        lp.setdefault(field_name, []).extend(value)
                    else:
                        lp[field_name] = value
                acc["logprobs"] = lp
            if self.route == "/v1/completions":
                if c.get("text"):
                    acc["content"].append(_text(c["text"]))
                continue
            delta = c.get("delta") or {}
            if not CHAT_DELTA_FIELDS.issuperset(delta):  # (one C pass where every field is known, as nearly always)
                unknown = [k for k, v in delta.items() if k not in CHAT_DELTA_FIELDS and v not in (None, "", [], {})]
                if unknown:
                    raise ValueError(f"delta fields this recorder cannot store: {sorted(unknown)}")
            if delta.get("role"):
                acc["role"] = _text(delta["role"])
            if delta.get("content"):
                acc["content"].append(_text(delta["content"]))
            if delta.get("refusal"):
                acc["refusal"].append(_text(delta["refusal"]))
            if delta.get("reasoning_content"):
                acc["reasoning"].append(_text(delta["reasoning_content"]))
            for tc in delta.get("tool_calls") or ():
                _add_tool_call_delta(acc["tool_calls"], tc)

    @property
    def complete(self) -> bool:
        """True when the stream ended with ``[DONE]`` and every choice has a finish_reason."""
        return (self.ok and self.done and bool(self._choices)
                and all(c["finish_reason"] for c in self._choices.values()))

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    def answer(self) -> dict[str, Any]:
        """The non-streaming answer equivalent to the recorded stream (call when :attr:`complete`)."""
        choices = []
        for idx in sorted(self._choices):
            acc = self._choices[idx]
            if self.route == "/v1/completions":
                choices.append({"index": idx, "text": "".join(acc["content"]), "logprobs": acc["logprobs"],
                                "finish_reason": acc["finish_reason"]})
                continue
            message: dict[str, Any] = {"role": acc["role"] or "assistant",
                                       "content": "".join(acc["content"]) if acc["content"] else None,
                                       "refusal": "".join(acc["refusal"]) if acc["refusal"] else None}
            if acc["reasoning"]:
                message["reasoning_content"] = "".join(acc["reasoning"])
            if acc["tool_calls"]:
                message["tool_calls"] = [
                    {"id": t["id"], "type": t["type"],
                     "function": {"name": "".join(t["name"]), "arguments": "".join(t["arguments"])}}
                    for _, t in sorted(acc["tool_calls"].items())]
            choices.append({"index": idx, "message": message, "logprobs": acc["logprobs"],
                            "finish_reason": acc["finish_reason"]})
        obj = "text_completion" if self.route == "/v1/completions" else "chat.completion"
        answer: dict[str, Any] = {**{k: v for k, v in self._base.items() if k != "system_fingerprint"},
                                  "object": obj, "choices": choices}
        if "system_fingerprint" in self._base:
            answer["system_fingerprint"] = self._base["system_fingerprint"]
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer


def _text(value: Any) -> str:
    """``value`` if it is a string; a stream with another type there is malformed (not storable)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string in the stream, got {type(value).__name__}")
    return value


def _add_tool_call_delta(slots: dict[int, dict[str, Any]], tc: dict[str, Any]) -> None:
    """Merge one streamed ``tool_calls[]`` delta into the call it continues (by ``index``)."""
    slot = slots.setdefault(int(tc.get("index", 0)), {"id": None, "type": "function", "name": [], "arguments": []})
    if tc.get("id"):
        slot["id"] = _text(tc["id"])
    if tc.get("type"):
        slot["type"] = _text(tc["type"])
    fn = tc.get("function") or {}
    if fn.get("name"):
        slot["name"].append(_text(fn["name"]))
    if fn.get("arguments"):
        slot["arguments"].append(_text(fn["arguments"]))


def split_text(text: str, *, max_chars: int = _PIECE_CHARS) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars`` (at spaces when possible); joins back exactly."""
    if len(text) <= max_chars:
        return [text]
    pieces = []
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            if cut > start:
                end = cut
        pieces.append(text[start:end])
        start = end
    return pieces


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _chunk_base(answer: dict[str, Any], *, obj: str, default_id: str) -> dict[str, Any]:
    """The fields every replayed chunk of ``answer`` repeats (id, object, created, model, fingerprint)."""
    base: dict[str, Any] = {"id": answer.get("id", default_id), "object": obj,
                            "created": answer.get("created", 0), "model": answer.get("model", "")}
    if answer.get("system_fingerprint") is not None:
        base["system_fingerprint"] = answer["system_fingerprint"]
    return base


def _end(out: list[bytes], base: dict[str, Any], answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """Close a replayed stream: the usage chunk (with ``include_usage``), ``[DONE]``; the whole body."""
    if include_usage and answer.get("usage") is not None:
        out.append(_sse({**base, "choices": [], "usage": answer["usage"]}))
    out.append(DONE)
    return b"".join(out)


def replay_chat(answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """A stored chat answer as the SSE body the OpenAI API would have streamed."""
    base = _chunk_base(answer, obj="chat.completion.chunk", default_id="chatcmpl-llmcache")
    extra = {"usage": None} if include_usage else {}
    out: list[bytes] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> None:
        out.append(_sse({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                              "finish_reason": finish}], **extra}))

    for choice in answer.get("choices") or ():
        idx = choice.get("index", 0)
        message = choice.get("message") or {}
        chunk(idx, {"role": message.get("role", "assistant"), "content": ""})
        reasoning = message.get("reasoning_content")
        if reasoning:
            for piece in split_text(reasoning):
                chunk(idx, {"reasoning_content": piece})
        content = message.get("content")
        # Logprobs travel whole on the first content chunk: the client concatenates them per choice.
        logprobs = choice.get("logprobs")
        if content:
            for i, piece in enumerate(split_text(content)):
                chunk(idx, {"content": piece}, logprobs=logprobs if i == 0 else None)
        if message.get("refusal"):
            chunk(idx, {"refusal": message["refusal"]})
        for j, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            chunk(idx, {"tool_calls": [{"index": j, "id": call.get("id"), "type": call.get("type", "function"),
                                        "function": {"name": fn.get("name", ""), "arguments": ""}}]})
            for piece in split_text(fn.get("arguments") or ""):
                if piece:
                    chunk(idx, {"tool_calls": [{"index": j, "function": {"arguments": piece}}]})
        chunk(idx, {}, choice.get("finish_reason"))
    return _end(out, base, answer, include_usage=include_usage)


def replay_completion(answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """A stored ``/v1/completions`` answer as SSE."""
    base = _chunk_base(answer, obj="text_completion", default_id="cmpl-llmcache")
    out: list[bytes] = []
    for choice in answer.get("choices") or ():
        idx = choice.get("index", 0)
        for piece in split_text(choice.get("text") or ""):
            out.append(_sse({**base, "choices": [{"index": idx, "text": piece, "logprobs": None,
                                                  "finish_reason": None}]}))
        out.append(_sse({**base, "choices": [{"index": idx, "text": "", "logprobs": choice.get("logprobs"),
                                              "finish_reason": choice.get("finish_reason")}]}))
    return _end(out, base, answer, include_usage=include_usage)


def replay(route: str, answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """Replay ``answer`` for ``route`` (chat or completions) as one SSE body."""
    if route == "/v1/completions":
        return replay_completion(answer, include_usage=include_usage)
    return replay_chat(answer, include_usage=include_usage)
