"""Issue 14, item 1 (last part): a published policy rewritten in Redis is restored by content, not generation.

Anyone able to write ``{p}:policies:{ns}`` (before Redis had ACL users: any pod) could keep the
generation and change the spec, e.g. widen the selector or disable caching for a team. The
operator's status timer compares a hash of the stored bytes with its own document and
republishes on any difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from operator_kit import crds, ns, start_operator  # noqa: F401 - fixtures
from opkit import cachepolicy, wait_for

pytestmark = pytest.mark.controlplane


def _stored(r: redis.Redis, ns: str, name: str) -> bytes | None:
    return r.hget(f"llmcache:policies:{ns}", name)  # type: ignore[return-value]


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda d: d["spec"].update(ttlSeconds=1), id="same-generation-other-ttl"),
    pytest.param(lambda d: d["spec"].update(selector={}), id="same-generation-wider-selector"),
    pytest.param(lambda d: d["spec"].update(suspend=True), id="same-generation-suspended"),
])
def test_rewritten_policy_document_is_restored(crds: Any, ns: str, redis_plain_url: str,
                                               start_operator: Callable[..., Any],
                                               tamper: Callable[[dict[str, Any]], None]) -> None:
    r = redis.Redis.from_url(redis_plain_url)
    try:
        op = start_operator(ns, redis_plain_url, status_interval_s=0.5)
        crds.apply(cachepolicy("chat", {"selector": {"matchLabels": {"app": "chat"}}, "ttlSeconds": 600}),
                   namespace=ns)
        original = wait_for(lambda: _stored(r, ns, "chat"), what="publication", logs=[op.log])

        doc = json.loads(original)
        tamper(doc)
        forged = json.dumps(doc, sort_keys=True)
        assert json.loads(forged)["generation"] == json.loads(original)["generation"]
        r.hset(f"llmcache:policies:{ns}", "chat", forged)

        wait_for(lambda: _stored(r, ns, "chat") == original, what="the operator to restore the document",
                 logs=[op.log])
        assert json.loads(_stored(r, ns, "chat") or b"{}")["spec"]["ttlSeconds"] == 600
    finally:
        r.close()
