"""Positive evidence of sameness: every content-word difference between two prompts must be explained.

Runs after :mod:`llmcache.proxy.semantic.evidence` found no sign of a different meaning. Spelling and
abbreviation variants ("colour", "k8s", "u") and curated synonym groups are folded into one word by
:mod:`llmcache.proxy.semantic.analysis` already. Each content word one side has and the other lacks
needs one explanation, tried in this order::

    word only in A ─┬─ inflection   same WordNet lemma as a word of B        ("ran" / "running")
                    ├─ acronym      initials of words of B                    ("NLP" / "natural language processing")
                    ├─ compound     words of B written together               ("timezone" / "time zone")
                    ├─ derivation   WordNet-related or same 5-letter root     ("decide" / "decision")
                    ├─ synonym      a frequent-sense WordNet synonym of B     ("erase"; "get rid of" / "remove")
                    ├─ typo         one edit from a word of B, itself no English word ("tomorow" / "tomorrow")
                    ├─ framing      a word that frames the request, not its content ("tips", "way", "steps")
                    ├─ reformulation  the other side's question form says it ("What causes X?" / "Why X?")
                    ├─ abbreviation a clipped form of a word of B, itself no English word ("mech" / "mechanical")
                    ├─ light        a word that adds nothing to what is asked ("super", "actually", "appear")
                    └─ otherwise    unexplained ──┐
                                                  │ where are the unexplained words? (token alignment)
      one edited place, the rest the same ◀──────┤ (a substitution or insertion: "avoid"/"eat", "roof"/"home",
        → refuse (``entity`` / ``content``)       │  "the first chapter of"): only the strong evidence above counts
      the texts are reworded in several places ◀──┘ (frames, order, words differ): a weaker WordNet link to a word of
        the other side explains a word too: ``hypernym`` ("pan"/"skillet"), ``similar`` ("courteous"/"polite"),
        ``sense`` (a rarer shared sense), ``definition`` (its definition names it: "ripe" … "ready to eat");
        never for a name or identifier, whatever the texts

Word or sentence embeddings play no part: a co-hyponym ("Django"/"Flask", "grams"/"ounces"),
a different task ("explain"/"refactor") or an added modifier ("engineering team"/"whole
company") is unexplained, whatever its cosine. Cost: one pass over each side to index its
lemmas, synonym-set ids and derivations, then one look-up per unaligned word (capped), so linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmcache.proxy.semantic import evidence as evidence_mod
from llmcache.proxy.semantic import lexicon as lx
from llmcache.proxy.semantic import wordnet as wordnet_mod
from llmcache.proxy.semantic.analysis import Analysis, Token
from llmcache.proxy.semantic.wordnet import Lexicon

__all__ = ["EVIDENCE", "Explanation", "explain", "is_name"]

#: Every kind of evidence that can explain a difference (also :attr:`Verdict.evidence` values).
EVIDENCE = ("inflection", "acronym", "compound", "derivation", "synonym", "typo", "framing", "reformulation",
            "abbreviation", "light", "verbatim", "hypernym", "similar", "sense", "definition")
#: More unaligned words than this on one side: the texts are simply different (also bounds the work).
MAX_UNALIGNED = 8
#: More words left for the weaker links than this: a rewritten text, not a reworded question (bounds the work).
MAX_WEAK = 6


@dataclass(frozen=True, slots=True)
class Explanation:
    """Outcome of :func:`explain`: the evidence used, or the words nothing explained."""

    evidence: tuple[str, ...]
    """One entry per explained word (kinds from :data:`EVIDENCE`), in text order."""
    unexplained: tuple[Token, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.unexplained


#: First words of the curated multi-word entries ("get" of "get_back"): a collocation can start only there.
_CURATED_HEADS = frozenset(k.split("_", 1)[0] for k in (*lx.SYNONYM, *lx.PHRASAL) if "_" in k)
#: First two words of the curated entries of three words or more: a three-word collocation starts only there.
_PAIR_HEADS = frozenset("_".join(k.split("_", 2)[:2]) for k in lx.SYNONYM if k.count("_") >= 2)


class _Side:
    """Look-up indexes over one text's words, built once per analysis (linear in the text; see :func:`_side`)."""

    __slots__ = ("_by_len", "collocations", "derived", "lemmas", "pairs", "syn_ids", "words")

    def __init__(self, a: Analysis, lex: Lexicon) -> None:
        words = self.words = [t.text for t in a.tokens]
        index = [lex.index(w) for w in words]  # each word's lemmas, synset ids and derivations, memoised
        self.lemmas: set[str] = set().union(*(ix.lemmas for ix in index))
        self.syn_ids: set[str] = set().union(*(ix.syn_ids for ix in index))
        self.derived: set[str] = set().union(*(ix.derived for ix in index))
        self._by_len: dict[int, list[str]] | None = None
        curated = {lx.SYNONYM.get(t.stem, "") for t in a.tokens}
        self.syn_ids.update(c for c in curated if c.startswith("syn:"))
        # Collocations ("get rid of", "find out", "look up"): their synonym sets explain a word on the other
        # side, and a match explains the collocation's own words too. Only a lemma that opens some multi-word
        # entry (WordNet's or a curated one) is looked up: the others cannot start a collocation.
        self.collocations: list[tuple[frozenset[int], frozenset[str]]] = []
        self.pairs: list[str] = []  # two-word WordNet lemmas of the text ("take_in"), as _colloc_keys finds them
        synsets, curated_keys = lex.synsets, lx.SYNONYM
        n_words = len(words)
        # The first particle at or after each position, for phrasal verbs around their object.
        next_particle = [n_words] * (n_words + 1)
        for j in range(n_words - 1, -1, -1):
            next_particle[j] = j if words[j] in lx.PARTICLES else next_particle[j + 1]
        for i, ix in enumerate(index):
            if not ix.head and ix.lemmas.isdisjoint(_CURATED_HEADS):
                continue
            # A phrasal verb around its object: "get the wax off" = "remove", "throw the box away".
            particle: int | None = next_particle[min(i + 2, n_words)]
            if particle >= min(n_words, i + 7):
                particle = None
            w = words[i]
            if i + 2 <= n_words:
                found2, pairs2, longer = _bigram(lex, w, ix.lemmas, words[i + 1])
                self.pairs.extend(pairs2)
                for key in found2:
                    self._add(lex, key, range(i, i + 2))
                if i + 3 <= n_words:
                    for prefix in longer:
                        key = f"{prefix}_{words[i + 2]}"
                        if synsets.get(key) or curated_keys.get(key):
                            self._add(lex, key, range(i, i + 3))
            if particle is not None:
                for key in _phrasal(lex, w, ix.lemmas, words[particle]):
                    self._add(lex, key, (i, particle), discontinuous=True)

    @property
    def by_len(self) -> dict[int, list[str]]:
        """The text's words of three letters or more by length (for the typo test; built on first use)."""
        if self._by_len is None:
            by_len: dict[int, list[str]] = {}
            for w in self.words:
                if len(w) >= 3:
                    by_len.setdefault(len(w), []).append(w)
            self._by_len = by_len
        return self._by_len

    def _add(self, lex: Lexicon, key: str, positions: range | tuple[int, int], *, discontinuous: bool = False) -> None:
        curated = lx.PHRASAL.get(key, "") if discontinuous else lx.SYNONYM.get(key, "")
        ids = f"{lex.synsets.get(key, '')} {curated}".split()
        if ids:
            found = frozenset(ids)
            self.syn_ids.update(found)
            self.collocations.append((frozenset(positions), found))

    def colloc_hit(self, pos: int, other: _Side) -> bool:
        """The token at ``pos`` is inside a collocation that shares a synonym set with the other side."""
        return any(pos in where and ids & other.syn_ids for where, ids in self.collocations)


#: Bound of the collocation memos (:attr:`Lexicon.memo`) of :func:`_bigram` and :func:`_phrasal`.
_COLLOCATION_ENTRIES = 50_000


def _memo_slot(lex: Lexicon) -> dict[tuple[str, str, str], Any]:
    """The lexicon's memo, emptied when full (a bound, not an LRU: the working set is small)."""
    if len(lex.memo) >= _COLLOCATION_ENTRIES:
        lex.memo.clear()
    return lex.memo


def _bigram(lex: Lexicon, w: str, lemmas: frozenset[str], nxt: str) -> tuple[tuple[str, ...], tuple[str, ...],
                                                                            tuple[str, ...]]:
    """``(found, pairs, longer)`` for a word (with its ``lemmas``) before ``nxt``: the two-word keys ("get_rid")
    with a synset or a curated group, those in WordNet (:attr:`_Side.pairs`), and those that may open a longer one.
    Read once per spelling and lexicon (memoised in :attr:`Lexicon.memo`), not once per text.
    """
    hit = lex.memo.get(("bigram", w, nxt))
    if hit is None:
        pair_heads = lex.pair_heads()
        found, pairs, longer = [], [], []
        for f in lemmas:
            key = f"{f}_{nxt}"
            in_wordnet = lex.synsets.get(key)
            if in_wordnet is not None:
                pairs.append(key)
            if in_wordnet or lx.SYNONYM.get(key):
                found.append(key)
            if key in pair_heads or key in _PAIR_HEADS or "_" in f or "_" in nxt:
                longer.append(key)
        hit = _memo_slot(lex)[("bigram", w, nxt)] = (tuple(found), tuple(pairs), tuple(longer))
    return hit


def _phrasal(lex: Lexicon, w: str, lemmas: frozenset[str], particle: str) -> tuple[str, ...]:
    """Keys of a phrasal verb around its object ("get_off", "throw_away") that have a synset or a curated group
    (memoised like :func:`_bigram`)."""
    hit = lex.memo.get(("phrasal", w, particle))
    if hit is None:
        hit = _memo_slot(lex)[("phrasal", w, particle)] = tuple(
            key for key in (f"{f}_{particle}" for f in lemmas) if lex.synsets.get(key) or lx.PHRASAL.get(key))
    return hit


def _side(a: Analysis, lex: Lexicon) -> _Side:
    """The :class:`_Side` of ``a``, kept in ``a.memo`` (per lexicon)."""
    hit = a.memo.get("explain.side")
    if hit is None or hit[0] is not lex:
        hit = a.memo["explain.side"] = (lex, _Side(a, lex))
    return hit[1]


def _near(a: Analysis, lex: Lexicon) -> wordnet_mod.Neighbourhood:
    """The weaker links of ``a``'s content words that are no names, and of its collocations, kept in ``a.memo``."""
    hit = a.memo.get("explain.near")
    if hit is None or hit[0] is not lex:
        # The shipped lexicon's two-word lemmas, as its _Side found them (else looked up again).
        pairs = _side(a, lex).pairs if lex is wordnet_mod.lexicon() else _colloc_keys(a)
        words = [o.text for o in a.content.values() if not is_name(o)] + pairs
        hit = a.memo["explain.near"] = (lex, lex.neighbourhood(words))
    return hit[1]


def _doubled(x: str, y: str) -> bool:
    """The two words differ by one doubled letter ("egs" / "eggs", "adress" / "address")."""
    short, long_ = (x, y) if len(x) < len(y) else (y, x)
    return len(long_) == len(short) + 1 and any(
        long_[i] == long_[i + 1] and long_[:i] + long_[i + 1:] == short for i in range(len(long_) - 1))


def _one_edit(x: str, y: str) -> bool:
    """Levenshtein distance 1, or one swap of neighbouring letters."""
    if x == y or abs(len(x) - len(y)) > 1:
        return False
    if len(x) == len(y):
        diff = [i for i in range(len(x)) if x[i] != y[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and x[diff[0]] == y[diff[1]]
                                  and x[diff[1]] == y[diff[0]])
    if len(x) > len(y):
        x, y = y, x
    i = 0
    while i < len(x) and x[i] == y[i]:
        i += 1
    return x[i:] == y[i + 1:]


def _same_root(x: str, y: str) -> bool:
    """Morphological variants: a shared prefix of ≥ 5 letters covering ≥ 80 % of the shorter word."""
    n = 0
    for cx, cy in zip(x, y):
        if cx != cy:
            break
        n += 1
    return n >= 5 and n >= 0.8 * min(len(x), len(y))


class _Facts:
    """What the explanation reads of one text again and again, read once (kept in ``Analysis.memo``)."""

    __slots__ = ("_task_words", "by_first", "by_three", "codes", "initials", "roots", "stems", "words")

    def __init__(self, a: Analysis) -> None:
        self.words = [t.text for t in a.tokens]
        self.initials = "".join(w[:1] for w in self.words)
        # Positions (all but the last word) by first letter: a word that is a prefix of another shares its first.
        self.by_first: dict[str, list[int]] = {}
        for i, w in enumerate(self.words[:-1]):
            self.by_first.setdefault(w[:1], []).append(i)
        stems = [t.stem for t in a.content.values()]
        self.stems = frozenset(stems)
        # Content stems by their first five letters: two words of one root share at least those (see _same_root).
        self.roots: dict[str, list[str]] = {}
        for x in stems:
            if len(x) >= 5:
                self.roots.setdefault(x[:5], []).append(x)
        self.codes = [sym.lower() for sym in a.symbols if sym[:1] == "`" or sym[:3] == "id:"]
        # Content words that are no capitalised names, by their first three letters (see _abbreviation).
        self.by_three: dict[str, list[str]] = {}
        for t in a.content.values():
            if not t.capital and len(t.text) >= 3:
                self.by_three.setdefault(t.text[:3], []).append(t.text)
        self._task_words: set[str | None] | None = None

    @property
    def task_words(self) -> set[str | None]:
        """The task class of every word (rarely needed: read on first use)."""
        if self._task_words is None:
            self._task_words = {lx.TASK_CLASSES.get(w) for w in self.words}
        return self._task_words


def _facts(a: Analysis) -> _Facts:
    hit = a.memo.get("explain.facts")
    if not isinstance(hit, _Facts):
        hit = a.memo["explain.facts"] = _Facts(a)
    return hit


def _spans(only: list[Token], own: Analysis, other: Analysis, other_only: list[Token]) -> dict[int, str]:
    """Words explained by a run of words on the other side, and that run's words too.

    ``NLP`` ↔ ``natural language processing`` (acronym), ``airpods`` ↔ ``air pods`` (compound): the
    one word and every word of the run are explained together. Returns ``id(token) → evidence``.
    """
    facts = _facts(other)
    words, initials = facts.words, facts.initials
    out: dict[int, str] = {}
    for tok in only:
        w = tok.text
        span: list[str] | None = None
        kind = ""
        if 2 <= len(w) <= 6 and w.isalpha():
            at = initials.find(w)
            if at >= 0 and all(x not in lx.STOPWORDS for x in words[at:at + len(w)]):
                span, kind = words[at:at + len(w)], "acronym"
        if span is None:
            # Only a word with w's first letter can start it (an empty word would start anything).
            for i in sorted(facts.by_first.get(w[:1], []) + facts.by_first.get("", [])):
                if w.startswith(words[i]):
                    for n in (2, 3):
                        # Words of a name, not function words run together ("us a" is no "usa").
                        if "".join(words[i:i + n]) == w and not any(x in lx.STOPWORDS for x in words[i:i + n]):
                            span, kind = words[i:i + n], "compound"
        if span is not None:
            out[id(tok)] = kind
            for o in other_only:
                if o.text in span:
                    out[id(o)] = kind
    del own
    return out


def _why(tok: Token, other: _Side, other_a: Analysis, lex: Lexicon) -> str | None:
    w = tok.text
    ls = lex.lemmas(w)
    facts = _facts(other_a)
    if ls & other.lemmas or tok.stem in facts.stems:
        return "inflection"
    if any(w in code for code in facts.codes):
        return "verbatim"  # "git stash" / "`git stash`", "CSV file" / ".csv": the other side's code names it
    if is_name(tok):
        return None  # a name or identifier is never "derived" or a synonym of another ("abcxyz" / "abcxyw")
    if ls & other.derived or (len(tok.stem) >= 5
                              and any(_same_root(tok.stem, x) for x in facts.roots.get(tok.stem[:5], ()))):
        return "derivation"
    # Its frequent-sense synsets (of its lemmas, or of the word itself) or its curated group, on the other side.
    if not lex.index(w).syn_ids.isdisjoint(other.syn_ids) or lx.SYNONYM.get(tok.stem, "") in other.syn_ids:
        return "synonym"
    if lx.UNITS.get(w) in other_a.units:
        return "inflection"  # "Minutes in one day?" / "How many minutes are in a day?": the same unit asked
    if len(w) > 5 and w.endswith("ly") and (w[:-2] in facts.words or w[:-3] + "e" in facts.words
                                             or (w.endswith("ily") and w[:-3] + "y" in facts.words)):
        return "derivation"  # "rename a branch locally" / "a local branch", "safely" / "safe", "easily" / "easy"
    task = lx.TASK_CLASSES.get(w)
    if task in lx.SYNONYM_TASKS and other_a.tokens and (task in other_a.tasks or task in facts.task_words):
        return "synonym"  # "How do I write a letter?" / "Help me draft a letter": one operation, two words
    if len(w) >= 3:
        # A misspelling: one edit from a word of the other side, one of the two no English word ("tomorow");
        # a three-letter word only by a doubled letter ("egs" / "eggs").
        for n in (len(w) - 1, len(w), len(w) + 1):
            for x in other.by_len.get(n, ()):
                # One edit leaves the first or the last letter in place (words of 3+ letters against 2+).
                if ((x[0] == w[0] or x[-1] == w[-1]) and _one_edit(w, x) and (not ls or not lex.lemmas(x))
                        and (min(len(w), len(x)) >= 4 or _doubled(w, x))):
                    return "typo"
    if w in lx.FRAMING or tok.stem in lx.FRAMING_STEMS:
        return "framing"
    return None


def _structural(tok: Token, own: Analysis, other: Analysis) -> bool:
    """A word that only reformulates the question form the other side uses (see :data:`lexicon.WHY_FRAME`)."""
    w = tok.text
    if w in lx.WHY_FRAME and other.qtype == "why" and own.qtype != "why":
        return True
    if w in lx.HAPPEN_FRAME and (own.qtype == "why" or "why" in {t.text for t in own.tokens}):
        return True  # "Explain why it happens" = "what causes it"
    if w in ("count", "number") and other.qtype == "count":
        return True  # "Violin string count?" = "How many strings does a violin have?"
    if w in ("name", "names") and other.qtype == "who":
        return True  # "Greek sea god's name?" = "Who is the Greek god of the sea?"
    nxt = own.tokens[tok.pos + 1].text if tok.pos + 1 < len(own.tokens) else ""
    if w == "number" and nxt == "of":
        return True  # "the number of continents" = "how many continents"
    if w in ("time", "times", "year", "date") and other.qtype == "when" and own.qtype in ("when", "what", None):
        return True  # "When is the best time to see X?", "In what year did X?" = "When …?"
    if (w in lx.GIVEN_TEXT_NOUNS or w == "following") and own.quoted and other.quoted:
        return True  # "Paraphrase the sentence 'X'" = "Reword 'X'": the quote is the text either way
    other_words, own_words = _facts(other).words, _facts(own).words
    has_bigram = evidence_mod.has_bigram
    if w in ("time", "duration") and has_bigram(other_words, "how", "long") and "long" not in own_words:
        return True  # "tattoo healing time?" = "how long does a tattoo take to heal"
    if w in ("frequency", "interval", "intervals") and has_bigram(other_words, "how", "often"):
        return True  # "the right watering frequency for X" = "how often should I water X"
    prev = own_words[tok.pos - 1] if tok.pos else ""
    if w == "often" and prev == "how" and {"frequency", "interval", "intervals"} & set(other_words):
        return True  # and the other way round
    if (w in ("largest", "greatest", "highest", "biggest") and has_bigram(own_words, w, "number")
            and "most" in other_words):
        return True  # "the largest number of moons" = "the most moons"
    if w in lx.PERSON_NOUNS and prev in ("which", "what") and other.qtype == "who":
        return True  # "Which scientist discovered penicillin?" = "Who discovered penicillin?"
    if w in lx.SIGN_NOUNS and any(has_bigram(other_words, x, y) for x in ("tell", "know") for y in ("if", "whether")):
        return True  # "What are the signs that milk has spoiled?" = "How can I tell if milk has gone bad?"
    # "How do you say X in French?" = "Translate X into French".
    return w == "say" and any(x.startswith("lang:") for x in own.shape) and "translate" in other.tasks


def is_name(tok: Token) -> bool:
    """A name or identifier: compared as itself, never explained by a related word. A name that is also a common
    word ("fall", "word", "spring") is one only where it is written with a capital: "did the Berlin Wall fall"
    is the verb ("come down"), "Word" the program."""
    return (tok.capital or tok.compound or tok.allcaps or any(map(str.isdigit, tok.text))
            or (tok.text in lx.GAZETTEER and tok.text not in _COMMON_WORD_NAMES))


#: Words that ask for a relation to the word named, not for the word itself.
_RELATION_WORDS = frozenset(["opposite", "opposites", "antonym", "antonyms", "synonym", "synonyms", "rhyme", "rhymes",
                             "plural", "singular", "abbreviation", "acronym", "etymology", "origin", "pronunciation"])

#: Gazetteer entries that are also everyday words (a verb, a noun): names only when capitalised.
_COMMON_WORD_NAMES = frozenset(["fall", "word", "spring", "go", "edge", "swift", "rust", "may", "march"])


def _clipped(short: str, full: str, lex: Lexicon) -> bool:
    """``mech`` / ``mechanical``, ``args`` / ``arguments``: a clipped form that is no English word of its own."""
    w = short[:-1] if len(short) > 4 and short.endswith("s") else short
    # The string tests first: most pairs of words fail them, and they cost no look-up.
    return (len(w) >= 3 and len(full) >= len(w) + 2 and full.startswith(w) and w.isalpha() and not lex.known(short)
            and lex.known(full))


def _abbreviation(tok: Token, other_a: Analysis, lex: Lexicon) -> bool:
    """Either word clipped to the other ("mech" / "mechanical"): both are explained."""
    if tok.capital:
        return False
    # Either way round the two words share their first three letters: only those of the other side are tried.
    return any(_clipped(tok.text, x, lex) or _clipped(x, tok.text, lex)
               for x in _facts(other_a).by_three.get(tok.text[:3], ()))


def _light(tok: Token, own: Analysis, other_a: Analysis, lex: Lexicon) -> bool:
    """A word that adds nothing asked for: see :data:`lexicon.LIGHT`, a tool naming the other side's platform
    ("kubectl" / "Kubernetes"), or a verb of becoming before an adjective ("going yellow" / "turning yellow")."""
    w = tok.text
    if w in lx.LIGHT:
        return True
    if tok.stem in lx.LIGHT_STEMS:
        # "complete" / "completely" add nothing, but "When was the bridge completed?" asks about completing: a
        # verb form the list does not name is the predicate, not an intensifier.
        return not (w.endswith(("ed", "ing")) and "v" in lex.parts_of_speech(w))
    nxt = own.tokens[tok.pos + 1].text if tok.pos + 1 < len(own.tokens) else ""
    if "keep" in lex.lemmas(w) and (nxt.endswith("ing") or nxt in lx.WH_WORDS or not nxt):
        return True  # "keeps disconnecting" = "disconnects"; "hiccups keep, how do I…"
    if w in ("work", "works", "worked", "working", "function", "functions") and "how" in {
            t.text for t in own.tokens[max(0, tok.pos - 6):tok.pos]}:
        return True  # "how compound interest works" = "compound interest"
    prev = own.tokens[tok.pos - 1].text if tok.pos > 0 else ""
    if w in lx.BEGIN_VERBS and (nxt == "to" or (nxt.endswith("ing") and "v" in lex.parts_of_speech(nxt))):
        return True  # "how should I start learning Python" = "how do I learn Python"
    if w in lx.ATTACHING and nxt in ("to", "with") and prev and prev not in lx.STOPWORDS:
        return True  # "the billing address linked to my account" = "the billing address on my account"
    if w in ("file", "files") and prev in lx.FILE_TYPES:
        return True  # "a CSV file" = "a .csv"
    if w in lx.TYPE_NOUNS and prev == "the" and tok.pos + 1 < len(own.tokens) and own.tokens[tok.pos + 1].capital:
        return True  # "the key ideas of the book Atomic Habits" = "…of Atomic Habits": the title names it
    return bool(lex.lemmas(w) & lx.BECOME_VERBS) and "a" in lex.parts_of_speech(nxt)


def _strongly_same(x: Token, y: Token, lex: Lexicon) -> bool:
    """The same word for the purpose of a substitution: key, lemma, frequent-sense synonym, derivation, typo."""
    kx, ky = lx.SYNONYM.get(x.stem, x.stem), lx.SYNONYM.get(y.stem, y.stem)
    return (kx == ky or lex.same_lemma(x.text, y.text) or lex.synonyms(x.text, y.text) or lex.derived(x.text, y.text)
            or _one_edit(x.text, y.text) or _clipped(x.text, y.text, lex) or _clipped(y.text, x.text, lex))


def _replaced_unexplained(a: Analysis, b: Analysis, lex: Lexicon, edit: evidence_mod.Edit) -> tuple[Token, ...]:
    """Words of a replaced span, present elsewhere in the other text, that the span replacing them does not explain.

    The explanation compares whole texts, so a word the other text also uses elsewhere counts as shared:
    "Should the buyer or the seller pay? I'm the buyer." / "…I'm the seller." share every word, yet one
    edited place puts "seller" where "buyer" was.
    """
    content_a = {t.pos for t in a.tokens if _is_content(t)}
    content_b = {t.pos for t in b.tokens if _is_content(t)}
    ka, kb = evidence_mod.keys(a), evidence_mod.keys(b)
    if sorted(ka) == sorted(kb):
        return ()  # the same words reordered: the direction and role checks read word order
    ka_all, kb_all = set(a.content), set(b.content)
    # A word dropped from one place, not moved to another, that the other text still names elsewhere: "What does
    # GDPR require for our HR data?" / "…for all of our data?" after a story that mentions HR data on both sides.
    edited_a = {ka[i] for _t, i1, i2, _j1, _j2 in edit.ops for i in range(i1, i2)}
    edited_b = {kb[j] for _t, _i1, _i2, j1, j2 in edit.ops for j in range(j1, j2)}
    # (A word said twice close together, "Coffee vs tea: is coffee healthier?", drops a repetition, not a detail.)
    def repeated(keys: list[str], k: int) -> bool:
        return keys[k] in keys[max(0, k - _REPEAT_WINDOW):k] or keys[k] in keys[k + 1:k + 1 + _REPEAT_WINDOW]

    for tag, i1, i2, j1, j2 in edit.ops:
        if tag == "delete":
            dropped = [a.tokens[i] for i in range(i1, i2) if i in content_a and ka[i] in kb_all
                       and ka[i] not in edited_b and not repeated(ka, i)]
        elif tag == "insert":
            dropped = [b.tokens[j] for j in range(j1, j2) if j in content_b and kb[j] in ka_all
                       and kb[j] not in edited_a and not repeated(kb, j)]
        else:
            continue
        if dropped:
            return tuple(dropped)
    for tag, i1, i2, j1, j2 in edit.ops:
        xs = [a.tokens[i] for i in range(i1, i2) if i in content_a]
        ys = [b.tokens[j] for j in range(j1, j2) if j in content_b]
        if tag != "replace" or not xs or not ys:
            continue
        left = [x for x in xs if ka[x.pos] in kb_all and not any(_strongly_same(x, y, lex) for y in ys)]
        right = [y for y in ys if kb[y.pos] in ka_all and not any(_strongly_same(x, y, lex) for x in xs)]
        if left and right:
            return tuple(left + right)
    return ()


#: Tokens within which a word said again is a repetition ("X vs Y: is X better?").
_REPEAT_WINDOW = 6


def _is_content(t: Token) -> bool:
    return (t.text.isalpha() and t.text not in lx.STOPWORDS and t.stem not in lx.STOP_STEMS and t.text not in lx.LIGHT
            and t.text not in lx.FRAMING and t.text not in lx.FUNCTION_POLAR)


def _colloc_keys(a: Analysis) -> list[str]:
    """Two-word WordNet collocations of a text ("take_in", "cut_down"), for the weaker links."""
    words = [t.text for t in a.tokens]
    lex = wordnet_mod.lexicon()
    out = []
    for i in range(len(words) - 1):
        for lemma in lex.lemmas(words[i]) or {words[i]}:
            key = f"{lemma}_{words[i + 1]}"
            if key in lex.synsets:
                out.append(key)
    return out


def explain(a: Analysis, b: Analysis, lex: Lexicon, *, edit: evidence_mod.Edit | None = None) -> Explanation:
    """Explain each content word one side has and the other lacks; see the module docstring.

    ``edit``: :func:`evidence.edit_of` the pair (computed when not given).
    """
    only_a = [t for k, t in a.content.items() if k not in b.content]
    only_b = [t for k, t in b.content.items() if k not in a.content]
    # Words folded into one key by the curated synonym groups or frames ("delete"/"erase"): say so.
    curated = tuple("synonym" for k, t in a.content.items() if k in b.content and k[:4] in ("syn:", "fram")
                    and t.stem != b.content[k].stem)
    if edit is None:
        edit = evidence_mod.edit_of(a, b)
    aligned = edit.aligned
    if not only_a and not only_b:
        swapped = _replaced_unexplained(a, b, lex, edit) if aligned else ()
        return Explanation((), swapped) if swapped else Explanation(curated)
    if len(only_a) > MAX_UNALIGNED or len(only_b) > MAX_UNALIGNED:
        return Explanation((), tuple((only_a + only_b)[:MAX_UNALIGNED]))
    spans = _spans(only_a, a, b, only_b) | _spans(only_b, b, a, only_a)
    evidence: list[str] = []
    missing: list[tuple[Token, Analysis, Analysis]] = []
    # A side's look-up indexes (_side, kept with its analysis) are built when a word first needs them: a text
    # whose words the other side lacks, or whose collocations may explain one, only then.
    for toks, other_a, own in ((only_a, b, a), (only_b, a, b)):
        for tok in toks:
            why = spans.get(id(tok)) or _why(tok, _side(other_a, lex), other_a, lex) or (
                "reformulation" if _structural(tok, own, other_a) else None)
            if why is None and not is_name(tok) and _side(own, lex).colloc_hit(tok.pos, _side(other_a, lex)):
                why = "synonym"
            if why is None and _abbreviation(tok, other_a, lex):
                why = "abbreviation"
            if why is None and _light(tok, own, other_a, lex):
                why = "light"
            if why is None:
                missing.append((tok, own, other_a))
            else:
                evidence.append(why)
    if not missing:
        # One edited place: also each replaced word against what replaced it, not against the whole other
        # text ("…pay for it? I'm the buyer." / "…I'm the seller." names both buyer and seller twice).
        if aligned:
            swapped = _replaced_unexplained(a, b, lex, edit)
            if swapped:
                return Explanation((), swapped)
        return Explanation(curated + tuple(evidence))
    # Where do the unexplained words lie? All in one edited place of otherwise aligned texts: a substitution or
    # an insertion, which only the strong evidence above may explain. Spread over a reworded text: a weaker
    # WordNet link to a word of the other side explains a word too (never a name).
    if edit.substitution:
        return Explanation(curated + tuple(evidence), tuple(t for t, _, _ in missing))
    if len(missing) > MAX_WEAK:
        return Explanation(curated + tuple(evidence), tuple(t for t, _, _ in missing))
    unexplained: list[Token] = []
    near = {id(x): _near(x, lex) for x in {id(o): o for _, _, o in missing}.values()}
    for tok, _own, other_a in missing:
        # A word that asks for a relation ("the opposite of X", "a synonym for X") names another answer: no weak link
        # ("opposite" → "antonym" → "word") explains it.
        kind = None if is_name(tok) or tok.text in _RELATION_WORDS else near[id(other_a)].relation(tok.text)
        named = {t.text for t in other_a.content.values()} | set(other_a.content)
        if kind is None and lx.IMPLIES.get(tok.text) in named:
            kind = "light"  # "kubectl" / "Kubernetes": the tool names its platform (not instead of another tool)
        if kind is None:
            unexplained.append(tok)
        else:
            evidence.append(kind)
    return Explanation(curated + tuple(evidence), tuple(unexplained))
