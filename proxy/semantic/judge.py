"""Judges: would a cached answer have been right for a request? (error-bounded caching)

A judgement compares what the upstream answered *this* request (the fresh answer, which the
client received) with the answer cached for the semantic candidate the proxy did not serve::

    AnswerJudge (default, no call)   fresh vs cached answer text:
        identical (case, spacing)               → right
        numbers differ · names/identifiers differ · polarity differs (a negation, yes/no,
        on/off…) · length class differs · content words overlap < half  → wrong
        otherwise                                → right
    LLMJudge (--judge-url)           an OpenAI-compatible chat model, max_tokens 2, temperature 0:
        "Request … Reference answer … Cached answer … Does the cached answer answer the request as
        correctly as the reference? yes or no"; a "no" is asked again with the answers swapped, the
        majority of at most ``votes`` asks decides; anything but yes/no is no judgement.

``judge`` returns True (right), False (wrong) or None (cannot tell: empty or non-text answers,
a judge error): no judgement is better than a guessed one. Texts never reach a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

__all__ = ["AnswerJudge", "Judge", "JudgeUnavailable", "LLMJudge", "answer_text"]


def answer_text(route: str, answer: Mapping[str, Any]) -> str | None:
    """The text a client reads in ``answer`` (chat content and tool calls, or completion text); ``None`` if none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    parts: list[str] = []
    for choice in choices:
        if not isinstance(choice, Mapping):
            continue
        if route == "/v1/completions":
            if isinstance(choice.get("text"), str):
                parts.append(choice["text"])
            continue
        message = choice.get("message")
        if not isinstance(message, Mapping):
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        if message.get("tool_calls"):
            parts.append(json.dumps(message["tool_calls"], sort_keys=True))
    text = "\n".join(p for p in parts if p.strip())
    return text or None


class Judge(Protocol):
    """Decides whether ``cached`` would have answered ``request`` as well as ``fresh`` did."""

    num_calls: int
    """Calls made to an outside judge so far (0 for judges that make none)."""

    async def judge(self, *, request: str, fresh: str, cached: str) -> bool | None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- the answer judge

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_'.\-/]*[A-Za-z0-9]|[A-Za-z]")
_POSSESSIVE = re.compile(r"['’]s$")
_SENTENCE_END = re.compile(r"[.!?:\n]\s*$")
_NEGATION = frozenset({"not", "no", "never", "none", "nothing", "neither", "nor", "without", "cannot", "can't",
                       "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "won't", "shouldn't",
                       "mustn't", "wouldn't", "couldn't", "hasn't", "haven't", "hadn't", "nobody", "nowhere"})
#: Opposites that change an answer while keeping its shape ("switch it on" / "switch it off").
_OPPOSITES = (("on", "off"), ("enable", "disable"), ("enabled", "disabled"), ("true", "false"),
              ("increase", "decrease"), ("increases", "decreases"), ("add", "remove"), ("allow", "block"),
              ("allow", "deny"), ("before", "after"), ("above", "below"), ("more", "less"), ("higher", "lower"),
              ("larger", "smaller"), ("maximum", "minimum"), ("open", "close"), ("start", "stop"),
              ("import", "export"), ("push", "pull"), ("upload", "download"), ("input", "output"),
              ("left", "right"), ("north", "south"), ("east", "west"), ("hot", "cold"), ("safe", "unsafe"),
              ("legal", "illegal"), ("valid", "invalid"), ("include", "exclude"), ("accept", "reject"))
_STOP_WORDS = """\
a an the and or but if then so of to in on at by for with from as is are was were be been being it
its this that these those there here you your yours we our i me my he she they them their his her what which who
whom how when where why do does did done can could should would will shall may might must have has had not no
yes also just than too very more most such into over about out up down only own same other some any each all both
few many much one two"""
_STOP = frozenset(_STOP_WORDS.split())
#: Capitalised words that start sentences without naming anything.
_STARTER_WORDS = """the a an it this that these those there here you your yes no to in on at for if when
while as and but or so then first next finally also however because we i they he she use try make open go click
run check set add remove note for example sure of"""
_STARTERS = frozenset(_STARTER_WORDS.split())


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?")


def _numbers(text: str) -> set[str]:
    return {m.group().lstrip("+").replace(",", "") for m in _NUMBER.finditer(text)}


def _names(text: str) -> set[str]:
    """Capitalised words (not merely starting a sentence), acronyms and identifier-like tokens."""
    out: set[str] = set()
    for m in _WORD.finditer(text):
        w = _POSSESSIVE.sub("", m.group().rstrip("."))
        if not w:
            continue
        starts_sentence = m.start() == 0 or bool(_SENTENCE_END.search(text[:m.start()]))
        identifier = any(ch in w for ch in "_./") or (any(ch.isupper() for ch in w[1:]) and any(
            ch.islower() for ch in w))
        capitalised = w[0].isupper() and not (starts_sentence and w.casefold() in _STARTERS)
        if identifier or (capitalised and w.casefold() not in _STARTERS) or (len(w) >= 2 and w.isupper()):
            out.add(w.casefold())
    return out


def _words(text: str) -> list[str]:
    return [_POSSESSIVE.sub("", w.casefold().rstrip(".")) for w in _WORD.findall(text)]


def _length_class(num_words: int) -> int:
    """A few words · a sentence or two · a paragraph · a long answer."""
    return 0 if num_words <= 12 else 1 if num_words <= 60 else 2 if num_words <= 250 else 3


class AnswerJudge:
    """The default judge: compares the two answer texts (see the module docstring); no outside call."""

    num_calls = 0

    def __init__(self, *, min_overlap: float = 0.5) -> None:
        self.min_overlap = min_overlap
        """Content-word Jaccard overlap below which two answers say different things. Default 0.5."""

    async def judge(self, *, request: str, fresh: str, cached: str) -> bool | None:
        return self.same(fresh, cached)

    def same(self, fresh: str, cached: str) -> bool | None:
        """True when the answers are equivalent, False when they differ in substance, None when either is empty."""
        if not fresh.strip() or not cached.strip():
            return None
        if _norm(fresh) == _norm(cached):
            return True
        if _numbers(fresh) != _numbers(cached) or _names(fresh) != _names(cached):
            return False
        wf, wc = _words(fresh), _words(cached)
        if _length_class(len(wf)) != _length_class(len(wc)):
            return False
        negations_f = sum(w in _NEGATION or w.endswith("n't") for w in wf)
        negations_c = sum(w in _NEGATION or w.endswith("n't") for w in wc)
        if negations_f % 2 != negations_c % 2:
            return False
        if wf[:1] != wc[:1] and {wf[0] if wf else "", wc[0] if wc else ""} == {"yes", "no"}:
            return False
        sf, sc = set(wf), set(wc)
        only_f, only_c = sf - sc, sc - sf
        if any((x in only_f and y in only_c) or (y in only_f and x in only_c) for x, y in _OPPOSITES):
            return False
        cf = {w for w in sf if w not in _STOP and len(w) > 2}
        cc = {w for w in sc if w not in _STOP and len(w) > 2}
        union = cf | cc
        return not union or len(cf & cc) / len(union) >= self.min_overlap

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- the LLM judge

_SYSTEM = "You check answers served from a cache. Reply with one word: yes or no."
_QUESTION = ("Request:\n{request}\n\n{first_label}:\n{first}\n\n{second_label}:\n{second}\n\n"
             "Does the cached answer answer the request as correctly as the reference answer does? "
             "Reply yes or no.")


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class LLMJudge:
    """An OpenAI-compatible chat model asked yes/no (see the module docstring)."""

    def __init__(self, *, url: str, model: str, api_key: str | None = None, votes: int = 3,
                 max_chars: int = 4000, timeout_s: float = 10.0) -> None:
        self.url = _base_url(url) + "/v1/chat/completions"
        self.model = model
        self.votes = votes
        self.max_chars = max_chars
        self.num_calls = 0
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def _ask(self, request: str, fresh: str, cached: str, *, swapped: bool) -> bool | None:
        first, second = (("Cached answer", cached), ("Reference answer", fresh)) if swapped else (
            ("Reference answer", fresh), ("Cached answer", cached))
        content = _QUESTION.format(request=request[:self.max_chars], first_label=first[0],
                                   first=first[1][:self.max_chars], second_label=second[0],
                                   second=second[1][:self.max_chars])
        body = {"model": self.model, "temperature": 0, "max_tokens": 2,
                "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": content}]}
        self.num_calls += 1
        async with self._session.post(self.url, json=body, headers=self._headers) as resp:
            if resp.status != 200:
                raise JudgeUnavailable(f"judge answered HTTP {resp.status}")
            data = await resp.json(content_type=None)
        try:
            word = str(data["choices"][0]["message"]["content"] or "").strip().lower()
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeUnavailable("judge answer has no choices[0].message.content") from exc
        word = word.strip(" .!\"'")
        if word.startswith("yes"):
            return True
        if word.startswith("no"):
            return False
        return None

    async def judge(self, *, request: str, fresh: str, cached: str) -> bool | None:
        """The majority of at most ``votes`` asks; a "yes" ends it (only a "no" is checked again)."""
        yes = no = 0
        for i in range(self.votes):
            verdict = await self._ask(request, fresh, cached, swapped=i % 2 == 1)
            if verdict is None:
                return None
            yes += verdict
            no += not verdict
            if yes > self.votes // 2 or (yes and i == 0):
                return True
            if no > self.votes // 2:
                return False
        return yes > no if yes != no else None

    async def close(self) -> None:
        await self._session.close()


class JudgeUnavailable(Exception):
    """The LLM judge did not answer usably (HTTP error, malformed body)."""
