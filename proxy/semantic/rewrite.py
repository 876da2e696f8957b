"""Surface rewrites applied before a text is read: one spelling for what English writes several ways.

Each rule is general English (a contraction, a casual abbreviation, a unit symbol, a rate, a
number written in words), never a phrase picked from one benchmark pair. Both texts of a pair go
through the same rules, so a rewrite can only make two spellings of one meaning compare equal::

    "w/o", "chemical-free", "eggless" → "without …"          (polarity of the proposition, not the spelling)
    "°F", "$1,400/month", "daily"    → "fahrenheit", "1400 per month", "per day"
    "an hour and a half", "2 and a half" → "1.5 hours", "2.5"
    "dont", "can't"                  → "do not", "can not"
    "how 2 tie a tie"                → "how to tie a tie"

Rules run in order, each one compiled regular expression over the whole text: linear in its length.
A rule is skipped when its needles (literals it cannot match without) are absent, or when the
case-sensitive twin of a ``(?i)`` rule finds nothing in the lower-cased text (:func:`_lowered`); both
only ever skip a rule that could not have matched, so the output is that of every rule applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llmcache.proxy.semantic import lexicon as lx

__all__ = ["normalise"]

_Repl = str | Callable[[re.Match[str]], str]


def _half(m: re.Match[str]) -> str:
    return str(lx.NUM_WORDS[m.group(1).lower()] + 0.5)


def _dropped_g(m: re.Match[str]) -> str:
    """"eatin" → "eating" when only the latter is an English word."""
    from llmcache.proxy.semantic import wordnet  # the table loads on first use, not at import

    word = m.group(0)
    lex = wordnet.lexicon()
    return word + "g" if not lex.known(word.lower()) and lex.known(word.lower() + "g") else word


def _coined_less(m: re.Match[str]) -> str:
    """"eggless" → "without egg" where only the stem is an English word ("useless" stays)."""
    from llmcache.proxy.semantic import wordnet  # the table loads on first use, not at import

    word = m.group(0)
    lex = wordnet.lexicon()
    lower = word.lower()
    return f"without {word[:-4]}" if not lex.known(lower) and lex.known(lower[:-4]) else word


def _ly(m: re.Match[str]) -> str:
    unit = m.group(1).lower()
    return "per " + ("day" if unit == "dai" else unit)


#: Needle meaning "the text holds a digit".
_DIGIT: tuple[str, ...] = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
_CONTRACTION = r"(?i)\b(?:" + "|".join(lx.CONTRACTIONS_BARE) + r")\b"
_NUMBER_OR_TIME = (r"(?:\d+(?:\.\d+)?k?|one|two|three|four|five|six|seven|eight|nine|ten|twelve|twenty|once|twice)"
                   r"(?:\s+(?!(?:for|in|on|at|to|of|the|with|by|enough|within|about|over|under|than)\b)[a-z]+){0,2}?")
# ↑ "3 coffees a day", "twice a week", "six hours a day" (not "$2,500 enough for a week")

#: ``(pattern, replacement)`` in the order applied; the comment above each says why.
_RULES: list[tuple[str, _Repl, tuple[str, ...] | None]] = [
    (r"(?i)\btl;?dr\b", " tldr ", ('tl',)),
    (r"(?i)\b(\w+)'(s|re|ve|d|ll|m)\b", lambda m: lx.CONTRACTIONS.get(m.group(0).lower(), m.group(0)), ("'",)),
    (r"(?i)\b(can't|won't|shan't|ain't|cannot)\b", lambda m: lx.CONTRACTIONS.get(m.group(0).lower(), m.group(0)),
     ("'", 'cannot')),
    (r"(?i)n't\b", " not", ("n't",)),
    # .get: the (?i) match also takes look-alikes whose lower() is no key ("İSNT" → "i̇snt"): left as written
    (_CONTRACTION, lambda m: lx.CONTRACTIONS_BARE.get(m.group(0).lower(), m.group(0)), ("nt",)),  # "dont" → "do not"
    (r"(?i)\bturn(ed|ing|s)?\s+(on|off)\b", lambda m: f"turn {m.group(2)}", ('turn',)),
    (r"(?i)\bhow come\b", "why", ('how come',)),
    (r"(?i)\bthank you\b", "thanks", ('thank you',)),  # a fixed phrase: its "you" is nobody's role
    (r"(?i)([a-z])\1{2,}", r"\1", None),  # "sooo", "pleeease": a letter held for emphasis
    (r"(?i)\b([a-z]{3,})in\b(?=\s+[a-z])", _dropped_g, ('in ',)),  # "eatin grass" = "eating grass"
    (r"(?i)\bwi[- ]fi\b", "wifi", ('wi',)),
    # "World's biggest desert" = "the biggest desert"
    (r"(?i)\b(?:the )?world's\b(?=\s+\w+est\b)", "the",
     ("world's",)),
    (r"(?i)\bwalk (?:me|us) through\b", "explain", ('walk',)),
    (r"(?i)\bon a (regular|daily|weekly|monthly) basis\b", lambda m: {"regular": "regularly"}.get(
        m.group(1).lower(), "per " + m.group(1).lower()[:-2].replace("dai", "day")), ('basis',)),
    (r"(?i)\bin (?:plain|simple|layman'?s|non-?technical|easy) (?:terms|language|english|words)\b|\bsimply put\b",
     "for a beginner", ('terms', 'language', 'english', 'words', 'simply')),
    # "over 100 MB" = "larger than 100MB": a bound, however it is worded.
    (r"(?i)\b(?:larger|bigger|greater|more|higher|longer|heavier) than (?=\$?\d)|\babove (?=\$?\d)", "over ",
     ('than', 'above')),
    (r"(?i)\b(?:smaller|less|fewer|lower|shorter|lighter) than (?=\$?\d)|\bbelow (?=\$?\d)", "under ",
     ('than', 'below')),
    # Casual abbreviations written with a slash or standing for two words.
    (r"(?i)\bw/o\b", "without", ('w/',)),
    (r"(?i)\bw/(?=\s)", "with", ('w/',)),
    (r"(?i)\bb/c\b", "because", ('b/c',)),
    (r"(?i)\brn\b", "right now", ('rn',)),
    (r"(?i)\bsci-?fi\b", "science fiction", ('sci',)),
    # Casual "2" and "4" for "to" and "for" between words ("how 2 tie a tie", "bad 4 u", "a name 4 my dog").
    (r"(?i)\b(how|want|need|going|have|got|able|used|ways?|time|trying|easiest|best|long) 2 (?=[a-z])", r"\1 to ",
     (' 2 ',)),
    (r"(?i)(?<=[a-z]) 2 (?=(?:the|a|an|my|ur|your|his|her|their|our|me|u|you|him|them|us)\b)", " to ", (' 2 ',)),
    (r"(?i)(?<=[a-z]) 4 (?=(?:the|a|an|my|ur|your|his|her|their|our|me|u|you|him|them|us|this|that|it|[a-z]+ing)\b)",
     " for ", (' 4 ',)),
    (r"(?i)\b2 (much|many)\b", r"too \1", ('2 m',)),  # "is 3 coffees 2 much" = "too much"
    (r"\bA/C\b", "air conditioning", ('a/c',)),
    # "in the US", "a US visa": the country, never the pronoun.
    (r"(?i)\b(the|a|an) u\.?s\.?a?\.?(?![\w.])", r"\1 usa", ("the u", "a u", "an u")),
    # A superlative's own domain: "the tallest mountain on Earth" = "the tallest mountain".
    (r"(?i)\b(?:on (?:the )?(?:earth|planet|globe)|in the (?:whole )?world)\b", "",
     ('earth', 'planet', 'globe', 'world')),
    # "Is there a way to X?" asks how to X; "X or not?" asks whether X.
    # (a word before the tool stays: "Is there a free tool to X" is not "Is there a paid tool to X").
    (r"(?i)\bis there (?:any|a|an|some) ([a-z]+ )?(?:way|method|tool|command|function|option|setting) (?:to|of|that)\b",
     r"\1how do i", ('is there',)),
    # "Big-O of binary search" = "the time complexity of binary search" (not its space complexity).
    (r"(?i)\bbig[- ]?o\b(?: (?:runtime|running time|time complexity|complexity|notation))?(?! space)",
     "time complexity", ('big',)),
    (r"(?i)\b(?:a )?quarter (?:of an )?hour\b", "15 minutes", ('quarter',)),
    (r"(?i)\b(?:world war (?:ii|2|two)|ww ?(?:ii|2))\b", "the second world war", ('world war', 'ww')),
    (r"(?i)\b(?:world war (?:i|1|one)|ww ?(?:i|1))\b", "the first world war", ('world war', 'ww')),
    # "the opening paragraph" = "the first paragraph".
    (r"(?i)\bopening (line|sentence|paragraph|scene|chapter|verse|lines|sentences)\b", r"first \1", ('opening',)),
    (r"(?i)\s+or (?:not|nah|no)(?=\s*(?:anymore)?\s*[?.!]*\s*$)", "", ('or n',)),
    # "won't stop running" = "keeps running".
    (r"(?i)\b(?:will|does|do|did|can) ?not stop\b", "keeps", ('not stop',)),
    (r"(?i)\b(?:i am|i'm|im) (?:completely |totally |pretty |fairly )?new to\b", "i am a beginner at", ('new to',)),
    (r"(?i)\bsomeone (?:who is )?just starting out\b", "a beginner", ('starting out',)),
    (r"(?i)\btell (me|us) (?:a|an|one)\b(?=[^.?!]{0,30}\b(?:story|stories|joke|jokes|poem|riddle|limerick|haiku)\b)",
     "write a", ('tell',)),
    (r"(?i)\bhalf an? (hour|day|year|minute|mile)\b", r"0.5 \1", ('half',)),
    (r"(?i)\bfirst of all\b", "first", ('first of all',)),
    (r"(?i)\ball of a sudden\b", "suddenly", ('sudden',)),
    (r"(?i)\bno longer\b", "not anymore", ('no longer',)),
    # "must-read", "must-have": praise, no obligation.
    (r"(?i)\bmust-(?:read|have|see|try|visit|do|watch|know|listen)s?\b", "best", ('must-',)),
    (r"(\w)-(?:type|style|based)\b", r"\1", ('-type', '-style', '-based')),  # "a LoadBalancer-type Service"
    # Asking for another wording says nothing about what is asked: "Reword X in a different way".
    (r"(?i)\b(?:in (?:a )?(?:different|another|other) (?:way|words|manner)|differently)\b", " ",
     ('differen', 'another way', 'other words', 'other way', 'other manner')),
    # Requests to write, rewrite and proofread said in other words.
    (r"(?i)\bcome up with\b|\bbrainstorm\b|\bthink up\b", "write", ('come up', 'brainstorm', 'think up')),
    (r"(?i)\bsum(s|med|ming)? up\b", "summarize", ('sum',)),
    (r"(?i)\bmake\s+('[^']{1,200}'|\"[^\"]{1,200}\"|it|this|that|them|these|my \w+)\s+sound\b",
     r"rewrite \1 to sound", ('sound',)),
    (r"(?i)\bcheck\b(?=[^.?!]{0,120}\bfor (?:spelling|grammar|grammatical|typos?|errors|mistakes)\b)", "proofread",
     ('check',)),
    # A topic named in other words: "a haiku whose subject is X", "an essay on the topic of X" = "… about X".
    (r"(?i)\b(?:whose|with the|with a) (?:main )?(?:subject|topic|theme) (?:is|being)\b"
     r"|\bon the (?:subject|topic|theme) of\b", "about", ('subject', 'topic', 'theme')),
    # "reasons supporting X", "arguments in favour of X" = "reasons for X" ("against" stays itself).
    (r"(?i)\b(reasons?|arguments?|points?|case) (?:supporting|in favou?r of)\b", r"\1 for", ('support', 'favo')),
    (r"(?i)\bnaturally occurring\b", "natural", ('occurring',)),
    # "How long until/before X" asks how long X takes.
    (r"(?i)\bhow long (?:until|till|til|before)\b", "how long", ('how long',)),
    # One country, three spellings: "the United States (of America)" = "the US" = "the USA".
    (r"(?i)\bunited states(?: of america)?\b", "USA", ('united',)),
    # "chemical-free" = "without chemicals": the polarity is the proposition's, not the spelling's.
    (r"(?i)\b([a-z]{3,})-free\b", r"without \1", ('-free',)),
    # A coined "eggless" says "without eggs" too; an established adjective ("useless", "wireless") is WordNet's own.
    (r"(?i)\b[a-z]{3,}less\b", _coined_less, ('less',)),
    # Temperature scales and rates written as symbols: "°F", "$1,400/month", "6 hours a day", "daily".
    (r"°\s*F\b|\bdeg(?:rees?)? F\b", " fahrenheit", ('°', 'deg')),
    (r"°\s*C\b|\bdeg(?:rees?)? C\b", " celsius", ('°', 'deg')),
    (r"(?i)\bdegrees? (fahrenheit|celsius)\b", r"\1", ('degree',)),
    (r"(?i)(\d)\s*/\s*(month|mo|year|yr|week|wk|day|hour|hr)\b", r"\1 per \2", ('/',)),
    (rf"(?i)\b({_NUMBER_OR_TIME})(\s+)(?:a|an|each|every|per)\s+(day|week|month|year|hour|night)\b", r"\1\2per \3",
     ('a day', 'a week', 'a month', 'a year', 'an hour', 'a night', 'each', 'every')),
    (r"(?i)\b(?:every|each) (day|week|month|year|hour|night|morning|evening)\b", r"per \1", ('every', 'each')),
    (r"(?i)\b(dai|week|month|year|hour)ly\b", _ly, ('ly',)),
    (r"(?i)\bannually\b", "per year", ('annually',)),
    # "How many minutes does it take…" asks a duration, like "How long…" ("how many minutes in an hour" does not).
    (r"(?i)\bhow many (?:seconds|secs|minutes|mins|hours|hrs|days|weeks|months|years)"
     r"(?= (?:to|does|do|did|should|will|can|until|before|after|for|would|could)\b| (?:is|are) (?!in\b|there\b))",
     "how long", ("how many",)),
    # "two and a half", "an hour and a half": the half belongs to the number.
    (r"(?i)\b(\d+) and a half\b", r"\1.5", ('and a half',)),
    (r"(?i)\ban? (hour|year|day|week|month|minute|mile|cup|pound|kilo|liter|litre)s? and a half\b", r"1.5 \1s",
     ('and a half',)),
    (r"(?i)\b(one|two|three|four|five|six|seven|eight|nine|ten) and a half\b", _half, ('and a half',)),
    # "make cold brew at home": where the asker is, not what is asked.
    (r"(?i)\bat home\b", "", ('at home',)),
    (r"(?i)\b(?:compared|comparing) (?:to|with)\b", "than", ('compar',)),  # "Compared to X, is Y…" = "Is Y… than X"
    (r"(?i)\bset(?:ting)? up\b", "setup", ('set',)),
    (r"(?i)\b(boiling|freezing|melting) point\b", r"\1 temperature", ('point',)),
    # "How many people live in X?" asks for X's population.
    (r"(?i)\bhow many (?:people|persons|inhabitants|residents|humans) (?:live|are living|reside|are there) in\b",
     "what is the population of", ('how many',)),
    (r"(\d),(\d{3})\b", r"\1\2", _DIGIT),
    (r"(\d)-([a-zA-Z])", r"\1 \2", _DIGIT),  # "7-day" → "7 day"
    (r"\b(\d+)(?!(?:st|nd|rd|th)\b)([a-zA-Z%°$€£¥])", r"\1 \2", _DIGIT),  # "5km" → "5 km" (not "2nd", "K2")
    # "$15,000" = "15000 dollars": the number first, so its unit follows it as in words.
    (r"([$€£¥])\s*(\d+(?:\.\d+)?(?:\s*(?:k|m|bn|million|billion|thousand)\b)?)", r"\2 \1", ('$', '€', '£', '¥')),
]


#: The only characters beyond ASCII that a ``(?i)`` pattern's ASCII letters match ("İ", "ı", "ſ", the Kelvin sign;
#: see the ``re`` docs on IGNORECASE), and the only ones whose ``lower()`` gives an ASCII letter ("İ", Kelvin).
_CASE_TWINS = re.compile("[\u0130\u0131\u017f\u212a]")


def _lowered(pattern: str) -> re.Pattern[str] | None:
    """A case-sensitive twin of a ``(?i)`` pattern written in lower case, for a quick test of lower-cased text.

    In text without :data:`_CASE_TWINS`, a ``(?i)`` pattern whose letters are all ASCII lower case matches where
    its case-sensitive twin matches the lower-cased text (case mapping keeps letters letters and touches nothing
    else), and a case-insensitive scan costs several times more. ``None`` when the pattern is no such pattern
    (another flag, or an upper-case letter outside an escape).
    """
    if not pattern.startswith("(?i)"):
        return None
    body = pattern[4:]
    if "(?" + "i" in body or re.search(r"[A-Z]", re.sub(r"\\.", "", body)):
        return None
    return re.compile(body)


#: ``(pattern, replacement, needles, lowered)``: one needle as a plain string (tested with one ``in``), several as
#: a tuple; ``lowered``: :func:`_lowered` of the pattern.
_COMPILED: list[tuple[re.Pattern[str], _Repl, str | tuple[str, ...] | None, re.Pattern[str] | None]] = [
    (re.compile(p), r, needles[0] if needles is not None and needles is not _DIGIT and len(needles) == 1 else needles,
     _lowered(p))
    for p, r, needles in _RULES]
_ASCII_DIGIT = re.compile(r"[0-9]")


def _has_digit(t: str) -> bool:
    """Any character ``str.isdigit`` calls a digit (in ASCII text: 0–9, found by one regex scan)."""
    return _ASCII_DIGIT.search(t) is not None if t.isascii() else any(map(str.isdigit, t))


def normalise(text: str) -> str:
    """``text`` with every rule applied in order (typographic quotes made plain first).

    A rule runs only when one of its needles (lower-case literals it cannot match without) occurs in the
    text, so most rules cost one substring test.
    """
    t = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    low = t.lower()
    digits = _has_digit(t)
    twins_ok = t.isascii() or _CASE_TWINS.search(t) is None
    for pattern, repl, needles, lowered in _COMPILED:
        if needles is _DIGIT:
            if not digits:
                continue
        elif needles is None:
            pass
        elif type(needles) is str:
            if needles not in low:
                continue
        elif not any(n in low for n in needles):
            continue
        if twins_ok and lowered is not None and lowered.search(low) is None:
            continue  # no match (the case-sensitive twin on the lower-cased text says so, faster)
        new = pattern.sub(repl, t)
        if new != t:
            t, low = new, new.lower()
            digits = _has_digit(t)
            twins_ok = t.isascii() or _CASE_TWINS.search(t) is None
    return t
