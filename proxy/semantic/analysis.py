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
from typing import Any

from llmcache.proxy.semantic import lexicon as lx
from llmcache.proxy.semantic import rewrite, wordnet

__all__ = ["DEFAULT_MAX_CHARS", "Analysis", "Token", "analyse"]

#: Longest text analysed; longer ones fail closed (MiniLM also stops reading after 256 word pieces).
DEFAULT_MAX_CHARS = 2000

# Possessive "++" where giving a letter back can never let the next item match (a letter is no "+", "#", upper-case
# letter or digit): a plain word fails those alternatives in one pass instead of backtracking through it.
_TOKEN_RE = re.compile(r"""
  (?P<code>`[^`\n]{1,200}`)
| (?P<num>\d+(?:\.\d+)?(?:st|nd|rd|th)?(?![\w/:]|[._-]\w))
| (?P<ident>[A-Za-z]{1,5}-\d[\w]*   # "W-2", "COVID-19": letters and digits joined by a hyphen
           |(?:--?)?[^\W_][\w]*(?:(?:[_./:\\]|::)[\w]+)+/?|[^\W\d_]++(?:\+\+|\#)|\.[^\W\d_]\w*|[a-z]++[A-Z][A-Za-z]*|[A-Za-z]++\d\w*|_\w+|\w+_)
| (?P<word>[^\W\d_]+(?:'[^\W\d_]+)?(?:-[^\W\d_]+)*)
| (?P<op>==|!=|<=|>=|=>|->|<<|>>|&&|\|\||\*\*|[<>=+*/^~&|]|(?<=(?:\b\w|\d)\s)-(?=\s(?:\w\b|\d)))
| (?P<sym>[%$€£¥°])
| (?P<other>[^\w\s.,;:?!'"()\[\]{}\-`—–―…])
""", re.VERBOSE)
_ORDINAL_RE = re.compile(r"(\d+)(?:st|nd|rd|th)")
_QUOTED_RE = re.compile(r"(?:^|\W)'[^']{1,200}'(?:\W|$)|\"[^\"]{1,200}\"")
_DIRECTIONAL = frozenset(["to", "into", "from", "than", "by", "over", "against", "toward", "towards", "onto", "for",
                          "per", "after", "before", "under"])
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
_ONE_NOT_A_COUNT = _ONE_PRONOUN - {"a", "the", "this", "that"}  # "which one", "no one": a pronoun
_MODAL_WORDS = frozenset(["can", "could", "may", "might", "should", "ought", "must"])
_MODAL_ADJ_BEFORE_TO = frozenset(["able", "allowed", "permitted", "possible", "ok", "okay", "fine", "advisable",
                                  "recommended", "wise", "necessary", "required", "mandatory", "obligatory", "supposed",
                                  "legal", "illegal", "obligated", "obliged", "forbidden", "prohibited", "banned"])


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
    slip: bool = False      # written with a slip of one letter ("descirbe"), read as the word it slipped from


@dataclass(slots=True)
class Analysis:
    """What the checks compare, extracted from one text."""

    unreadable: str | None
    """``None`` when analysed; else why not (``too_long``, ``script``, ``language``): such text never matches by
    meaning."""
    tokens: list[Token] = field(default_factory=list)
    negations: int = 0
    numbers: Counter[float] = field(default_factory=Counter)
    units: list[str] = field(default_factory=list)
    tasks: frozenset[str] = frozenset()
    arithmetic: frozenset[str] = frozenset()
    quantifiers: frozenset[str] = frozenset()
    implied_all: bool = False
    """An "all" a retrieval verb makes implicit ("list all files" = "list the files"): it still differs from "some"."""
    modals: frozenset[str] = frozenset()
    shape: frozenset[str] = frozenset()
    tense: str | None = None
    qtype: str | None = None
    """``yesno``, a wh-word class (``who``/``where``/``when``/``why``/``how``/``what``) or ``None`` (imperative,
    terse)."""
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
    durations: Counter[float] = field(default_factory=Counter)
    """Lengths of time written with a number ("14-day", "two weeks"), in seconds: compared as numbers."""
    attached: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Polar particles and prepositions with the word they attach to (``("out", "log")``, ``("after", "donat")``)."""
    quantities: Counter[tuple[str, str]] = field(default_factory=Counter)
    """``(number, unit)`` written together ("5 km"): compared exactly, so "5 miles to km" ≠ "5 km to miles"."""
    than: int = 0
    as_as: bool = False
    less: bool = False
    quoted: bool = False
    """A quoted span ('…' or "…") is present."""
    norm: str = ""
    """Lower-case text without spaces and ``-_.``: where an identifier of the other side may be found."""
    context_modals: frozenset[str] = frozenset()
    """Modal force in sentences other than the question ("My employer says I may…"): compared only when both
    texts have some (a reworded context may drop "I have to give a talk" → "I'm preparing a talk")."""
    context_quantifiers: frozenset[str] = frozenset()
    """Quantifiers outside the question sentence, compared like :attr:`context_modals`."""
    singular: frozenset[tuple[str, bool]] = frozenset()
    """``(stem, in the question)`` counted as one ("one guest", "a single block"): a plural of the same word on
    the other side differs."""
    plural: frozenset[tuple[str, bool]] = frozenset()
    """``(stem, in the question)`` of nouns written in the plural."""
    all_of: frozenset[str] = frozenset()
    """Stems of the nouns a retrieval verb's implicit "all" covers ("name all the noble gases" → gas)."""
    question_span: tuple[int, int] = (0, 0)
    """Token range of the sentence that carries the question or request (the last one when none is marked)."""
    sentence_starts: list[int] = field(default_factory=list)
    question_ends: list[int] = field(default_factory=list)
    """Indexes of tokens a "?" follows."""
    clause_starts: list[int] = field(default_factory=list)
    """Indexes of tokens that open a clause after punctuation (",", ";", ":") or a sentence."""
    ident_at: dict[int, list[str]] = field(default_factory=dict)
    """Identifier symbols ("id:c++") by the index of the token they precede: arguments for the direction check."""
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Indexes the checks derive from this analysis alone, computed on first use and kept with it (an analysis
    is read-only once :func:`analyse` returns it, so each is computed once however often the text is compared)."""


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
    return all(ord(ch) <= 127 or not ch.isalpha() or unicodedata.name(ch, "").startswith("LATIN") for ch in text)


def _english(tokens: list[Token], lex: wordnet.Lexicon) -> bool:
    """Whether the words read as English: the only language the lexicons and rules know (else fail closed).

    A measured rule, not a model: among the words that are not names, English function words must
    outnumber the function words of other Latin-script languages (:data:`lexicon.FOREIGN_FUNCTION`),
    and in a text of ≥ 3 such words without any English function word, most words must be English.
    """
    english = foreign = total = 0
    others: list[str] = []
    for t in tokens:
        w = t.text
        if t.capital or t.compound or t.allcaps or not w.isalpha():
            continue
        total += 1
        if w in lx.EN_FUNCTION:
            english += 1
        elif w in lx.FOREIGN_FUNCTION:
            foreign += 1
        else:
            others.append(w)
    if foreign and foreign >= english:
        return False
    if english or total < 3:
        return True  # the unknown words only count without any English function word
    unknown = sum(1 for w in others
                  if not (w.isascii() and (lex.known(w) or w in lx.STOPWORDS or w in lx.VARIANTS_WORD)))
    return not unknown * 2 > total


# Words after which a task word is a noun or a question's content, never a request.
_NOT_BEFORE_VERB = frozenset(["is", "are", "was", "were", "be", "been", "the", "a", "an", "my", "your", "his", "her",
                              "our", "their", "its", "this", "that", "these", "those", "of", "some", "any", "no"])
# Nouns for a text the request hands over ("summarize the attached article"), not a topic ("summarize evolution").
_GIVEN_TEXT = frozenset(["this", "these", "that", "those", "my", "our", "your", "his", "her", "their", "following",
                         "attached", "above", "below", "provided", "given", "enclosed", "pasted", "here", "article",
                         "text", "email", "paragraph", "document", "passage", "report", "transcript", "thread", "post",
                         "essay", "letter", "message", "conversation", "notes", "paper", "abstract", "chapter",
                         "review", "reviews", "comments", "feedback", "code", "function", "file", "log", "logs"])


_TASK_OF: dict[str, str | None] = {}
_UNSEEN = "\x00unseen"  # no task class is this


def _task_of(tok: Token, lex: wordnet.Lexicon) -> str | None:
    """The task class of a word, read by its lemma ("planes" is no form of "plan"); memoised, bounded."""
    if tok.text in _TASK_OF:
        return _TASK_OF[tok.text]
    if len(_TASK_OF) >= 50_000:
        _TASK_OF.clear()
    task = _TASK_OF[tok.text] = _task_lookup(tok, lex)
    return task


def _task_lookup(tok: Token, lex: wordnet.Lexicon) -> str | None:
    task = lx.TASK_CLASSES.get(tok.text)
    for lemma in lex.lemmas(tok.text) if task is None else ():
        task = lx.TASK_CLASSES.get(lemma) or lx.TASK_CLASSES.get(re.sub(r"is(e|ation)$", r"iz\1", lemma))
        if task is not None:
            break
    if task is None and not lex.known(tok.text):
        task = lx.TASK_STEMS.get(tok.stem)  # forms the table lacks ("tl;dr", "summarising")
    return task


def _given_text(words: list[str], i: int) -> bool:
    """The words after a task word hand over a text ("summarize the attached article", "summarize this")."""
    return any(w in _GIVEN_TEXT for w in words[i + 1:i + 5])


def _imperative(tokens: list[Token], i: int) -> bool:
    """A task word opening its sentence or following "you/please/me" is a request; elsewhere it is content.

    "Summarise this", "Can you summarise this" → request; "How do I summarise a table in pandas",
    "Explain quantum computing" (``computing``) → content. Looks back at most 6 tokens.
    """
    if i and tokens[i - 1].clause != tokens[i].clause and not tokens[i].starts_sentence:
        return tokens[i - 1].text not in _ASKERS  # opening a clause: "process vs thread, explain the difference"
    for j in range(i - 1, max(-1, i - 7), -1):
        word = tokens[j].text
        if word.endswith("ly") or lx.SHAPE_WORDS.get(word) == "len:short":
            continue  # "Briefly explain…", "quickly summarise…": an adverb before the request
        if word in _ASKERS or word in _NOT_BEFORE_VERB:
            return False  # "how do I summarise", "is planes safer", "his grades": no request
        if word in _REQUESTERS:
            return True
        if word not in lx.STOPWORDS and word != "to":
            return False
        if tokens[j].starts_sentence:
            break
    return True


# Who a request is put to: "can you…", "could someone…", "can anyone explain…".
_ADDRESSEES = frozenset(["you", "someone", "anyone", "somebody", "anybody", "u"])


def _question_type(words: list[str]) -> str | None:
    """The kind of answer asked for, after request lead-ins ("could you tell me who…" → ``who``)."""
    i, n = 0, min(len(words), 12)
    while i < n:
        w = words[i]
        if w in ("can", "could", "would", "will", "do") and i + 1 < n and words[i + 1] in _ADDRESSEES:
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
    # "Tell me whether I can freeze rice" asks yes or no ("Tell me if…" too; a sentence that opens with "if"
    # states a condition).
    if w == "whether" or (w == "if" and i > 0):
        return "yesno"
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
    # A wh-word at the end: "X was written by whom?", "You went where?", "dedupe a list, how?".
    for x in words[-6:]:
        if x in lx.WH_EXCLUSIVE:
            return lx.WH_EXCLUSIVE[x]
    if words[-1] == "how":
        return "how"
    if words[i] in lx.UNITS and i + 1 < len(words) and words[i + 1] in ("in", "per"):
        return "count"  # "Ounces in a cup?" = "How many ounces are in a cup?"
    # Terse questions: "Tesla birth date?" asks when, "Petra location?" where.
    for x in words[i:]:
        if x in ("date", "year", "when"):
            return "when"
        if x in ("where", "location"):
            return "where"
    return None


_MAX_CLAUSES = 8  # clauses of the asking sentence tried for a question word (bounds the work)
_PUNCT = frozenset(".?!:;,()\n—–―…")  # dashes set a clause apart ("Process vs thread — how do they differ?")
_SENTENCE_END = frozenset(".?!:\n")
_CLAUSE_MARKS = frozenset(",;:—–―…")
_NO_MARKS: frozenset[str] = frozenset()


def _question(a: Analysis, words: list[str]) -> tuple[str | None, tuple[int, int]]:
    """The question type and the token range of the sentence that asks it.

    The first sentence ending in "?" asks (long prompts put context first: "I'm 45… How can I start?"); with
    none, the last sentence. Inside it, a question may open a later clause ("im a beginner, how shud i start").
    """
    starts = a.sentence_starts
    spans = [(s, starts[k + 1] if k + 1 < len(starts) else len(words)) for k, s in enumerate(starts)]
    spans = [(s, e) for s, e in spans if e > s] or [(0, len(words))]
    asked = [(s, e) for s, e in spans if e - 1 in a.question_ends]
    start, end = asked[0] if asked else spans[-1]
    qtype = _question_type(words[start:end])
    if qtype is None:
        for c in [c for c in a.clause_starts if start < c < end][:_MAX_CLAUSES]:
            qtype = _question_type(words[c:end])
            if qtype is not None:
                break
    if qtype == "yesno" and "or" in words[start:end]:
        at = words.index("or", start, end)
        if at + 1 < end and words[at + 1] != "not":
            qtype = "what"  # "Is it cheaper to buy or lease?" asks which, like "Which costs less…?"
    if qtype == "yesno" and any(_question_type(words[s:e]) not in (None, "yesno") for s, e in asked[1:]):
        qtype = None  # "Is X good for you? Why?": a yes/no question that also asks a wh-question
    return qtype, (start, end)


def noun_keys(tok: Token, lex: wordnet.Lexicon) -> frozenset[str]:
    """Keys shared by a noun's singular and plural: its stem and WordNet lemmas ("gases" and "gas" share "gas",
    which the stemmer splits into "gase" / "gas")."""
    return lex.lemmas(tok.text) | {tok.stem}


def analyse(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> Analysis:  # noqa: C901 - one pass over the text
    """Tokenise and classify ``text`` (pure function; the checks only compare two analyses)."""
    if len(text) > max_chars:
        return Analysis(unreadable="too_long")
    text = unicodedata.normalize("NFKC", text)
    if not _script_ok(text):
        return Analysis(unreadable="script")
    expanded = rewrite.normalise(text)
    tokens: list[Token] = []
    symbols: Counter[str] = Counter()
    sentence_start = True
    last_end = 0
    clause = 0
    lex = wordnet.lexicon()
    sentence_starts: list[int] = []
    question_ends: list[int] = []
    ident_at: dict[int, list[str]] = {}  # identifiers (kept as symbols) by the token they stand before
    clause_starts: list[int] = []
    for m in _TOKEN_RE.finditer(expanded):
        kind, word = m.lastgroup, m.group()
        start, end = m.span()
        between = expanded[last_end:start]
        marks = _PUNCT & set(between) if between != " " else _NO_MARKS  # one space between most words
        if marks:
            if "?" in marks and tokens:
                question_ends.append(len(tokens) - 1)
            if marks & _SENTENCE_END and tokens:
                sentence_start = True
        if not tokens or sentence_start or marks & _CLAUSE_MARKS:
            if not clause_starts or clause_starts[-1] != len(tokens):
                clause_starts.append(len(tokens))
            if (not tokens or sentence_start) and (not sentence_starts or sentence_starts[-1] != len(tokens)):
                sentence_starts.append(len(tokens))
        if marks or word.lower() in _CLAUSE_WORDS:
            clause += 1
        last_end = end
        if kind in ("code", "op", "other"):
            if kind == "op" and ((word == "~" and expanded[end:end + 1].isdigit())
                                 or (word == "&" and between == " " and expanded[end:end + 1] == " ")):
                continue  # prose, not code: "~6 months" (about), "Romeo & Juliet" (and)
            symbols[word if kind == "code" else word.lower()] += 1
            continue
        if kind == "ident" and re.sub(r"[-_.]", "", word.lower()) in lx.VARIANTS_WORD:
            kind, word = "word", lx.VARIANTS_WORD[re.sub(r"[-_.]", "", word.lower())]  # "k8s", "Node.js": their word
        if kind == "ident":
            lower = word.lower()
            if lower in lx.UNITS:  # "km/h"
                tokens.append(Token(lower, lower, len(tokens), False, sentence_start))
            elif lower.isalnum():  # camelCase, "K2", "x86", "mp3": a name, compared as one word
                tokens.append(Token(lower, lower, len(tokens), not sentence_start, sentence_start, compound=True))
            elif lower not in ("e.g", "i.e", "etc"):
                symbols["id:" + re.sub(r"[-_.]", "", lower)] += 1
                ident_at.setdefault(len(tokens), []).append("id:" + re.sub(r"[-_.]", "", lower))
            sentence_start = False
            continue
        upper, split, forms = _FORMS.get((kind, word)) or _forms(kind, word, lex)
        capital = (not sentence_start) and upper
        if split:
            # "chemical-free", "soft-boiled": ordinary words joined, read as words; "abc-xyz" stays one id.
            for x, x_stem, _, _, _ in forms:
                tokens.append(Token(x, x_stem, len(tokens), capital, sentence_start, False, False, clause))
                sentence_start = False
            continue
        lower, stem, compound, allcaps, slip = forms[0]
        tokens.append(Token(lower, stem, len(tokens), capital, sentence_start, compound, allcaps, clause, slip))
        sentence_start = False
    # Title Case or ALL CAPS text: capitals say nothing about names.
    if tokens and sum(t.capital for t in tokens) > 0.6 * len(tokens):
        for t in tokens:
            t.capital = t.allcaps = False
    if not _english(tokens, lex):
        return Analysis(unreadable="language")
    if "?" in expanded[last_end:] and tokens:
        question_ends.append(len(tokens) - 1)
    a = Analysis(unreadable=None, tokens=tokens, symbols=symbols,
                 quoted=_QUOTED_RE.search(expanded) is not None, norm=re.sub(r"[\s\-_.]", "", expanded.lower()),
                 sentence_starts=sentence_starts or [0], question_ends=question_ends,
                 clause_starts=clause_starts or [0], ident_at=ident_at)
    _classify(a)
    return a


_Forms = tuple[bool, bool, tuple[tuple[str, str, bool, bool, bool], ...]]
_FORMS: dict[tuple[str, str], _Forms] = {}
_FORMS_ENTRIES = 20_000  # ~400 bytes an entry: 8 MB at most


def _forms(kind: str, word: str, lex: wordnet.Lexicon) -> _Forms:
    """What a word token reads as, whatever its place: memoised (bounded) by its regex group and spelling."""
    hit = _FORMS.get((kind, word))
    if hit is None:
        if len(_FORMS) >= _FORMS_ENTRIES:
            _FORMS.clear()  # a bound, not an LRU: the working set is small
        hit = _FORMS[(kind, word)] = _read_word(kind, word, lex)
    return hit


def _read_word(kind: str, word: str, lex: wordnet.Lexicon) -> _Forms:
    """``(upper, split, ((text, stem, compound, allcaps), …))``: ``upper``: capitalised or all-caps (a name unless
    it opens a sentence); ``split``: ordinary words joined by hyphens, read as several tokens."""
    lower = word.lower()
    upper = word[:1].isupper() or (len(word) > 1 and word.isupper())
    compound = "-" in lower and kind == "word"
    if compound:
        parts = lower.split("-")
        if all(lex.known(x) or x in lx.STOPWORDS for x in parts) and (
                parts[0] not in lx.COMPOUND_PREFIXES or parts[-1] in lx.UNITS):  # "half-hour" is half an hour
            return upper, True, tuple((x, lx.stem(x), False, False, False) for x in parts)
        compound = parts[0] not in lx.COMPOUND_PREFIXES
        lower = lower.replace("-", "")
    lower = lx.VARIANTS_WORD.get(lower, lower)
    if (len(lower) > 4 and lower.endswith("in") and lower.isalpha() and not lex.known(lower)
            and lower not in lx.STOPWORDS and lex.known(lower + "g")):
        lower += "g"  # a dropped g ("sleepin", "doin"): the word itself
    if lower.endswith("'s") and lower[:-2] in lx.VARIANTS_WORD:
        lower = lx.VARIANTS_WORD[lower[:-2]] + "'s"  # "my gf's birthday" = "my girlfriend's birthday"
    slip = False
    if not upper and kind == "word":
        read = _spelled(lower, lex)
        slip, lower = read != lower, read
    # Acronyms keep their letters: HTTPS is not the plural of HTTP.
    stem = lower if len(word) > 1 and word.isupper() else lx.stem(lower)
    return upper, False, ((lower, stem, compound, len(word) > 1 and word.isupper(), slip),)


#: Verbs that ask for something: "Recommend a book on X" asks for one book, "Recommend books on X" for several.
_REQUEST_VERBS = frozenset(["give", "recommend", "suggest", "name", "write", "tell", "share", "send", "find",
                            "provide", "list", "show"])
#: Nouns the stop-words hold that, capitalised inside a sentence, belong to a name ("the City of London",
#: "Key West", "The Way of Kings"): content there.
_NAME_WORDS = frozenset(["city", "way", "key", "people", "person", "role", "question", "answer", "command",
                         "location", "definition", "keyboard", "tip", "advice", "mechanism", "purpose", "thing",
                         "things", "lot", "meaning", "experience", "right", "main", "primary", "basic", "true"])
#: Words variants are read as ("k8s" → "kubernetes", "postgresql" → "postgres"): names, never plurals.
_CANONICAL = frozenset(w for v in lx.VARIANTS_WORD.values() for w in v.split())
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_INFLECTED = ("s", "ed", "ing", "er", "est")
#: Words the lexicon knows without WordNet ("from", "into", "whats"): never corrected.
_NOT_SLIPS = frozenset().union(
    lx.STOPWORDS, lx.FUNCTION_POLAR, lx.NEGATIONS, lx.EN_FUNCTION, lx.FOREIGN_FUNCTION, lx.FRAMING, lx.LIGHT,
    lx.VARIANTS_WORD, lx.VARIANTS_WORD.values(), lx.CONTRACTIONS_BARE, lx.PARTICLES, lx.QUANTIFIERS, lx.MODALS,
    lx.WH_WORDS, lx.AUXILIARIES, lx.TIME_WORDS, lx.UNITS, lx.NUM_WORDS, lx.ORDINALS, lx.MULTIPLIERS, _MARKERS,
    lx.GAZETTEER, lx.LANGUAGES, lx.IMPLIES, lx.TASK_CLASSES, lx.SHAPE_WORDS, lx.ARITHMETIC)


def _spelled(word: str, lex: wordnet.Lexicon) -> str:
    """The English word a lower-case non-word is one slip away from, when exactly one is: two letters swapped
    ("descirbe", "wolud"), one left out ("definitly", "recomend") or one doubled ("wrriting"); else ``word``.

    Names and jargon that are no English word ("kubectl", "ollama") have no such neighbour, or more than one,
    and stay as written. At most ~30 × length set look-ups, once per word (the caller memoises).
    """
    if len(word) < 5 or not word.isalpha() or word in _NOT_SLIPS or lex.known(word):
        return word
    n = len(word)
    found: set[str] = set()
    cands = [word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(n - 1)]
    cands += [word[:i] + c + word[i:] for i in range(1, n + 1) for c in _LETTERS]
    if n >= 6:  # "noob" is no slip of "nob"
        cands += [word[:i] + word[i + 1:] for i in range(1, n) if word[i] == word[i - 1]]
    pos = lex.pos
    for c in cands:
        # A lemma is a dictionary hit; only a candidate with an inflection's ending needs WordNet's morphology.
        if c != word and (c in pos or c in _NOT_SLIPS or (c.endswith(_INFLECTED) and lex.known(c))):
            found.add(c)
            if len(found) > 1:
                return word
    return found.pop() if found else word


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
    a.qtype, a.question_span = _question(a, words)
    q_start, q_end = a.question_span
    context_modals: set[str] = set()
    context_quantifiers: set[str] = set()
    singular: set[tuple[str, bool]] = set()
    all_of: set[str] = set()
    lex = wordnet.lexicon()
    i = 0
    while i <= n:
        for ident in a.ident_at.get(i, ()):  # "Is C++ safer than Rust?": identifiers are arguments too
            if pending is not None and i - pending[1] <= 3:
                a.marker_objects.append((_ROLE_MARKERS[pending[0]], ident))
                pending = None
            a.sequence.append(ident)
        if i == n:
            break
        tok = tokens[i]
        w = tok.text
        if w not in _SPECIAL and not w[:1].isdigit():
            # A word no closed class below names (most content words and stop-words): nothing to read but
            # what every word gets after them.
            prev_number = False
            op = None
        else:
            prev = words[i - 1] if i else ""
            nxt = words[i + 1] if i + 1 < n else ""
            in_question = q_start <= i < q_end
            # "Recommend a book on X" (an imperative) asks for one; "How do I write a unit test" asks how, and
            # "a few", "a couple of" are several.
            asked_one = (w in ("a", "an") and in_question and nxt.isalpha()
                         and nxt not in lx.EN_FUNCTION and nxt not in lx.QUANTIFIERS and nxt not in lx.FRAMING
                         and nxt not in ("couple", "lot", "lots", "number", "bit", "little", "list", "set", "range")
                         and ((a.qtype is None and (prev in _REQUEST_VERBS or (
                             prev in ("me", "us") and i >= 2 and words[i - 2] in _REQUEST_VERBS)))
                              # "What's a famous painting by X?": one asked for, as "Name a painting" asks
                              or ((prev in ("what's", "whats") or (prev == "is" and i >= 2 and words[i - 2] == "what"))
                                  and not tokens[i + 1].capital)))
            if asked_one or (w in ("one", "single") and nxt.isalpha() and nxt not in lx.EN_FUNCTION
                             and nxt not in lx.NUM_WORDS and nxt not in ("of", "way", "day", "thing")
                             and prev not in _ONE_NOT_A_COUNT and nxt not in lx.UNITS):
                # "one guest", "a single block": the noun is singular, not a count to compare ("one" = "a").
                k = i + 1  # the head of the noun phrase: "one healthy breakfast idea" → idea
                while (k + 1 < min(n, i + 4) and words[k + 1].isalpha() and words[k + 1] not in lx.EN_FUNCTION
                       and words[k + 1] not in _MARKERS and "n" in lex.parts_of_speech(words[k + 1])):
                    k += 1
                singular.add((tokens[k].stem, in_question))
                i += 1
                continue
            if (w in lx.ORDINALS or w in lx.RECENT_N or w == "next") and nxt and f"{w}_{nxt}" in lex.synsets and (
                    nxt not in lx.UNITS):
                # "first aid", "last name", "past tense": a word of its own, not an ordinal or a time.
                key = f"{w}_{nxt}"
                a.content.setdefault(key, tok)
                a.sequence.append(key)
                i += 2
                continue
            if ((w in lx.RECENT_N and (nxt[:1].isdigit() or nxt in lx.NUM_WORDS or nxt in ("few", "couple", "several")))
                    or (w == "most" and nxt == "recent")):
                times.add("latest")  # "the last 3 commits" = "the previous three" = "the past 3 months"
                i += 2 if w == "most" else 1
                continue
            if w in ("disable", "disabled", "deactivate", "deactivated", "enable", "enabled", "activate", "activated"):
                # "disable location tracking" = "turn off location services": one polar pair, not a content word.
                a.polar.add("turn_off" if w.startswith(("dis", "de")) else "turn_on")
                i += 1
                continue
            ordinal = _ORDINAL_RE.fullmatch(w) if w[:1].isdigit() else None  # \d is a str.isdigit character
            if ordinal:
                a.numbers[1000000 + int(ordinal.group(1))] += 1  # "2nd" = "second"
                a.sequence.append(f"#o{int(ordinal.group(1))}")
                prev_number = False
                i += 1
                continue
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
                    # "which one", "the one", "one of", "one way to…" are no count;
                    # "one healthy idea" ≠ "a list of ideas".
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
            if w in lx.ORDINALS and not (w == "second" and (prev_number or nxt in ("hand", "opinion"))):
                a.numbers[1000000 + lx.ORDINALS[w]] += 1  # ordinals: compared among themselves
                a.sequence.append(f"#o{lx.ORDINALS[w]}")
                prev_number = False
                i += 1
                continue
            unit = lx.UNITS.get(w)
            if unit is not None and w in lx.UNIT_NEEDS_NUMBER and i == q_start and nxt in ("in", "per"):
                prev = "many"  # "Minutes in one day?" = "How many minutes are in a day?"
            if unit is not None and prev in ("a", "an") and not prev_number and (
                    w not in lx.UNIT_NEEDS_NUMBER) and a.sequence[-1:] != ["#1"]:
                # "walk a mile" = "walk 1 mile", "in a week" = "in 7 days": the article counts one.
                a.numbers[1.0] += 1
                a.sequence.append("#1")
                prev_number = True
            if unit == "year" and prev_number and nxt == "old":
                # "a 38-year-old accountant" = "I'm 38": an age, the number itself.
                prev_number = False
                i += 2
                continue
            if unit is not None and (w not in lx.UNIT_NEEDS_NUMBER or prev_number or prev in ("many", "per")
                                     or (prev in ("in", "into") and w.endswith("s"))):  # "duration in minutes"
                seconds = lx.DURATION_S.get(unit)
                if seconds is not None and prev_number and a.sequence and a.sequence[-1][:2] not in ("#o", ""):
                    # "a 14-day trip" = "two weeks", "an hour and a half" = "90 minutes": one duration, in seconds.
                    value = float(a.sequence[-1][1:])
                    a.numbers[value] -= 1
                    a.numbers += Counter()  # drop the zero count
                    a.durations[value * seconds] += 1
                    a.units.append("duration")
                    a.sequence[-1] = f"#t{value * seconds:g}"
                    a.quantities[(a.sequence[-1], "duration")] += 1
                    prev_number = False
                    i += 1
                    continue
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
            # "every 15 minutes", "each week", "every few min": how often, not how many of a set.
            frequency = (w in ("every", "each") and (
                nxt[:1].isdigit() or nxt in lx.NUM_WORDS or nxt in ("few", "couple", "other", "single")
                or (nxt[:-1] if nxt.endswith("s") else nxt) in lx.DURATION_S or nxt in lx.UNITS
                or nxt in lx.TIME_NOUNS)) or (w == "few" and prev == "every")
            if (q is not None and not frequency and (prev, w) not in lx.QUANTIFIER_IDIOMS
                    and (w, nxt) not in lx.QUANTIFIER_IDIOMS
                    and not (q == "all" and in_question and _retrieves(words, i))):
                if w == "few" and prev in ("a", "quite"):
                    q = "some"  # "a few of them" is some; "few of them" is hardly any
                if in_question:
                    quantifiers.add(q)
                elif w in lx.QUANTIFIER_DETERMINERS:  # "students always mix them up" / "most students confuse them"
                    context_quantifiers.add(q)
            if q == "all" and in_question and _retrieves(words, i):
                a.implied_all = True
                k = i + 1
                while k < n and k < i + 5 and (words[k] in ("the", "of", "my", "your", "our", "these", "those")
                                              or "n" not in lex.parts_of_speech(words[k])):
                    k += 1
                while k + 1 < n and words[k + 1] not in lx.STOPWORDS and "n" in lex.parts_of_speech(words[k + 1]):
                    k += 1  # the head of "all running Docker containers" is "containers"
                if k < n:
                    all_of.update(noun_keys(tokens[k], lex))
            question_modals = modals if in_question else context_modals
            if w in _MODAL_WORDS:
                # "can you…" is a request; "how can I…", "what should we…" ask how, whatever the modal (dropped
                # below in wh-questions); a modal with any other subject ("what a landlord may include") counts.
                # "should you…", "must you…" ask advice or duty of anyone ("you" is generic), not a favour.
                if nxt != "you" or w in ("should", "must", "may", "might", "ought"):
                    if not in_question:
                        context_modals.add(lx.MODALS[w])
                    elif nxt in lx.PRONOUNS_I or prev in lx.WH_WORDS or (
                            prev in lx.PRONOUNS_I and i >= 2 and words[i - 2] in lx.WH_WORDS):
                        soft_modals.add(lx.MODALS[w])
                    else:
                        modals.add(lx.MODALS[w])
            elif w in ("have", "has", "need", "needs", "got") and nxt == "to":
                # "how hot does it have to be": a wh-question's "have to" asks nothing more; "I need to thaw
                # chicken": the asker's goal, said before the question.
                (soft_modals if in_question else context_modals).add("must")
            elif w in _MODAL_ADJ_BEFORE_TO and nxt in ("to", "for", "in", "on", "at", "by", "when", "if", ".", "?", ""):
                question_modals.add(lx.MODALS.get(w, "must"))  # "allowed"/"required"/"possible": never a way of asking
            if w in lx.TIME_WORDS and not _time_word_is_other(w, prev, nxt):
                times.add(lx.TIME_WORDS[w])
            if w in lx.TENSE and a.tense is None:
                a.tense = lx.TENSE[w]
            if w == "than":
                a.than += 1
            elif (w == "as" and i + 2 < n and "as" in words[i + 2:i + 5] and not _PUNCT & set(words[i + 1:i + 4])) or (
                    w == "same" and "as" in words[i + 1:i + 4]):
                a.as_as = True  # "as much X as", "the same amount as"
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
            as_a = prev in ("a", "an") and i >= 2 and words[i - 2] in ("as", "in", "into", "to")  # "as a CSV"
            if tag is not None and tag.startswith("fmt:") and w in lx.FILE_FORMATS and not (
                    prev in ("as", "in", "into", "to", "output", "return", "returns") or as_a
                    or nxt in ("format", "output", "table")):
                tag = None  # "read a JSON file": what is read, not the shape of the answer
            if tag is not None and _is_shape(w, prev, nxt):
                shape.add(tag)
            if (w in ("sentences", "lines") and prev in ("few", "couple")) or (
                    w in ("overview", "rundown", "recap") and prev in ("an", "a", "quick", "brief", "short")):
                shape.add("len:short")  # "in a few sentences" = "briefly", "give me an overview of X" = "summarize X"
            elif w in ("sentence", "sentences", "paragraph", "paragraphs", "line", "lines", "words") and (
                    prev in ("one", "a", "single", "few", "couple", "two", "three")
                    or (a.sequence[-1:] and a.sequence[-1][:1] == "#")):
                shape.add("len:units")
            if w == "step" and nxt == "by" and i + 2 < n and words[i + 2] == "step":
                shape.add("fmt:steps")
                i += 3
                continue
            if w in lx.LANGUAGES and prev in ("in", "into", "to"):
                shape.add("lang:" + w)
        if w in lx.FUNCTION_POLAR:
            _attach(a, i)
        elif tok.stem in lx.ANTONYM_STEMS or w in lx.ANTONYMS:
            a.polar.add(tok.stem)
        if w in _MARKERS:
            a.sequence.append(f"d:{w}")
        if w in _ROLE_MARKERS and not (w == "to" and _infinitive(tokens, i, lex)):
            pending = (w, i)
        task = _TASK_OF.get(w, _UNSEEN)
        if task is _UNSEEN:
            task = _task_of(tok, lex)
        if task is not None and _imperative(tokens, i):
            if task in ("summarize", "outline") and not _given_text(words, i):
                task = lx.DEFAULT_TASK  # "Summarize the theory of evolution" asks to explain it, briefly
                shape.add("len:short")
            tasks.add(task)
            i += 1
            continue
        if not tok.allcaps and not (tok.capital and w in _NAME_WORDS) and (
                w in lx.STOPWORDS or tok.stem in lx.STOP_STEMS or w in _MARKERS
                or w in lx.FUNCTION_POLAR or w in lx.QUANTIFIERS or w in lx.MODALS or w in lx.SHAPE_WORDS
                or op is not None):
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
    if a.qtype not in ("how", "what"):
        # "Can I…?" ≠ "Should I…?", "When must I file?" ≠ "When can I file?"; but "how can I" = "how do I",
        # "what should I do" = "what can I do".
        modals |= soft_modals
    a.times = frozenset(times)
    a.context_modals, a.context_quantifiers = frozenset(context_modals), frozenset(context_quantifiers)
    a.singular, a.all_of = frozenset(singular), frozenset(all_of)
    a.plural = frozenset((t.stem, q_start <= t.pos < q_end) for t in tokens
                         if t.text != t.stem and t.text.endswith("s") and not t.capital and t.text not in lx.EN_FUNCTION
                         and t.text not in lex.pos
                         and ("n" in lex.parts_of_speech(t.text)
                              or (not lex.known(t.text) and not t.text.endswith("ss") and t.text not in _CANONICAL)))
    a.tasks, a.arithmetic, a.quantifiers = frozenset(tasks), frozenset(arithmetic), frozenset(quantifiers)
    a.modals, a.shape = frozenset(modals), frozenset(shape)


#: Every word a branch of :func:`_classify` before the polar/marker/task/content steps tests for by name (the
#: closed classes and the literals there); any other word, unless it starts with a digit, passes none of them.
_SPECIAL = frozenset().union(
    lx.ORDINALS, lx.RECENT_N, lx.NUM_WORDS, lx.UNITS, lx.NEGATIONS, lx.QUANTIFIERS, _MODAL_WORDS,
    _MODAL_ADJ_BEFORE_TO, lx.TIME_WORDS, lx.TENSE, lx.ARITHMETIC, lx.SHAPE_WORDS, lx.LANGUAGES,
    ["one", "single", "next", "most", "disable", "disabled", "deactivate", "deactivated", "enable", "enabled",
     "activate", "activated", "turn", "have", "has", "need", "needs", "got", "than", "as", "less", "fewer", "least",
     "short", "sentences", "lines", "overview", "rundown", "recap", "sentence", "paragraph", "paragraphs", "line",
     "words", "step", "a", "an", "same"])


_INFINITIVE_AFTER = frozenset(["way", "ways", "how", "want", "wants", "need", "needs", "able", "trying", "try", "going",
                               "have", "has", "had", "used", "best", "easiest", "fastest", "tips", "steps", "time",
                               "order", "like", "love", "started", "start", "learn", "planning", "plan", "hoping",
                               "decided", "safe", "possible", "ok", "okay", "allowed", "required", "supposed", "what"])


def _infinitive(tokens: list[Token], i: int, lex: wordnet.Lexicon) -> bool:
    """ "to" before a verb ("the way to load a file"): no direction, unlike "read it into a dict"."""
    prev = tokens[i - 1].text if i else ""
    nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
    return prev in _INFINITIVE_AFTER or lex.parts_of_speech(nxt) == "v"


def _time_word_is_other(w: str, prev: str, nxt: str) -> bool:
    """"last" as a verb ("so they last") or an order ("last step"); "next"/"coming" without a time ("keep coming")."""
    if w == "last" and (nxt in ("name", "names", "step", "one", "longer", "long", "for", "")
                        or prev in ("they", "it", "will", "to", "can", "should") or nxt in lx.STOPWORDS):
        return True  # a verb ("how long do leftovers last in the fridge") or an order
    return w in ("coming", "upcoming", "next") and nxt not in lx.TIME_NOUNS and prev not in ("the", "this")


def _attach(a: Analysis, i: int) -> None:
    """Record a polar particle with the word before it ("log in") and a preposition with the one after it
    ("before donating"), 3 tokens at most away."""
    w = a.tokens[i].text
    before = range(i - 1, max(-1, i - 4), -1)
    after = range(i + 1, min(len(a.tokens), i + 4))
    for rng in ((before,) if w in lx.PARTICLE_POLAR else (after, before)):
        for j in rng:
            t = a.tokens[j]
            if (t.text.isalpha() and t.text not in lx.STOPWORDS and t.text not in lx.FUNCTION_POLAR
                    and t.text not in lx.NUM_WORDS):  # "for a 4-day week" / "against a four-day week": the week
                a.attached[(w, lx.SYNONYM.get(t.stem, t.stem))] += 1
                break


#: Verbs whose "all" is implied ("list all running containers" = "list the running containers").
_RETRIEVE = frozenset(["list", "show", "find", "get", "print", "display", "see", "view", "delete", "remove", "select",
                       "return", "fetch", "kill", "stop", "count", "search", "grep", "copy", "move", "download",
                       "locate", "explain", "describe", "name", "cover", "walk", "go"])


def _retrieves(words: list[str], i: int) -> bool:
    """``all`` right after a retrieval verb (or "… all the/of the"): the set asked for, not a claim about it."""
    j = i - 1
    while j >= 0 and words[j] in ("me", "us", "of", "the", "through", "over"):
        j -= 1
    return j >= 0 and words[j] in _RETRIEVE


def _is_shape(w: str, prev: str, nxt: str) -> bool:
    """Shape words that are something else in context: "short for", "how long", "for example", "source code"."""
    if w == "short" and nxt == "for":
        return False
    if w == "long" and (prev in ("how", "so", "too", "as") or nxt in ("time", "ago", "run")):
        return False
    if w in ("example", "examples") and prev == "for":
        return False
    if w in ("code", "snippet", "snippets"):
        return prev in ("with", "include", "including", "show", "some", "in") or nxt in (
            "example", "examples", "sample", "samples", "snippet")
    if w in ("child", "children", "kid", "kids", "expert", "experts", "technical", "beginner", "beginners"):
        return prev in ("a", "for", "to", "like") or nxt in ("terms", "friendly")
    if w in ("table", "detail", "details"):
        return prev in ("a", "in", "as", "more") or prev in lx.FILE_FORMATS  # "a markdown table"
    return True
