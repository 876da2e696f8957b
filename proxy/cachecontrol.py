"""Request ``Cache-Control`` directives, as a shared cache in front of an API reads them.

=================  =====================================================================
``no-cache``       do not serve from the cache; call the upstream and store the answer
``no-store``       do not store this answer (a stored one may still be served)
``max-age=N``      serve only entries at most N s old; store this answer for
                   ``min(N, ttl)`` s (the policy's TTL is the upper bound)
``only-if-cached`` never call the upstream: a miss answers 504
=================  =====================================================================

Unknown directives are ignored (RFC 9111 §5.2). A ``max-age`` that is not a whole number of
seconds raises :class:`ValueError` (the proxy answers 400, see :mod:`llmcache.proxy.controls`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestDirectives", "entry_ttl_s", "parse_request"]


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    no_cache: bool = False
    no_store: bool = False
    max_age_s: int | None = None
    only_if_cached: bool = False

    def accepts_age(self, age_s: float) -> bool:
        """True when an entry of ``age_s`` seconds may be served to this request."""
        return not self.no_cache and (self.max_age_s is None or age_s <= self.max_age_s)


_NONE = RequestDirectives()


def parse_request(header: str | None) -> RequestDirectives:
    """Parse a request's ``Cache-Control`` header value (``None`` → no directives).

    Raises :class:`ValueError` when ``max-age`` is not a whole number of seconds.
    """
    if not header:
        return _NONE
    no_cache = no_store = only = False
    max_age: int | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "only-if-cached":
            only = True
        elif name == "max-age":
            v = value.strip().strip('"')
            if not (v.isascii() and v.isdigit()):
                raise ValueError(f"max-age must be a whole number of seconds such as max-age=600, got {part.strip()!r}")
            max_age = int(v)
    return RequestDirectives(no_cache=no_cache, no_store=no_store, max_age_s=max_age, only_if_cached=only)


def entry_ttl_s(directives: RequestDirectives, *, ttl_bound_s: int) -> int:
    """TTL to store this request's answer with: ``max-age`` when positive and within the bound."""
    if directives.max_age_s is not None and directives.max_age_s > 0:
        return min(directives.max_age_s, ttl_bound_s)
    return ttl_bound_s
