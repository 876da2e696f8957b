"""Verification of semantic-cache candidates: a hit needs positive evidence that every difference is harmless.

Embedding similarity says two texts are *about* the same thing; it does not notice that
"turn on dark mode" and "turn off dark mode", "Django" and "Flask", or "Did Alice pay Bob?" and
"Did Bob pay Alice?" want different answers. Word or sentence embeddings therefore only rank
candidates (the KNN and the cosine gate before this); they never explain a difference. Every
candidate passes through these stages against the stored text::

    query ─┐ analyse (bounded, Unicode-aware; unreadable or not English → refuse: fail closed)
    stored ┘   │
     evidence  ├─ symbol      operators, identifiers, code differ (exact)         ─┐
     of a      ├─ negation · antonym · number · unit · quantifier · modality        │
     different ├─ comparison · time · question (who/when/yes-no…) · task · shape   ├→ refuse (reason)
     meaning   ├─ direction   arguments swap around a marker, a verb or a wh-word  │
               └─ topic       another attribute asked ("how tall" / "how old")   ─┘
     sameness  ├─ explain     every content word one side lacks: inflection, variant, acronym,
               │              compound, derivation, WordNet synonym, typo, framing — else refuse
               │              (``entity`` for a name or identifier, ``content`` otherwise)
               ├─ role        bare arguments swapped around a predicate, another subject of the same
               │              predicate, owners or a preposition's object traded, the question moved
               │              from the asker to someone else → refuse
               └─ tense       only the tense differs → refuse
                              → accept, with the evidence that explained each difference

The analyses live in :mod:`llmcache.proxy.semantic.analysis`, the checks of a different meaning
in :mod:`llmcache.proxy.semantic.evidence`, the explanations in :mod:`llmcache.proxy.semantic.explain`
over the WordNet-derived lexicon in :mod:`llmcache.proxy.semantic.wordnet`. Cost: linear in the
bounded text, CPU only, in a worker thread (never on the event loop); no embedder call. A verifier
keeps the analyses of the texts it compared (:data:`DEFAULT_MEMO_CHARS`, least recently used out)
with the indexes built on them, so a stored entry found again is not read again; per-word look-ups
are memoised process-wide with bounds. ``benchmarks/verifier_cost.py --against main`` measures the
cost beside a baseline revision's and proves the decisions equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmcache.proxy.semantic import evidence
from llmcache.proxy.semantic import wordnet as wn
from llmcache.proxy.semantic.analysis import DEFAULT_MAX_CHARS, Analysis, analyse
from llmcache.proxy.semantic.explain import EVIDENCE, explain, is_name

__all__ = ["EVIDENCE", "REASONS", "Analysis", "Verdict", "Verifier", "analyse"]

log = logging.getLogger(__name__)

#: Every reason a verdict can carry (metrics label values).
REASONS = ("ok", "identical", "unreadable", "symbol", "negation", "antonym", "number", "unit", "quantifier",
           "modality", "comparison", "time", "question", "task", "shape", "direction", "topic", "role", "tense",
           "entity", "content")

WordEmbed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

#: Characters of text whose analyses a :class:`Verifier` keeps (least recently used first out). A stored entry is
#: compared again on every lookup that finds it; an analysis with the indexes the comparisons built on it takes
#: about 150 bytes per character of its text (measured over the blind-written pair files), so 100,000 characters
#: hold ~500 typical prompts in roughly 15 MB.
DEFAULT_MEMO_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one check: ``ok`` or the first failed check's ``reason`` (one of :data:`REASONS`)."""

    ok: bool
    reason: str
    detail: str = ""
    """Debugging aid for the benchmark; may contain words of the texts, so never log it."""
    score: float | None = None
    """Share of the two texts' content words that are the same word on both sides (1.0: only function words,
    framing or order differ); ``None`` when the pair was refused before the explanation stage."""
    evidence: tuple[str, ...] = ()
    """On an accepted pair: one entry per explained content-word difference, each a kind from
    :data:`EVIDENCE` (``synonym``, ``inflection``…); empty when no content word differs."""


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class Verifier:
    """Checks a KNN candidate against the query; see the module docstring for the stages and their order."""

    def __init__(self, *, word_embed: WordEmbed | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                 lexicon: wn.Lexicon | None = None, memo_chars: int = DEFAULT_MEMO_CHARS) -> None:
        """``max_chars`` bounds the analysed text (longer text fails closed); ``lexicon`` defaults to the shipped one.

        ``memo_chars`` bounds the analyses kept for texts seen again (see :data:`DEFAULT_MEMO_CHARS`; 0 keeps none).
        ``word_embed`` is accepted for compatibility and unused: embeddings never explain a difference.
        """
        del word_embed
        if memo_chars < 0:
            raise ValueError(f"memo_chars must be >= 0, got {memo_chars}")
        self._lex = lexicon if lexicon is not None else wn.lexicon()
        self._max_chars = max_chars
        self._memo: OrderedDict[str, Analysis] = OrderedDict()
        self._memo_chars = 0
        self._memo_budget = memo_chars
        self._memo_lock = threading.Lock()  # check_sync runs in worker threads

    def clear_caches(self) -> None:
        """Forget every kept analysis (the next comparison of any text analyses it afresh)."""
        with self._memo_lock:
            self._memo.clear()
            self._memo_chars = 0

    def _analysis(self, text: str) -> Analysis:
        """``analyse(text)``, kept for the next comparison of the same text (LRU, bounded by characters).

        An analysis is read-only once made (the indexes in its ``memo`` are derived from it alone), so one
        may serve several threads.
        """
        with self._memo_lock:
            hit = self._memo.get(text)
            if hit is not None:
                self._memo.move_to_end(text)
                return hit
        a = analyse(text, max_chars=self._max_chars)
        if len(text) > self._memo_budget:
            return a
        with self._memo_lock:
            if text not in self._memo:
                self._memo[text] = a
                self._memo_chars += len(text)
                while self._memo_chars > self._memo_budget:
                    old, _ = self._memo.popitem(last=False)
                    self._memo_chars -= len(old)
        return a

    async def check(self, query: str, stored: str, *, similarity: float | None = None) -> Verdict:
        """``Verdict(ok=True)`` when ``stored``'s answer may serve ``query``."""
        return (await self.check_many(query, [stored], similarities=None if similarity is None else [similarity]))[0]

    async def check_many(self, query: str, stored: Sequence[str], *,
                         similarities: Sequence[float] | None = None) -> list[Verdict]:
        """One verdict per stored text, computed in a worker thread. ``similarities`` are not needed (ranking only)."""
        del similarities
        verdicts = await asyncio.to_thread(self.check_sync, query, list(stored))
        if log.isEnabledFor(logging.DEBUG):
            q = _hash(query)
            for text, v in zip(stored, verdicts):
                if v.ok:  # hashes only, never text: which evidence explained each difference
                    log.debug("semantic verifier accepted query=%s stored=%s reason=%s evidence=%s",
                              q, _hash(text), v.reason, ",".join(v.evidence) or "none")
        return verdicts

    def check_sync(self, query: str, stored: list[str]) -> list[Verdict]:
        """:meth:`check_many` without the thread hop (CPU only; call it off the event loop)."""
        a = self._analysis(query)
        q_norm = " ".join(query.split()).casefold()
        out: list[Verdict] = []
        for text in stored:
            if len(text) <= self._max_chars and " ".join(text.split()).casefold() == q_norm:
                out.append(Verdict(True, "identical", score=1.0))
                continue
            b = self._analysis(text)
            out.append(self._compare(a, b))
        return out

    def _compare(self, a: Analysis, b: Analysis) -> Verdict:
        if a.unreadable or b.unreadable:
            return Verdict(False, "unreadable", a.unreadable or b.unreadable or "")
        edit = evidence.edit_of(a, b)
        difference = evidence.first_difference(a, b, edit=edit)
        if difference is not None:
            return Verdict(False, *difference)
        found = explain(a, b, self._lex, edit=edit)
        if not found.ok:
            names = [t.text for t in found.unexplained if is_name(t)]
            if names:
                return Verdict(False, "entity", f"{names}")
            return Verdict(False, "content", f"unexplained {[t.text for t in found.unexplained]}")
        role = evidence.role_clash(a, b, self._lex, edit=edit)
        if role is not None:
            return Verdict(False, "role", role)
        if a.tense and b.tense and a.tense != b.tense:
            return Verdict(False, "tense", f"{a.tense} vs {b.tense}")
        total = len(a.content) + len(b.content)
        same = 2 * len(a.content.keys() & b.content.keys())
        slips = ("typo",) * sum(t.slip for t in (*a.tokens, *b.tokens))  # "descirbe" read as "describe"
        return Verdict(True, "ok", score=same / total if total else 1.0, evidence=slips + found.evidence)

