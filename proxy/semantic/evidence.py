"""Evidence that two questions mean different things: one check per kind, each linear in the texts.

Each check compares two :class:`~llmcache.proxy.semantic.analysis.Analysis` and returns a short
detail when it finds a difference; :func:`first_difference` runs them in the order of
:data:`llmcache.proxy.semantic.verify.REASONS`. Lexical variety is never evidence here: words that
merely differ are left to the alignment and pair model in :mod:`llmcache.proxy.semantic.verify`.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from llmcache.proxy.semantic import lexicon as lx
from llmcache.proxy.semantic import wordnet
from llmcache.proxy.semantic.analysis import Analysis, Token, noun_keys
from llmcache.proxy.semantic.wordnet import Lexicon

__all__ = ["first_difference", "is_anchor", "role_clash"]

def _antonym_clash(a: Analysis, b: Analysis) -> str | None:
    """A polar word on one side and its opposite on the other; O(words) with set look-ups."""
    only_a, only_b = a.polar - b.polar, b.polar - a.polar
    for x in only_a:
        opposites = ({"turn_off" if x == "turn_on" else "turn_on"} if x.startswith("turn_")
                     else lx.ANTONYM_STEMS.get(x, set()))
        hit = opposites & only_b
        if hit:
            return f"{x}/{sorted(hit)[0]}"
    # Particles and prepositions ("log in" / "log out", "after" / "before donating"): opposites attached to
    # the same word; "turns out" and an unrelated "majoring in" elsewhere are no pair.
    for (w, head), n in a.attached.items():
        if b.attached[(w, head)] >= n:
            continue
        for o in lx.ANTONYMS.get(w, ()):
            if b.attached[(o, head)] > a.attached[(o, head)]:
                return f"{w}/{o} ({head})"
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


#: Verbs whose WordNet antonyms ("come"/"go", "give"/"take") mostly meet in idioms ("comes out" / "turns out").
_LIGHT_VERBS = frozenset(["come", "go", "take", "give", "get", "bring", "put", "keep", "let", "make", "have", "do",
                          "stay", "leave", "arrive", "turn", "set", "run", "hold", "lose", "find", "win"])


#: Particles and prepositions: their opposites count only attached to the same word (:func:`_antonym_clash`).
_PARTICLES = frozenset(["on", "off", "in", "out", "up", "down", "over", "under", "above", "below", "before", "after",
                        "inside", "outside", "forward", "back", "backward", "away", "within", "without"])


def _opposite_clash(a: Analysis, b: Analysis) -> str | None:
    """A content word on one side whose WordNet antonym, or that of a word it derives from, is on the other only.

    "cheaper" / "more expensive", "tighten a loose chain" / "loosen a tight chain", "advantages" /
    "disadvantages": the curated polar words miss most such pairs, WordNet 3.0 lists ~6,000 of them.
    """
    lex = wordnet.lexicon()
    ca = Counter(t.text for t in a.tokens if t.text not in lx.STOPWORDS)
    cb = Counter(t.text for t in b.tokens if t.text not in lx.STOPWORDS)
    only_a, only_b = list(ca - cb), list(cb - ca)
    if not only_a or not only_b:
        return None

    def forms(words: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for w in words:
            if w in _LIGHT_VERBS or w in _PARTICLES:
                continue
            for lemma in lex.lemmas(w) or (w,):
                if lemma in _LIGHT_VERBS:
                    continue
                out.setdefault(lemma, w)
                for d in lex.derivations.get(lemma, "").split():
                    out.setdefault(d, w)
        return out

    fa, fb = forms(only_a), forms(only_b)
    for lemma, word in fa.items():
        for o in lex.antonyms.get(lemma, "").split():
            if o in fb and o not in fa and lemma not in fb:
                return f"{word}/{fb[o]}"
    return None


#: Quantifier and modal words compared inside each narrow edited place ("…offer extra credit to all students?" /
#: "…to some students?"): a reworded context may hold both words elsewhere, so the sets alone miss the swap.
_HUNK_WORDS = {**{w: "q:" + lx.QUANTIFIERS.get(w, w) for w in lx.QUANTIFIER_DETERMINERS | {"no"}},
               # "Can I take ibuprofen and paracetamol?" / "…ibuprofen or paracetamol?": both, or one of them.
               "and": "q:and", "or": "q:or",
               **{w: "m:" + c for w, c in lx.MODAL_CLASS.items()}}


def _hunk_clash(a: Analysis, b: Analysis, edit: Edit, kind: str) -> str | None:
    """A quantifier (``kind`` ``"q:"``) or a modal (``"m:"``) replaced by another of its kind in an edited place
    of at most :data:`SUBSTITUTION_WIDTH` tokens a side."""
    if not edit.aligned:
        return None
    ta, tb = a.tokens, b.tokens
    for _tag, i1, i2, j1, j2 in edit.ops:
        if i2 - i1 > SUBSTITUTION_WIDTH or j2 - j1 > SUBSTITUTION_WIDTH:
            continue
        ka = sorted(w for w in _hunk_words(ta, i1, i2) if w.startswith(kind))
        kb = sorted(w for w in _hunk_words(tb, j1, j2) if w.startswith(kind))
        if ka and kb and ka != kb:
            return f"{ka} / {kb}"
    return None


def _hunk_words(toks: list[Token], i1: int, i2: int) -> list[str]:
    # "a few" = "some"; "few" alone is "not many".
    return ["q:some" if t.text == "few" and k and toks[k - 1].text == "a" else _HUNK_WORDS[t.text]
            for k, t in enumerate(toks[i1:i2], i1) if t.text in _HUNK_WORDS]


def _either_scope(a: Analysis) -> str | None:
    """How "either" meets a negation: ``"none"`` for "neither" or "not … either" (no one of them), ``"one-not"``
    for "either … not" (one of them does not); ``None`` without "either"/"neither"."""
    words = [t.text for t in a.tokens]
    if "neither" in words:
        return "none"
    if "either" not in words:
        return None
    at = words.index("either")
    if any(w in lx.NEGATIONS for w in words[:at]):
        return "none"
    return "one-not" if any(w in lx.NEGATIONS for w in words[at + 1:]) else None


def _either_clash(a: Analysis, b: Analysis) -> str | None:
    """ "if neither of my references responds" / "if either of my references doesn't respond": the same words
    and the same number of negations, but no one against one of them (the negation's scope moved)."""
    ea, eb = _either_scope(a), _either_scope(b)
    if ea is not None and eb is not None and ea != eb:
        return f"{ea}/{eb}"
    return None


def _quantifier_clash(a: Analysis, b: Analysis, aligned: bool) -> str | None:
    qa, qb = a.quantifiers, b.quantifiers
    if aligned:  # one edited place: "One outlet isn't working" / "None of the outlets are working"
        qa, qb = qa | a.context_quantifiers, qb | b.context_quantifiers
    # "List all files" = "list the files", but not "list some files".
    if a.implied_all and qb:
        qa = qa | {"all"}
    if b.implied_all and qa:
        qb = qb | {"all"}
    if qa != qb:
        if qa and qb:
            return f"{sorted(qa)} vs {sorted(qb)}"
        one = qa or qb
        strong = one & lx.STRONG_QUANTIFIERS
        if strong:
            return f"{sorted(strong)} vs none"
    ca, cb = a.context_quantifiers, b.context_quantifiers
    if ca and cb and ca != cb:  # as for modals: compared when both contexts quantify
        return f"context {sorted(ca)} vs {sorted(cb)}"
    return None


def _modal_clash(a: Analysis, b: Analysis, aligned: bool) -> str | None:
    ma, mb = a.modals, b.modals
    if aligned:  # one edited place: a modal in the context differs like one in the question
        ma, mb = ma | a.context_modals, mb | b.context_modals
    if ma != mb:
        if ma and mb:
            return f"{sorted(ma)} vs {sorted(mb)}"
        one = ma or mb
        # "How long should steak rest?" = "How long does steak need to rest?": a wh-question's "should" asks
        # for the recommended amount, time or way, which the plain question asks too (not "who").
        if one == {"should"} and a.qtype == b.qtype and a.qtype in ("how", "when", "what", "count"):
            one = set()
        if one - {"can"}:
            return f"{sorted(one)} vs none"
    # Context sentences: "My employer says I may…" / "…I must…" differ; a modal the other side's reworded
    # context simply lacks ("I have to give a talk" / "I'm preparing a talk") is no evidence either way.
    ca, cb = a.context_modals, b.context_modals
    if ca and cb and ca != cb:
        return f"context {sorted(ca)} vs {sorted(cb)}"
    return None


def _noun_like(w: str, lex: Lexicon) -> bool:
    """A noun, or a word WordNet does not know ("app", "saas"): the head of a noun phrase may be either."""
    return (w.isalpha() and w not in lx.STOPWORDS and w not in _PREPOSITIONS and w not in lx.EN_FUNCTION
            and w not in _AUX and ("n" in lex.parts_of_speech(w) or not lex.known(w)))


def _kept(key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keep what the decorated ``f(a, …)`` computes from analysis ``a`` in ``a.memo[key]``: a text compared
    again (a stored entry found by every lookup) is read once. ``f`` may read only ``a`` and the shipped lexicon."""
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def kept(a: Analysis, *args: Any) -> Any:
            hit = a.memo.get(key)
            if hit is None:
                hit = a.memo[key] = f(a, *args)
            return hit
        return kept
    return wrap


@_kept("evidence.superlative")
def _superlative_one(a: Analysis) -> frozenset[str]:
    """Stems of singular nouns a superlative or "is there a" picks out ("the most common cause", "the best tool",
    "is there a good café"): one answer asked for."""
    lex, out, toks = wordnet.lexicon(), set(), a.tokens
    for i, t in enumerate(toks):
        prev = toks[i - 1].text if i else ""
        # "Is there a good pizza place near…": one thing asked for, as a superlative asks.
        there_a = t.text in ("a", "an") and i >= 2 and {toks[i - 2].text, prev} == {"is", "there"}
        if not (there_a or t.text in ("best", "worst") or prev in ("most", "least")
                or (t.text.endswith("est") and "a" in lex.parts_of_speech(t.text)
                    and any(len(x) < len(t.text) for x in lex.lemmas(t.text)))):
            continue
        for u in toks[i + 1:i + 5]:
            if u.text in _PREPOSITIONS or u.text in _AUX or u.clause != t.clause:
                break
            if u.text in lx.STOPWORDS:
                continue  # "a good café", "the best way"
            if _noun_like(u.text, lex):
                if u.text.endswith("s") and not u.text.endswith("ss"):
                    break  # "the best tools": several asked for
                nxt = toks[u.pos + 1].text if u.pos + 1 < len(toks) else ""
                if nxt in _PREPOSITIONS or nxt in _COPULA or not _noun_like(nxt, lex):
                    out.add(u.stem)  # the head of "the best budgeting app"
                    break
    return frozenset(out)


_RATE_ADVERBS = {"hourly": "hour", "daily": "day", "nightly": "day", "weekly": "week", "monthly": "month",
                 "yearly": "year", "annually": "year", "annual": "year"}


@_kept("evidence.rates")
def _rates(a: Analysis) -> frozenset[str]:
    """Time units a rate is given in: "four cups an hour", "per week", "daily" (kept with the analysis)."""
    out, toks = set(), a.tokens
    for i, t in enumerate(toks):
        if t.text in _RATE_ADVERBS:
            out.add(_RATE_ADVERBS[t.text])
        elif i + 1 < len(toks) and t.text in ("a", "an", "per", "every", "each"):
            unit = toks[i + 1].text
            unit = unit[:-1] if unit.endswith("s") else unit
            if unit in lx.DURATION_S and not (i and toks[i - 1].text[:1].isdigit()):
                out.add(unit)
    return frozenset(out)


def _rate_clash(a: Analysis, b: Analysis) -> str | None:
    ra, rb = _rates(a), _rates(b)
    return f"per {sorted(ra)} / {sorted(rb)}" if ra and rb and ra != rb else None


#: Words that ask for several of the plural noun that follows ("a list of names", "a few names", "several ideas").
_SEVERAL = frozenset(["list", "few", "several", "couple", "multiple", "some", "various"])


@_kept("evidence.listed")
def _listed(a: Analysis) -> frozenset[str]:
    """Stems of the plural noun a "list of", "a few" or "several" asks for ("a list of possible names", "a few
    names"), also where the plural is a lemma of its own that :attr:`Analysis.plural` leaves out (kept with the
    analysis)."""
    toks, out = a.tokens, set()
    for k, t in enumerate(toks[:-1]):
        if t.text not in _SEVERAL or (t.text == "list" and toks[k + 1].text != "of"):
            continue
        for u in toks[k + 1 + (t.text == "list"):k + 5]:  # the first plural noun, before any preposition
            if u.text in _PREPOSITIONS:
                break
            if u.text.endswith("s") and u.text != u.stem:
                if not u.capital:
                    out.add(u.stem)
                break
    return frozenset(out)


@_kept("evidence.one_asked")
def _one_asked(a: Analysis) -> frozenset[str]:
    """Stems of singular nouns right after "a"/"an" (one adjective between at most) in the question: "Suggest a
    name for my bakery" asks for one."""
    toks, (start, end) = a.tokens, a.question_span
    out = set()
    for k in range(start, min(end, len(toks)) - 1):
        if toks[k].text not in ("a", "an"):
            continue
        for u in toks[k + 1:k + 3]:
            if not u.text.endswith("s") and u.text == u.stem and u.text not in lx.STOPWORDS:
                out.add(u.stem)
    return frozenset(out)


def _number_clash(a: Analysis, b: Analysis, aligned: bool) -> str | None:
    if a.numbers != b.numbers:
        return f"{dict(a.numbers)} vs {dict(b.numbers)}"
    if a.durations != b.durations:
        return f"durations {dict(a.durations)} vs {dict(b.durations)} s"
    # "one healthy breakfast idea" / "breakfast ideas": one thing against several.
    # In a reworded context "one guest … two are vegan" / "two guests … one has" name other referents.
    for one, other in ((a, b), (b, a)):
        single = {s for s, q in one.singular if q or aligned} | _superlative_one(one)
        several = ({s for s, q in other.plural if q or aligned} | _listed(other)) - {s for s, _ in other.singular}
        if single & several:
            return f"one vs several {sorted(single & several)}"
        # "Suggest a name" / "Suggest a few names": a bare "a" against a word asking for several.
        if _one_asked(one) & (_listed(other) - {s for s, _ in other.singular}):
            return f"one vs several {sorted(_one_asked(one) & _listed(other))}"
        # "Name all the noble gases" / "Name a noble gas".
        if one.all_of - other.all_of:
            toks, lex = other.tokens, wordnet.lexicon()
            one_of = {k for t in toks
                      if any(x.text in ("a", "an", "one", "single") for x in toks[max(0, t.pos - 3):t.pos])
                      for k in noun_keys(t, lex)}
            if (one.all_of - other.all_of) & one_of:
                return f"all vs one {sorted((one.all_of - other.all_of) & one_of)}"
    return None


@_kept("evidence.graded")
def _graded(a: Analysis) -> frozenset[tuple[str, str]]:
    """``(adjective lemma, "+" or "-")`` for each graded adjective: "healthier", "more healthy", "healthiest" are
    ``+``, "less healthy", "least healthy" are ``-`` (kept with the analysis)."""
    lex, out = wordnet.lexicon(), set()
    toks = a.tokens
    for i, t in enumerate(toks):
        prev = toks[i - 1].text if i else ""
        if prev in ("less", "least", "fewer"):
            sign = "-"
        elif prev in ("more", "most") or (t.text.endswith(("er", "est")) and "a" in lex.parts_of_speech(t.text)
                                           and any(len(x) < len(t.text) for x in lex.lemmas(t.text))):
            sign = "+"
        else:
            continue
        for lemma in lex.lemmas(t.text) or (t.text,):
            out.add((lemma, sign))
    return frozenset(out)


def _comparison_clash(a: Analysis, b: Analysis) -> str | None:
    if (a.than and b.as_as and not b.than) or (b.than and a.as_as and not a.than) or a.as_as != b.as_as:
        return "than / as…as"
    if a.than and b.than and a.less != b.less:
        return "less / more"
    # "Which is healthier…" / "Which is less healthy…": the same quality graded the other way.
    ga, gb = _graded(a), _graded(b)
    for lemma, sign in ga - gb:
        if (lemma, "-" if sign == "+" else "+") in gb - ga:
            return f"{lemma}: {sign} / {'-' if sign == '+' else '+'}"
    return None


_COUNT_WORDS = frozenset(["number", "population", "amount", "total", "count", "many", "much", "populous"])


def has_bigram(words: list[str], x: str, y: str) -> bool:
    """``x`` directly followed by ``y`` somewhere in ``words``."""
    return any(a == x and b == y for a, b in itertools.pairwise(words))


def _counts(a: Analysis) -> bool:
    """Asks for a number anywhere ("returns how many customers churned", "the number of", "count")."""
    words = [t.text for t in a.tokens]
    return a.qtype == "count" or has_bigram(words, "how", "many") or bool(_COUNT_WORDS & set(words))


def _how_many_things(a: Analysis) -> bool:
    """ "how many" followed by a thing counted ("how many customers"), not by a unit measured ("how many °C")."""
    toks = a.tokens
    return any(t.text == "how" and toks[k + 1].text == "many" and (k + 2 >= len(toks) or (
        toks[k + 2].text not in lx.UNITS and toks[k + 2].text not in ("degrees", "degree")))
               for k, t in enumerate(toks[:-1]))


#: "how" + the attribute it asks for ("How long is X?" a length or a duration, "How much…?" an amount or price).
_HOW_ATTRIBUTES = frozenset(["long", "much", "far", "old", "tall", "big", "high", "deep", "wide", "heavy", "often",
                             "fast", "soon", "large", "early", "late", "hot", "cold", "expensive", "strong"])
#: Attributes asked in two ways ("How expensive is X?" = "How much is X?", "How high" = "How tall").
_HOW_SAME = {"expensive": "much", "high": "tall", "large": "big"}


def _how_attribute(a: Analysis) -> str | None:
    """The attribute a "how …" in the question sentence asks for ("long", "much"…), ``"when"`` for "how long
    ago", ``"long"`` for "how much time"; ``None`` without one. Read in the question sentence only: a long
    prompt's context says "how long" or "how much" about other things."""
    start, end = a.question_span
    toks = a.tokens
    for k in range(start, min(end, len(toks)) - 1):
        if toks[k].text != "how":
            continue
        nxt = toks[k + 1].text
        if nxt not in _HOW_ATTRIBUTES:
            continue
        after = toks[k + 2].text if k + 2 < len(toks) else ""
        if nxt == "long" and after == "ago":
            return "when"
        if nxt == "much" and after == "time":
            return "long"
        return _HOW_SAME.get(nxt, nxt)
    return None


def _question_clash(a: Analysis, b: Analysis) -> str | None:
    qa, qb = a.qtype, b.qtype
    # "Write a query that returns the customers who churned" / "…returns how many customers churned".
    if _how_many_things(a) != _how_many_things(b) and not (_counts(a) and _counts(b)):
        return "count/list"
    if qa == qb:
        return None
    if "why" in (qa, qb):
        # "Why…?" / "Explain why…" asks for a reason; the other side must too ("What causes…?", "the reason").
        other = b if qa == "why" else a
        if not lx.WHY_FRAME & {t.text for t in other.tokens}:
            return f"{qa}/{qb}"
    if "count" in (qa, qb):
        # "How many X?" asks a number; "Which/What are X?" a list, unless it asks for the number too.
        other = b if qa == "count" else a
        if other.qtype in ("what", None) and not _COUNT_WORDS & {t.text for t in other.tokens}:
            return f"{qa}/{qb}"
        return None
    if qa is None or qb is None:
        return None
    exclusive = {"who", "where", "when", "why"}
    if (qa in exclusive and qb in exclusive) or {qa, qb} == {"how", "why"}:
        return f"{qa}/{qb}"
    if "yesno" in (qa, qb):
        return f"{qa}/{qb}"
    return None


def _task_clash(a: Analysis, b: Analysis) -> str | None:
    if a.arithmetic != b.arithmetic:
        return f"arithmetic {sorted(a.arithmetic)} vs {sorted(b.arithmetic)}"
    for side, other in ((a, b), (b, a)):
        for task in (side.tasks - other.tasks) & lx.GENERATIVE_TASKS:
            # "Help me draft a complaint" / "How do I write a complaint": the other side names the same
            # operation, only not as a request to the model.
            if any(lx.TASK_CLASSES.get(t.text) == task or lx.TASK_STEMS.get(t.stem) == task for t in other.tokens):
                continue
            # "Write a limerick about X" / "Give me a limerick about X": a request for a text that names no other
            # task asks for it to be written (what the text is must still be the same: the explanation checks).
            if task == "write" and not other.tasks and other.tokens and other.tokens[0].text in _PRODUCE:
                continue
            return f"{sorted(a.tasks)} vs {sorted(b.tasks)}"
    return None


#: Verbs that open a request for a made thing ("Give me a limerick", "Make me a checklist", "Tell a story").
_PRODUCE = frozenset(["give", "make", "generate", "create", "tell", "produce", "provide", "compose", "come",
                      "draft", "craft", "prepare", "put", "suggest"])


def _shape_clash(a: Analysis, b: Analysis) -> str | None:
    for side, other in ((a, b), (b, a)):
        for tag in side.shape - other.shape:
            # A target language named on the other side in another way ("the Spanish for") is no new constraint.
            if tag.startswith("lang:") and tag[5:] in other.content:
                continue
            # "in brief" / "Summarize…": a summary is brief by definition.
            if tag == "len:short" and "summarize" in other.tasks | {lx.TASK_STEMS.get(t.stem) for t in other.tokens}:
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
            # Code the other side writes without backticks ("`git stash`" / "git stash").
            if sym[:1] == "`" and re.sub(r"[\s\-_.`]", "", sym.lower()) in other_norm:
                continue
            return sym
    return None


def _frame_clash(a: Analysis, b: Analysis) -> str | None:
    """A side asks for an attribute the other does not ("How tall is X?" / "How old is X?")."""
    # "How much does X cost?" / "How long does X take?"; "When was X built?" / "How long is X?".
    ha = "when" if a.qtype == "when" else _how_attribute(a)
    hb = "when" if b.qtype == "when" else _how_attribute(b)
    if ha is not None and hb is not None and ha != hb:
        return "/".join(h if h == "when" else f"how {h}" for h in (ha, hb))
    # A frame word inside a name ("Language Centre") asks for nothing.
    fa = {k for k, t in a.content.items() if k.startswith("frame:") and not t.capital}
    fb = {k for k, t in b.content.items() if k.startswith("frame:") and not t.capital}
    only_a = {k for k in fa - fb if k[6:] in lx.EXCLUSIVE_FRAMES}
    only_b = {k for k in fb - fa if k[6:] in lx.EXCLUSIVE_FRAMES}
    if only_a and only_b:
        # Another attribute asked on each side. On one side only ("What currency does Japan use?" / "What's the
        # money called in Japan?") the frame word is a difference like any other: explained or refused later.
        return f"{sorted(only_a)} / {sorted(only_b)}"
    return None


def is_anchor(item: str) -> bool:
    return not item.startswith(("d:", "#"))


_SWAP_WINDOW = 6
#: Role markers of opposite direction (:attr:`Analysis.marker_objects` reads "into" as "to").
_OPPOSITE_MARKERS = {"to": "from", "from": "to"}
#: Words of a relation that reads the same both ways ("How far is X from Y?" = "distance X to Y").
_SYMMETRIC = frozenset(["far", "distance", "distances"])


def _direction_clash(a: Analysis, b: Analysis) -> str | None:
    """Arguments swapped while the words stay the same: around a marker, a verb, or a wh-question."""
    shared = (({x for x in a.sequence if is_anchor(x)} | a.content.keys())
              & ({x for x in b.sequence if is_anchor(x)} | b.content.keys()))
    # 1. A role marker's object becomes another shared word ("send money to Bob/Alice", "km to miles");
    #    an extra object on one side ("formula to convert C to F") is no swap.
    for marker in {m for m, _ in a.marker_objects}:
        oa = {o for m, o in a.marker_objects if m == marker and o in shared}
        ob = {o for m, o in b.marker_objects if m == marker and o in shared}
        if oa and ob and not oa <= ob and not ob <= oa:
            return f"{marker} {sorted(oa)} / {sorted(ob)}"
    # 1b. One object under opposite markers: "Translate it into Spanish" / "Translate it from Spanish".
    ma, mb = set(a.marker_objects), set(b.marker_objects)
    symmetric = _SYMMETRIC & ({t.text for t in a.tokens} | {t.text for t in b.tokens})  # "How far is X from Y"
    for one, other in (() if symmetric else ((ma, mb), (mb, ma))):
        for m, o in one - other:
            opposite = _OPPOSITE_MARKERS.get(m)
            if opposite is not None and (opposite, o) in other - one:
                return f"{m} {o} / {opposite} {o}"
    # 2. "x … y" with the same words between them becomes "y … x" ("Alice paid Bob" / "Bob paid Alice").
    #    The verb between them may be worded differently ("did Sam employ Yuki" / "has Yuki hired Sam").
    #    Both ways round: a word named twice ("each employee with the manager … an employees table") may give
    #    one text both orders.
    pairs_a, pairs_b = _ordered_pairs(a.sequence, shared), _ordered_pairs(b.sequence, shared)
    for one, pairs_one, pairs_other, other_seq in ((a, pairs_a, pairs_b, b.sequence),
                                                   (b, pairs_b, pairs_a, a.sequence)):
        for (x, y), (i, j) in pairs_one.items():
            if x not in shared or y not in shared:
                continue
            at = pairs_other.get((y, x))
            if at is None:
                continue
            middle = tuple(one.sequence[i + 1:j])
            same = pairs_other.get((x, y))
            if same is not None and tuple(other_seq[same[0] + 1:same[1]]) == middle:
                continue  # the same relation in the same order is there too
            other = tuple(other_seq[at[0] + 1:at[1]])
            if other == middle or _same_frame(middle, other, shared):
                return f"{x} {' '.join(middle)} {y}"
    # 3. Two names in the opposite order with a verb between them, no passive "by" ("Did Lena beat Tom?" /
    #    "Has Tom beaten Lena?"); coordination ("between A and B") carries no direction.
    clash = _name_order_clash(a, b, shared)
    if clash:
        return clash
    # 4. The same words in another order around a direction word ("rebase main onto my branch" / "rebase my branch
    #    onto main"), stop-words included: what follows the marker changed.
    clash = _marker_swap(a, b)
    if clash:
        return clash
    # 5. "who beat X" (subject) vs "who did X beat" (object).
    (ra, wa), (rb, wb) = _wh_role(a), _wh_role(b)
    if ra and rb and ra != rb and lx.WH_EXCLUSIVE.get(wa, wa) == lx.WH_EXCLUSIVE.get(wb, wb):
        return f"wh {ra}/{rb}"  # "Who killed Cain?" / "Whom did Cain kill?", also after context
    return None


def _lemma_keys(a: Analysis) -> list[str]:
    """Each token's first WordNet lemma (its text when WordNet has none), kept with the analysis."""
    hit = a.memo.get("evidence.lemma_keys")
    if hit is None:
        lex = wordnet.lexicon()
        hit = a.memo["evidence.lemma_keys"] = [min(lex.lemmas(t.text) or (t.text,)) for t in a.tokens]
    return hit


def _marker_swap(a: Analysis, b: Analysis) -> str | None:
    # Lemmas: "wait to swim after eating" / "wait to eat after swimming" are the same words in another order.
    ta, tb = _lemma_keys(a), _lemma_keys(b)
    if ta == tb or sorted(ta) != sorted(tb):
        return None
    counts = Counter(ta)
    for i, w in enumerate(ta):
        if w in _ROLE_SWAP_MARKERS and counts[w] == 1:
            j = tb.index(w)
            na = [x for x in ta[i + 1:i + 4] if x not in _DETERMINERS]
            nb = [x for x in tb[j + 1:j + 4] if x not in _DETERMINERS]
            if na[:1] != nb[:1]:
                return f"{w} {na[:1]} / {nb[:1]}"
    return None


_ROLE_SWAP_MARKERS = frozenset(["to", "into", "onto", "from", "than", "by", "over", "against", "toward", "towards",
                                "after", "before", "until"])


def _same_frame(m1: tuple[str, ...], m2: tuple[str, ...], shared: set[str]) -> bool:
    """Two middles with the same markers and one verb each that neither side shares (a reworded verb)."""
    v1 = [m for m in m1 if is_anchor(m)]
    v2 = [m for m in m2 if is_anchor(m)]
    return (len(v1) == len(v2) == 1 and v1[0] not in shared and v2[0] not in shared
            and [m for m in m1 if not is_anchor(m)] == [m for m in m2 if not is_anchor(m)])


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


_DIRECTED_MARKERS = frozenset(["d:to", "d:from", "d:than", "d:into", "d:over", "d:against"])


def _directed(middle: list[str]) -> bool:
    return any(is_anchor(m) or m in _DIRECTED_MARKERS for m in middle)


def _ordered_pairs(seq: list[str], shared: set[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """``(x, y) → (i, j)``, their first positions, for shared anchors at most :data:`_SWAP_WINDOW` apart when the
    items between them (``seq[i + 1:j]``) are directional. O(len(seq) · window)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    n = len(seq)
    # Coordination is symmetric ("Compare Python and Go"): only a verb or marker between them gives direction.
    # first_directing[k]: the first item at or after k that directs (:func:`_directed` of a middle = any of its
    # items does), so a pair (i, j) is directional exactly when first_directing[i + 1] < j.
    first_directing = [n] * (n + 1)
    for k in range(n - 1, -1, -1):
        m = seq[k]
        first_directing[k] = k if is_anchor(m) or m in _DIRECTED_MARKERS else first_directing[k + 1]
    at = [k for k, m in enumerate(seq) if m in shared]
    for idx, i in enumerate(at):
        x = seq[i]
        first, end = first_directing[i + 1] + 1, min(n, i + 1 + _SWAP_WINDOW)
        if first >= end:
            continue
        for j in at[idx + 1:idx + 1 + _SWAP_WINDOW]:
            if j >= end:
                break
            y = seq[j]
            if j >= first and y != x and (x, y) not in out:
                out[(x, y)] = (i, j)
    return out


_DO = frozenset({"do", "does", "did"})


def _wh_role(a: Analysis) -> tuple[str | None, str]:
    """Whether a wh-question asks for the subject ("who beat X") or the object ("who did X beat"), and its wh-word.

    The wh-word opens the text, a sentence or a clause ("In Romeo and Juliet, who does Tybalt kill?").
    """
    starts = {0, *a.sentence_starts, *a.clause_starts}
    first = next((t.pos for t in a.tokens if t.pos in starts and t.text in ("who", "whom", "which", "what")), None)
    if first is None:
        return None, ""
    toks = [t.text for t in a.tokens[first:first + 4]]
    nxt = 2 if toks[0] == "which" and len(toks) > 2 and toks[1] not in _DO else 1
    if nxt >= len(toks):
        return None, toks[0]
    if toks[nxt] in _DO:
        return "object", toks[0]
    if toks[nxt] in lx.STOPWORDS or toks[nxt] in ("to", "of", "in", "on", "at", "with", "for", "from", "by"):
        return None, toks[0]
    return "subject", toks[0]


#: Longer texts name their topic more than once: the repeat check reads short questions only.
_REPEAT_MAX_TOKENS = 25


def _repeat_clash(a: Analysis, b: Analysis) -> str | None:
    """A clause repeated on one side ("does A pay B" / "does B pay A or does A pay B"), in a short question."""
    if len(a.tokens) > _REPEAT_MAX_TOKENS or len(b.tokens) > _REPEAT_MAX_TOKENS:
        return None
    ca = Counter(x for x in a.sequence if is_anchor(x))
    cb = Counter(x for x in b.sequence if is_anchor(x))
    repeated = [k for k in ca.keys() & cb.keys() if ca[k] != cb[k]]
    extra = sum(abs(ca[k] - cb[k]) for k in repeated)
    # A clause says who does what: a repeated verb, not a noun phrase said twice ("science fiction").
    lex = wordnet.lexicon()
    verbs = [k for k in repeated if "v" in lex.parts_of_speech(k)
             or any("v" in lex.parts_of_speech(t.text) for t in a.tokens + b.tokens if t.stem == k)]
    return f"{extra} repeated words" if extra >= 2 and verbs else None


#: Texts that differ in at most this many places are one edit apart (a substitution, an insertion, a swap):
#: everything they share, context sentences included, is compared as strictly as the question.
ALIGNED_PLACES = 2
#: …each at most this many tokens wide on either side.
ALIGNED_WIDTH = 4
#: A single edited place at most this many tokens wide on each side is a substitution or an insertion
#: ("smallest" / "largest", "the first chapter of"); a wider one rewrites the question's frame too.
SUBSTITUTION_WIDTH = 3


#: Longer texts are not diffed (a sequence diff is quadratic on repeated words): they count as reworded
#: everywhere, and the checks that read the diff (substitutions, moved words, swapped persons) skip them.
#: The verifier's input bound (2,000 characters) stays below it.
DIFF_MAX_TOKENS = 600


@dataclass(frozen=True, slots=True)
class Edit:
    """Where two texts differ: diff hunks over all tokens (function words included), by synonym key."""

    places: int
    """How many places (hunks) differ."""
    widest: int
    """Tokens on the wider side of the widest hunk."""
    ops: tuple[tuple[str, int, int, int, int], ...] = ()
    """The hunks, ``(tag, i1, i2, j1, j2)`` as :meth:`difflib.SequenceMatcher.get_opcodes` gives them."""

    @property
    def aligned(self) -> bool:
        """One edit apart: few places, each narrow ("One outlet isn't working" / "None of the outlets are")."""
        return self.places <= ALIGNED_PLACES and self.widest <= ALIGNED_WIDTH

    @property
    def substitution(self) -> bool:
        """One narrow edited place: only strong evidence may explain it (see :mod:`explain`)."""
        return self.places <= 1 and self.widest <= SUBSTITUTION_WIDTH


def edit_of(a: Analysis, b: Analysis) -> Edit:
    """The :class:`Edit` between two analyses: one sequence diff of at most :data:`DIFF_MAX_TOKENS` per side."""
    if len(a.tokens) > DIFF_MAX_TOKENS or len(b.tokens) > DIFF_MAX_TOKENS:
        return Edit(DIFF_MAX_TOKENS, DIFF_MAX_TOKENS)
    ops = tuple(op for op in SequenceMatcher(None, keys(a), keys(b), autojunk=False).get_opcodes() if op[0] != "equal")
    return Edit(len(ops), max((max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in ops), default=0), ops)


def keys(a: Analysis) -> list[str]:
    """Each token's synonym key (``"syn:remov"`` for "delete"), the unit the diff compares (kept with the
    analysis: read it, never change it)."""
    hit = a.memo.get("evidence.keys")
    if hit is None:
        hit = a.memo["evidence.keys"] = [lx.SYNONYM.get(t.stem, t.stem) for t in a.tokens]
    return hit


def first_difference(a: Analysis, b: Analysis, *, edit: Edit | None = None) -> tuple[str, str] | None:
    """``(reason, detail)`` of the first check that finds a different meaning, else ``None``.

    ``edit``: :func:`edit_of` the pair (computed when not given). ``detail`` may quote words of the texts:
    for the benchmark's eyes, never for logs.
    """
    edit = edit_of(a, b) if edit is None else edit
    aligned = edit.aligned
    checks = (
        ("symbol", _symbol_clash),
        ("negation", lambda x, y: f"{x.negations} vs {y.negations}" if x.negations != y.negations else None),
        ("antonym", _antonym_clash),
        ("number", lambda x, y: _number_clash(x, y, aligned)),
        ("unit", lambda x, y: f"{x.units} vs {y.units}" if Counter(x.units) != Counter(y.units) else None),
        ("unit", _rate_clash),
        ("direction",
         lambda x, y: f"{dict(x.quantities)} vs {dict(y.quantities)}" if x.quantities != y.quantities else None),
        ("quantifier", lambda x, y: _quantifier_clash(x, y, aligned)),
        ("quantifier", lambda x, y: _hunk_clash(x, y, edit, "q:")),
        ("quantifier", _either_clash),
        ("modality", lambda x, y: _modal_clash(x, y, aligned)),
        ("modality", lambda x, y: _hunk_clash(x, y, edit, "m:")),
        ("comparison", _comparison_clash),
        ("time", lambda x, y: f"{sorted(x.times)} vs {sorted(y.times)}" if x.times != y.times else None),
        ("antonym", _opposite_clash),  # after number and time: "first"/"last" is an order, "past"/"future" a time
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
            return reason, detail
    return None


# --------------------------------------------------------------------------- roles around a predicate

_PERSONAL = {"i": "p1", "me": "p1", "myself": "p1", "we": "p1pl", "us": "p1pl", "he": "p3m", "him": "p3m",
             "she": "p3f", "they": "p3pl", "them": "p3pl", "you": "p2"}
_PREPOSITIONS = frozenset(["to", "into", "from", "by", "with", "for", "of", "in", "on", "at", "about", "as", "than",
                           "over", "under", "against", "between", "among", "toward", "towards", "onto", "without",
                           "through", "via", "per", "after", "before", "during", "like"])
_DETERMINERS = frozenset(["a", "an", "the", "my", "your", "his", "her", "our", "their", "its", "this", "that",
                          "these", "those", "some", "any", "each", "every", "no", "what", "which", "whose"])
_AUX = frozenset(["is", "are", "was", "were", "be", "been", "am", "do", "does", "did", "have", "has", "had", "can",
                  "could", "should", "would", "will", "shall", "may", "might", "must", "give", "gives", "gave",
                  "get", "gets", "got", "take", "takes", "took", "tell", "told", "let", "make", "makes", "made"])
_COPULA = frozenset(["is", "are", "was", "were", "be", "been", "am", "being"])
#: Two arguments farther apart than this (in tokens) are not compared: a swap is local, and the bound keeps it linear.
_ROLE_WINDOW = 8


def _arguments(a: Analysis, lex: Lexicon) -> list[tuple[int, int, str, bool, bool]]:
    """``(clause, position, key, marked, verb)`` for each noun-like word, personal pronoun or verb, in order.

    ``marked``: a preposition governs it ("to Bob", "of the team"), so its role does not depend on its
    position; a bare argument's role does ("Bob paid Alice"). ``verb``: a verb, not an argument.
    """
    out: list[tuple[int, int, str, bool, bool]] = []
    toks = a.tokens
    for i, t in enumerate(toks):
        key = _PERSONAL.get(t.text)
        verb = False
        if t.text == "her":  # object or possessive: no role to compare
            continue
        if key is not None and _asker(toks, i):
            continue  # "how do I …", "can I …": who asks, not an argument of what is asked
        if key is None:
            if (t.text in lx.STOPWORDS or t.text in _AUX or t.text in _PREPOSITIONS or t.text in lx.FUNCTION_POLAR
                    or not t.text.isalpha()):
                continue
            key = lx.SYNONYM.get(t.stem, t.stem)
            if key.startswith("frame:"):
                continue  # "Telephone inventor?" / "Who invented the telephone?": the attribute asked, no argument
            pos = lex.parts_of_speech(t.text)
            if t.text.endswith(("est", "er")) and any(x != t.text and "a" in lex.pos.get(x, "")
                                                       for x in lex.lemmas(t.text)):
                continue  # "tallest", "bigger": a degree, not an argument
            if pos and "n" not in pos and not t.capital:
                if "v" not in pos:
                    continue  # an adjective or adverb
                verb = True
        j = i - 1
        while j >= 0 and i - j <= 4 and toks[j].clause == t.clause and (
                toks[j].text in _DETERMINERS or lex.parts_of_speech(toks[j].text) in ("a", "ar")):
            j -= 1
        marked = j >= 0 and toks[j].text in _PREPOSITIONS and toks[j].clause == t.clause
        out.append((t.clause, i, key, marked, verb))
    return out


_ASKING_AUX = frozenset(["do", "does", "did", "can", "could", "should", "would", "will", "shall", "may", "might",
                         "must", "am", "is", "are"])


def _asker(toks: list[Token], i: int) -> bool:
    """A pronoun in a question's frame: after an auxiliary that opens the question ("how do I", "can we")."""
    j = i - 1
    if j < 0 or toks[j].text not in _ASKING_AUX:
        return False
    return j == 0 or toks[j].starts_sentence or toks[j - 1].text in lx.WH_WORDS or toks[j - 1].clause != toks[j].clause


def _passive(a: Analysis) -> bool:
    """A passive ("was written by", "how is X calculated"): an argument may stand before its verb in any role."""
    toks = a.tokens
    return any(t.text in ("is", "are", "was", "were", "be", "been", "being", "get", "gets", "got")
               and any(x.text.endswith(("ed", "en")) for x in toks[i + 1:i + 7]) for i, t in enumerate(toks)) or any(
        t.text == "by" for t in toks)


def _ordered_bare_pairs(a: Analysis, lex: Lexicon) -> dict[tuple[str, str], tuple[int, int, bool]]:
    """``(x, y) → (position of x, position of y, one is a verb)``: bare words x before y in one clause."""
    args = _arguments(a, lex)
    out: dict[tuple[str, str], tuple[int, int, bool]] = {}
    for n, (cx, px, x, mx, vx) in enumerate(args):
        if mx:
            continue
        for cy, py, y, my, vy in args[n + 1:]:
            if py - px > _ROLE_WINDOW or cy != cx:
                break
            if not my and y != x and not (vx and vy):
                out.setdefault((x, y), (px, py, vx or vy))
    return out


def role_clash(a: Analysis, b: Analysis, lex: Lexicon, *, edit: Edit | None = None) -> str | None:
    """Two bare arguments of one clause in the opposite order on the other side, or one moved across its verb.

    "my coworker keeps interrupting me" / "I keep interrupting my coworker", "Can my son list me as a
    dependent?" / "Can I list my son…", "I owe him" / "he owes me", "Can children sue their parents?" /
    "Can parents sue their children?": the same words, the roles swapped. Coordinated ("A and B"),
    prepositional ("to B", "of B") and cross-clause pairs say nothing about roles and are skipped, and so
    is an argument crossing its verb when either side is passive. Linear: each word is paired with those
    at most :data:`_ROLE_WINDOW` tokens later.
    """
    edit = edit_of(a, b) if edit is None else edit
    if _keywords_only(a) or _keywords_only(b):
        return _pronoun_swap(a, b, edit)  # "Chess board square count?": word order in a keyword query says no role
    edit = edit_of(a, b) if edit is None else edit
    moved = _moved_noun(a, b, lex, edit)
    if moved:
        return moved
    pa, pb = _ordered_bare_pairs(a, lex), _ordered_bare_pairs(b, lex)
    passive = None
    for (one, pairs, other_pairs, other) in ((a, pa, pb, b), (b, pb, pa, a)):
        for (x, y), (px, py, with_verb) in pairs.items():
            found = other_pairs.get((y, x))
            if found is None or (x, y) in other_pairs:
                continue
            qy, qx, _ = found
            if with_verb:
                if passive is None:
                    passive = _passive(a) or _passive(b)
                if not passive:
                    return f"{x} … {y}: argument moved across its verb"
            elif _predicate_between(one, px, py, lex) or _predicate_between(other, qy, qx, lex):
                return f"{x} … {y} reversed"
    return (_marked_swap(a, b, lex) or _possessor_swap(a, b, lex) or _subject_swap(a, b, lex)
            or _asker_shift(a, b) or _pronoun_swap(a, b, edit) or _voice_swap(a, b, lex, edit)
            or _object_swap(a, b, lex) or _object_made_agent(a, b, lex) or _object_made_agent(b, a, lex))



def _after_determiners(toks: list[Token], k: int) -> Token | None:
    """The first token at or after ``k`` past determiners ("a competitor" → "competitor"), within three."""
    for u in toks[k:k + 3]:
        if u.text not in _DETERMINERS:
            return u
    return None


def _object_made_agent(a: Analysis, b: Analysis, lex: Lexicon) -> str | None:
    """What one text's verb acts on is the other's doer, after "by": "Our company is acquiring a competitor" /
    "Our company is being acquired by a competitor" (a passive whose "by" names the subject instead is the same
    statement: "X acquired Y" / "Y was acquired by X" passes)."""
    ta, tb = a.tokens, b.tokens
    passives = [(k, lex.lemmas(u.text)) for k, u in enumerate(tb[:-1])
                if tb[k + 1].text == "by" and (u.text.endswith(("ed", "en")) or _inflected_verb(u.text, lex))]
    if not passives:
        return None
    for i, t in enumerate(ta[:-1]):
        if t.text in lx.STOPWORDS or "v" not in lex.parts_of_speech(t.text):
            continue
        obj = _after_determiners(ta, i + 1)
        if obj is None or obj.text in _PREPOSITIONS or not _noun_like(obj.text, lex):
            continue
        lemmas = lex.lemmas(t.text)
        for k, other_lemmas in passives:
            agent = _after_determiners(tb, k + 2)
            if agent is not None and agent.stem == obj.stem and lemmas & other_lemmas:
                return f"{t.text} {obj.text} / {tb[k].text} by {agent.text}"
    return None


@_kept("evidence.verb_objects")
def _verb_objects(a: Analysis, lex: Lexicon) -> dict[str, set[str]]:
    """Each word that may be a verb → the keys of the nouns right after it, past determiners ("cut staff hours",
    "raise the prices"); kept with the analysis."""
    toks, ks = a.tokens, keys(a)
    hit = {}
    for i, t in enumerate(toks[:-1]):
        if t.text in lx.STOPWORDS or "v" not in lex.parts_of_speech(t.text):
            continue
        obj = _after_determiners(toks, i + 1)
        if obj is not None and obj.text not in lx.STOPWORDS and (
                "n" in lex.parts_of_speech(obj.text) or "n" in lex.parts_of_speech(obj.stem)):
            hit.setdefault(ks[i], set()).add(ks[obj.pos])
    return hit


def _object_swap(a: Analysis, b: Analysis, lex: Lexicon) -> str | None:
    """Two verbs trade their objects: "Should I cut staff hours or raise prices?" / "Should I cut prices or raise
    staff hours?" (the same words, each action on the other thing)."""
    va, vb = _verb_objects(a, lex), _verb_objects(b, lex)
    verbs = [v for v in va if v in vb and va[v] != vb[v]]  # only a verb whose objects changed can trade them
    for v1 in verbs:
        for v2 in verbs:
            if v1 == v2:
                continue
            for x in va[v1] - vb[v1]:
                if x in vb[v2] and x not in va[v2]:
                    for y in (va[v2] & vb[v1]) - va[v1] - vb[v2]:
                        if y != x:
                            return f"{v1} {x} / {v1} {y}"
    return None


def _voice_swap(a: Analysis, b: Analysis, lex: Lexicon, edit: Edit) -> str | None:
    """The same word read as its active participle on one side and its passive one on the other, before a noun:
    "we are the acquiring company" / "the acquired company" (who does it and to whom). The diff compares
    stems, so the two stand in the same place of an unedited stretch."""
    ta, tb = a.tokens, b.tokens
    i = j = 0
    for _tag, i1, i2, _j1, j2 in (*edit.ops, ("end", len(ta), len(ta), len(tb), len(tb))):
        for k in range(i1 - i):  # the unedited stretch before this edit: token i + k faces token j + k
            x, y = ta[i + k], tb[j + k]
            if x.text == y.text or i + k + 1 >= len(ta):
                continue
            ends = {x.text[-3:], y.text[-2:]} if x.text.endswith("ing") else {y.text[-3:], x.text[-2:]}
            nxt = ta[i + k + 1]
            if ends == {"ing", "ed"} and nxt.text not in lx.STOPWORDS and "n" in lex.parts_of_speech(nxt.stem):
                return f"{x.text}/{y.text} {nxt.text}"
        i, j = i2, j2
    return None


def _asker_shift(a: Analysis, b: Analysis) -> str | None:
    """Whom the question is about moves from the asker to someone else: "What rights do I have?" / "What rights
    does he have?". "I" and "you" stand for the one asking either way ("How do I…" = "How do you…")."""
    def askers(x: Analysis) -> set[str]:
        toks = x.tokens
        # "how do I", "can we", and "what rights do I have": a pronoun after the auxiliary of a question.
        return {"self" if _PERSONAL[t.text] in ("p1", "p2") else _PERSONAL[t.text]
                for k, t in enumerate(toks) if t.text in _PERSONAL and (_asker(toks, k) or (
                    k >= 2 and toks[k - 1].text in _ASKING_AUX
                    and any(u.text in lx.WH_WORDS for u in toks[max(0, k - 4):k - 1])))}
    pa, pb = askers(a), askers(b)
    if pa and pb and pa != pb and not (pa & pb):
        return f"asked about {sorted(pa)} / {sorted(pb)}"
    return None


#: Words skipped between a predicate and its subject ("I have never had", "my friend just borrowed").
_BETWEEN = frozenset(["not", "never", "just", "also", "already", "still", "recently", "really", "always", "often",
                      "n't", "finally", "actually", "only", "kinda", "sorta", "very", "so", "too", "quite", "pretty",
                      "super", "extremely", "being"])
_RELATIVE = frozenset(["who", "which", "that", "whose", "whom", "where"])


def _before_predicate(toks: list[Token], i: int) -> tuple[int, bool]:
    """The index of the word before the auxiliaries and adverbs ahead of ``i``, and whether a copula (or a
    passive "get") is among them ("my daughter is really allergic", "the starter gets fed")."""
    j, copula = i - 1, False
    while j >= 0 and i - j <= 8:
        x = toks[j].text
        if x in _COPULA or x in _AUX:
            copula = copula or x in _COPULA or x in ("get", "gets", "got", "gotten", "getting")
        elif x not in _BETWEEN and not (x.endswith("ly") and wordnet.lexicon().parts_of_speech(x) == "r"):
            break  # (an adverb in -ly, "accidentally", "finally", stands between too; "family", "early" do not)
        j -= 1
    return j, copula


def _inflected_verb(w: str, lex: Lexicon) -> bool:
    """A verb's past form that WordNet also lists as a lemma of its own ("sent": a coin, and "send" sent). Not an
    "-ing" form: after a noun that is often a reduced relative ("an email asking my manager for a raise")."""
    return not w.endswith("ing") and any(x != w and "v" in lex.parts_of_speech(x) for x in lex.lemmas(w))


def _subjects(a: Analysis, lex: Lexicon) -> dict[str, set[str]]:
    """Predicate lemma → the keys of the arguments standing right before it as its subject (kept with the analysis).

    A predicate is a verb that is no auxiliary, or an adjective after a copula ("is allergic"); its subject is the
    nearest noun or personal pronoun before it, across auxiliaries, adverbs and a relative clause set off by commas
    ("My daughter, who lives with me, is allergic" → allergic: daughter). Linear: each walk back is bounded.
    """
    hit = a.memo.get("evidence.subjects")
    if hit is not None:
        return hit
    toks, out = a.tokens, {}
    for i, t in enumerate(toks):
        w = t.text
        if w in lx.STOPWORDS or w in _AUX or not w.isalpha() or t.capital:
            continue
        pos = lex.parts_of_speech(w)
        j, copula = _before_predicate(toks, i)
        if copula and "v" in pos and w not in lex.lemmas(w):
            # "the payments were missed", "a startup being sued by its former CEO": a passive puts the object first;
            # its doer, when named, follows "by".
            agent = _agent(toks, i, lex)
            if agent is not None:
                for lemma in lex.lemmas(w) or (w,):
                    out.setdefault(lemma, set()).add(agent)
            continue
        if not ("v" in pos and not copula) and not ("a" in pos and copula):
            continue
        # A relative clause set off by commas between subject and predicate: step over it.
        if j >= 0 and toks[j].clause != t.clause:
            k = j
            while k >= 0 and i - k <= 16 and toks[k].text not in _RELATIVE:
                k -= 1
            if k >= 1 and toks[k].text in _RELATIVE:
                j = k - 1
        if j < 0:
            continue
        s_tok = toks[j]
        key = _PERSONAL.get(s_tok.text)
        if key is None:
            if not _noun_like(s_tok.text, lex):
                continue  # a noun, or a word WordNet lacks ("startup")
            # "a flat bike tire", "the last git commit": a noun before a verb's base form (or a word that is a noun
            # too) is a compound, not a subject; an inflected verb ("my friend borrowed") or an auxiliary between
            # says it is one.
            if j == i - 1 and ((w in lex.lemmas(w) and not _inflected_verb(w, lex))
                               or ("n" in pos and w.endswith("s"))):
                continue  # "oil changes": a plural noun as much as a verb; "a startup suing its CEO" is a verb
            key = lx.SYNONYM.get(s_tok.stem, s_tok.stem)
        elif _asker(toks, j):
            continue  # "How do you say…" / "How would I say…": who asks, not who acts
        for lemma in lex.lemmas(w) or (w,):
            out.setdefault(lemma, set()).add(key)
    a.memo["evidence.subjects"] = out
    return out


def _agent(toks: list[Token], i: int, lex: Lexicon) -> str | None:
    """The key of the doer after a passive participle at ``i`` ("sued by its former CEO" → ceo), else ``None``."""
    if i + 1 >= len(toks) or toks[i + 1].text != "by":
        return None
    for t in toks[i + 2:i + 6]:
        if t.text in _PERSONAL:
            return _PERSONAL[t.text]
        if t.text in _DETERMINERS or t.text in lx.STOPWORDS or not _noun_like(t.text, lex):
            continue
        nxt = toks[t.pos + 1] if t.pos + 1 < len(toks) else None
        if nxt is not None and nxt.clause == t.clause and _noun_like(nxt.text, lex):
            continue  # "by its former sales manager": the head comes last
        return lx.SYNONYM.get(t.stem, t.stem)
    return None


def _subject_swap(a: Analysis, b: Analysis, lex: Lexicon) -> str | None:
    """The same predicate with another subject, each subject named in both texts: "I borrowed my friend's car" /
    "my friend borrowed my car", "my daughter is allergic to penicillin, though I've never…" / "I am allergic…,
    though my daughter has never…". Passive predicates are not read (:func:`_subjects`)."""
    sa, sb = _subjects(a, lex), _subjects(b, lex)
    if not sa or not sb:
        return None
    named_a, named_b = _named(a), _named(b)
    for pred in sa.keys() & sb.keys():
        xa, xb = sa[pred], sb[pred]
        if len(xa) != 1 or len(xb) != 1 or xa == xb:
            continue
        (x,), (y,) = xa, xb
        if {x, y} <= {"p1", "p2"}:
            continue  # "How do I…" / "How do you…": the one addressed shifts, no role changes
        if x in named_b and y in named_a:
            return f"{pred}: {x} / {y}"
    return None


def _named(a: Analysis) -> set[str]:
    """Keys of every word, pronoun and possessor of a text ("my nephew's loan" names p1, nephew and loan)."""
    out = set()
    for t in a.tokens:
        out.add(_PERSONAL.get(t.text) or _POSSESSIVE.get(t.text) or lx.SYNONYM.get(t.stem, t.stem))
        if t.text.endswith("'s"):
            bare = t.text[:-2]
            out.add(lx.SYNONYM.get(lx.stem(bare), lx.stem(bare)))
    return out


#: Possessives by the person they name, in :data:`_PERSONAL`'s keys ("my car" names the speaker).
_POSSESSIVE = {"my": "p1", "mine": "p1", "our": "p1pl", "his": "p3m", "her": "p3f", "their": "p3pl", "your": "p2"}


def _markers(a: Analysis, lex: Lexicon) -> dict[str, set[str]]:
    """Argument key → the prepositions that govern it ("" when bare), arguments of a question's frame aside."""
    out: dict[str, set[str]] = {}
    toks = a.tokens
    for _clause, i, key, marked, verb in _arguments(a, lex):
        if verb:
            continue
        marker = ""
        if marked:
            j = i - 1
            while j >= 0 and toks[j].text not in _PREPOSITIONS:
                j -= 1
            marker = toks[j].text
        out.setdefault(key, set()).add(marker)
    return out


#: Prepositions that give their object a role of its own ("mad at me", "owes money to him"); "of", "between",
#: "on" relate things ("the moons of Mars" = "Mars's moons", "between A and B").
_ROLE_PREPOSITIONS = frozenset(["at", "to", "from", "against", "with", "toward", "towards", "into", "onto"])


def _marked_swap(a: Analysis, b: Analysis, lex: Lexicon) -> str | None:
    """One argument bare and the other behind a preposition, and the reverse on the other side.

    "my mom is mad at me" / "I'm mad at my mom", "the landlord owes money to the tenant" / "the tenant owes
    money to the landlord": the order check skips pairs with a marked argument, so this compares which one the
    preposition governs. Only words that stand in one role on each side count.
    """
    ma, mb = _markers(a, lex), _markers(b, lex)
    single_a = {k: next(iter(v)) for k, v in ma.items() if len(v) == 1}
    single_b = {k: next(iter(v)) for k, v in mb.items() if len(v) == 1}
    bare_a = [k for k, m in single_a.items() if m == "" and single_b.get(k, "") != ""]
    for x in bare_a:
        prep = single_b[x]
        if prep not in _ROLE_PREPOSITIONS:
            continue
        for y, m in single_a.items():
            if m == prep and y != x and single_b.get(y) == "":
                return f"{x} / {y} around '{prep}' swapped"
    return None


def _possessions(a: Analysis, lex: Lexicon) -> dict[str, str]:
    """Possessed noun → its possessor ("my spouse's health insurance": insurance → spouse), each noun once."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    toks = a.tokens
    for i, t in enumerate(toks):
        # "her" may be an object ("tell her my plan") and "mine" stands alone: neither owns the next noun.
        owner = None if t.text in ("her", "mine") else _POSSESSIVE.get(t.text)
        if owner is None and t.text.endswith("'s") and len(t.text) > 2:
            owner = lx.SYNONYM.get(t.stem, t.stem)
        if owner is None:
            continue
        head = None
        for u in toks[i + 1:i + 5]:
            if u.clause != t.clause or u.text in _PREPOSITIONS or u.text in _AUX or u.text.endswith("'s"):
                break
            if "n" in lex.parts_of_speech(u.text) and u.text not in lx.STOPWORDS:
                head = lx.SYNONYM.get(u.stem, u.stem)
        if head is None:
            continue
        if head in seen:
            out.pop(head, None)
        else:
            seen.add(head)
            out[head] = owner
    return out


def _possessor_swap(a: Analysis, b: Analysis, lex: Lexicon) -> str | None:
    """Two things whose owners trade places: "my insurance … my spouse's bills" / "my spouse's insurance … my bills"."""
    pa, pb = _possessions(a, lex), _possessions(b, lex)
    moved = {n: (pa[n], pb[n]) for n in pa.keys() & pb.keys() if pa[n] != pb[n]}
    for n, (x, y) in moved.items():
        for m, (u, v) in moved.items():
            if m != n and (u, v) == (y, x):
                return f"owners of {n} / {m} swapped"
    return None


_ARTICLES = frozenset(["a", "an", "the"])


def _moved_noun(a: Analysis, b: Analysis, lex: Lexicon, edit: Edit) -> str | None:
    """The same words, one noun moved to another argument ("my neighbour's tree falls on my car" / "my tree falls
    on my neighbour's car", "tell my mom I don't like her boyfriend" / "tell my mom's boyfriend I don't like her").

    Only between texts of the same words (a move, nothing else edited); a moved prepositional phrase ("In Python,
    how…" / "how… in Python"), a time word or a swap across "and"/"or" changes no role.
    """
    # A pronoun counts as its person ("I"/"me"/"my"): "Can I list my son…" / "Can my son list me…" moves "son".
    # Articles do not count: "Can I claim my parents as dependents?" moves "parents" as much as "…as a dependent".
    ka = [_PERSON.get(k, k) for k in keys(a) if k not in _ARTICLES]
    kb = [_PERSON.get(k, k) for k in keys(b) if k not in _ARTICLES]
    if ka == kb or sorted(ka) != sorted(kb):
        return None
    for tag, i1, i2, _j1, _j2 in edit.ops:
        if tag not in ("delete", "replace") or i2 - i1 > 4:
            continue
        block = a.tokens[i1:i2]
        if block[0].text in _PREPOSITIONS or any(t.text in ("and", "or") for t in block):
            continue
        nouns = [t for t in block if t.stem.isalpha() and t.text not in lx.STOPWORDS and t.text not in lx.TIME_WORDS
                 and t.text not in lx.TIME_NOUNS and "n" in lex.parts_of_speech(t.stem)]
        if nouns and not _coordinated(a, i1, i2):
            return f"{nouns[0].text} moved to another argument"
    return None


def _coordinated(a: Analysis, i1: int, i2: int) -> bool:
    """The span stands next to "and"/"or"/"," (one item of a list moved)."""
    near = [t.text for t in a.tokens[max(0, i1 - 2):i1] + a.tokens[i2:i2 + 2]]
    return any(w in ("and", "or", "nor", "versus", "vs") for w in near)


def _keywords_only(a: Analysis) -> bool:
    """A query of content words alone, no function word at all ("Chess board square count?")."""
    return len(a.tokens) <= _KEYWORD_MAX_TOKENS and not any(t.text in lx.EN_FUNCTION for t in a.tokens)


_KEYWORD_MAX_TOKENS = 8

#: Personal pronouns by person (case does not matter for a swap: "she … my" / "I … her").
_PERSON = {"i": "1", "me": "1", "my": "1", "mine": "1", "myself": "1", "we": "1p", "us": "1p", "our": "1p",
           "he": "3m", "him": "3m", "his": "3m", "she": "3f", "her": "3f", "hers": "3f", "they": "3p", "them": "3p",
           "their": "3p"}


def _pronoun_swap(a: Analysis, b: Analysis, edit: Edit) -> str | None:
    """Two people trade places while every other word stays: "She ignores my ideas" / "I ignore her ideas".

    Each edited place that puts one person's pronoun where the other text has another's is a move from one
    person to the other; a move and its reverse are a swap of roles. Shifting who is addressed ("my" →
    "your" throughout) moves one way only and passes.
    """
    ta = [t.text for t in a.tokens]
    tb = [t.text for t in b.tokens]
    moves: set[tuple[str, str]] = set()
    for tag, i1, i2, j1, j2 in edit.ops:  # pronouns are their own keys
        if tag != "replace":
            continue
        pa = [_PERSON[w] for w in ta[i1:i2] if w in _PERSON]
        pb = [_PERSON[w] for w in tb[j1:j2] if w in _PERSON]
        if len(pa) == 1 and len(pb) == 1 and pa != pb:
            if (pb[0], pa[0]) in moves:
                return f"persons {pa[0]}/{pb[0]} swapped"
            moves.add((pa[0], pb[0]))
    return None


def _predicate_between(a: Analysis, i: int, j: int, lex: Lexicon) -> bool:
    """A verb between two arguments (a copula alone does not count: "the tallest X" = "the X is tallest")."""
    return any(t.text not in _COPULA and (t.text in _AUX or "v" in lex.parts_of_speech(t.text))
               for t in a.tokens[i + 1:j])
