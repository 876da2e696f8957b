"""Issue 18 item 9: streams and slow readers.

- the SSE recorder reads an untrusted upstream's stream: its work must grow linearly with the
  bytes, however the stream is cut (it rescanned its whole buffer on every chunk);
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from llmcache.proxy import streaming

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _event(delta: dict[str, Any], finish: str | None = None, *, sep: bytes = b"\n\n") -> bytes:
    chunk = {**BASE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + sep


class _CountingPattern:
    """The recorder's event separator pattern, counting the bytes each call is given to scan."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self._pattern = pattern
        self.num_bytes_scanned = 0
        self.num_calls = 0

    def _count(self, string: bytes | bytearray, pos: int = 0) -> None:
        self.num_calls += 1
        self.num_bytes_scanned += len(string) - pos

    def split(self, string: bytes, maxsplit: int = 0) -> list[bytes]:
        self._count(string)
        return self._pattern.split(string, maxsplit)

    def finditer(self, string: bytes, pos: int = 0, *args: int) -> Any:
        self._count(string, pos)
        return self._pattern.finditer(string, pos, *args)

    def search(self, string: bytes, pos: int = 0, *args: int) -> Any:
        self._count(string, pos)
        return self._pattern.search(string, pos, *args)


def test_sse_recorder_scans_a_long_event_cut_in_small_chunks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingPattern(streaming._EVENT_SPLIT)
    monkeypatch.setattr(streaming, "_EVENT_SPLIT", counting)
    text = "x" * (96 * 1024)  # one event of ~96 KiB: a long answer in a single delta
    stream = (_event({"role": "assistant", "content": ""}) + _event({"content": text}) + _event({}, "stop")
              + streaming.DONE)
    rec = streaming.SSERecorder("/v1/chat/completions")
    chunk_bytes = 16
    num_chunks = 0
    for i in range(0, len(stream), chunk_bytes):
        rec.feed(stream[i:i + chunk_bytes])
        num_chunks += 1
    assert rec.complete and rec.answer()["choices"][0]["message"]["content"] == text
    # Every byte is scanned at least once (the count sees the recorder's work) ...
    assert counting.num_calls >= num_chunks and counting.num_bytes_scanned >= len(stream)
    # ... and about once: linear in the stream, plus a separator's width per chunk. The old
    # recorder scanned ~num_chunks × len(stream) / 2 bytes (here ~300 MB for 96 KiB).
    assert counting.num_bytes_scanned <= len(stream) + 4 * num_chunks, counting.num_bytes_scanned


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 4096])
def test_sse_recorder_finds_separators_cut_anywhere(sep: bytes, chunk_bytes: int) -> None:
    """Control for the incremental scan: separators split across chunks at every offset still end events."""
    stream = b"".join([_event({"role": "assistant", "content": ""}, sep=sep), _event({"content": "Hello"}, sep=sep),
                       _event({"content": " there"}, sep=sep), _event({}, "stop", sep=sep)]) + b"data: [DONE]" + sep
    rec = streaming.SSERecorder("/v1/chat/completions")
    for i in range(0, len(stream), chunk_bytes):
        rec.feed(stream[i:i + chunk_bytes])
    assert rec.complete and rec.answer()["choices"][0]["message"]["content"] == "Hello there"
