"""Cache keys: canonical JSON of everything that shapes an answer, hashed.

The exact key of a request is ``SHA-256(canonical JSON of {v, route, query,
partition, tenant, namespace, body minus transport-only fields})``:

- ``partition`` — the pod's Kubernetes namespace (or the applied policy's), so two
  namespaces never share an entry even for the same tenant;
- ``tenant`` — the salted hash of the credential (:func:`tenant_id`); a request
  without one is cached only when a policy opts in (``anonymous: PerNamespace``),
  and then per partition;
- ``namespace`` — the client-chosen ``X-LLMCache-Namespace``;
- ``query`` — the URL query string, forwarded upstream, so it may shape the answer.
 Transport-only fields
(:data:`NOT_IN_KEY`: ``stream``, ``stream_options``, ``user``) are left out so a
stored answer serves streaming and non-streaming callers alike. Unknown fields
are kept: if an upstream honours a field we do not know, it may shape the output.

For the semantic cache a request splits into a *scope* (everything that must
match exactly: the exact-key material minus the last user message) and the
*text* compared by meaning (the last user message)::

    messages: [system, user₁, assistant₁, …, userₙ]
              └──────── scope hash ────────┘ └ text ┘
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "CACHEABLE_ROUTES",
    "KEY_SCHEMA_VERSION",
    "NOT_IN_KEY",
    "SemanticParts",
    "cache_salt",
    "canonical_json",
    "canonical_route",
    "exact_key",
    "loads",
    "loads_exact",
    "parse_body",
    "parse_json",
    "read_json",
    "semantic_parts",
    "short",
    "tenant_id",
]

#: Bump when the key material changes so old entries are never served.
#: 2: partition (pod namespace / policy) and query string joined the material.
KEY_SCHEMA_VERSION = 2

CACHEABLE_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

#: How many times :func:`canonical_route` percent-decodes a path (``%252F`` → ``%2F`` → ``/``).
_MAX_DECODES = 3


def canonical_route(raw_path: str) -> str | None:
    """The cacheable route a non-canonical path names, or ``None``.

    Upstreams normalise paths before routing (uvicorn decodes ``%2F``, frameworks redirect or
    strip a trailing slash, front proxies merge slashes), so ``/v1/chat/completions/``,
    ``//v1/chat/completions``, ``/v1/chat%2Fcompletions``, ``/v1/./chat/completions``,
    ``/v1/chat/completions;x`` or ``/V1/Chat/Completions`` may all reach the same handler
    upstream. Each is read here as the route it may mean: percent-decoded (up to three times),
    backslashes as slashes, empty and ``.`` segments dropped, ``..`` applied, ``;params`` and
    surrounding whitespace removed, lower-cased. Only paths that miss the exact routes get here.
    """
    path = raw_path.partition("?")[0]
    for _ in range(_MAX_DECODES):
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for spelled in path.replace("\\", "/").split("/"):
        segment = spelled.partition(";")[0].strip(" \t\r\n\x00").lower()
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    route = "/" + "/".join(segments)
    return route if route in CACHEABLE_ROUTES else None


#: Request fields that do not change the answer (transport / accounting only).
NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})

ANONYMOUS_TENANT = "anonymous"


def _normalise(value: Any) -> Any:
    """Numbers compare by value (``1`` == ``1.0``); NaN/inf are rejected (not valid JSON)."""
    # Concrete JSON types first: this runs on every request, and ABC checks are slow.
    t = type(value)
    if t is str or t is bool or t is int or value is None:
        return value
    if t is dict:
        return {str(k): _normalise(v) for k, v in value.items()}
    if t is list:
        return [_normalise(v) for v in value]
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite number in request")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    raise TypeError(f"unsupported JSON value of type {type(value).__name__}")


def _parse_float(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


# One decoder and one encoder for every request: json.loads/dumps with options build a new one per call.
_DECODER = json.JSONDecoder(parse_float=_parse_float)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# What ``_CANONICAL.encode`` builds on every call (a C encoder and its cycle markers), built once:
# ``"".join(_CANONICAL_ONE_SHOT(value, 0))`` is ``_CANONICAL.encode(value)`` for the dicts, lists,
# strings, numbers, booleans and None a parsed body holds (no cycles: it came from JSON text).
_CANONICAL_ONE_SHOT = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unserialisable, json.encoder.encode_basestring, None, ":", ",", True, False, False)


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` whose numbers come out as :func:`canonical_json` normalises them (``1.0`` → ``1``).

    Its result needs no second pass before hashing (``normalised=True`` below): a request body is
    parsed once and walked once. Non-finite numbers (``NaN``, ``Infinity``, ``1e999``) parse as
    ``json.loads`` parses them; hashing one raises ``ValueError``.
    """
    return parse_body(raw)[0]


def parse_body(raw: bytes | str) -> tuple[Any, bool]:
    """:func:`parse_json`'s value, and whether it holds no float (pass that on as ``exact_key(float_free=…)``).

    orjson parses a UTF-8 document into the same values as ``json.loads`` in a quarter of the
    instructions (a chat body: ~6,000 instead of ~25,000; ~14,500 with the walk below), with two
    differences this undoes or avoids: it has no ``parse_float`` hook (one walk then turns whole
    floats into ints, as :func:`_parse_float` does, and tells whether a float is left), and it
    turns an integer beyond 64 bits into a float (a whole float of 2**63 or more sends the text to
    the json module, which reads it exactly). The same walk measures the nesting. Whatever orjson refuses (``NaN``, lone
    surrogates, another encoding, a BOM, invalid text, nesting past 1,024) and anything nested
    past :data:`MAX_JSON_DEPTH` is parsed as before, with the json module's errors.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        t = type(value)
        if t is dict or t is list:
            found = _settle_numbers(value, 1)
            if found != _AGAIN:
                return value, found == _NO_FLOAT
        elif t is float:
            number = _whole(value)
            if number is not None:
                return number, type(number) is not float
        else:
            return value, True
    if not isinstance(raw, str):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads does with bytes
    _check_depth(raw)
    return _scan_whole(_DECODER, raw), False


#: What :func:`_settle_numbers` found: no float, a float left, or a reason to parse with the json
#: module (a float that may have been a long integer, or nesting past :data:`MAX_JSON_DEPTH`).
_NO_FLOAT, _FLOATS, _AGAIN = 0, 1, 2


def _whole(value: float) -> float | int | None:
    """A float orjson parsed, as :func:`_parse_float` returns it; ``None`` where it may have been a long integer."""
    if not value.is_integer():
        return value
    if abs(value) < 2**53:
        return int(value)
    return value if abs(value) < 2**63 else None


def _settle_numbers(value: dict[str, Any] | list[Any], depth: int) -> int:
    """What ``value`` (a container ``depth`` levels deep) holds: :data:`_NO_FLOAT`, :data:`_FLOATS` or
    :data:`_AGAIN`, its floats settled by :func:`_settle_floats` once one is seen.

    A walk in Python, so it does little per value: strings are passed over first, and the fields of
    an object inside a list (a chat message) are looked at without a call of their own (a 12-message
    body: ~25,000 instructions instead of ~46,000 for the plain walk).
    """
    if depth >= MAX_JSON_DEPTH:
        return _settle_floats(value, depth)
    found = _NO_FLOAT
    for item in value.values() if type(value) is dict else value:
        t = type(item)
        if t is str:
            continue
        if t is float:
            return _settle_floats(value, depth)
        if t is dict:
            for field in item.values():
                u = type(field)
                if u is str:
                    continue
                if u is float:
                    return _settle_floats(value, depth)
                if u is dict or u is list:
                    inner = _settle_numbers(field, depth + 2)
                    if inner == _AGAIN:
                        return _AGAIN
                    found |= inner
        elif t is list:
            inner = _settle_numbers(item, depth + 1)
            if inner == _AGAIN:
                return _AGAIN
            found |= inner
    return found


def _settle_floats(value: dict[str, Any] | list[Any], depth: int) -> int:
    """:func:`_settle_numbers` that changes ``value`` in place: whole floats become ints (:func:`_whole`)."""
    if depth > MAX_JSON_DEPTH:
        return _AGAIN
    found = _NO_FLOAT
    items = value.items() if type(value) is dict else enumerate(value)  # type: ignore[union-attr]
    for key, item in items:
        t = type(item)
        if t is float:
            number = _whole(item)
            if number is None:
                return _AGAIN
            value[key] = number  # type: ignore[index]  # (a value replaced, no key added: safe mid-walk)
            if type(number) is float:
                found = _FLOATS
        elif t is dict or t is list:
            inner = _settle_floats(item, depth + 1)
            if inner == _AGAIN:
                return _AGAIN
            found |= inner
    return found


def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``, with less work around the C scanner for a document without
    surrounding whitespace (every JSON answer and entry): ~5,000 instructions less per document."""
    return _scan_whole(_PLAIN_DECODER, text)


def read_json(text: str | bytes) -> Any:
    """``json.loads(text)`` for a document whose values are checked and read, never written out again.

    orjson's parse: the same values in under half the instructions (a short chat answer: ~13,600
    instead of ~32,600), except that an integer beyond 64 bits comes back as a float (orjson's rule;
    a count or a type check reads it as well either way). Whatever orjson refuses (``NaN``, lone
    surrogates, ...) is parsed by the json module as before, with its errors. An answer that is
    served or replayed is parsed by :func:`loads`.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return loads(text if isinstance(text, str) else text.decode())


def loads_exact(raw: bytes) -> Any:
    """``json.loads(raw.decode())``, the same values and types, in fewer instructions: orjson's parse (an SSE
    chunk: ~15,000 instructions instead of ~24,000) where it gives them, the json module's (and its
    errors) otherwise.

    orjson turns an integer beyond 64 bits into a float; a text with a run of 19 digits or more (found
    by one ``translate`` and one substring search, not a regular expression: those cost more than the
    parse) is therefore parsed by the json module, as is whatever orjson refuses (``NaN``, lone
    surrogates, a number too large for a float, invalid UTF-8, nesting past 1,024).
    """
    if _DIGIT_RUN not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return loads(raw.decode())


#: Every digit as ``0`` and every other byte as a space (:func:`loads_exact`'s look for long numbers).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_DIGIT_RUN = b"0" * 19

_PLAIN_DECODER = json.JSONDecoder()


def _scan_whole(decoder: json.JSONDecoder, text: str) -> Any:
    """``decoder.decode(text)``: the C scanner at once where the text starts and ends with a bracket
    (``decode`` first matches whitespace around it with two regular expressions); otherwise, or
    when something follows the document, ``decode`` itself (with its errors)."""
    if text[:1] in ("{", "[") and text[-1:] in ("}", "]"):
        try:
            value, end = decoder.scan_once(text, 0)  # type: ignore[attr-defined]
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    if text.startswith("\ufeff"):
        return json.loads(text)  # (its error for a BOM)
    return decoder.decode(text)


MAX_JSON_DEPTH = 256
"""Deepest nesting of arrays and objects a request body may have (tool schemas need a few dozen)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class JSONTooDeep(RecursionError):
    """The body nests arrays/objects deeper than :data:`MAX_JSON_DEPTH`."""


def _check_depth(text: str) -> None:
    """Refuse bodies nested deeper than :data:`MAX_JSON_DEPTH`, whatever the interpreter's stack.

    Without it, whether a body 900 levels deep parses depended on how deep the caller's stack
    already was (the C decoder shares the recursion limit). Two ``count`` calls in C clear almost
    every body; only one with more than ``MAX_JSON_DEPTH`` opening brackets is scanned.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise JSONTooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        else:
            depth -= 1


def canonical_json(value: Any, *, normalised: bool = False) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, normalised numbers, UTF-8.

    ``normalised``: ``value`` came from :func:`parse_json` (numbers already normalised) and is
    serialised as it is. A non-finite number raises ``ValueError`` either way.
    """
    if not normalised:
        value = _normalise(value)
    return _CANONICAL.encode(value).encode()


def tenant_id(credential: str | None, salt: bytes) -> str:
    """Salted hash of a tenant credential (``Authorization`` value or configured header).

    HMAC so that the digest of a short or guessable key cannot be reversed by
    anyone who reads Redis without the salt. No credential → ``anonymous``.
    """
    if not credential:
        return ANONYMOUS_TENANT
    if len(credential) <= _MEMO_MAX_CHARS:
        return _tenant_digest(salt, credential)
    return _tenant_digest.__wrapped__(salt, credential)


#: Longest credential (characters) whose digest is remembered: :data:`_MEMO_SIZE` of them hold at
#: most ~0.5 MiB, whatever headers clients send.
_MEMO_MAX_CHARS = 512
#: Digests remembered (least recently used first out); a pod sees a few tenants, each on every request.
_MEMO_SIZE = 1024


# Remembered per (salt, credential): one HMAC-SHA256 is ~28,000 instructions per request (with the
# cache salt's, 4 % of a miss); a dictionary look-up ~300. The credential stays in process memory
# only (it arrived in the request; never in Redis or a log).
@functools.lru_cache(maxsize=_MEMO_SIZE)
def _tenant_digest(salt: bytes, credential: str) -> str:
    # hmac.digest: the same HMAC-SHA256 in one C call (hmac.new builds a Python object per request).
    return hmac.digest(salt, credential.encode(), "sha256").hex()[:32]


def _key_material(route: str, body: Mapping[str, Any], tenant: str, namespace: str, partition: str,
                  query: str) -> dict[str, Any]:
    return {
        "v": KEY_SCHEMA_VERSION,
        "route": route,
        "query": query,
        "partition": partition,
        "tenant": tenant,
        "namespace": namespace,
        "body": {k: v for k, v in body.items() if k not in NOT_IN_KEY},
    }


def exact_key(route: str, body: Mapping[str, Any], *, tenant: str, namespace: str = "", partition: str = "",
              query: str = "", normalised: bool = False, float_free: bool = False) -> str:
    """SHA-256 hex digest addressing the exact cache entry of this request.

    ``partition`` is the pod's Kubernetes namespace (or policy id), ``query`` the URL query string;
    ``normalised``: ``body`` came from :func:`parse_json` (the same key, without a second walk);
    ``float_free``: it came from :func:`parse_body`, which found no float in it. Such a body is
    serialised by orjson (~3,500 instructions instead of ~19,000 for a chat body): for strings,
    integers, booleans, null and sorted keys it writes the json module's bytes
    (``tests/llmcache/test_keys.py`` compares them); floats it writes its own way, so never those.

    The digest is that of ``canonical_json(_key_material(…))``. Sorted, that material is
    ``{"body":<body>`` followed by fields that are the same on every request of a tenant, so
    only the body is serialised per request and the rest is remembered (~30,000 instructions
    less per request; ``tests/llmcache/test_keys.py`` pins the equality).
    """
    if not normalised:
        body = _normalise(body)
    # (Most bodies carry none of those fields: one C pass instead of a copy.)
    kept = body if type(body) is dict and NOT_IN_KEY.isdisjoint(body) else {
        k: v for k, v in body.items() if k not in NOT_IN_KEY}
    h = _BODY_OPEN.copy()
    if float_free and normalised:
        h.update(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
    else:
        h.update("".join(_CANONICAL_ONE_SHOT(kept, 0)).encode())
    if len(query) <= _MEMO_MAX_CHARS:
        h.update(_key_tail(route, tenant, namespace, partition, query))
    else:
        h.update(_key_tail.__wrapped__(route, tenant, namespace, partition, query))
    return h.hexdigest()


#: ``canonical_json(_key_material(…))`` begins with this (``body`` sorts first among its fields).
_BODY_OPEN = hashlib.sha256(b'{"body":')


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _key_tail(route: str, tenant: str, namespace: str, partition: str, query: str) -> bytes:
    """The canonical key material after its body: every field but the body, and the closing brace."""
    material = _key_material(route, {}, tenant, namespace, partition, query)
    return canonical_json(material, normalised=True)[len(b'{"body":{}'):]  # ("body" sorts first)


def cache_salt(tenant: str, salt: bytes, *, partition: str = "", client_salt: str | None = None) -> str:
    """The ``cache_salt`` sent upstream with a request: isolates its prefix KV cache per tenant and partition.

    HMAC under the tenant salt, so no caller can compute another tenant's value; a client's
    own ``cache_salt`` is folded in (it may narrow its isolation, never widen it).
    """
    if client_salt is None or len(client_salt) <= _MEMO_MAX_CHARS:
        return _salt_digest(tenant, salt, partition, client_salt or "")
    return _salt_digest.__wrapped__(tenant, salt, partition, client_salt)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _salt_digest(tenant: str, salt: bytes, partition: str, client_salt: str) -> str:
    """:func:`cache_salt`, remembered like :func:`_tenant_digest` (the same few values on every request)."""
    material = f"{partition}\x00{tenant}\x00{client_salt}".encode()
    return hmac.digest(salt, b"cache-salt\x00" + material, "sha256").hex()[:32]


@dataclass(frozen=True, slots=True)
class SemanticParts:
    """What the semantic cache needs: the exact-match scope and the text compared by meaning."""

    scope_hash: str
    """SHA-256 of everything but the compared text (partition, tenant, namespace, query, model, params, history)."""
    text: str
    """The last user message (chat) or the prompt (completions)."""
    model: str
    """The requested model (kept for tags and metrics; it is also inside the scope)."""


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only pure-text parts are comparable
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def semantic_parts(route: str, body: Mapping[str, Any], *, tenant: str, namespace: str = "", partition: str = "",
                   query: str = "", normalised: bool = False) -> SemanticParts | None:
    """Split a request for the semantic cache, or ``None`` when it cannot be compared by meaning.

    Only chat requests whose last message is a user text message, and completions
    with a single string prompt, qualify; embeddings never do (they are exact by nature).
    """
    model = body.get("model")
    if not isinstance(model, str):
        return None
    if route == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, Mapping) or last.get("role") != "user":
            return None
        text = _message_text(last.get("content"))
        if text is None or not text.strip():
            return None
        rest = {k: v for k, v in last.items() if k not in ("content",)}
        scoped_body = dict(body)
        scoped_body["messages"] = [*messages[:-1], rest]
    elif route == "/v1/completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        text = prompt
        scoped_body = {k: v for k, v in body.items() if k != "prompt"}
    else:
        return None
    material = _key_material(route, scoped_body, tenant, namespace, partition, query)
    material["semantic"] = True
    return SemanticParts(hashlib.sha256(canonical_json(material, normalised=normalised)).hexdigest(), text, model)


def short(key_hash: str) -> str:
    """The first 12 hex digits of a key hash: what logs show."""
    return key_hash[:12]
