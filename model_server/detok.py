"""Incremental detokenization and stop-string matching: constant work per generated token.

Re-decoding the whole output at every step (what the worker did before) costs O(n) per
token, O(n²) per request. Here each step decodes only a short window, as TGI and vLLM do::

    generated ids:  [ … … … | p … p | r … r | new ]
                              └prefix┘└read─┘
    prefix_text = decode(ids[prefix:read])      (already emitted)
    full_text   = decode(ids[prefix:])          (window + the new token)
    delta       = full_text[len(prefix_text):]  unless it ends in an incomplete UTF-8 sequence (U+FFFD)

The window restarts after every emitted delta, so it spans the tokens of at most one
multi-byte character. The emitted deltas concatenate to the same text as decoding the
whole output at once for byte-level BPE tokenizers (the bundled SmolLM2) and any tokenizer
without clean-up of tokenization spaces.

Stop strings are searched only in the new tail (the last ``longest - 1`` characters before
it plus the delta), and a tail that could still grow into a stop string is held back from
streaming clients until it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["TextState", "find_stop"]

_REPLACEMENT = "\ufffd"


def find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Index of the earliest stop string in ``text`` at or after ``start`` (−1 if none)."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start))
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


@dataclass(slots=True, kw_only=True)
class TextState:
    """Text of one generation: call :meth:`push` per generated (non-EOS) token, :meth:`finish` once.

    ``text`` is the output so far (cut at a stop string once one matched); ``emitted`` how
    many of its characters have been handed to the client.
    """

    decode: Callable[[list[int]], str]
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    """A stop string matched: ``text`` ends just before it."""
    _prefix: int = 0
    _read: int = 0
    _longest: int = 0

    def __post_init__(self) -> None:
        self._longest = max(map(len, self.stops), default=0)

    def push(self, token_id: int) -> None:
        """Add one generated token's text (possibly none yet: an incomplete UTF-8 sequence)."""
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self._prefix:self._read]) if self._read > self._prefix else ""
        full = self.decode(self.ids[self._prefix:])
        if len(full) > len(prefix_text) and not full.endswith(_REPLACEMENT):
            self._append(full[len(prefix_text):])
            self._prefix, self._read = self._read, len(self.ids)

    def finish(self) -> None:
        """Flush text held back for an incomplete UTF-8 sequence (it stays U+FFFD, as a full decode gives)."""
        if self.stopped or self._read == len(self.ids):
            return
        prefix_text = self.decode(self.ids[self._prefix:self._read]) if self._read > self._prefix else ""
        full = self.decode(self.ids[self._prefix:])
        if len(full) > len(prefix_text):
            self._append(full[len(prefix_text):])
        self._read = len(self.ids)

    def _append(self, delta: str) -> None:
        if self.stopped:
            return
        before = len(self.text)
        self.text += delta
        if self.stops:
            cut = find_stop(self.text, self.stops, before - self._longest + 1)
            if cut != -1:
                self.text = self.text[:cut]
                self.stopped = True

    def take_delta(self, *, final: bool) -> str:
        """Text the client may see now; holds back a tail that could still become a stop string."""
        safe = len(self.text)
        if not final and self.stops and not self.stopped:
            safe = len(self.text) - (self._longest - 1)
        if safe <= self.emitted:
            return ""
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out
