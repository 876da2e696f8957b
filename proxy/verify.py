"""Verification of semantic-cache candidates: refuse only on *evidence* of a different meaning.

Embedding similarity says two texts are *about* the same thing; it does not notice
that "turn on dark mode" and "turn off dark mode", or "Did Alice pay Bob?" and
"Did Bob pay Alice?", want different answers. Every KNN candidate above the
threshold passes through these checks against the stored text (an
:class:`~llmcache.proxy.analysis.Analysis` of each side, linear in the text)::

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
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmcache.errors import ConfigError
from llmcache.proxy import lexicon as lx
from llmcache.proxy.analysis import DEFAULT_MAX_CHARS, Analysis, Token, analyse

__all__ = ["Verdict", "Verifier", "PairModel", "analyse", "Analysis", "REASONS", "MODEL_PATH"]

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


# --------------------------------------------------------------------------- evidence checks


def _antonym_clash(a: Analysis, b: Analysis) -> str | None:
    """A polar word on one side and its opposite on the other; O(words) with set look-ups."""
    only_a, only_b = a.polar - b.polar, b.polar - a.polar
    for x in only_a:
        opposites = {"turn_off" if x == "turn_on" else "turn_on"} if x.startswith("turn_") else lx.ANTONYM_STEMS.get(x, set())
        hit = opposites & only_b
        if hit:
            return f"{x}/{sorted(hit)[0]}"
    # A negated polar word on one side only ("Is it fine to…?" / "Is it unsafe to…?").
    for x in only_a ^ only_b:
        for prefix in lx.NEG_PREFIXES:
            if x.startswith(prefix) and len(x) - len(prefix) >= 3 and x[len(prefix):] in lx.ANTONYM_STEMS:
                return f"{x} on one side"
    # Negative prefixes: "possible" / "impossible", "like" / "dislike" — each word tried against the other side's set.
    words_a = {t.text for t in a.tokens}
    words_b = {t.text for t in b.tokens}
    for side, other in ((words_a, words_b), (words_b, words_a)):
        for x in side:
            if x in other or len(x) < 4:
                continue
            for prefix in lx.NEG_PREFIXES:
                if (prefix + x) in other and (prefix + x) not in side:
                    return f"{x}/{prefix + x}"
    return None


def _quantifier_clash(a: Analysis, b: Analysis) -> str | None:
    qa, qb = a.quantifiers, b.quantifiers
    if qa == qb:
        return None
    if qa and qb:
        return f"{sorted(qa)} vs {sorted(qb)}"
    one = qa or qb
    strong = one & lx.STRONG_QUANTIFIERS
    return f"{sorted(strong)} vs none" if strong else None


def _modal_clash(a: Analysis, b: Analysis) -> str | None:
    ma, mb = a.modals, b.modals
    if ma == mb:
        return None
    if ma and mb:
        return f"{sorted(ma)} vs {sorted(mb)}"
    one = ma or mb
    return f"{sorted(one)} vs none" if one - {"can"} else None


def _comparison_clash(a: Analysis, b: Analysis) -> str | None:
    if (a.than and b.as_as and not b.than) or (b.than and a.as_as and not a.than):
        return "than / as…as"
    if a.than and b.than and a.less != b.less:
        return "less / more"
    return None


def _question_clash(a: Analysis, b: Analysis) -> str | None:
    qa, qb = a.qtype, b.qtype
    if qa is None or qb is None or qa == qb:
        return None
    exclusive = {"who", "where", "when", "why"}
    if qa in exclusive and qb in exclusive:
        return f"{qa}/{qb}"
    if "yesno" in (qa, qb):
        return f"{qa}/{qb}"
    return None


def _task_clash(a: Analysis, b: Analysis) -> str | None:
    if a.arithmetic != b.arithmetic:
        return f"arithmetic {sorted(a.arithmetic)} vs {sorted(b.arithmetic)}"
    diff = a.tasks ^ b.tasks
    if diff & lx.GENERATIVE_TASKS:
        return f"{sorted(a.tasks)} vs {sorted(b.tasks)}"
    return None


def _shape_clash(a: Analysis, b: Analysis) -> str | None:
    for side, other in ((a, b), (b, a)):
        for tag in side.shape - other.shape:
            # A target language named on the other side in another way ("the Spanish for") is no new constraint.
            if tag.startswith("lang:") and tag[5:] in other.content:
                continue
            return tag
    return None


def _symbol_clash(a: Analysis, b: Analysis) -> str | None:
    if a.symbols == b.symbols:
        return None
    for side, other, other_norm in ((a.symbols, b.symbols, b.norm), (b.symbols, a.symbols, a.norm)):
        for sym, count in side.items():
            if other.get(sym, 0) >= count:
                continue
            # An identifier written another way ("node.js" / "nodejs", "e-mail" / "email") is still there.
            if sym.startswith("id:") and sym[3:] in other_norm:
                continue
            return sym
    return None


def _frame_clash(a: Analysis, b: Analysis) -> str | None:
    """A side asks for an attribute the other does not ("How tall is X?" / "How old is X?")."""
    # A frame word inside a name ("Language Centre") asks for nothing.
    fa = {k for k, t in a.content.items() if k.startswith("frame:") and not t.capital}
    fb = {k for k, t in b.content.items() if k.startswith("frame:") and not t.capital}
    only_a = {k for k in fa - fb if k[6:] in lx.EXCLUSIVE_FRAMES}
    only_b = {k for k in fb - fa if k[6:] in lx.EXCLUSIVE_FRAMES}
    if only_a or only_b:
        # On one side only it is still a question about another attribute ("Where is X?" / "How old is X?").
        return f"{sorted(only_a)} / {sorted(only_b)}"
    return None


def _is_anchor(item: str) -> bool:
    return not item.startswith(("d:", "#"))


_SWAP_WINDOW = 6


def _direction_clash(a: Analysis, b: Analysis) -> str | None:
    """Arguments swapped while the words stay the same: around a marker, a verb, or a wh-question."""
    shared = (({x for x in a.sequence if _is_anchor(x)} | a.content.keys())
              & ({x for x in b.sequence if _is_anchor(x)} | b.content.keys()))
    # 1. A role marker's object becomes another shared word ("send money to Bob/Alice", "km to miles");
    #    an extra object on one side ("formula to convert C to F") is no swap.
    for marker in {m for m, _ in a.marker_objects}:
        oa = {o for m, o in a.marker_objects if m == marker and o in shared}
        ob = {o for m, o in b.marker_objects if m == marker and o in shared}
        if oa and ob and not oa <= ob and not ob <= oa:
            return f"{marker} {sorted(oa)} / {sorted(ob)}"
    # 2. "x … y" with the same words between them becomes "y … x" ("Alice paid Bob" / "Bob paid Alice").
    #    The verb between them may be worded differently ("did Sam employ Yuki" / "has Yuki hired Sam").
    pairs_a, pairs_b = _ordered_pairs(a.sequence, shared), _ordered_pairs(b.sequence, shared)
    for (x, y), middle in pairs_a.items():
        if x not in shared or y not in shared or (x, y) in pairs_b:
            continue
        other = pairs_b.get((y, x))
        if other is not None and (other == middle or _same_frame(middle, other, shared)):
            return f"{x} {' '.join(middle)} {y}"
    # 3. Two names in the opposite order with a verb between them, no passive "by" ("Did Lena beat Tom?" /
    #    "Has Tom beaten Lena?"); coordination ("between A and B") carries no direction.
    clash = _name_order_clash(a, b, shared)
    if clash:
        return clash
    # 4. "who beat X" (subject) vs "who did X beat" (object).
    ra, rb = _wh_role(a), _wh_role(b)
    if ra and rb and ra != rb and a.tokens[0].text == b.tokens[0].text:
        return f"wh {ra}/{rb}"
    return None


def _same_frame(m1: tuple[str, ...], m2: tuple[str, ...], shared: set[str]) -> bool:
    """Two middles with the same markers and one verb each that neither side shares (a reworded verb)."""
    v1 = [m for m in m1 if _is_anchor(m)]
    v2 = [m for m in m2 if _is_anchor(m)]
    return (len(v1) == len(v2) == 1 and v1[0] not in shared and v2[0] not in shared
            and [m for m in m1 if not _is_anchor(m)] == [m for m in m2 if not _is_anchor(m)])


def _names_in_order(a: Analysis, shared: set[str]) -> list[tuple[int, str]]:
    return [(i, x) for i, x in enumerate(a.sequence)
            if x in shared and x in a.content and a.content[x].capital]


def _name_order_clash(a: Analysis, b: Analysis, shared: set[str]) -> str | None:
    if "d:by" in a.sequence or "d:by" in b.sequence:
        return None
    na, nb = _names_in_order(a, shared), _names_in_order(b, shared)
    if len(na) < 2 or len(nb) < 2:
        return None
    (ia, x), (ja, y) = na[0], na[1]
    pos_b = {name: i for i, name in reversed(nb)}
    if x not in pos_b or y not in pos_b or pos_b[y] > pos_b[x]:
        return None
    ib, jb = pos_b[y], pos_b[x]
    if _directed(a.sequence[ia + 1:ja]) and _directed(b.sequence[ib + 1:jb]):
        return f"{x} … {y} reversed"
    return None


def _directed(middle: list[str]) -> bool:
    return any(_is_anchor(m) or m in ("d:to", "d:from", "d:than", "d:into", "d:over", "d:against") for m in middle)


def _ordered_pairs(seq: list[str], shared: set[str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(x, y) → items between`` for shared anchors at most :data:`_SWAP_WINDOW` apart, when the middle is
    directional. O(len(seq) · window)."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for i, x in enumerate(seq):
        if x not in shared:
            continue
        for j in range(i + 1, min(len(seq), i + 1 + _SWAP_WINDOW)):
            y = seq[j]
            if y not in shared or y == x:
                continue
            middle = tuple(seq[i + 1:j])
            # Coordination is symmetric ("Compare Python and Go"): only a verb or marker between them gives direction.
            if middle and _directed(list(middle)):
                out.setdefault((x, y), middle)
    return out


_DO = frozenset({"do", "does", "did"})


def _transposed(x: str, y: str) -> bool:
    """``waetr`` ↔ ``water``: one swap of neighbouring letters (a typo), in words of ≥ 5 letters."""
    if len(x) != len(y) or len(x) < 5 or x == y:
        return False
    diff = [i for i in range(len(x)) if x[i] != y[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and x[diff[0]] == y[diff[1]] and x[diff[1]] == y[diff[0]]


def _wh_role(a: Analysis) -> str | None:
    """Whether a wh-question asks for the subject ("who beat X") or the object ("who did X beat")."""
    toks = [t.text for t in a.tokens[:4]]
    if not toks or toks[0] not in ("who", "whom", "which", "what"):
        return None
    nxt = 2 if toks[0] == "which" and len(toks) > 2 and toks[1] not in _DO else 1
    if nxt >= len(toks):
        return None
    if toks[nxt] in _DO:
        return "object"
    if toks[nxt] in lx.STOPWORDS or toks[nxt] in ("to", "of", "in", "on", "at", "with", "for", "from", "by"):
        return None
    return "subject"


def _repeat_clash(a: Analysis, b: Analysis) -> str | None:
    """A clause repeated on one side ("does A pay B" / "does B pay A or does A pay B")."""
    ca = Counter(x for x in a.sequence if _is_anchor(x))
    cb = Counter(x for x in b.sequence if _is_anchor(x))
    extra = sum(abs(ca[k] - cb[k]) for k in ca.keys() & cb.keys())
    return f"{extra} repeated words" if extra >= 2 else None


def _evidence(a: Analysis, b: Analysis) -> Verdict | None:
    """The first check that finds a different meaning, else ``None``."""
    checks = (
        ("symbol", _symbol_clash),
        ("negation", lambda x, y: f"{x.negations} vs {y.negations}" if x.negations != y.negations else None),
        ("antonym", _antonym_clash),
        ("number", lambda x, y: f"{dict(x.numbers)} vs {dict(y.numbers)}" if x.numbers != y.numbers else None),
        ("unit", lambda x, y: f"{x.units} vs {y.units}" if Counter(x.units) != Counter(y.units) else None),
        ("direction", lambda x, y: f"{dict(x.quantities)} vs {dict(y.quantities)}" if x.quantities != y.quantities else None),
        ("quantifier", _quantifier_clash),
        ("modality", _modal_clash),
        ("comparison", _comparison_clash),
        ("time", lambda x, y: f"{sorted(x.times)} vs {sorted(y.times)}" if x.times != y.times else None),
        ("question", _question_clash),
        ("task", _task_clash),
        ("shape", _shape_clash),
        ("direction", _direction_clash),
        ("direction", _repeat_clash),
        ("topic", _frame_clash),
    )
    for reason, check in checks:
        detail = check(a, b)
        if detail:
            return Verdict(False, reason, detail)
    return None


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
    sa = [x for x in a.sequence if _is_anchor(x)]
    sb = [x for x in b.sequence if _is_anchor(x)]
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
            verdict = _evidence(a, b)
            if verdict is not None:
                results[i] = verdict
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
