"""Surface rewrites applied before a text is read: one spelling for what English writes several ways.

Each rule is general English (a contraction, a casual abbreviation, a unit symbol, a rate, a
number written in words), never a phrase picked from one benchmark pair. Both texts of a pair go
through the same rules, so a rewrite can only make two spellings of one meaning compare equal::

    "w/o", "chemical-free"           → "without …"           (polarity of the proposition, not the spelling)
    "°F", "$1,400/month", "daily"    → "fahrenheit", "1400 per month", "per day"
    "an hour and a half", "2 and a half" → "1.5 hours", "2.5"
    "dont", "can't"                  → "do not", "can not"
    "how 2 tie a tie"                → "how to tie a tie"

Rules run in order, each one compiled regular expression over the whole text: linear in its length.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llmcache.proxy.semantic import lexicon as lx

__all__ = ["normalise"]

_Repl = str | Callable[[re.Match[str]], str]


def _half(m: re.Match[str]) -> str:
    return str(lx.NUM_WORDS[m.group(1).lower()] + 0.5)


def _ly(m: re.Match[str]) -> str:
    unit = m.group(1).lower()
    return "per " + ("day" if unit == "dai" else unit)


_CONTRACTION = r"(?i)\b(?:" + "|".join(lx.CONTRACTIONS_BARE) + r")\b"
_NUMBER_OR_TIME = r"\d+(?:\.\d+)?k?|once|twice|times|hours?|hrs?|minutes?|mins?|days?"

#: ``(pattern, replacement)`` in the order applied; the comment above each says why.
_RULES: list[tuple[str, _Repl]] = [
    (r"(?i)\btl;?dr\b", " tldr "),
    (r"(?i)\b(\w+)'(s|re|ve|d|ll|m)\b", lambda m: lx.CONTRACTIONS.get(m.group(0).lower(), m.group(0))),
    (r"(?i)\b(can't|won't|shan't|ain't|cannot)\b", lambda m: lx.CONTRACTIONS[m.group(0).lower()]),
    (r"(?i)n't\b", " not"),
    (_CONTRACTION, lambda m: lx.CONTRACTIONS_BARE[m.group(0).lower()]),  # "dont" → "do not"
    (r"(?i)\bturn(ed|ing|s)?\s+(on|off)\b", lambda m: f"turn {m.group(2)}"),
    (r"(?i)\bhow come\b", "why"),
    # Casual abbreviations written with a slash or standing for two words.
    (r"(?i)\bw/o\b", "without"),
    (r"(?i)\bw/(?=\s)", "with"),
    (r"(?i)\bb/c\b", "because"),
    (r"(?i)\brn\b", "right now"),
    (r"(?i)\bsci-?fi\b", "science fiction"),
    # Casual "2" for "to" between words ("how 2 tie a tie", "need 2 know").
    (r"(?i)\b(how|want|need|going|have|got|able|used|ways?|time|trying|easiest|best) 2 (?=[a-z])", r"\1 to "),
    (r"(?i)\bfirst of all\b", "first"),
    (r"(?i)\ball of a sudden\b", "suddenly"),
    (r"(?i)\bno longer\b", "not anymore"),
    # "must-read", "must-have": praise, no obligation.
    (r"(?i)\bmust-(?:read|have|see|try|visit|do|watch|know|listen)s?\b", "best"),
    (r"(\w)-(?:type|style|based)\b", r"\1"),  # "a LoadBalancer-type Service"
    # Asking for another wording says nothing about what is asked: "Reword X in a different way".
    (r"(?i)\b(?:in (?:a )?(?:different|another|other) (?:way|words|manner)|differently)\b", " "),
    # Requests to write, rewrite and proofread said in other words.
    (r"(?i)\bcome up with\b|\bbrainstorm\b|\bthink up\b", "write"),
    (r"(?i)\bsum(s|med|ming)? up\b", "summarize"),
    (r"(?i)\bmake\s+('[^']{1,200}'|\"[^\"]{1,200}\"|it|this|that|them|these|my \w+)\s+sound\b",
     r"rewrite \1 to sound"),
    (r"(?i)\bcheck\b(?=[^.?!]{0,120}\bfor (?:spelling|grammar|grammatical|typos?|errors|mistakes)\b)", "proofread"),
    # "chemical-free" = "without chemicals": the polarity is the proposition's, not the spelling's.
    (r"(?i)\b([a-z]{3,})-free\b", r"without \1"),
    # Temperature scales and rates written as symbols: "°F", "$1,400/month", "6 hours a day", "daily".
    (r"°\s*F\b|\bdeg(?:rees?)? F\b", " fahrenheit"),
    (r"°\s*C\b|\bdeg(?:rees?)? C\b", " celsius"),
    (r"(?i)\bdegrees? (fahrenheit|celsius)\b", r"\1"),
    (r"(?i)(\d)\s*/\s*(month|mo|year|yr|week|wk|day|hour|hr)\b", r"\1 per \2"),
    (rf"(?i)\b({_NUMBER_OR_TIME})(\s+)(?:a|an|each|every)\s+(day|week|month|year|hour|night)\b", r"\1\2per \3"),
    (r"(?i)\b(?:every|each) (day|week|month|year|hour|night|morning|evening)\b", r"per \1"),
    (r"(?i)\b(dai|week|month|year|hour)ly\b", _ly),
    (r"(?i)\bannually\b", "per year"),
    # "How many minutes does it take…" asks a duration, like "How long…" ("how many minutes in an hour" does not).
    (r"(?i)\bhow many (?:seconds|secs|minutes|mins|hours|hrs|days|weeks|months|years)"
     r"(?= (?:to|does|do|did|is|are|should|will|can|until|before|after|for|would|could)\b)", "how long"),
    # "two and a half", "an hour and a half": the half belongs to the number.
    (r"(?i)\b(\d+) and a half\b", r"\1.5"),
    (r"(?i)\ban? (hour|year|day|week|month|minute|mile|cup|pound|kilo|liter|litre)s? and a half\b", r"1.5 \1s"),
    (r"(?i)\b(one|two|three|four|five|six|seven|eight|nine|ten) and a half\b", _half),
    # "make cold brew at home": where the asker is, not what is asked.
    (r"(?i)\bat home\b", ""),
    (r"(?i)\b(?:compared|comparing) (?:to|with)\b", "than"),  # "Compared to X, is Y…" = "Is Y… than X"
    (r"(?i)\bset(?:ting)? up\b", "setup"),
    (r"(?i)\b(boiling|freezing|melting) point\b", r"\1 temperature"),
    # "How many people live in X?" asks for X's population.
    (r"(?i)\bhow many (?:people|persons|inhabitants|residents|humans) (?:live|are living|reside|are there) in\b",
     "what is the population of"),
    (r"(\d),(\d{3})\b", r"\1\2"),
    (r"(\d)-([a-zA-Z])", r"\1 \2"),  # "7-day" → "7 day"
    (r"\b(\d+)(?!(?:st|nd|rd|th)\b)([a-zA-Z%°$€£¥])", r"\1 \2"),  # "5km" → "5 km" (not "2nd", "K2")
    (r"([$€£¥])\s*(\d)", r"\1 \2"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def normalise(text: str) -> str:
    """``text`` with every rule applied in order (typographic quotes made plain first)."""
    t = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    for pattern, repl in _COMPILED:
        t = pattern.sub(repl, t)
    return t
