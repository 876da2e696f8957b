"""The proxy's own endpoints (``llmcache.proxy.admin``): readiness in plain words, invalidation schema."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from proxy_helpers import CHAT

from llmcache.proxy import admin


def chat(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(CHAT)
    body.update(changes)
    return body


async def readyz(stack: Any) -> tuple[int, dict[str, Any]]:
    async with stack.http.get(stack.proxy_url + "/readyz") as r:
        return r.status, await r.json()


async def test_readyz_says_ok_in_plain_words(proxy_stack) -> None:
    stack = await proxy_stack()
    assert await readyz(stack) == (200, {"status": "ok", "redis": "ok", "upstream": "ok"})


async def test_readyz_degraded_when_redis_goes_away_and_ok_when_back(proxy_stack, redis_factory) -> None:
    server = redis_factory(with_search=False)
    stack = await proxy_stack(redis_url=server.url)
    assert (await readyz(stack))[1]["status"] == "ok"
    port = server.port
    server.stop()
    status, body = await readyz(stack)
    # Still ready (requests are answered, as bypasses), but it says so instead of "closed".
    assert status == 200
    assert body["status"] == "degraded: redis unreachable, serving without cache"
    assert body["redis"].startswith("unreachable") and body["upstream"] == "ok"
    sent, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert sent == 200 and headers["X-LLMCache-Status"] == "bypass"
    back = redis_factory(with_search=False, port=port)
    assert back.url == server.url
    for _ in range(100):  # the breaker probes again after its cooldown (1 s, then doubling)
        if (await readyz(stack))[1]["status"] == "ok":
            break
        await asyncio.sleep(0.1)
    assert await readyz(stack) == (200, {"status": "ok", "redis": "ok", "upstream": "ok"})


async def test_readyz_not_ready_while_the_upstream_is_unreachable(proxy_stack, unused_port: int) -> None:
    stack = await proxy_stack(upstream_url=f"http://127.0.0.1:{unused_port}")
    status, body = await readyz(stack)
    assert status == 503
    assert body["status"] == "upstream unreachable"
    assert body["upstream"] == "unreachable: connection refused" and body["redis"] == "ok"


async def store_three(stack: Any) -> None:
    await stack.post("/v1/chat/completions", CHAT, headers={"Authorization": "Bearer other-key"})
    await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "docs"})
    await stack.post("/v1/chat/completions", chat(model="m2"))


ADMIN = {"Authorization": "Bearer admin-secret"}


async def test_invalidate_by_bare_api_key_matches_the_bearer_header(proxy_stack) -> None:
    stack = await proxy_stack()
    await store_three(stack)
    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"tenant": "other-key"},
                               headers=ADMIN) as r:
        body = await r.json()
    assert r.status == 200
    assert body["deleted"] == 1 and body["scanned"] == 3
    # What matched is said, with tenants as salted ids, never the key itself.
    assert set(body["matched"]) == {"tenant_id"} and "other-key" not in str(body)
    assert all(len(t) == 32 for t in body["matched"]["tenant_id"])
    only = {"Cache-Control": "only-if-cached"}
    other_tenant = {**only, "Authorization": "Bearer other-key"}
    assert (await stack.post("/v1/chat/completions", CHAT, headers=other_tenant))[0] == 504
    assert (await stack.post("/v1/chat/completions", CHAT, headers={**only, "X-LLMCache-Namespace": "docs"}))[0] == 200


@pytest.mark.parametrize(("spec", "says"), [
    ({"tenantt": "x"}, "unknown field(s) 'tenantt'; the fields are tenant, tenant_id, namespace, model, all"),
    ({"namespace": 3}, "field 'namespace' must be a string"),
    ({"model": ""}, "field 'model' must be a non-empty string"),
    ({"all": True, "model": "m"}, '{"all": true} deletes everything and takes no other field'),
    ({"all": False}, '{"all": true} deletes everything and takes no other field'),
    ({"tenant": "a", "tenant_id": "b"}, "give tenant or tenant_id, not both"),
    ({}, "name what to invalidate"),
    (["docs"], "body must be a JSON object"),
])
async def test_invalidate_refuses_a_body_outside_the_schema(proxy_stack, spec: Any, says: str) -> None:
    stack = await proxy_stack()
    await store_three(stack)
    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json=spec, headers=ADMIN) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"]
    assert (await stack.post("/v1/chat/completions", CHAT, headers={"X-LLMCache-Namespace": "docs"}))[1][
        "X-LLMCache-Status"] == "hit"  # nothing was deleted


def test_invalidate_schema_fields_are_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in admin.INVALIDATE_FIELDS:
        assert f"`{name}`" in readme, name
