"""The English lexicon the verifier explains differences with: lemmas, synonyms, derivations (WordNet 3.0).

Reads ``data/wordnet.json.gz`` once per process (a table derived at build time from Debian's
``wordnet-base`` by ``benchmarks/data/build_wordnet_table.py``; WordNet 3.0 licence in
``data/WORDNET_LICENSE``). Nothing is fetched at run time. Every look-up is a dict or set
access: :func:`lemmas` applies WordNet's own morphology (``morphy``: irregular forms, then
suffix rules checked against the vocabulary), :meth:`Lexicon.synonyms` and
:meth:`Lexicon.derived` compare the lemma sets of two words.

Synonym sets are cut at build time to each word's three most frequent senses, so a rare sense
("run" = "function") never makes two words the same; co-hyponyms ("Django"/"Flask",
"grams"/"ounces") and antonyms never share a set. :meth:`Lexicon.relation` reads the weaker
links (a hypernym, a similar adjective, a rarer shared sense, a definition that names the other
word) that the verifier accepts only inside a reworded passage, never for a one-word substitution.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcache.errors import ConfigError

__all__ = ["TABLE_PATH", "Lexicon", "lexicon"]

TABLE_PATH = Path(__file__).with_name("data") / "wordnet.json.gz"
_SCHEMA = 3
#: Hypernym steps a weaker relation may climb ("skillet" → "pan" is one, "tablecloth" → "linen" two).
HYPERNYM_DEPTH = 2
_CACHE_ENTRIES = 50_000
#: Bounds of the per-word memos of :meth:`Lexicon.index` (~1.1 KB a word) and :meth:`Lexicon.near` (~3.5 KB a
#: word: hypernyms, definitions), ~18 MB and ~28 MB at most beside the ~130 MB the table takes; the pair files
#: use 5,400 distinct words.
_INDEX_ENTRIES = 16_000
_NEAR_ENTRIES = 8_000
# WordNet's morphy suffix rules by part of speech: (suffix, replacement).
_RULES = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


@dataclass(frozen=True, slots=True)
class Lexicon:
    """WordNet-derived maps (read-only after load)."""

    pos: dict[str, str]
    """Lemma → its parts of speech (``n`` noun, ``v`` verb, ``a`` adjective, ``r`` adverb)."""
    exceptions: dict[str, str]
    synsets: dict[str, str]
    """Lemma → ids (space-separated) of the synsets of its frequent senses: two words sharing one are synonyms."""
    derivations: dict[str, str]
    """Lemma → derivationally related lemmas (space-separated)."""
    antonyms: dict[str, str]
    more: dict[str, str] = field(default_factory=dict)
    """Lemma → ids of its rarer senses (ranks 3 to 9): weaker evidence than :attr:`synsets`."""
    hyper: dict[str, str] = field(default_factory=dict)
    """Synset id → hypernym synset ids (instances included: "Glasgow" → "city")."""
    similar: dict[str, str] = field(default_factory=dict)
    """Synset id → similar-to, also-see and verb-group synset ids ("courteous" ↔ "polite")."""
    gloss: dict[str, str] = field(default_factory=dict)
    """Synset id → the content lemmas of its definition, generic words left out ("ripe": … "ready" "eat")."""
    cache: dict[str, frozenset[str]] = field(default_factory=dict)
    pos_cache: dict[str, str] = field(default_factory=dict)
    """Lemmas by surface form, bounded by :data:`_CACHE_ENTRIES` (a dict's item writes are atomic)."""
    index_cache: dict[str, WordIndex] = field(default_factory=dict)
    """:meth:`index` by surface form, bounded by :data:`_INDEX_ENTRIES`."""
    near_cache: dict[str, WordNear] = field(default_factory=dict)
    """:meth:`near` by word, bounded by :data:`_NEAR_ENTRIES`."""
    heads: set[str] = field(default_factory=set)
    """First words of every multi-word lemma ("get" of "get_rid_of"), filled on first use by :meth:`is_head`."""
    memo: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    """Look-ups other modules derive from this lexicon (the explanation's collocations), bounded by their owner."""
    pairs: set[str] = field(default_factory=set)
    """First two words of every lemma of three words or more ("get_rid"), filled on first use by
    :meth:`pair_heads`."""

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> Lexicon:
        """Read the derived table; ``ConfigError`` when it is missing or of another schema."""
        try:
            doc = json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"verifier lexicon {path} is unreadable ({exc}); reinstall llmcache or rebuild it with "
                              "benchmarks/data/build_wordnet_table.py") from exc
        if doc.get("schema_version") != _SCHEMA:
            raise ConfigError(f"verifier lexicon {path} has schema {doc.get('schema_version')}, expected {_SCHEMA}: "
                              "rebuild it with benchmarks/data/build_wordnet_table.py")
        return cls(doc["pos"], doc["exc"], doc["sense"], doc["der"], doc["ant"], doc["more"], doc["hyper"],
                   doc["similar"], doc["gloss"])

    def known(self, word: str) -> bool:
        """An English word (any inflection of a WordNet lemma)."""
        return bool(self.lemmas(word))

    def lemmas(self, word: str) -> frozenset[str]:
        """WordNet lemmas ``word`` may be an inflection of (empty when it is no English word WordNet knows)."""
        hit = self.cache.get(word)
        if hit is None:
            if len(self.cache) >= _CACHE_ENTRIES:
                self.cache.clear()  # a bound, not an LRU: the working set is small
            hit = self.cache[word] = _morphy(self, word)
        return hit

    def index(self, word: str) -> WordIndex:
        """The look-ups the explanation makes of every word of a text, done once per word (memoised, bounded)."""
        hit = self.index_cache.get(word)
        if hit is None:
            if len(self.index_cache) >= _INDEX_ENTRIES:
                self.index_cache.clear()  # a bound, not an LRU: the working set is small
            ls = self.lemmas(word) or frozenset([word])
            # Interned: the same id or lemma in many entries is one string (memory), compared by identity first.
            syn = frozenset(map(sys.intern, " ".join(self.synsets.get(lemma, "") for lemma in ls).split()))
            der = frozenset(map(sys.intern, " ".join(self.derivations.get(lemma, "") for lemma in ls).split()))
            hit = self.index_cache[word] = WordIndex(ls, syn, der, any(self.is_head(f) for f in ls))
        return hit

    def is_head(self, lemma: str) -> bool:
        """Whether some multi-word lemma starts with ``lemma`` ("get" → "get_rid_of"); ``True`` for a lemma that is
        itself several words (never skip what cannot be ruled out)."""
        if not self.heads:
            heads = {k.split("_", 1)[0] for k in self.synsets if "_" in k}
            heads.add("\x00")  # never empty once built
            self.heads.update(heads)
        return lemma in self.heads or "_" in lemma

    def pair_heads(self) -> set[str]:
        """:attr:`pairs`, built on first use: a three-word lemma ("get_rid_of") starts with one of them."""
        if not self.pairs:
            pairs = {"_".join(k.split("_", 2)[:2]) for k in self.synsets if k.count("_") >= 2}
            pairs.add("\x00")  # never empty once built
            self.pairs.update(pairs)
        return self.pairs

    def near(self, word: str) -> WordNear:
        """One word's part of :meth:`neighbourhood` (memoised, bounded)."""
        hit = self.near_cache.get(word)
        if hit is None:
            if len(self.near_cache) >= _NEAR_ENTRIES:
                self.near_cache.clear()
            ids = self.sense_ids(word)
            similar: set[str] = set()
            gloss: set[str] = set()
            for i in ids:
                similar.update(self.similar.get(i, "").split())
                gloss.update(self.gloss.get(i, "").split())
            hit = self.near_cache[word] = WordNear(
                _interned(ids), _interned(self.up(ids, HYPERNYM_DEPTH)), _interned(self.sense_ids(word, rare=True)),
                self.lemmas(word) or frozenset([word]), _interned(similar), _interned(gloss))
        return hit

    def parts_of_speech(self, word: str) -> str:
        """``"nv"``…: every part of speech of any lemma of ``word`` (memoised with :meth:`lemmas`)."""
        key = "\x00" + word  # one bounded cache for lemmas and parts of speech
        hit = self.pos_cache.get(key)
        if hit is None:
            if len(self.pos_cache) >= _CACHE_ENTRIES:
                self.pos_cache.clear()
            parts = {p for lemma in self.lemmas(word) for p in self.pos.get(lemma, "")}
            hit = self.pos_cache[key] = "".join(sorted(parts))
        return hit

    def synonyms(self, x: str, y: str) -> bool:
        """Some lemma of ``x`` and some lemma of ``y`` share a frequent-sense synonym set."""
        sx = {s for lemma in self.lemmas(x) for s in self.synsets.get(lemma, "").split()}
        return bool(sx) and any(s in sx for lemma in self.lemmas(y) for s in self.synsets.get(lemma, "").split())

    def synonym_ids(self, word: str) -> frozenset[str]:
        """Ids of the synonym sets any lemma of ``word`` (or a ``_``-joined collocation) belongs to."""
        return frozenset(s for lemma in (self.lemmas(word) or {word}) for s in self.synsets.get(lemma, "").split())

    def same_lemma(self, x: str, y: str) -> bool:
        return bool(self.lemmas(x) & self.lemmas(y))

    def derived(self, x: str, y: str) -> bool:
        """``decide`` ↔ ``decision``: WordNet links the two lemmas derivationally (frequent senses only)."""
        ly = self.lemmas(y)
        return any(d in ly for lemma in self.lemmas(x) for d in self.derivations.get(lemma, "").split())

    def sense_ids(self, word: str, *, rare: bool = False) -> set[str]:
        """Synset ids of ``word``'s frequent senses (and with ``rare`` its rarer ones too)."""
        out: set[str] = set()
        for lemma in self.lemmas(word) or {word}:
            out.update(self.synsets.get(lemma, "").split())
            if rare:
                out.update(self.more.get(lemma, "").split())
        return out

    def up(self, ids: set[str], depth: int) -> set[str]:
        """``ids`` and every synset at most ``depth`` hypernym steps above them."""
        seen, frontier = set(ids), set(ids)
        for _ in range(depth):
            frontier = {h for i in frontier for h in self.hyper.get(i, "").split()} - seen
            seen |= frontier
        return seen

    def is_hypernym(self, general: str, specific: str, *, depth: int = HYPERNYM_DEPTH) -> bool:
        """A frequent sense of ``general`` is at most ``depth`` hypernym steps above one of ``specific``."""
        g = self.sense_ids(general)
        return bool(g) and bool(self.up(self.sense_ids(specific), depth) & g)

    def relation(self, x: str, y: str) -> str | None:
        """The weaker lexical link between two different words, or ``None``.

        ``hypernym`` (one is a kind of the other, frequent senses, ≤ :data:`HYPERNYM_DEPTH` steps),
        ``similar`` (similar-to / also-see / verb group), ``sense`` (a shared synset among rarer
        senses), ``definition`` (one's frequent-sense definition names the other). Co-hyponyms
        ("Glasgow"/"Edinburgh", "grams"/"ounces") have none of these.
        """
        sx, sy = self.sense_ids(x), self.sense_ids(y)
        if not sx or not sy:
            return None
        if self.up(sx, HYPERNYM_DEPTH) & sy or self.up(sy, HYPERNYM_DEPTH) & sx:
            return "hypernym"
        if any(set(self.similar.get(i, "").split()) & sy for i in sx):
            return "similar"
        if self.sense_ids(x, rare=True) & self.sense_ids(y, rare=True):
            return "sense"
        lx, ly = self.lemmas(x) or {x}, self.lemmas(y) or {y}
        if any(ly & set(self.gloss.get(i, "").split()) for i in sx) or any(
                lx & set(self.gloss.get(i, "").split()) for i in sy):
            return "definition"
        return None

    def neighbourhood(self, words: list[str]) -> Neighbourhood:
        """The weaker links of several words at once: :meth:`relation` against any of them, in set look-ups."""
        near = [self.near(w) for w in words]
        return Neighbourhood(self, set().union(*(x.ids for x in near)), set().union(*(x.up for x in near)),
                             set().union(*(x.similar for x in near)), set().union(*(x.rare for x in near)),
                             set().union(*(x.lemmas for x in near)), set().union(*(x.gloss for x in near)))

    def opposite(self, x: str, y: str) -> bool:
        ly = self.lemmas(y)
        return any(d in ly for lemma in self.lemmas(x) for d in self.antonyms.get(lemma, "").split())


def _interned(strings: set[str]) -> frozenset[str]:
    return frozenset(map(sys.intern, strings))


@dataclass(frozen=True, slots=True)
class WordIndex:
    """What :meth:`Lexicon.index` knows of one surface form."""

    lemmas: frozenset[str]
    """Its WordNet lemmas, or the word itself when WordNet knows none."""
    syn_ids: frozenset[str]
    """Frequent-sense synset ids of those lemmas."""
    derived: frozenset[str]
    """Lemmas derivationally related to those lemmas."""
    head: bool
    """Some lemma may open a multi-word lemma (``False``: no collocation starts with this word)."""


@dataclass(frozen=True, slots=True)
class WordNear:
    """One word's share of a :class:`Neighbourhood` (see :meth:`Lexicon.neighbourhood`)."""

    ids: frozenset[str]
    up: frozenset[str]
    rare: frozenset[str]
    lemmas: frozenset[str]
    similar: frozenset[str]
    gloss: frozenset[str]


@dataclass(slots=True)
class Neighbourhood:
    """Unions of several words' senses, hypernyms, similar senses, rarer senses, lemmas and definitions."""

    lex: Lexicon
    ids: set[str] = field(default_factory=set)
    up: set[str] = field(default_factory=set)
    similar: set[str] = field(default_factory=set)
    rare: set[str] = field(default_factory=set)
    lemmas: set[str] = field(default_factory=set)
    gloss: set[str] = field(default_factory=set)

    def relation(self, x: str) -> str | None:
        """:meth:`Lexicon.relation` of ``x`` with some word of the neighbourhood (the first kind found)."""
        lex = self.lex
        nx = lex.near(x)  # x's own senses, hypernyms, similar senses, rarer senses, lemmas and definitions
        if not nx.ids and x.endswith("ly"):
            nx = lex.near(x[:-2])  # an adverb by its adjective: "courteously" → "courteous"
        if not nx.ids:
            return None
        if not (nx.up.isdisjoint(self.ids) and nx.ids.isdisjoint(self.up)):
            return "hypernym"
        if not (nx.ids.isdisjoint(self.similar) and nx.similar.isdisjoint(self.ids)):
            return "similar"
        if not nx.rare.isdisjoint(self.rare):
            return "sense"
        if not (nx.lemmas.isdisjoint(self.gloss) and nx.gloss.isdisjoint(self.lemmas)):
            return "definition"
        return None


def _morphy(lex: Lexicon, word: str) -> frozenset[str]:
    out: set[str] = set()
    if word in lex.pos:
        out.add(word)
    base = lex.exceptions.get(word)
    if base is not None:
        out.add(base)
    for p, rules in _RULES.items():
        for suffix, repl in rules:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                cand = word[: len(word) - len(suffix)] + repl
                if p in lex.pos.get(cand, ""):
                    out.add(cand)
    # Doubled consonants before -ing/-ed/-er ("running", "stopped", "bigger"): morphy misses these.
    for suffix in ("ing", "ed", "er", "est"):
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= 3 and stem[-1] == stem[-2] and stem[:-1] in lex.pos:
            out.add(stem[:-1])
    return frozenset(out)


@functools.cache
def lexicon() -> Lexicon:
    """The shipped table, loaded on first use (about 0.5 s once per process; a racing second load is harmless)."""
    return Lexicon.load()
