"""Verification of semantic-cache candidates: refuse only on *evidence* of a different meaning.

Embedding similarity says two texts are *about* the same thing; it does not notice
that "turn on dark mode" and "turn off dark mode", or "Did Alice pay Bob?" and
"Did Bob pay Alice?", want different answers. Every KNN candidate above the
threshold passes through these checks against the stored text (an
:class:`~llmcache.proxy.semantic.analysis.Analysis` of each side, linear in the text; the evidence
checks live in :mod:`llmcache.proxy.semantic.evidence`, the alignment and pair model here)::

    query ─┐ analyse (bounded, Unicode-aware; unreadable → refuse: fail closed)
    stored ┘   │
     evidence  ├─ symbol      operators, identifiers, code differ (exact)       ─┐
     of a      ├─ negation · antonym · number · unit · quantifier · modality      │
     different ├─ comparison · question (who/when/yes-no…) · task · shape        ├→ refuse (reason)
     meaning   ├─ direction   arguments swap around a verb or marker            │
               ├─ tense       only the tense differs                            │
               └─ entity      a name/identifier on one side has no counterpart ─┘
     lexical   └─ content     words left unaligned after stems, synonyms, acronyms,
     variety                  compounds: a learned pair model (logistic, weights in
                              data/verify_model.json) scores sentence cosine, word-embedding
                              alignment, substitution shape → accept / refuse

Lexical variety alone ("Who wrote X?" / "Who is the author of X?") is not evidence:
only the pair model decides those, and it was fitted on whole paraphrase families
and edit types other than those it is evaluated on (``benchmarks/semantic_eval.py``).
Cost: the analysis runs in a worker thread (never on the event loop); word
embeddings come from the cache's embedder (LRU-cached).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmcache.errors import ConfigError
from llmcache.proxy.semantic import evidence
from llmcache.proxy.semantic import lexicon as lx
from llmcache.proxy.semantic.analysis import DEFAULT_MAX_CHARS, Analysis, Token, analyse

__all__ = ["MODEL_PATH", "REASONS", "Analysis", "PairModel", "Verdict", "Verifier", "analyse"]

#: Every reason a verdict can carry (metrics label values).
REASONS = ("ok", "identical", "unreadable", "symbol", "negation", "antonym", "number", "unit", "quantifier",
           "modality", "comparison", "time", "question", "task", "shape", "direction", "topic", "tense", "entity", "content")

WordEmbed = Callable[[Sequence[str]], Awaitable[np.ndarray]]
MODEL_PATH = Path(__file__).with_name("data") / "verify_model.json"
_MODEL_SCHEMA = 1
#: Most words left unaligned on one side before the pair is simply different.
_MAX_UNALIGNED = 6
#: Word-embedding similarity a single swapped word needs to count as a synonym (MiniLM: "quit"/"exit" ≈ 0.8,
#: "dictionary"/"list" and co-hyponyms lower).
_SUBSTITUTE_SIMILARITY = 0.8
#: Above this sentence cosine a swapped word is left to the pair model ("set up"/"install Docker" ≈ 0.90).
_SUBSTITUTE_COSINE = 0.88


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one check: ``ok`` or the first failed check's ``reason`` (one of :data:`REASONS`)."""

    ok: bool
    reason: str
    detail: str = ""
    """Debugging aid for the benchmark; may contain words of the texts, so never log it."""
    score: float | None = None
    """Pair-model probability when the content stage decided; else ``None``."""


@dataclass(frozen=True, slots=True)
class PairModel:
    """A logistic model over :data:`FEATURES` of a pair that reached the content stage."""

    weights: tuple[float, ...]
    bias: float
    threshold: float

    FEATURES = ("cosine", "num_unaligned", "min_word_sim", "mean_word_sim", "substitution", "one_sided", "aligned_frac")

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> PairModel:
        """Read JSON weights (no pickle); raises ``ConfigError`` on a wrong schema or feature list."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"verifier model {path} is unreadable ({exc}); reinstall llmcache") from exc
        if doc.get("schema_version") != _MODEL_SCHEMA or tuple(doc.get("features", ())) != cls.FEATURES:
            raise ConfigError(f"verifier model {path} has schema {doc.get('schema_version')} / features "
                              f"{doc.get('features')}; expected {_MODEL_SCHEMA} / {list(cls.FEATURES)}: retrain it "
                              "with benchmarks/train_verifier.py")
        return cls(tuple(float(w) for w in doc["weights"]), float(doc["bias"]), float(doc["threshold"]))

    def probability(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * f for w, f in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@dataclass(slots=True)
class _Pending:
    """A pair that passed every evidence check and needs word embeddings to be judged."""

    index: int
    only_a: list[str]
    only_b: list[str]
    all_a: list[str]
    all_b: list[str]
    substitution: bool
    aligned_frac: float
    modifier: str = ""
    """A word on one side only, right before a word both sides share ("vegan recipe" / "recipe")."""
    generative: bool = False
    """A generative task (write, summarise…): what it is about is never reworded freely."""


def _transposed(x: str, y: str) -> bool:
    """``waetr`` ↔ ``water``: one swap of neighbouring letters (a typo), in words of ≥ 5 letters."""
    if len(x) != len(y) or len(x) < 5 or x == y:
        return False
    diff = [i for i in range(len(x)) if x[i] != y[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and x[diff[0]] == y[diff[1]] and x[diff[1]] == y[diff[0]]


# --------------------------------------------------------------------------- alignment


def _acronym_span(acronym: str, words: list[str]) -> list[str] | None:
    """``ai`` ↔ ``artificial intelligence``: the initials of consecutive words spell the acronym."""
    n = len(acronym)
    initials = "".join(w[:1] for w in words)
    at = initials.find(acronym)
    return words[at:at + n] if at >= 0 else None


def _compound_span(word: str, words: list[str]) -> list[str] | None:
    """``darkmode`` ↔ ``dark mode``, ``stepbystep`` ↔ ``step by step`` (two or three words)."""
    for i in range(len(words) - 1):
        if word.startswith(words[i]):
            if words[i] + words[i + 1] == word:
                return words[i:i + 2]
            if i + 2 < len(words) and words[i] + words[i + 1] + words[i + 2] == word:
                return words[i:i + 3]
    return None


def _root(stem: str) -> str | None:
    return stem[:5] if len(stem) >= 5 else None


def _same_root(x: str, y: str) -> bool:
    """Morphological variants: a shared prefix of ≥ 5 letters covering ≥ 80 % of the shorter stem."""
    if x == y:
        return True
    n = 0
    for cx, cy in zip(x, y):
        if cx != cy:
            break
        n += 1
    return n >= 5 and n >= 0.8 * min(len(x), len(y))


def _is_entity_like(tok: Token) -> bool:
    return (tok.capital or tok.compound or tok.text in lx.GAZETTEER or any(ch.isdigit() for ch in tok.text))


def _align(a: Analysis, b: Analysis) -> Verdict | tuple[dict[str, Token], dict[str, Token]]:
    """Match content words lexically; a verdict, or the words each side has that the other lacks."""
    only_a = {k: t for k, t in a.content.items() if k not in b.content}
    only_b = {k: t for k, t in b.content.items() if k not in a.content}
    if not only_a and not only_b:
        return only_a, only_b
    # Each alignment below scans the other side once per unaligned word: cap those words first so the
    # whole stage stays linear in the text (a long, unrelated pair is simply different).
    if len(only_a) > 2 * _MAX_UNALIGNED or len(only_b) > 2 * _MAX_UNALIGNED:
        return Verdict(False, "content", f"{len(only_a)}/{len(only_b)} words unaligned")
    # Acronyms and compounds: "ai" ↔ "artificial intelligence", "darkmode" ↔ "dark mode".
    for side, other_all, other_only in ((only_a, b, only_b), (only_b, a, only_a)):
        words = [t.text for t in other_all.tokens]
        for key, tok in list(side.items()):
            span = _acronym_span(tok.text, words) if 2 <= len(tok.text) <= 5 and tok.text.isalpha() else None
            if span is None:
                span = _compound_span(tok.text, words)
            if span is not None:
                side.pop(key)
                for w in span:
                    st = lx.stem(w)
                    other_only.pop(lx.SYNONYM.get(st, st), None)
    # Derivational variants ("painter" ↔ "paint(ed)"): candidates found through a 5-letter root index.
    for side, other in ((only_a, b), (only_b, a)):
        roots: dict[str, list[str]] = {}
        for t in other.tokens:
            r = _root(t.stem)
            if r is not None:
                roots.setdefault(r, []).append(t.stem)
        for key, tok in list(side.items()):
            r = None if _is_entity_like(tok) else _root(tok.stem)  # "abcxyz" / "abcxyw" are two ids
            if r is not None and any(_same_root(tok.stem, s) for s in roots.get(r, ())):
                side.pop(key)
    # Typos: a neighbouring-letter swap, found through a sorted-letters index (no pairwise scan).
    if only_a and only_b:
        letters: dict[str, list[str]] = {}
        for kb, tb in only_b.items():
            if len(tb.text) >= 5:
                letters.setdefault("".join(sorted(tb.text)), []).append(kb)
        for ka, ta in list(only_a.items()):
            for kb in letters.get("".join(sorted(ta.text)), ()):
                if kb in only_b and _transposed(ta.text, only_b[kb].text):
                    only_a.pop(ka)
                    only_b.pop(kb)
                    break
    if not only_a and not only_b:
        return only_a, only_b
    entity = [t.text for t in (*only_a.values(), *only_b.values()) if _is_entity_like(t)]
    if entity:
        return Verdict(False, "entity", f"{entity}")
    if len(only_a) > _MAX_UNALIGNED or len(only_b) > _MAX_UNALIGNED:
        return Verdict(False, "content", f"{len(only_a)}/{len(only_b)} words unaligned")
    return only_a, only_b


def _added_modifier(a: Analysis, b: Analysis, only_a: dict[str, Token], only_b: dict[str, Token]) -> str:
    """A word only one side has, directly before a content word both share: it narrows the question."""
    if only_a and only_b:
        return ""
    side, own, other = (a, only_a, b) if only_a else (b, only_b, a)
    for tok in own.values():  # "largest city", "older brother": a degree on one side only
        if tok.text.endswith(("est", "er")) and tok.stem in lx.ANTONYM_STEMS:
            return tok.text
    keys = [lx.SYNONYM.get(t.stem, t.stem) for t in side.tokens]
    for i in range(len(side.tokens) - 1):
        if i and side.tokens[i - 1].text in lx.WH_WORDS:  # "which country won": the question word's noun
            continue
        if keys[i] in own and keys[i + 1] in other.content and keys[i + 1] not in own:
            return side.tokens[i].text
    return ""


def _substitution(a: Analysis, b: Analysis) -> bool:
    """The content sequences differ in one contiguous span on each side (a controlled edit)."""
    sa = [x for x in a.sequence if evidence.is_anchor(x)]
    sb = [x for x in b.sequence if evidence.is_anchor(x)]
    i = 0
    while i < min(len(sa), len(sb)) and sa[i] == sb[i]:
        i += 1
    j = 0
    while j < min(len(sa), len(sb)) - i and sa[-1 - j] == sb[-1 - j]:
        j += 1
    mid_a, mid_b = len(sa) - i - j, len(sb) - i - j
    return 0 < mid_a <= 3 and 0 < mid_b <= 3 and i + j > 0


class Verifier:
    """Checks a KNN candidate against the query; see the module docstring for the checks and their order."""

    def __init__(self, *, word_embed: WordEmbed | None = None, model: PairModel | None = None,
                 max_chars: int = DEFAULT_MAX_CHARS) -> None:
        """``word_embed`` (the cache's embedder) scores unaligned words by meaning; without it they refuse.

        ``model`` defaults to the shipped ``verify_model.json``; ``max_chars`` bounds the analysed text
        (longer text fails closed).
        """
        self._word_embed = word_embed
        self._model = model if model is not None else PairModel.load()
        self._max_chars = max_chars

    async def check(self, query: str, stored: str, *, similarity: float | None = None) -> Verdict:
        """``Verdict(ok=True)`` when ``stored``'s answer may serve ``query``."""
        return (await self.check_many(query, [stored], similarities=None if similarity is None else [similarity]))[0]

    async def check_many(self, query: str, stored: Sequence[str], *,
                         similarities: Sequence[float] | None = None) -> list[Verdict]:
        """One verdict per stored text. ``similarities`` are the sentence cosines (computed when ``None``).

        The analyses run in a worker thread; the word embeddings the content stage needs
        are fetched in one embedder call.
        """
        results, pending = await asyncio.to_thread(self._stage_one, query, list(stored))
        if not pending:
            return [r if r is not None else Verdict(False, "content") for r in results]
        if self._word_embed is None:
            for p in pending:
                results[p.index] = Verdict(False, "content", f"{p.only_a} / {p.only_b} (no word embeddings)")
            return [r if r is not None else Verdict(False, "content") for r in results]
        sims: list[float]
        if similarities is None:
            texts = [query, *(stored[p.index] for p in pending)]
            vecs = await self._word_embed(texts)
            sims = [0.0] * len(stored)
            for k, p in enumerate(pending):
                sims[p.index] = float(vecs[0] @ vecs[k + 1])
        else:
            sims = [float(s) for s in similarities]
        words = list(dict.fromkeys(w for p in pending for w in (*p.all_a, *p.all_b)))
        vectors = await self._word_embed(words)
        by_word = {w: vectors[k] for k, w in enumerate(words)}
        for p in pending:
            results[p.index] = self._judge(p, sims[p.index], by_word)
        return [r if r is not None else Verdict(False, "content") for r in results]

    def features(self, p: _Pending, cosine: float, vectors: dict[str, np.ndarray]) -> list[float]:
        """The pair model's inputs (see :attr:`PairModel.FEATURES`)."""
        best: list[float] = []
        for mine, theirs in ((p.only_a, p.all_b), (p.only_b, p.all_a)):
            if not mine:
                continue
            m = np.stack([vectors[w] for w in mine])
            t = np.stack([vectors[w] for w in theirs]) if theirs else np.zeros((1, m.shape[1]), dtype=m.dtype)
            best.extend(float(x) for x in (m @ t.T).max(axis=1))
        min_sim = min(best) if best else 1.0
        mean_sim = sum(best) / len(best) if best else 1.0
        return [cosine, float(min(len(p.only_a) + len(p.only_b), 8)), min_sim, mean_sim,
                float(p.substitution), float(not p.only_a or not p.only_b), p.aligned_frac]

    def _judge(self, p: _Pending, cosine: float, vectors: dict[str, np.ndarray]) -> Verdict:
        if p.modifier:
            return Verdict(False, "content", f"added modifier {p.modifier}")
        if p.substitution and len(p.only_a) == len(p.only_b) == 1 and (cosine < _SUBSTITUTE_COSINE or p.generative):
            # One word swapped in the same sentence ("sort a dictionary" / "sort a list"): only a synonym may pass.
            sim = float(vectors[p.only_a[0]] @ vectors[p.only_b[0]])
            if sim < _SUBSTITUTE_SIMILARITY:
                return Verdict(False, "content", f"{p.only_a[0]} → {p.only_b[0]} ({sim:.2f})")
        score = self._model.probability(self.features(p, cosine, vectors))
        if score >= self._model.threshold:
            return Verdict(True, "ok", score=score)
        return Verdict(False, "content", f"{p.only_a} / {p.only_b} p={score:.2f}", score=score)

    def _stage_one(self, query: str, stored: list[str]) -> tuple[list[Verdict | None], list[_Pending]]:
        """Analyses and evidence checks of every candidate (CPU only; run off the event loop)."""
        a = analyse(query, max_chars=self._max_chars)
        q_norm = " ".join(query.split()).casefold()
        results: list[Verdict | None] = [None] * len(stored)
        pending: list[_Pending] = []
        for i, text in enumerate(stored):
            if len(text) <= self._max_chars and " ".join(text.split()).casefold() == q_norm:
                results[i] = Verdict(True, "identical")
                continue
            b = analyse(text, max_chars=self._max_chars)
            if a.unreadable or b.unreadable:
                results[i] = Verdict(False, "unreadable", a.unreadable or b.unreadable or "")
                continue
            difference = evidence.first_difference(a, b)
            if difference is not None:
                results[i] = Verdict(False, *difference)
                continue
            aligned = _align(a, b)
            if isinstance(aligned, Verdict):
                results[i] = aligned
                continue
            only_a, only_b = aligned
            if not only_a and not only_b:
                if a.tense and b.tense and a.tense != b.tense:
                    results[i] = Verdict(False, "tense", f"{a.tense} vs {b.tense}")
                else:
                    results[i] = Verdict(True, "ok")
                continue
            total = len(a.content) + len(b.content)
            pending.append(_Pending(
                i, [t.text for t in only_a.values()], [t.text for t in only_b.values()],
                [t.text for t in a.content.values()], [t.text for t in b.content.values()],
                _substitution(a, b), 1.0 - (len(only_a) + len(only_b)) / total if total else 1.0,
                modifier=_added_modifier(a, b, only_a, only_b),
                generative=bool((a.tasks | b.tasks) & lx.GENERATIVE_TASKS)))
        return results, pending
