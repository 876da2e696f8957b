"""Exact keys: what changes them and what does not."""

from __future__ import annotations

import json

import pytest

from llmcache import keys

CHAT = "/v1/chat/completions"
BASE = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0}


def k(body: dict, tenant: str = "t", ns: str = "") -> str:
    return keys.exact_key(CHAT, body, tenant=tenant, namespace=ns)


def test_transport_fields_do_not_change_the_key() -> None:
    assert k(BASE) == k({**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"})


def test_key_order_and_number_form_do_not_matter() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert k(BASE) == k(reordered) == k({**BASE, "temperature": 0.0})


@pytest.mark.parametrize("change", [
    {"model": "m2"}, {"temperature": 0.5}, {"top_p": 0.9}, {"seed": 1}, {"n": 2}, {"stop": ["x"]},
    {"max_tokens": 5}, {"logprobs": True}, {"logit_bias": {"1": 2}}, {"tools": [{"type": "function"}]},
    {"tool_choice": "auto"}, {"response_format": {"type": "json_object"}}, {"some_future_field": 1},
    {"messages": [{"role": "system", "content": "be long"}, {"role": "user", "content": "hi"}]},
])
def test_output_shaping_fields_change_the_key(change: dict) -> None:
    assert k(BASE) != k({**BASE, **change})


def test_tenant_namespace_and_route_partition() -> None:
    assert k(BASE, tenant="a") != k(BASE, tenant="b")
    assert k(BASE, ns="x") != k(BASE, ns="y")
    assert keys.exact_key("/v1/completions", BASE, tenant="t") != k(BASE)
    # The pod's namespace (partition) is in the key too, not only in the Redis key prefix and the entry.
    route = "/v1/chat/completions"
    assert (keys.exact_key(route, BASE, tenant="t", partition="team-a")
            != keys.exact_key(route, BASE, tenant="t", partition="team-b"))


def test_tenant_id_is_salted_and_never_the_credential() -> None:
    a = keys.tenant_id("Bearer sk-secret", b"salt1")
    assert "sk-secret" not in a and len(a) == 32
    assert a != keys.tenant_id("Bearer sk-secret", b"salt2")
    assert keys.tenant_id(None, b"s") == keys.ANONYMOUS_TENANT


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(ValueError):
        k({**BASE, "temperature": float("nan")})


def test_semantic_parts_split_history_from_last_message() -> None:
    p = keys.semantic_parts(CHAT, BASE, tenant="t")
    assert p is not None and p.text == "hi" and p.model == "m"
    other_q = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "hello there"}]}
    assert keys.semantic_parts(CHAT, other_q, tenant="t").scope_hash == p.scope_hash
    other_sys = {**BASE, "messages": [{"role": "system", "content": "x"}, BASE["messages"][1]]}
    assert keys.semantic_parts(CHAT, other_sys, tenant="t").scope_hash != p.scope_hash
    assert keys.semantic_parts(CHAT, BASE, tenant="u").scope_hash != p.scope_hash
    assert keys.semantic_parts(CHAT, {**BASE, "model": "z"}, tenant="t").scope_hash != p.scope_hash
    tool_last = {**BASE, "messages": [*BASE["messages"], {"role": "tool", "content": "r"}]}
    assert keys.semantic_parts(CHAT, tool_last, tenant="t") is None
    assert keys.semantic_parts("/v1/embeddings", {"model": "m", "input": "x"}, tenant="t") is None


def test_subclassed_containers_normalise_like_plain_ones() -> None:
    from collections import OrderedDict

    assert keys.canonical_json(OrderedDict(b=1.0, a=[True, None])) == keys.canonical_json({"a": [True, None], "b": 1})


@pytest.mark.parametrize("raw", [
    b'{"model": "m", "temperature": 0.0, "top_p": 1.0, "messages": [{"role": "user", "content": "h\\u00e9 \xc3\xa9"}]}',
    b'{"n": 3, "x": 2.5, "y": -0.0, "z": 1e3, "big": 12345678901234567890.0, "nested": {"b": [1.0, {"c": 0.1}]}}',
    b'  {"a": true, "b": null, "c": [], "d": {}}  ',
    '{"s": "text"}'.encode("utf-16"),
])
def test_parsed_bodies_hash_as_the_canonical_form_does(raw: bytes) -> None:
    """parse_json normalises numbers while parsing, so the key needs no second walk, and is the same."""
    import json

    parsed = keys.parse_json(raw)
    assert parsed == json.loads(raw)  # the same values (1.0 == 1)
    assert keys.canonical_json(parsed, normalised=True) == keys.canonical_json(json.loads(raw))
    assert keys.exact_key("/v1/chat/completions", parsed, tenant="t", normalised=True) == \
        keys.exact_key("/v1/chat/completions", json.loads(raw), tenant="t")


def test_non_finite_numbers_parse_but_never_hash() -> None:
    for raw in (b'{"temperature": NaN}', b'{"x": Infinity}', b'{"x": 1e999}'):
        with pytest.raises(ValueError):
            keys.exact_key("/v1/completions", keys.parse_json(raw), tenant="t", normalised=True)


def test_parse_json_refuses_nesting_deeper_than_the_limit_whatever_the_stack() -> None:
    deep = '{"x":' + "[" * (keys.MAX_JSON_DEPTH + 1) + "]" * (keys.MAX_JSON_DEPTH + 1) + "}"
    with pytest.raises(RecursionError):
        keys.parse_json(deep)
    at_limit = "[" * keys.MAX_JSON_DEPTH + "]" * keys.MAX_JSON_DEPTH
    assert keys.parse_json(at_limit) is not None


@pytest.mark.parametrize("pattern", ["[", '{"k":', '[{"k":', '{"k":[', '[[{"k":'])
@pytest.mark.parametrize("leaf", ["1", "2.5", '"s"'])
def test_nesting_is_measured_the_same_however_it_is_built(pattern: str, leaf: str) -> None:
    """parse_body's walk measures depth (objects in lists are looked at inline): refused past the limit, read at it."""
    units = ["[" if c == "[" else '{"k":' for c in pattern.replace('{"k":', "{")]

    def nested(levels: int) -> str:
        text, closes = "", ""
        for i in range(levels):
            unit = units[i % len(units)]
            text += unit
            closes = ("]" if unit == "[" else "}") + closes
        return text + leaf + closes

    with pytest.raises(RecursionError):
        keys.parse_body(nested(keys.MAX_JSON_DEPTH + 1).encode())
    assert keys.parse_body(nested(keys.MAX_JSON_DEPTH).encode())[0] == json.loads(nested(keys.MAX_JSON_DEPTH))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"content": "[" * 5000 + '\\"{' * 100, "n": [[1]]})
    assert keys.parse_json(text)["n"] == [[1]]


@pytest.mark.parametrize("body", [
    BASE,
    {**BASE, "stream": True, "user": "u", "temperature": 0.25, "stop": ["\u2028", "é", "\"q\""], "n": None},
    {"model": "m", "prompt": "x", "logit_bias": {"2": -1, "10": 1}, "nested": [[{"b": 1, "a": [True, False]}]]},
    {},
])
@pytest.mark.parametrize("scope", [
    {"tenant": "t"}, {"tenant": "t2", "namespace": "ns é", "partition": "app", "query": "a=1&b=%22"},
    {"tenant": "t", "query": "q=" + "x" * 2000},  # past the remembered tails' length bound
])
def test_exact_key_is_the_digest_of_the_whole_canonical_material(body: dict, scope: dict) -> None:
    """exact_key serialises only the body per request and remembers the rest: the same digest as the
    canonical JSON of the whole material (keys of entries already stored stay valid)."""
    import hashlib

    material = keys._key_material(CHAT, body, scope["tenant"], scope.get("namespace", ""),
                                  scope.get("partition", ""), scope.get("query", ""))
    want = hashlib.sha256(keys.canonical_json(material)).hexdigest()
    assert keys.exact_key(CHAT, body, **scope) == want
    parsed = keys.parse_json(json.dumps(body))
    assert keys.exact_key(CHAT, parsed, **scope, normalised=True) == want
    parsed, float_free = keys.parse_body(json.dumps(body).encode())
    assert float_free == (not isinstance(body.get("temperature"), float))
    assert keys.exact_key(CHAT, parsed, **scope, normalised=True, float_free=float_free) == want
    assert keys.exact_key(CHAT, body, **scope) == want  # a second time: from the remembered tail


@pytest.mark.parametrize("text", [
    '{"a": [1, 2.5, "é"], "b": null}', "[1,2]", ' {"a": 1} ', '{"a": 1}\n', '{"a": 1} {"b": 2}', '{"a": 1}]',
    "\ufeff{}", '{"a": }', "{", "}", "", "[]", '"s"', "1", '{"a": NaN}',
])
def test_loads_is_json_loads(text: str) -> None:
    """keys.loads skips json.loads's wrapper where it can: the same value, or the same kind of error."""
    try:
        want: object = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            keys.loads(text)
    else:
        assert keys.loads(text) == want


def _json_module_parse(raw: bytes | str) -> object:
    """parse_json as it was before orjson: the json module with whole floats as ints."""
    if isinstance(raw, bytes):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return json.loads(raw, parse_float=keys._parse_float)


def _typed(value: object) -> object:
    """``value`` with every number's type beside it (``1 == 1.0`` would hide a difference)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


@pytest.mark.parametrize("raw", [
    b'{"a": 1.0, "b": -0.0, "c": 2.5, "d": [0.0, 1e5, 1E2, 0.1e1]}', b'{"t": 0, "m": [{"c": "x"}]}',
    b'[18446744073709551616]', b'[18446744073709551615]', b'[-9223372036854775809]', b'[9223372036854775808]',
    b'[1e19]', b'[9007199254740993.0]', b'[9007199254740992.0]', b'{"x": 1e999}', b'{"x": NaN}', b'[-Infinity]',
    b'["\\ud800"]', '["\ud800"]'.encode("utf-8", "surrogatepass"), b'\xef\xbb\xbf{"a": 1.0}',
    '{"a": 2.0}'.encode("utf-16"),
    b"\xff", b'{"a": 1} x', b"", b" [1.0] ", b"1.0", b"2.5", b'"s"', b"null", b"[1e-7, 123456789012345678901234567890]",
    '{"é": "😀", "\u2028": [true, false, null]}'.encode(), "[1.0, 2]", '{"k": [3.0]}',
])
def test_parse_body_gives_the_json_modules_values_and_errors(raw: bytes | str) -> None:
    """orjson's parse, settled: the same values, number types and errors as the json module's parse_json."""
    try:
        want = _json_module_parse(raw)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            keys.parse_body(raw)
        return
    value, float_free = keys.parse_body(raw)
    assert _typed(value) == _typed(want)
    has_float = "('float'," in repr(_typed(want))
    assert not (float_free and has_float)  # a promise; False is always safe (the json module's serialiser)


@pytest.mark.parametrize(("raw", "float_free"), [
    (b'{"t": 0, "m": [{"c": "x"}]}', True), (b'{"a": 1.0, "k": [3.0, {"z": -0.0}]}', True),
    (b'{"a": [2.5]}', False), (b"[18446744073709551615, -9223372036854775808]", True), (b"[1e19]", False),
])
def test_parse_body_says_whether_a_float_is_left(raw: bytes, float_free: bool) -> None:
    assert keys.parse_body(raw)[1] is float_free


def test_float_free_bodies_hash_as_the_json_module_serialises_them() -> None:
    """exact_key(float_free=True) writes the body with orjson: byte for byte the json module's canonical
    text on generated bodies of strings (escapes, astral and unpaired-looking characters, a BOM),
    integers to the 64-bit edges, booleans, null, nested objects with keys that sort by code point."""
    import random

    rnd = random.Random(20261208)
    alphabet = ["a", "B", "z", "é", "ß", "\u00ff", "\u0100", "\u4e2d", "\uffff", "\U0001f600", "\U00010000", "_",
                " ", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "~", "\ufeff", "\u2028"]

    def text() -> str:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 5)))

    def value(depth: int = 0) -> object:
        r = rnd.random()
        if depth > 3 or r < 0.3:
            return rnd.choice([text(), rnd.randint(-2**63, 2**64 - 1), rnd.randint(-9, 9), True, False, None])
        if r < 0.65:
            return {text(): value(depth + 1) for _ in range(rnd.randint(0, 5))}
        return [value(depth + 1) for _ in range(rnd.randint(0, 4))]

    for _ in range(3000):
        body = {text(): value() for _ in range(rnd.randint(0, 5))}
        parsed, float_free = keys.parse_body(json.dumps(body).encode())
        assert float_free
        assert keys.exact_key(CHAT, parsed, tenant="t", normalised=True, float_free=True) == keys.exact_key(
            CHAT, body, tenant="t")


@pytest.mark.parametrize("text", [
    '{"usage": {"prompt_tokens": 3}, "x": [1.5, -0.0, "é😀"]}', '{"a": NaN}', '["\\ud800"]', "{", '{"a": 1} x',
])
def test_read_json_is_json_loads_for_what_it_reads(text: str) -> None:
    try:
        want = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            keys.read_json(text)
        with pytest.raises(type(exc)):
            keys.read_json(text.encode())
        return
    assert repr(keys.read_json(text)) == repr(want)
    assert repr(keys.read_json(text.encode())) == repr(want)


def test_read_json_reads_an_integer_beyond_64_bits_as_a_number() -> None:
    """orjson's one difference, stated in read_json's contract: the value, as a float."""
    assert keys.read_json("[18446744073709551616]") == [18446744073709551616.0]


_EXACT_TEXTS = [
    b'{"a": 1.0, "b": -0.0, "c": 2.5, "d": [0.0, 1e5, 1E2, 0.1e1, 1e-7]}', b'{"a": 1, "a": 2}',
    b'[18446744073709551616]', b'[18446744073709551615]', b'[-9223372036854775809]', b'[9223372036854775808]',
    b'[123456789012345678901234567890]', b'{"id": "chatcmpl-12345678901234567890"}', b'[1234567890123456789]',
    b'[0.12345678901234567890123]', b'[1e19]', b'{"x": 1e999}', b'{"x": NaN}', b'[-Infinity]', b'["\\ud800"]',
    b'["\\ud83d\\ude00"]', '["\ud800"]'.encode("utf-8", "surrogatepass"), b'\xef\xbb\xbf{"a": 1}', b"\xff",
    b'{"a": 1} x', b"", b" [1.0] ", b"1.0", b'"s"', b"null", b'"\x01"', '{"é": "😀", "\u2028": [true, null]}'.encode(),
    b"[" * 1100 + b"]" * 1100,
]


@pytest.mark.parametrize("raw", _EXACT_TEXTS)
def test_loads_exact_is_json_loads_value_for_value_and_type_for_type(raw: bytes) -> None:
    """orjson where it gives json.loads's values; a long digit run (a big integer it would make a float) or
    anything it refuses goes to the json module, with the json module's errors."""
    try:
        want = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            keys.loads_exact(raw)
        return
    assert _typed(keys.loads_exact(raw)) == _typed(want)
