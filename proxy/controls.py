"""Request control headers: parsed and checked once, before anything else happens to a request.

==================================  ========================================================
``Cache-Control``                   ``no-cache``, ``no-store``, ``max-age=N``,
                                    ``only-if-cached`` (:mod:`llmcache.proxy.cachecontrol`)
``X-LLMCache-Namespace``            partitions entries inside a tenant; at most 256
                                    printable characters
``X-LLMCache-Similarity-Threshold`` a cosine similarity in [0, 1]; a request may only
                                    tighten the policy's threshold, never loosen it
==================================  ========================================================

One rule for all of them: a control the proxy acts on with a value it cannot read is
refused with 400 ``invalid_control_header`` naming the header (a typo must not silently
change what is cached). Directives of ``Cache-Control`` that the proxy does not act on
(``no-transform``, ``max-stale``, …) are ignored, as RFC 9111 §5.2 asks of every cache.

Every header value must be UTF-8 (:func:`check_encoding`): aiohttp hands other bytes over as
surrogates, which no hash, comparison or forwarded header can use. Such a request gets 400
``invalid_header`` naming the header, on every route, before anything reads its headers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from llmcache.proxy import cachecontrol

__all__ = ["CONTROL_PREFIX", "NAMESPACE_HEADER", "THRESHOLD_HEADER", "InvalidControl", "RequestControls",
           "check_encoding", "parse"]

#: Every request header of the proxy's own starts with it; none of them is forwarded upstream.
CONTROL_PREFIX = "x-llmcache-"
NAMESPACE_HEADER = "X-LLMCache-Namespace"
THRESHOLD_HEADER = "X-LLMCache-Similarity-Threshold"
MAX_NAMESPACE_CHARS = 256
#: The directives of a request without ``Cache-Control``: frozen, so one instance serves as every default.
_NO_DIRECTIVES = cachecontrol.RequestDirectives()


class InvalidControl(ValueError):
    """A control header has a value the proxy cannot act on; ``header`` names it, ``code`` is the
    error code of the 400 (``invalid_control_header``, or ``invalid_header`` for an undecodable value)."""

    def __init__(self, header: str, message: str, *, code: str = "invalid_control_header") -> None:
        super().__init__(f"{header}: {message}")
        self.header = header
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestControls:
    """What a request's headers ask of the cache."""

    namespace: str = ""
    directives: cachecontrol.RequestDirectives = _NO_DIRECTIVES
    similarity_threshold: float | None = None
    """The threshold the request asks for, or ``None``; applied as ``max(policy, asked)``."""


#: The controls of a request without any control header (frozen: one instance serves them all).
_NO_CONTROLS = RequestControls()


def check_encoding(headers: Mapping[str, str]) -> None:
    """Raise :class:`InvalidControl` naming the first header whose value is not valid UTF-8."""
    if "".join(headers.values()).isascii():  # the common case: every value ASCII, one pass in C
        return
    for name, value in headers.items():
        if not value.isascii():  # the common case ends here, in C
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidControl(name, "the value is not valid UTF-8; send ASCII (or UTF-8) header "
                                           "values", code="invalid_header") from None


def parse(headers: Mapping[str, str]) -> RequestControls:
    """Read every control header; raise :class:`InvalidControl` for the first unreadable one.

    Checks first that every header (the tenant header too) is UTF-8 (:func:`check_encoding`).
    """
    check_encoding(headers)
    namespace = headers.get(NAMESPACE_HEADER)
    cache_control = headers.get("Cache-Control")
    asked = headers.get(THRESHOLD_HEADER)
    if namespace is None and cache_control is None and asked is None:
        return _NO_CONTROLS  # most requests: no control header at all
    if namespace is None:
        namespace = ""
    if len(namespace) > MAX_NAMESPACE_CHARS or not namespace.isprintable():
        raise InvalidControl(NAMESPACE_HEADER, f"must be at most {MAX_NAMESPACE_CHARS} printable characters")
    try:
        directives = cachecontrol.parse_request(cache_control)
    except ValueError as exc:
        raise InvalidControl("Cache-Control", str(exc)) from exc
    threshold: float | None = None
    if asked is not None:
        try:
            threshold = float(asked)
        except ValueError:
            threshold = math.nan
        if not 0.0 <= threshold <= 1.0:  # also refuses nan and inf
            raise InvalidControl(THRESHOLD_HEADER, f"must be a cosine similarity between 0 and 1 such as 0.95, "
                                                   f"got {asked!r}")
    return RequestControls(namespace=namespace, directives=directives, similarity_threshold=threshold)
