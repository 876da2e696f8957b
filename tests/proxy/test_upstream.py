"""upstream.filter_headers: what is copied from an answer and from a request being forwarded."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmcache.proxy import upstream


def by_hand(pairs: list[tuple[str, str]], *, drop: frozenset[str] = frozenset(),
            to_upstream: bool = False) -> list[tuple[str, str]]:
    """The rule written out plainly: hop-by-hop, recomputed, Connection-named, ``drop`` (and X-LLMCache-*
    towards the upstream) left out; order and repeats kept."""
    named = {t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")}
    skip = upstream.HOP_BY_HOP | {"host", "content-length"} | drop | named
    return [(k, v) for k, v in pairs if k.lower() not in skip
            and not (to_upstream and k.lower().startswith("x-llmcache-"))]


@pytest.mark.parametrize("pairs", [
    [("Content-Type", "application/json"), ("Content-Length", "42"), ("Date", "d"), ("Server", "s")],
    [("content-type", "a"), ("TRANSFER-ENCODING", "chunked"), ("Set-Cookie", "a=1"), ("Keep-Alive", "timeout=5"),
     ("Set-Cookie", "b=2"), ("Trailer", "x"), ("X-LLMCache-Cached-Tokens", "12"), ("Upgrade", "h2c")],
    [("Connection", "close, X-Hop"), ("X-Hop", "1"), ("X-Kept", "2"), ("Proxy-Authenticate", "p")],
    [],
])
@pytest.mark.parametrize("to_upstream", [False, True])
@pytest.mark.parametrize("drop", [frozenset(), frozenset({"date", "set-cookie"})])
def test_filter_headers_follows_the_rule(pairs: list[tuple[str, str]], to_upstream: bool,
                                         drop: frozenset[str]) -> None:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    got = list(upstream.filter_headers(headers, drop=drop, to_upstream=to_upstream).items())
    assert got == by_hand(pairs, drop=drop, to_upstream=to_upstream)
