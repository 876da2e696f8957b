"""Cache-Control request directives."""

from __future__ import annotations

import pytest

from llmcache.proxy.cachecontrol import RequestDirectives, entry_ttl_s, parse_request


def test_parse_request_directives() -> None:
    assert parse_request(None) == RequestDirectives()
    d = parse_request('No-Cache, no-store, max-age="30", only-if-cached, private, x-unknown=1')
    assert (d.no_cache, d.no_store, d.max_age_s, d.only_if_cached) == (True, True, 30, True)
    # A max-age the proxy cannot read is refused (the proxy answers 400), never silently dropped.
    for bad in ("max-age=abc", "max-age=-5", "max-age=1.5", "max-age="):
        with pytest.raises(ValueError, match="max-age must be a whole number"):
            parse_request(bad)


def test_accepts_age_and_ttl_bound() -> None:
    assert RequestDirectives().accepts_age(10_000)
    assert not RequestDirectives(no_cache=True).accepts_age(0)
    d = RequestDirectives(max_age_s=60)
    assert d.accepts_age(60) and not d.accepts_age(61)
    assert entry_ttl_s(d, ttl_bound_s=3600) == 60
    assert entry_ttl_s(RequestDirectives(max_age_s=10**9), ttl_bound_s=3600) == 3600
    assert entry_ttl_s(RequestDirectives(max_age_s=0), ttl_bound_s=3600) == 3600
    assert entry_ttl_s(RequestDirectives(), ttl_bound_s=120) == 120
