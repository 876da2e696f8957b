"""Verification of semantic-cache candidates: is the stored question really the same question?

Embedding similarity says two texts are *about* the same thing; it does not
notice that "turn on dark mode" and "turn off dark mode" want opposite
answers. After KNN, every candidate above the threshold must also pass these
checks against the stored text (cheap, deterministic, explainable)::

    query ─┐  tokens → stems → numbers/units → task classes → content words
    stored ┘     │
                 ├─ negation   "not/never/without/n't…" counts differ            → reject
                 ├─ antonym    a polar word on one side, its opposite on the other → reject
                 ├─ number     the multisets of numeric values differ             → reject
                 ├─ unit       the multisets of units/currencies differ           → reject
                 ├─ task       the requested operations differ (summarise/translate…) → reject
                 ├─ direction  shared words swap sides of a directional marker ("USD to EUR" /
                 │             "EUR to USD"), of a shared word between them with the same
                 │             markers ("A beat B" / "B beat A"), or a wh-question flips
                 │             subject/object ("who beat X" / "who did X beat")        → reject
                 └─ content    a content word of one side is not matched on the other
                               by stem, synonym group, acronym, compound or (for
                               non-entity words) a word embedding ≥ word_similarity → reject
                                   (changed entity, changed topic, added constraint)

The rules are general linguistic checks (closed word classes, morphology,
alignment), not per-pair patterns; ``benchmarks/semantic_eval.py`` measures
them per category on a labelled set with a held-out split. They are tuned for
precision: a rejected paraphrase costs one upstream call, a false hit serves a
wrong answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Verdict", "Verifier", "analyse", "Analysis", "REASONS"]

#: Every reason a verdict can carry (metrics label values).
REASONS = ("ok", "identical", "negation", "antonym", "number", "unit", "task", "direction", "content")

WordEmbed = Callable[[Sequence[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one check: ``ok`` or the first failed check's ``reason`` (one of :data:`REASONS`)."""

    ok: bool
    reason: str
    detail: str = ""
    """Debugging aid for the benchmark; may contain words of the texts, so never log it."""


# --------------------------------------------------------------------------- lexicons

_STOPWORDS = frozenset("""
a an the this that these those there here it its it's i me my mine we us our you your yours he him his she her
they them their is are was were be been being am do does did doing done have has had having will would shall
should can could may might must of at as and or but if then than so such too very just also only even
about which what whats who whom whose where when why how whether while any some each every all both either
one ones thing things something anything someone anybody somebody please pls kindly hi hello hey thanks thank
tell give show let lets help need want wanted like would i'd i'm im i've ive you're youre know
way ways best good great possible simple simply quick quickly easy easily exactly actually really basically
generally typically usually properly correctly go get got sure many much question answer quickly brief briefly
short shortly detail detailed details mean means meaning between among via per using use used s t
role purpose main primary key basic command effectively efficiently take city
""".split())

# Words that carry polarity: kept out of the stop-list so the antonym check sees them.
_ANTONYM_PAIRS = """
on off|up down|in out|inside outside|into out|above below|over under|before after|with without|for against
more less|most least|more fewer|increase decrease|increase reduce|raise lower|rise fall|higher lower|high low
max min|maximum minimum|maximize minimize|largest smallest|biggest smallest|big small|large small|long short
longest shortest|tall short|wide narrow|thick thin|heavy light|fast slow|faster slower|fastest slowest|quick slow
early late|earlier later|first last|start stop|start end|begin end|beginning end|open close|opened closed
enable disable|enabled disabled|activate deactivate|turn_on turn_off|show hide|lock unlock|connect disconnect
mount unmount|install uninstall|add remove|add delete|insert delete|create delete|create destroy|include exclude
import export|upload download|encrypt decrypt|encode decode|compress decompress|zip unzip|push pull|send receive
buy sell|import export|lend borrow|give take|win lose|won lost|winner loser|pass fail|accept reject|allow deny
allow block|allow forbid|legal illegal|valid invalid|true false|right wrong|correct incorrect|positive negative
pros cons|advantage disadvantage|advantages disadvantages|benefit risk|benefits risks|best worst|better worse
good bad|hot cold|warm cool|warm cold|heat cool|wet dry|full empty|rich poor|cheap expensive|cheaper pricier
safe dangerous|safe unsafe|healthy unhealthy|strong weak|hard soft|hard easy|difficult easy|simple complex
light dark|bright dark|black white|day night|north south|east west|left right|top bottom|front back|upper lower
inner outer|internal external|public private|local remote|local global|input output|read write|get set
horizontal vertical|ascending descending|asc desc|increasing decreasing|forward backward|forwards backwards
import export|love hate|like dislike|agree disagree|always never|all none|everything nothing|present absent
male female|men women|man woman|boy girl|husband wife|father mother|son daughter|brother sister|king queen
alive dead|live die|birth death|born died|young old|new old|newer older|newest oldest|modern ancient
past future|yesterday tomorrow|before after|previous next|old new|odd even|major minor|plus minus|add subtract
multiply divide|sum difference|profit loss|gain loss|credit debit|income expense|asset liability|bull bear
bullish bearish|inhale exhale|sunrise sunset|freeze melt|freezing boiling|upstream downstream|uppercase lowercase
upper lower|client server|sender receiver|encrypting decrypting|compile decompile|serialize deserialize|mute unmute
follow unfollow|subscribe unsubscribe|like unlike|pin unpin|archive unarchive|block unblock|approve deny|approve reject
""".replace("\n", "|").split("|")

_ANTONYMS: dict[str, set[str]] = {}
for _pair in _ANTONYM_PAIRS:
    _words = _pair.split()
    if len(_words) == 2:
        _a, _b = _words
        _ANTONYMS.setdefault(_a, set()).add(_b)
        _ANTONYMS.setdefault(_b, set()).add(_a)

# Polar function words: compared by the antonym check only, never as content (their presence varies freely).
_FUNCTION_POLAR = frozenset("on off up down in out into inside outside above below over under before after with "
                            "without for against more less most least fewer".split())

_NEGATIONS = frozenset("not no never none nobody nothing neither nor without cannot nowhere n't except excluding".split())

# Operations a prompt asks for; only the class matters ("summarise" ≡ "tl;dr", "explain" ≡ a plain question).
_TASK_CLASSES: dict[str, str] = {}
for _cls, _words_s in {
    "explain": "explain explanation describe description define definition clarify elaborate overview "
               "understand list enumerate",
    "summarize": "summarize summary summarization tldr recap condense gist abstract synopsis",
    "translate": "translate translation",
    "analyze": "analyze analysis evaluate evaluation assess assessment examine critique interpret breakdown",
    "review": "review feedback proofread grade score rate",
    "write": "write compose draft generate create produce author",
    "rewrite": "rewrite rephrase paraphrase reword shorten simplify expand lengthen edit",
    "compare": "compare comparison contrast versus vs",
    "classify": "classify categorize categorise label tag",
    "extract": "extract pull",
    "fix": "fix debug troubleshoot repair resolve solve",
    "optimize": "optimize optimise improve",
    "test": "test tests unittest",
    "outline": "outline plan",
    "calculate": "calculate compute count",
    "predict": "predict forecast",
    "recommend": "recommend suggest suggestion recommendation",
}.items():
    for _w in _words_s.split():
        _TASK_CLASSES[_w] = _cls
# Plain questions are explanations: removing this class makes "What is X?" ≡ "Explain X".
_DEFAULT_TASK = "explain"

# Groups of interchangeable content words (stems), for paraphrases the embedding alone is unsure about.
_SYNONYM_GROUPS = [
    "car automobile vehicle", "movie film", "kid child children", "buy purchase", "begin start commence", "make create build", "read load", "check see view", "stop quit halt",
    "big large huge", "small little tiny", "fast quick rapid speedy", "doctor physician", "job work occupation",
    "error bug issue problem", "function method", "remove delete erase", "learn study",
    "find locate search", "choose pick select", "use utilize employ", "need require",
    "cost price", "rich wealthy", "happy glad", "sad unhappy", "smart intelligent clever", 
    "house home", "shop store", "phone smartphone mobile", "picture photo image", "laptop notebook",
    "folder directory", "program application app software", "website site webpage", "internet web online",
    "email mail", "password passcode", "sick ill", "reason cause why", "purpose goal aim",
    "benefit advantage", "drawback disadvantage downside", "step instruction", "idea suggestion tip",
    "guide tutorial", "correct right", "begin beginner novice", "talk speak", "say said", "book novel",
    "author writer", "song track", "beautiful pretty", "difficult hard tough", "easy simple",
    "mistake error", "fix repair", "check verify", "copy duplicate", "convert change transform turn",
    "recipe instructions", "cook prepare", "meal dish", "exercise workout", "ache pain hurt",
    "physician doctor", "medicine medication drug", "weight mass", "speed velocity", "assist help",
    "attempt try", "obtain get acquire", "enough sufficient", "often frequently", "maybe perhaps",
    "whole entire", "entire whole", "car auto", "ocean sea", "street road", "couch sofa", "trash garbage rubbish",
    "vacation holiday", "film cinema", "large big", "happen occur", "work function operate", "run execute",
    "setup configure configuration config setting", "install setup", "join merge combine concatenate",
    "split divide separate", "sort order", "reverse invert flip", "string text", "number integer int",
    "dictionary dict map hashmap", "array list", "variable var", "repository repo", "database db",
    "documentation docs", "javascript js", "typescript ts", "python py", "kubernetes k8s",  "photograph photo", "television tv", "refrigerator fridge", "examples example instance",
]
_SYNONYM: dict[str, str] = {}

_GAZETTEER = frozenset("""
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december spring summer autumn fall winter red orange yellow green blue purple
violet pink brown black white gray grey mercury venus earth mars jupiter saturn uranus neptune pluto
python java javascript typescript rust go golang ruby php perl swift kotlin scala haskell c c++ cpp csharp
sql bash powershell html css react vue angular svelte django flask rails spring node nodejs linux windows macos
mac ios android ubuntu debian fedora chrome firefox safari edge excel word powerpoint aws azure gcp docker
kubernetes postgres postgresql mysql sqlite mongodb redis kafka england france germany spain italy china
japan india russia brazil canada mexico usa america australia paris london berlin madrid rome tokyo beijing
moscow english french german spanish italian chinese japanese russian portuguese arabic hindi korean dutch
today tomorrow yesterday tonight morning afternoon evening night weekend weekday
""".split())

# Yes/no questions open with a modal; its force matters ("Can I…?" ≠ "Should I…?"), in how-questions it does not.
_MODAL_CLASS = {"can": "can", "could": "can", "should": "should", "ought": "should", "must": "must",
                "will": "will", "would": "will", "may": "may", "might": "may", "shall": "should"}


def _stem(word: str) -> str:
    """A light, consistent suffix stripper (both texts pass through the same one)."""
    w = word
    if w.endswith("'s"):
        w = w[:-2]
    for british, american in (("isation", "ization"), ("ising", "izing"), ("ised", "ized"), ("ise", "ize"),
                              ("yse", "yze"), ("ysing", "yzing"), ("ysed", "yzed"), ("our", "or")):
        if w.endswith(british) and len(w) > len(british) + 2:
            w = w[: -len(british)] + american
            break
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            elif w.endswith(("at", "iz", "yz", "bl", "ag", "uc", "os", "lv", "rv", "rg", "ak", "tiv", "ur", "it", "ot", "id", "ov", "pl")) and suffix:
                w = w + "e"
            break
    if w.endswith("e") and len(w) > 4 and not w.endswith(("ee", "ie")):
        w = w[:-1]
    return w


for _group in _SYNONYM_GROUPS:
    _members = _group.split()
    for _m in _members:
        _SYNONYM.setdefault(_stem(_m), "syn:" + _stem(_members[0]))

_STOP_STEMS = frozenset(_stem(w) for w in _STOPWORDS)
_TASK_STEMS = {_stem(w): c for w, c in _TASK_CLASSES.items()}
_ANTONYM_STEMS: dict[str, set[str]] = {}
for _w, _opposites in _ANTONYMS.items():
    _ANTONYM_STEMS.setdefault(_stem(_w), set()).update(_stem(o) for o in _opposites)
_NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "anti")

# Numbers written as words.
_NUM_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_NUM_WORDS.update({w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())})
_NUM_WORDS.update({"dozen": 12, "half": 0.5, "quarter": 0.25, "twice": 2, "double": 2, "triple": 3, "hundred": 100,
                   "thousand": 1000, "million": 1e6, "billion": 1e9, "trillion": 1e12, "k": 1000})
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1e6, "billion": 1e9, "trillion": 1e12, "k": 1000,
                "m": 1e6, "bn": 1e9}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}

# Units and currencies → canonical unit; order of appearance matters for direction ("USD to EUR").
_UNITS: dict[str, str] = {}
for _canon, _names in {
    "km": "km kilometer kilometers kilometre kilometres", "mile": "mi mile miles", "m": "meter meters metre metres",
    "cm": "cm centimeter centimeters centimetre centimetres", "mm": "mm millimeter millimeters",
    "ft": "ft foot feet", "inch": "inch inches", "yard": "yd yard yards", "kg": "kg kilogram kilograms kilo kilos",
    "g": "gram grams", "lb": "lb lbs pound pounds", "oz": "oz ounce ounces", "ton": "ton tons tonne tonnes",
    "l": "liter liters litre litres", "ml": "ml milliliter milliliters millilitre", "gallon": "gallon gallons gal",
    "cup": "cup cups", "tbsp": "tbsp tablespoon tablespoons", "tsp": "tsp teaspoon teaspoons",
    "celsius": "celsius °c centigrade", "fahrenheit": "fahrenheit °f", "kelvin": "kelvin",
    "percent": "% percent percentage pct", "usd": "$ usd dollar dollars", "eur": "€ eur euro euros",
    "gbp": "£ gbp sterling", "jpy": "¥ jpy yen", "cny": "cny yuan rmb", "inr": "inr rupee rupees",
    "chf": "chf franc francs", "cad": "cad", "aud": "aud", "btc": "btc bitcoin", "eth": "eth ether ethereum",
    "hour": "h hr hrs hour hours", "minute": "min mins minute minutes", "sec": "sec secs seconds",
    "ms": "ms millisecond milliseconds", "day": "day days", "week": "week weeks", "month": "month months",
    "year": "yr yrs year years", "decade": "decade decades", "century": "century centuries",
    "mph": "mph", "kph": "kph kmh km/h", "gb": "gb gigabyte gigabytes", "mb": "mb megabyte megabytes",
    "kb": "kb kilobyte kilobytes", "tb": "tb terabyte terabytes", "byte": "byte bytes", "bit": "bit bits",
    "hz": "hz hertz", "ghz": "ghz", "mhz": "mhz", "watt": "w watt watts", "kw": "kw kilowatt kilowatts",
    "kwh": "kwh", "volt": "v volt volts", "amp": "amp amps ampere amperes", "calorie": "calorie calories kcal cal",
    "degree": "degree degrees °", "radian": "radian radians", "acre": "acre acres", "hectare": "hectare hectares",
    "psi": "psi", "bar": "bar", "pixel": "px pixel pixels", "dpi": "dpi",
}.items():
    for _n in _names.split():
        _UNITS[_n] = _canon
# Short unit spellings that are ordinary words elsewhere count only right after a number.
_UNIT_NEEDS_NUMBER = frozenset({"m", "g", "h", "w", "v", "l", "s", "in", "min", "sec", "cal", "bar", "gal", "k", "ms", "mi", "eth"})

_CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not", "ain't": "is not",
    "what's": "what is", "it's": "it is", "that's": "that is", "there's": "there is", "how's": "how is",
    "where's": "where is", "who's": "who is", "let's": "let us", "i'm": "i am", "you're": "you are",
    "we're": "we are", "they're": "they are", "i've": "i have", "you've": "you have", "i'd": "i would",
    "i'll": "i will", "you'll": "you will",
}
_TOKEN_RE = re.compile(r"[a-z]+\d[a-z\d]*|\d+(?:[.,]\d+)*(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?|[%$€£¥°]", re.IGNORECASE)
_DIRECTIONAL = frozenset("to into from than by over against toward towards onto for per after before under".split())
# Markers kept in the sequence for the direction checks (never content).
_MARKERS = _DIRECTIONAL | {"in", "of", "at", "on", "with"}
# Words before a task verb that make it a request ("can you summarise", "please translate").
_REQUESTERS = frozenset("you please me us".split())
_ASKERS = frozenset("how i we what why where when who".split())


def _imperative(tokens: list["_Token"], i: int) -> bool:
    """A task word opening its sentence or following "you/please/me" is a request; elsewhere it is content.

    "Summarise this", "Can you summarise this" → request; "How do I summarise a table in pandas",
    "Explain quantum computing" (``computing``) → content.
    """
    for j in range(i - 1, -1, -1):
        word = tokens[j].text
        if word in _ASKERS:
            return False
        if word in _REQUESTERS:
            return True
        if word not in _STOPWORDS:
            return False
        if tokens[j].starts_sentence:
            break
    return True


@dataclass(slots=True)
class _Token:
    text: str       # lower-case surface form
    stem: str
    pos: int
    capital: bool   # capitalised or all-caps, and not the first word of a sentence
    starts_sentence: bool = False


@dataclass(slots=True)
class Analysis:
    """What the checks compare, extracted from one text."""

    tokens: list[_Token]
    negations: int
    numbers: Counter[float]
    units: list[str]
    tasks: frozenset[str]
    content: dict[str, _Token] = field(default_factory=dict)
    """Content stems (after synonym mapping) → first token; excludes stopwords, numbers, units, task words."""
    polar: set[str] = field(default_factory=set)
    sequence: list[str] = field(default_factory=list)
    """Comparable units in order, for the direction check: content stems, numbers, units, directional words."""


def _expand(text: str) -> str:
    t = text.replace("’", "'").replace("‘", "'")
    t = re.sub(r"(?i)\btl;?dr\b", " tldr ", t)
    t = re.sub(r"(?i)\b(\w+)'(s|re|ve|d|ll|m)\b", lambda m: _CONTRACTIONS.get(m.group(0).lower(), m.group(0)), t)
    t = re.sub(r"(?i)\b(can't|won't|shan't|ain't|cannot)\b", lambda m: _CONTRACTIONS[m.group(0).lower()], t)
    t = re.sub(r"(?i)n't\b", " not", t)
    t = re.sub(r"(?i)\bturn(ed|ing|s)?\s+(on|off)\b", lambda m: f"turn {m.group(2)}", t)
    t = re.sub(r"(\d),(\d{3})\b", r"\1\2", t)
    t = re.sub(r"(\d)([a-zA-Z%°$€£¥])", r"\1 \2", t)      # "5km" → "5 km", "20%" → "20 %"
    t = re.sub(r"([$€£¥])\s*(\d)", r"\1 \2", t)
    return t


def _number_value(tok: str) -> float | None:
    t = tok.lower()
    t = re.sub(r"(st|nd|rd|th)$", "", t) if re.match(r"^\d", t) else t
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


def analyse(text: str) -> Analysis:
    """Tokenise and classify ``text`` (pure function; the checks only compare two analyses)."""
    expanded = _expand(text)
    raw = [(m.group(0), m.start()) for m in _TOKEN_RE.finditer(expanded)]
    tokens: list[_Token] = []
    sentence_start = True
    last_end = 0
    for word, start in raw:
        between = expanded[last_end:start]
        if any(ch in between for ch in ".?!:\n"):
            sentence_start = True
        lower = word.lower()
        capital = (not sentence_start) and (word[:1].isupper() or (len(word) > 1 and word.isupper()))
        # Acronyms keep their letters: HTTPS is not the plural of HTTP.
        stem = lower if len(word) > 1 and word.isupper() else _stem(lower)
        tokens.append(_Token(lower, stem, len(tokens), capital, sentence_start))
        sentence_start = False
        last_end = start + len(word)

    negations = 0
    numbers: Counter[float] = Counter()
    units: list[str] = []
    tasks: set[str] = set()
    content: dict[str, _Token] = {}
    polar: set[str] = set()
    sequence: list[str] = []
    last_seq_token = -1
    i = 0
    prev_number = False
    while i < len(tokens):
        tok = tokens[i]
        w = tok.text
        value = _number_value(w)
        if value is None and w in _NUM_WORDS and not (w == "k" and not prev_number):
            # Combine "twenty five", "three hundred", "two thousand five hundred".
            total, current, j = 0.0, 0.0, i
            while j < len(tokens) and tokens[j].text in _NUM_WORDS or (j < len(tokens) and tokens[j].text == "and" and j > i and j + 1 < len(tokens) and tokens[j + 1].text in _NUM_WORDS):
                t = tokens[j].text
                if t == "and":
                    j += 1
                    continue
                if t in _MULTIPLIERS and t != "k":
                    current = (current or 1) * _MULTIPLIERS[t]
                    if _MULTIPLIERS[t] >= 1000:
                        total, current = total + current, 0.0
                else:
                    current += _NUM_WORDS[t]
                j += 1
            value = total + current
            if w in ("half", "quarter", "double", "twice", "triple", "dozen") and j == i + 1:
                value = _NUM_WORDS[w]
            if w == "one" and j == i + 1 and i > 0 and tokens[i - 1].text in ("which", "the", "this", "that", "each", "every", "any", "no"):
                value = None  # "which one", "the one": a pronoun
            if value is not None:
                numbers[value] += 1
                sequence.append(f"#{value:g}")
                prev_number = True
                i = j
                continue
        if value is not None:
            # A multiplier right after digits: "2 million", "5k".
            if i + 1 < len(tokens) and tokens[i + 1].text in _MULTIPLIERS:
                value *= _MULTIPLIERS[tokens[i + 1].text]
                i += 1
            numbers[value] += 1
            sequence.append(f"#{value:g}")
            prev_number = True
            i += 1
            continue
        if w in _ORDINALS:
            numbers[1000000 + _ORDINALS[w]] += 1  # ordinals: compared among themselves
            sequence.append(f"#o{_ORDINALS[w]}")
            prev_number = False
            i += 1
            continue
        unit = _UNITS.get(w)
        if unit is not None and (w not in _UNIT_NEEDS_NUMBER or prev_number):
            units.append(unit)
            sequence.append(f"u:{unit}")
            prev_number = False
            i += 1
            continue
        prev_number = False
        if w in _NEGATIONS or w == "not":
            negations += 1
            i += 1
            continue
        if w == "turn" and i + 1 < len(tokens) and tokens[i + 1].text in ("on", "off"):
            polar.add("turn_" + tokens[i + 1].text)
            i += 2
            continue
        if tok.stem in _ANTONYM_STEMS or w in _ANTONYMS:
            polar.add(tok.stem)
        if w in _MARKERS:
            sequence.append(f"d:{w}")
        task = _TASK_STEMS.get(tok.stem)
        if task is not None and _imperative(tokens, i):
            tasks.add(task)
            i += 1
            continue
        if (w in _STOPWORDS or tok.stem in _STOP_STEMS or w in _MARKERS or w in _FUNCTION_POLAR
                or len(w) == 1 and not w.isalnum()):
            i += 1
            continue
        key = _SYNONYM.get(tok.stem, tok.stem)
        if key not in content:
            content[key] = tok
        if tok.capital and i > 0 and tokens[i - 1].capital and last_seq_token == i - 1 and sequence:
            sequence[-1] = sequence[-1] + "_" + key  # "New York", "Mount Everest": one anchor
        else:
            sequence.append(key)
        last_seq_token = i
        if w.endswith("'s"):
            sequence.append("d:'s")
        i += 1
    tasks.discard(_DEFAULT_TASK)
    return Analysis(tokens, negations, numbers, units, frozenset(tasks), content, polar, sequence)


def _antonym_clash(a: Analysis, b: Analysis) -> str | None:
    only_a = a.polar - b.polar
    only_b = b.polar - a.polar
    for x in only_a:
        opposites = _ANTONYM_STEMS.get(x, set())
        if x.startswith("turn_"):
            opposites = {"turn_off" if x == "turn_on" else "turn_on"}
        hit = opposites & only_b
        if hit:
            return f"{x}/{sorted(hit)[0]}"
    # Negative prefixes: "possible" / "impossible", "like" / "dislike".
    for x in a.content:
        for y in b.content:
            if x != y and (x in b.content) is False and (y in a.content) is False:
                for prefix in _NEG_PREFIXES:
                    if (y == prefix + x or x == prefix + y) and len(min(x, y, key=len)) >= 4:
                        return f"{x}/{y}"
    return None


def _is_anchor(item: str) -> bool:
    return not item.startswith(("d:", "#"))


def _marker_triples(seq: list[str]) -> set[tuple[str, str, str]]:
    """``(left, marker, right)`` around each directional marker: nearest anchors, numbers skipped.

    ``in`` counts only between two units ("100 dollars in euros"); elsewhere it is a place.
    """
    out = set()
    for j, item in enumerate(seq):
        if not item.startswith("d:") or item[2:] not in _DIRECTIONAL | {"in"}:
            continue
        left = next((seq[i] for i in range(j - 1, -1, -1) if _is_anchor(seq[i])), None)
        right = next((seq[i] for i in range(j + 1, len(seq)) if _is_anchor(seq[i])), None)
        if left is None or right is None or left == right:
            continue
        if item == "d:in" and not (left.startswith("u:") and right.startswith("u:")):
            continue
        out.add((left, item, right))
    return out


def _tight_triples(seq: list[str]) -> dict[tuple[str, str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    """Consecutive anchors ``x t y`` with the markers between them (``Alice beat Bob``, ``York north of Washington``)."""
    anchors = [(i, item) for i, item in enumerate(seq) if _is_anchor(item)]
    out = {}
    for (i, x), (j, t), (k, y) in zip(anchors, anchors[1:], anchors[2:]):
        if len({x, t, y}) == 3:
            out[(x, t, y)] = (tuple(seq[i + 1:j]), tuple(seq[j + 1:k]))
    return out


_WH = frozenset({"who", "whom", "which", "what"})
_DO = frozenset({"do", "does", "did"})


def _wh_role(a: Analysis) -> str | None:
    """Whether a wh-question asks for the subject ("who beat X") or the object ("who did X beat")."""
    toks = [t.text for t in a.tokens]
    if not toks or toks[0] not in _WH:
        return None
    nxt = 2 if toks[0] == "which" and len(toks) > 2 and toks[1] not in _DO else 1
    if nxt >= len(toks):
        return None
    if toks[nxt] in _DO:
        return "object"
    if toks[nxt] in _STOPWORDS or toks[nxt] in _MARKERS:
        return None
    return "subject"


def _direction_clash(a: Analysis, b: Analysis) -> str | None:
    """Roles or direction swapped while the words stay the same."""
    ta, tb = _marker_triples(a.sequence), _marker_triples(b.sequence)
    for x, m, y in ta:
        if (y, m, x) in tb and (x, m, y) not in tb:
            return f"{x} {m} {y}"
    tight_b = _tight_triples(b.sequence)
    for (x, t, y), (m1, m2) in _tight_triples(a.sequence).items():
        if tight_b.get((y, t, x)) == (m1, m2) and (x, t, y) not in tight_b:
            return f"{x} {t} {y}"
    ra, rb = _wh_role(a), _wh_role(b)
    if ra and rb and ra != rb and a.tokens[0].text == b.tokens[0].text:
        return f"wh {ra}/{rb}"
    return None


def _acronym_matches(acronym: str, words: list[str]) -> list[str] | None:
    """``ai`` ↔ ``artificial intelligence``: the initials of consecutive words spell the acronym."""
    n = len(acronym)
    for i in range(len(words) - n + 1):
        span = words[i:i + n]
        if "".join(w[0] for w in span) == acronym:
            return span
    return None


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


def _is_entity_like(tok: _Token) -> bool:
    return tok.capital or tok.text in _GAZETTEER or any(ch.isdigit() for ch in tok.text)


class Verifier:
    """Checks a KNN candidate against the query; see the module docstring for the checks and their order."""

    def __init__(self, *, word_embed: WordEmbed | None = None, word_similarity: float = 0.80) -> None:
        """``word_embed`` (the cache's embedder) lets unmatched non-entity words align by meaning."""
        self._word_embed = word_embed
        self._word_similarity = word_similarity

    async def check(self, query: str, stored: str) -> Verdict:
        """``Verdict(ok=True)`` when ``stored``'s answer may serve ``query``."""
        return (await self.check_many(query, [stored]))[0]

    async def check_many(self, query: str, stored: Sequence[str]) -> list[Verdict]:
        """One verdict per stored text; all word embeddings the checks need are fetched in one call."""
        a = analyse(query)
        results: list[Verdict | None] = [None] * len(stored)
        pending: list[tuple[int, list[str], list[str]]] = []
        for i, text in enumerate(stored):
            if query.strip().casefold() == text.strip().casefold():
                results[i] = Verdict(True, "identical")
                continue
            b = analyse(text)
            outcome = self._lexical(a, b) or self._align(a, b)
            if isinstance(outcome, Verdict):
                results[i] = outcome
            else:
                pending.append((i, *outcome))
        if pending:
            assert self._word_embed is not None
            words = list(dict.fromkeys(w for _, wa, wb in pending for w in (*wa, *wb)))
            vectors = await self._word_embed(words)
            by_word = {w: vectors[k] for k, w in enumerate(words)}
            for i, wa, wb in pending:
                results[i] = self._judge(wa, wb, by_word)
        return [r if r is not None else Verdict(False, "content") for r in results]

    def _lexical(self, a: Analysis, b: Analysis) -> Verdict | None:
        if a.negations != b.negations:
            return Verdict(False, "negation", f"{a.negations} vs {b.negations}")
        clash = _antonym_clash(a, b)
        if clash:
            return Verdict(False, "antonym", clash)
        if a.numbers != b.numbers:
            return Verdict(False, "number", f"{dict(a.numbers)} vs {dict(b.numbers)}")
        if Counter(a.units) != Counter(b.units):
            return Verdict(False, "unit", f"{a.units} vs {b.units}")
        if a.tasks != b.tasks:
            return Verdict(False, "task", f"{sorted(a.tasks)} vs {sorted(b.tasks)}")
        ma = _MODAL_CLASS.get(a.tokens[0].text) if a.tokens else None
        mb = _MODAL_CLASS.get(b.tokens[0].text) if b.tokens else None
        if ma and mb and ma != mb:
            return Verdict(False, "task", f"modal {ma} vs {mb}")
        clash = _direction_clash(a, b)
        if clash:
            return Verdict(False, "direction", clash)
        return None

    def _align(self, a: Analysis, b: Analysis) -> Verdict | tuple[list[str], list[str]]:
        """Match content words lexically; a verdict, or the words left to compare by embedding."""
        counts_a = Counter(x for x in a.sequence if _is_anchor(x))
        counts_b = Counter(x for x in b.sequence if _is_anchor(x))
        repeated = sum(abs(counts_a[k] - counts_b[k]) for k in counts_a.keys() & counts_b.keys())
        if repeated >= 2:  # "does A pay B" vs "does B pay A or does A pay B": an extra clause
            return Verdict(False, "content", "repeated words")
        only_a = {k: t for k, t in a.content.items() if k not in b.content}
        only_b = {k: t for k, t in b.content.items() if k not in a.content}
        if not only_a and not only_b:
            return Verdict(True, "ok")
        # Acronyms and compounds: "ai" ↔ "artificial intelligence", "darkmode" ↔ "dark mode".
        for side, other_all, other_only in ((only_a, b, only_b), (only_b, a, only_a)):
            words = [t.text for t in other_all.tokens]
            for key, tok in list(side.items()):
                if key not in side:
                    continue
                span = _acronym_matches(tok.text, words) if 2 <= len(tok.text) <= 5 and tok.text.isalpha() else None
                if span is None:
                    for i in range(len(words) - 1):
                        if words[i] + words[i + 1] == tok.text:
                            span = words[i:i + 2]
                            break
                if span is not None:
                    side.pop(key)
                    for w in span:
                        other_only.pop(_SYNONYM.get(_stem(w), _stem(w)), None)
        # Derivational variants: "painter" ↔ "paint(ed)", "different" ↔ "difference".
        for ka, ta in list(only_a.items()):
            for kb, tb in list(only_b.items()):
                if kb in only_b and ka in only_a and _same_root(ta.stem, tb.stem):
                    only_a.pop(ka)
                    only_b.pop(kb)
                    break
        for side, other in ((only_a, b), (only_b, a)):
            for key, tok in list(side.items()):
                if any(_same_root(tok.stem, t.stem) for t in other.tokens):
                    side.pop(key)
        if not only_a and not only_b:
            return Verdict(True, "ok")
        if not only_a or not only_b or self._word_embed is None:
            return Verdict(False, "content", f"{sorted(only_a)} / {sorted(only_b)}")
        entity = [t.text for t in (*only_a.values(), *only_b.values()) if _is_entity_like(t)]
        if entity:
            return Verdict(False, "content", f"entity {entity}")
        if len(only_a) != len(only_b) or len(only_a) > 4:
            return Verdict(False, "content", f"{sorted(only_a)} / {sorted(only_b)}")
        return [t.text for t in only_a.values()], [t.text for t in only_b.values()]

    def _judge(self, words_a: list[str], words_b: list[str], vectors: dict[str, np.ndarray]) -> Verdict:
        """Greedy one-to-one alignment by word embedding; every word must find a partner above the bar."""
        sims = np.stack([vectors[w] for w in words_a]) @ np.stack([vectors[w] for w in words_b]).T
        used: set[int] = set()
        for i in np.argsort(-sims.max(axis=1)):
            j_order = [j for j in np.argsort(-sims[i]) if j not in used]
            if not j_order or sims[i, j_order[0]] < self._word_similarity:
                return Verdict(False, "content", f"{words_a[i]} unmatched ({float(sims[i].max()):.2f})")
            used.add(j_order[0])
        return Verdict(True, "ok")
