"""What the verifier compares, read from one text in one linear pass: :func:`analyse`.

::

    text ─NFKC, bound (max_chars)─▶ script check ─▶ contractions ─▶ tokens
         tokens ─▶ numbers/units · negations · polar words · quantifiers · modals · tense ·
                   question type · tasks · answer shape · symbols/operators/identifiers ·
                   content words (stems, synonym keys) · sequence (for argument order)

Fails closed: text longer than ``max_chars`` or with letters of a script the
lexicons do not cover (anything but Latin) is marked ``unreadable`` and never
verified as a paraphrase. Every step is O(len(text)): one regex scan, then loops
over the tokens with constant-size look-arounds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from llmcache.proxy.semantic import lexicon as lx
from llmcache.proxy.semantic import wordnet

__all__ = ["DEFAULT_MAX_CHARS", "Analysis", "Token", "analyse"]

#: Longest text analysed; longer ones fail closed (MiniLM also stops reading after 256 word pieces).
DEFAULT_MAX_CHARS = 2000

_TOKEN_RE = re.compile(r"""
  (?P<code>`[^`\n]{1,200}`)
| (?P<num>\d+(?:\.\d+)?(?:st|nd|rd|th)?(?![\w/:]|[._-]\w))
| (?P<ident>(?:--?)?[^\W_][\w]*(?:(?:[_./:\\]|::)[\w]+)+/?|[^\W\d_]+(?:\+\+|\#)|\.[^\W\d_]\w*|[a-z]+[A-Z][A-Za-z]*|[A-Za-z]+\d\w*|_\w+|\w+_)
| (?P<word>[^\W\d_]+(?:'[^\W\d_]+)?(?:-[^\W\d_]+)*)
| (?P<op>==|!=|<=|>=|=>|->|<<|>>|&&|\|\||\*\*|[<>=+*/^~&|]|(?<=\s)-(?=\s))
| (?P<sym>[%$€£¥°])
| (?P<other>[^\w\s.,;:?!'"()\[\]{}\-`])
""", re.VERBOSE)
_QUOTED_RE = re.compile(r"(?:^|\W)'[^']{1,200}'(?:\W|$)|\"[^\"]{1,200}\"")
_DIRECTIONAL = frozenset(["to", "into", "from", "than", "by", "over", "against", "toward", "towards", "onto", "for", "per", "after", "before", "under"])
# Markers kept in the sequence for the direction checks (never content).
_MARKERS = _DIRECTIONAL | {"in", "of", "at", "on", "with"}
# Words before a task verb that make it a request ("can you summarise", "please translate").
_REQUESTERS = frozenset(["you", "please", "me", "us", "like", "want", "wanna"])
_ASKERS = frozenset(["how", "i", "we", "what", "why", "where", "when", "who", "which", "whom", "whose"])
# Role markers and the class they belong to: the target of "to", "into" and (before a unit) "in" is one role.
_ROLE_MARKERS = {"to": "to", "into": "to", "onto": "to", "toward": "to", "towards": "to", "in": "to", "from": "from",
                 "than": "than", "by": "by", "against": "against"}
# Words that open a new clause (roles are compared inside a clause only).
_CLAUSE_WORDS = frozenset(["that", "which", "who", "whom", "because", "if", "when", "whenever", "while", "whether",
                           "but", "although", "though", "since", "unless", "until", "so", "and", "or", "where"])
_ONE_PRONOUN = frozenset(["which", "the", "this", "that", "each", "any", "no", "every", "no", "another", "only",
                          "a", "someone", "anyone", "everyone", "no"])
_MODAL_WORDS = frozenset(["can", "could", "may", "might", "should", "ought", "must"])
_MODAL_ADJ_BEFORE_TO = frozenset(["able", "allowed", "permitted", "possible", "ok", "okay", "fine", "advisable", "recommended", "wise", "necessary", "required", "mandatory", "obligatory", "supposed"])


@dataclass(slots=True)
class Token:
    text: str       # lower-case surface form
    stem: str
    pos: int
    capital: bool   # capitalised or all-caps, and not the first word of a sentence
    starts_sentence: bool = False
    compound: bool = False  # written with a hyphen ("abc-xyz"): compared as one word, never by meaning
    allcaps: bool = False   # "US", "IT": an acronym, never a stopword
    clause: int = 0         # index of the clause (split at punctuation) the token is in


@dataclass(slots=True)
class Analysis:
    """What the checks compare, extracted from one text."""

    unreadable: str | None
    """``None`` when analysed; else why not (``too_long``, ``script``, ``language``): such text never matches by meaning."""
    tokens: list[Token] = field(default_factory=list)
    negations: int = 0
    numbers: Counter[float] = field(default_factory=Counter)
    units: list[str] = field(default_factory=list)
    tasks: frozenset[str] = frozenset()
    arithmetic: frozenset[str] = frozenset()
    quantifiers: frozenset[str] = frozenset()
    modals: frozenset[str] = frozenset()
    shape: frozenset[str] = frozenset()
    tense: str | None = None
    qtype: str | None = None
    """``yesno``, a wh-word class (``who``/``where``/``when``/``why``/``how``/``what``) or ``None`` (imperative, terse)."""
    symbols: Counter[str] = field(default_factory=Counter)
    """Operators, identifiers, code and other symbols: compared exactly."""
    content: dict[str, Token] = field(default_factory=dict)
    """Content stems (after synonym mapping) → first token; excludes stopwords, numbers, units, task words."""
    polar: set[str] = field(default_factory=set)
    sequence: list[str] = field(default_factory=list)
    """Comparable units in order, for the direction check: content stems, numbers, units, directional words."""
    marker_objects: list[tuple[str, str]] = field(default_factory=list)
    """``(marker, object)``: the first content word or unit within 3 tokens after to/into/from/than/by/against
    ("send money to Bob" → ``("to", "bob")``; "5 km in miles" → ``("to", "u:mile")``)."""
    times: frozenset[str] = frozenset()
    """Time references by class (:data:`lexicon.TIME_WORDS`)."""
    quantities: Counter[tuple[str, str]] = field(default_factory=Counter)
    """``(number, unit)`` written together ("5 km"): compared exactly, so "5 miles to km" ≠ "5 km to miles"."""
    than: int = 0
    as_as: bool = False
    less: bool = False
    quoted: bool = False
    """A quoted span ('…' or "…") is present."""
    norm: str = ""
    """Lower-case text without spaces and ``-_.``: where an identifier of the other side may be found."""


def _expand(text: str) -> str:
    t = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    t = re.sub(r"(?i)\btl;?dr\b", " tldr ", t)
    t = re.sub(r"(?i)\b(\w+)'(s|re|ve|d|ll|m)\b", lambda m: lx.CONTRACTIONS.get(m.group(0).lower(), m.group(0)), t)
    t = re.sub(r"(?i)\b(can't|won't|shan't|ain't|cannot)\b", lambda m: lx.CONTRACTIONS[m.group(0).lower()], t)
    t = re.sub(r"(?i)n't\b", " not", t)
    t = re.sub(r"(?i)\bturn(ed|ing|s)?\s+(on|off)\b", lambda m: f"turn {m.group(2)}", t)
    t = re.sub(r"(?i)\bhow come\b", "why", t)
    # Casual abbreviations written with a slash or standing for two words.
    t = re.sub(r"(?i)\bw/o\b", "without", t)
    t = re.sub(r"(?i)\bw/(?=\s)", "with", t)
    t = re.sub(r"(?i)\bb/c\b", "because", t)
    t = re.sub(r"(?i)\brn\b", "right now", t)
    t = re.sub(r"(?i)\bfirst of all\b", "first", t)
    t = re.sub(r"(?i)\bat home\b", "", t)
    t = re.sub(r"(?i)\b(?:compared|comparing) (?:to|with)\b", "than", t)  # "Compared to X, is Y…" = "Is Y… than X"  # "make cold brew at home": where the asker is, not what is asked
    t = re.sub(r"(?i)\bset(?:ting)? up\b", "setup", t)
    t = re.sub(r"(?i)\b(boiling|freezing|melting) point\b", r"\1 temperature", t)
    # "How many people live in X?" asks for X's population.
    t = re.sub(r"(?i)\bhow many (?:people|persons|inhabitants|residents|humans) (?:live|are living|reside|are there) in\b",
               "what is the population of", t)
    t = re.sub(r"(\d),(\d{3})\b", r"\1\2", t)
    t = re.sub(r"(\d)-([a-zA-Z])", r"\1 \2", t)          # "7-day" → "7 day"
    t = re.sub(r"\b(\d+)([a-zA-Z%°$€£¥])", r"\1 \2", t)  # "5km" → "5 km", "20%" → "20 %" (not "K2", "x86")
    t = re.sub(r"([$€£¥])\s*(\d)", r"\1 \2", t)
    return t


def _number_value(tok: str) -> float | None:
    t = tok.lower()
    t = re.sub(r"(st|nd|rd|th)$", "", t) if t[:1].isdigit() else t
    try:
        return float(t)
    except ValueError:
        return None


def _script_ok(text: str) -> bool:
    """Only Latin letters (any accents): the lexicons and the stemmer know nothing else."""
    if text.isascii():
        return True
    for ch in text:
        if ord(ch) > 127 and ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN"):
            return False
    return True


def _english(tokens: list[Token], lex: wordnet.Lexicon) -> bool:
    """Whether the words read as English: the only language the lexicons and rules know (else fail closed).

    A measured rule, not a model: among the words that are not names, English function words must
    outnumber the function words of other Latin-script languages (:data:`lexicon.FOREIGN_FUNCTION`),
    and in a text of ≥ 3 such words without any English function word, most words must be English.
    """
    english = foreign = unknown = total = 0
    for t in tokens:
        w = t.text
        if t.capital or t.compound or t.allcaps or not w.isalpha():
            continue
        total += 1
        if w in lx.EN_FUNCTION:
            english += 1
        elif w in lx.FOREIGN_FUNCTION:
            foreign += 1
        elif not (w.isascii() and (lex.known(w) or w in lx.STOPWORDS or w in lx.VARIANTS_WORD)):
            unknown += 1
    if foreign and foreign >= english:
        return False
    return not (english == 0 and total >= 3 and unknown * 2 > total)


def _imperative(tokens: list[Token], i: int) -> bool:
    """A task word opening its sentence or following "you/please/me" is a request; elsewhere it is content.

    "Summarise this", "Can you summarise this" → request; "How do I summarise a table in pandas",
    "Explain quantum computing" (``computing``) → content. Looks back at most 6 tokens.
    """
    for j in range(i - 1, max(-1, i - 7), -1):
        word = tokens[j].text
        if word in _ASKERS:
            return False
        if word in _REQUESTERS:
            return True
        if word not in lx.STOPWORDS and word != "to":
            return False
        if tokens[j].starts_sentence:
            break
    return True


def _question_type(words: list[str]) -> str | None:
    """The kind of answer asked for, after request lead-ins ("could you tell me who…" → ``who``)."""
    i, n = 0, min(len(words), 12)
    while i < n:
        w = words[i]
        if w in ("can", "could", "would", "will", "do") and i + 1 < n and words[i + 1] == "you":
            i += 2
        elif w in lx.REQUEST_LEADS:
            i += 1
        else:
            break
    if i < len(words) - 1 and words[i] in ("in", "at", "on", "for", "from", "to", "by", "with", "of", "during"):
        i += 1  # "In what year…", "From which country…"
    if i >= len(words):
        return None
    w = words[i]
    if w in lx.WH_WORDS:
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in ("what", "which") and nxt in lx.WH_NOUNS:
            return lx.WH_NOUNS[nxt]
        if w == "how" and nxt == "many":
            return "count"  # "How many X?" ≠ "Which are X?" (see evidence._question_clash)
        return lx.WH_EXCLUSIVE.get(w, "how" if w == "how" else "what")
    if w in lx.AUXILIARIES:
        # "Is X good for you, and why?": a yes/no question that also asks a wh-question.
        return None if any(x in lx.WH_WORDS for x in words[i + 1:]) else "yesno"
    # A wh-word at the end: "X was written by whom?", "You went where?".
    for x in words[-6:]:
        if x in lx.WH_EXCLUSIVE:
            return lx.WH_EXCLUSIVE[x]
    # Terse questions: "Tesla birth date?" asks when, "Petra location?" where.
    for x in words[i:]:
        if x in ("date", "year", "when"):
            return "when"
        if x in ("where", "location"):
            return "where"
    return None


def analyse(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> Analysis:
    """Tokenise and classify ``text`` (pure function; the checks only compare two analyses)."""
    if len(text) > max_chars:
        return Analysis(unreadable="too_long")
    text = unicodedata.normalize("NFKC", text)
    if not _script_ok(text):
        return Analysis(unreadable="script")
    expanded = _expand(text)
    tokens: list[Token] = []
    symbols: Counter[str] = Counter()
    sentence_start = True
    last_end = 0
    clause = 0
    lex = wordnet.lexicon()
    for m in _TOKEN_RE.finditer(expanded):
        kind, word, start = m.lastgroup, m.group(0), m.start()
        between = expanded[last_end:start]
        if any(ch in between for ch in ".?!:\n"):
            sentence_start = True
        if any(ch in between for ch in ".?!:;,()\n") or word.lower() in _CLAUSE_WORDS:
            clause += 1
        last_end = start + len(word)
        if kind in ("code", "op", "other"):
            symbols[word if kind == "code" else word.lower()] += 1
            continue
        if kind == "ident" and word.lower() in lx.VARIANTS_WORD:  # "k8s": a known abbreviation, read as its word
            kind, word = "word", lx.VARIANTS_WORD[word.lower()]
        if kind == "ident":
            lower = word.lower()
            if lower in lx.UNITS:  # "km/h"
                tokens.append(Token(lower, lower, len(tokens), False, sentence_start))
            elif lower.isalnum():  # camelCase, "K2", "x86", "mp3": a name, compared as one word
                tokens.append(Token(lower, lower, len(tokens), not sentence_start, sentence_start, compound=True))
            elif lower not in ("e.g", "i.e", "etc"):
                symbols["id:" + re.sub(r"[-_.]", "", lower)] += 1
            sentence_start = False
            continue
        lower = word.lower()
        capital = (not sentence_start) and (word[:1].isupper() or (len(word) > 1 and word.isupper()))
        compound = "-" in lower and kind == "word"
        if compound:
            parts = lower.split("-")
            if all(lex.known(x) or x in lx.STOPWORDS for x in parts) and parts[0] not in lx.COMPOUND_PREFIXES:
                # "chemical-free", "soft-boiled": ordinary words joined, read as words; "abc-xyz" stays one id.
                for x in parts:
                    tokens.append(Token(x, lx.stem(x), len(tokens), capital, sentence_start, clause=clause))
                    sentence_start = False
                continue
            compound = parts[0] not in lx.COMPOUND_PREFIXES
            lower = lower.replace("-", "")
        lower = lx.VARIANTS_WORD.get(lower, lower)
        # Acronyms keep their letters: HTTPS is not the plural of HTTP.
        stem = lower if len(word) > 1 and word.isupper() else lx.stem(lower)
        tokens.append(Token(lower, stem, len(tokens), capital, sentence_start, compound,
                            allcaps=len(word) > 1 and word.isupper(), clause=clause))
        sentence_start = False
    # Title Case or ALL CAPS text: capitals say nothing about names.
    if tokens and sum(t.capital for t in tokens) > 0.6 * len(tokens):
        for t in tokens:
            t.capital = t.allcaps = False
    if not _english(tokens, lex):
        return Analysis(unreadable="language")
    a = Analysis(unreadable=None, tokens=tokens, symbols=symbols,
                 quoted=_QUOTED_RE.search(expanded) is not None, norm=re.sub(r"[\s\-_.]", "", expanded.lower()))
    _classify(a)
    return a


def _classify(a: Analysis) -> None:  # noqa: C901 - one pass over the tokens, one branch per word class
    tokens = a.tokens
    words = [t.text for t in tokens]
    n = len(tokens)
    tasks: set[str] = set()
    arithmetic: set[str] = set()
    quantifiers: set[str] = set()
    modals: set[str] = set()
    soft_modals: set[str] = set()
    shape: set[str] = set()
    times: set[str] = set()
    last_seq_token = -1
    prev_number = False
    pending: tuple[str, int] | None = None  # the last role marker seen and where
    a.qtype = _question_type(words)
    i = 0
    while i < n:
        tok = tokens[i]
        w = tok.text
        prev = words[i - 1] if i else ""
        nxt = words[i + 1] if i + 1 < n else ""
        value = _number_value(w) if w[:1].isdigit() else None
        if value is None and w in lx.NUM_WORDS and not (w == "k" and not prev_number):
            # Combine "twenty five", "three hundred", "two thousand five hundred".
            total, current, j = 0.0, 0.0, i
            while j < n and (words[j] in lx.NUM_WORDS or (words[j] == "and" and j > i and j + 1 < n
                                                           and words[j + 1] in lx.NUM_WORDS)):
                t = words[j]
                if t == "and":
                    j += 1
                    continue
                if t in lx.MULTIPLIERS and t != "k":
                    current = (current or 1) * lx.MULTIPLIERS[t]
                    if lx.MULTIPLIERS[t] >= 1000:
                        total, current = total + current, 0.0
                else:
                    current += lx.NUM_WORDS[t]
                j += 1
            value = total + current
            if w in ("half", "quarter", "double", "twice", "triple", "dozen") and j == i + 1:
                value = lx.NUM_WORDS[w]
            if w == "one" and j == i + 1 and (nxt in ("of", "", "way", "thing", "day") or prev in _ONE_PRONOUN
                                                or not nxt.isalpha() or nxt in lx.STOPWORDS):
                # "which one", "the one", "one of", "one way to…" are no count; "one healthy idea" ≠ "a list of ideas".
                if nxt == "of":
                    quantifiers.add("one")
                value = None
            if value is not None:
                a.numbers[value] += 1
                a.sequence.append(f"#{value:g}")
                prev_number = True
                i = j
                continue
        if value is not None:
            if nxt in lx.MULTIPLIERS:  # "2 million", "5k"
                value *= lx.MULTIPLIERS[nxt]
                i += 1
            a.numbers[value] += 1
            a.sequence.append(f"#{value:g}")
            prev_number = True
            i += 1
            continue
        if w in lx.ORDINALS and not (w == "second" and prev_number):
            a.numbers[1000000 + lx.ORDINALS[w]] += 1  # ordinals: compared among themselves
            a.sequence.append(f"#o{lx.ORDINALS[w]}")
            prev_number = False
            i += 1
            continue
        unit = lx.UNITS.get(w)
        if unit is not None and (w not in lx.UNIT_NEEDS_NUMBER or prev_number or prev in ("many", "per")):
            a.units.append(unit)
            if prev_number and a.sequence and a.sequence[-1][:1] == "#":
                a.quantities[(a.sequence[-1], unit)] += 1  # "5 km": the number belongs to this unit
            a.sequence.append(f"u:{unit}")
            if pending is not None and i - pending[1] <= 3 and not prev_number:  # "in 10 miles" is a quantity
                a.marker_objects.append((_ROLE_MARKERS[pending[0]], f"u:{unit}"))
            pending = None
            prev_number = False
            i += 1
            continue
        prev_number = False
        if w in lx.NEGATIONS:
            a.negations += 1
            i += 1
            continue
        if w == "turn" and nxt in ("on", "off"):
            a.polar.add("turn_" + nxt)
            i += 2
            continue
        # Closed classes read before the stop-list hides them.
        q = lx.QUANTIFIERS.get(w)
        if q is not None and (prev, w) not in lx.QUANTIFIER_IDIOMS and (w, nxt) not in lx.QUANTIFIER_IDIOMS:
            quantifiers.add(q)
        if w in _MODAL_WORDS:
            # "can you…" is a request; "how can I…", "what should we…" ask how, whatever the modal (dropped
            # below in wh-questions); a modal with any other subject ("what a landlord may include") counts.
            if nxt != "you":
                (soft_modals if nxt in lx.PRONOUNS_I or prev in lx.WH_WORDS or
                 (prev in lx.PRONOUNS_I and i >= 2 and words[i - 2] in lx.WH_WORDS) else modals).add(lx.MODALS[w])
        elif w in ("have", "has", "need", "needs", "got") and nxt == "to":
            soft_modals.add("must")  # "how hot does it have to be": a wh-question's "have to" asks nothing more
        elif w in _MODAL_ADJ_BEFORE_TO and nxt in ("to", "for", "in", "on", "at", "by", "when", "if", ".", "?", ""):
            modals.add(lx.MODALS.get(w, "must"))  # "allowed"/"required"/"possible": never a way of asking
        if w in lx.TIME_WORDS and not (w == "last" and (nxt in ("name", "names", "step", "one", "longer", "long", "for")
                                                        or prev in ("they", "it", "will", "to", "can", "should"))):
            times.add(lx.TIME_WORDS[w])
        if w in lx.TENSE and a.tense is None:
            a.tense = lx.TENSE[w]
        if w == "than":
            a.than += 1
        elif w == "as" and i + 2 < n and "as" in words[i + 2:i + 4]:
            a.as_as = True
        elif w in ("less", "fewer", "least"):
            a.less = True
        op = lx.ARITHMETIC.get(w)
        if op is not None:
            arithmetic.add(op)
        if w == "short" and nxt == "for":  # "What is HTTP short for?" = "What does HTTP stand for?"
            a.content.setdefault("frame:acronym", tok)
            a.sequence.append("frame:acronym")
            i += 1
            continue
        tag = lx.SHAPE_WORDS.get(w)
        if tag is not None and _is_shape(w, prev, nxt):
            shape.add(tag)
        if w in ("sentence", "sentences", "paragraph", "paragraphs", "line", "lines", "words") and (
                prev in ("one", "a", "single", "few", "couple", "two", "three") or (a.sequence[-1:] and a.sequence[-1][:1] == "#")):
            shape.add("len:units")
        if w == "step" and nxt == "by" and i + 2 < n and words[i + 2] == "step":
            shape.add("fmt:steps")
            i += 3
            continue
        if w in lx.LANGUAGES and prev in ("in", "into", "to"):
            shape.add("lang:" + w)
        if tok.stem in lx.ANTONYM_STEMS or w in lx.ANTONYMS:
            a.polar.add(tok.stem)
        if w in _MARKERS:
            a.sequence.append(f"d:{w}")
        if w in _ROLE_MARKERS:
            pending = (w, i)
        task = lx.TASK_STEMS.get(tok.stem)
        if task is not None and _imperative(tokens, i):
            tasks.add(task)
            i += 1
            continue
        if not tok.allcaps and (w in lx.STOPWORDS or tok.stem in lx.STOP_STEMS or w in _MARKERS or w in lx.FUNCTION_POLAR
                or w in lx.QUANTIFIERS or w in lx.MODALS or w in lx.SHAPE_WORDS or op is not None):
            i += 1
            continue
        key = lx.SYNONYM.get(tok.stem, tok.stem)
        if key not in a.content:
            a.content[key] = tok
        if pending is not None:
            if i - pending[1] <= 3 and pending[0] != "in":
                a.marker_objects.append((_ROLE_MARKERS[pending[0]], key))
            pending = None
        if tok.capital and i > 0 and tokens[i - 1].capital and last_seq_token == i - 1 and a.sequence:
            a.sequence[-1] = a.sequence[-1] + "_" + key  # "New York", "Mount Everest": one anchor
        else:
            a.sequence.append(key)
        last_seq_token = i
        i += 1
    tasks.discard(lx.DEFAULT_TASK)
    # "What is 'hola' in English?", "How do you say 'thanks' in Korean?": a translation request.
    if a.quoted and any(t.startswith("lang:") for t in shape):
        tasks.add("translate")
    if a.qtype in (None, "yesno"):
        modals |= soft_modals  # "Can I…?" ≠ "Should I…?"; in a wh-question "how can I" = "how do I"
    a.times = frozenset(times)
    a.tasks, a.arithmetic, a.quantifiers, a.modals, a.shape = (frozenset(tasks), frozenset(arithmetic),
                                                               frozenset(quantifiers), frozenset(modals), frozenset(shape))


def _is_shape(w: str, prev: str, nxt: str) -> bool:
    """Shape words that are something else in context: "short for", "how long", "for example", "source code"."""
    if w == "short" and nxt == "for":
        return False
    if w == "long" and (prev in ("how", "so", "too", "as") or nxt in ("time", "ago", "run")):
        return False
    if w in ("example", "examples") and prev == "for":
        return False
    if w in ("code", "snippet", "snippets"):
        return prev in ("with", "include", "including", "show", "some", "in") or nxt in ("example", "examples", "sample", "samples", "snippet")
    if w in ("child", "children", "kid", "kids", "expert", "experts", "technical", "beginner", "beginners"):
        return prev in ("a", "for", "to", "like") or nxt in ("terms", "friendly")
    if w in ("table", "detail", "details"):
        return prev in ("a", "in", "as", "more")
    return True
