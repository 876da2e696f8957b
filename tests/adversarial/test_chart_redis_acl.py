"""Issue 14, item 1: the chart's Redis is no longer open. Its ACL users, applied to a real Redis.

The chart renders ``users.acl`` (templates/_redis.tpl ``llmcache.redisAcl``) and the
passwords into a Secret. Here that file is loaded by a real Valkey with the search module
(``--aclfile``), and:

- without a password a client may PING and nothing else (the probes);
- the sidecar user cannot rewrite policies, forge policy events, or run admin commands;
- the operator user cannot flush, reconfigure or script the server;
- and both users can still do their real work: a real proxy (exact + semantic + policy
  watch + stats + invalidation + cross-pod lease) and the operator's publish, status,
  eviction and sweep, with ``ACL LOG`` empty afterwards (no command was denied).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from chart_kit import proxy_stack  # noqa: F401 - fixture
from controlplane.fixtures import ControlPlaneMissing, find_binaries

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction, publish, status, sweep
from llmcache.policy import PolicyDocument, parse_spec
from llmcache.redis_server import EmbeddedRedis

pytestmark = pytest.mark.controlplane  # helm comes from `make controlplane`

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmcache"
KS = Keyspace()
#: A test-only admin to read ACL LOG; the chart itself ships no user that may.
ADMIN = "user testadmin on >admin-pw ~* &* +@all"


@dataclass
class AclRedis:
    server: EmbeddedRedis
    operator_password: str
    sidecar_password: str

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.server.port}/0"

    @property
    def operator_url(self) -> str:
        return self.url("operator", self.operator_password)

    @property
    def sidecar_url(self) -> str:
        return self.url("sidecar", self.sidecar_password)

    def client(self, user: str | None = None, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.server.port, username=user, password=password)

    def acl_log(self) -> list[Any]:
        admin = self.client("testadmin", "admin-pw")
        try:
            return list(admin.execute_command("ACL", "LOG"))
        finally:
            admin.close()


@pytest.fixture(scope="module")
def rendered_auth() -> dict[str, str]:
    try:
        helm = find_binaries().helm
    except ControlPlaneMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    proc = subprocess.run([str(helm), "template", "llm", str(CHART), "--namespace", "ns1"], capture_output=True,
                          text=True, timeout=120, check=False, env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    secrets = [d for d in yaml.safe_load_all(proc.stdout)
               if d and d["kind"] == "Secret" and d["metadata"]["name"].endswith("-redis-auth")]
    assert len(secrets) == 1
    return dict(secrets[0]["stringData"])


@pytest.fixture
def acl_redis(rendered_auth: dict[str, str], redis_factory: Callable[..., EmbeddedRedis],
              tmp_path: Path) -> Iterator[AclRedis]:
    acl = tmp_path / "users.acl"
    acl.write_text(rendered_auth["users.acl"] + "\n" + ADMIN + "\n")
    server = redis_factory(with_search=True, extra_args=["--aclfile", str(acl)])
    yield AclRedis(server, rendered_auth["operator-password"], rendered_auth["sidecar-password"])


def denied(client: redis.Redis, *command: Any) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        # DEBUG and MODULE are also off server-wide ("... command not allowed"): denied either way.
        return "NOPERM" in str(exc) or "no permissions" in str(exc).lower() or "command not allowed" in str(exc)
    return False


ADMIN_COMMANDS = [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "maxmemory", "1"),
                  ("KEYS", "*"), ("ACL", "LIST"), ("ACL", "SETUSER", "x", "on"), ("DEBUG", "SLEEP", "0"),
                  ("MODULE", "LIST"), ("FUNCTION", "FLUSH"), ("SWAPDB", "0", "1"), ("SHUTDOWN",),
                  ("MONITOR",), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"), ("SAVE",),
                  ("REPLICAOF", "127.0.0.1", "1")]


def test_a_client_without_password_may_only_ping(acl_redis: AclRedis) -> None:
    anonymous = acl_redis.client()
    try:
        assert anonymous.ping() is True  # what the readiness probe needs, and all it gets
        for command in [("GET", "llmcache:e:x"), ("HGETALL", "llmcache:policies:team"),
                        ("SET", "llmcache:e:x", "1"), ("FT.SEARCH", "llmcache:vidx", "*"), ("SCAN", "0"),
                        ("SUBSCRIBE", "llmcache:policies:events"), *ADMIN_COMMANDS]:
            assert denied(anonymous, *command), command
        with pytest.raises(redis.exceptions.AuthenticationError):
            acl_redis.client("sidecar", "wrong-password").ping()
    finally:
        anonymous.close()


def test_sidecar_user_reads_policies_but_cannot_rewrite_them_or_administer(acl_redis: AclRedis) -> None:
    operator = acl_redis.client("operator", acl_redis.operator_password)
    sidecar = acl_redis.client("sidecar", acl_redis.sidecar_password)
    try:
        operator.hset("llmcache:policies:team", "chat", "{}")
        assert sidecar.hgetall("llmcache:policies:team") == {b"chat": b"{}"}
        assert denied(sidecar, "HSET", "llmcache:policies:team", "chat", "forged")
        assert denied(sidecar, "HDEL", "llmcache:policies:team", "chat")
        assert denied(sidecar, "DEL", "llmcache:policies:team")
        assert denied(sidecar, "PUBLISH", "llmcache:policies:events", "{}")  # no forged change events
        assert denied(sidecar, "SET", "somebody-elses:key", "1")  # outside the prefix
        assert denied(sidecar, "GET", "somebody-elses:key")
        assert denied(sidecar, "EVAL", "return redis.call('HSET', KEYS[1], 'chat', 'x')", 1,
                      "llmcache:policies:team")  # not through a script either
        for command in ADMIN_COMMANDS:
            assert denied(sidecar, *command), command
        assert operator.hget("llmcache:policies:team", "chat") == b"{}"
    finally:
        operator.close()
        sidecar.close()


def test_operator_user_cannot_administer_the_server(acl_redis: AclRedis) -> None:
    operator = acl_redis.client("operator", acl_redis.operator_password)
    try:
        for command in ADMIN_COMMANDS:
            assert denied(operator, *command), command
        assert denied(operator, "SET", "somebody-elses:key", "1")
        assert denied(operator, "FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() end)")
    finally:
        operator.close()


CHAT = {"model": "stub-model", "temperature": 0, "messages": [
    {"role": "system", "content": "You answer questions about data structures."},
    {"role": "user", "content": "How do I reverse a linked list in Python?"}]}
PARAPHRASE = {**CHAT, "messages": [CHAT["messages"][0],
                                   {"role": "user", "content": "How can I reverse a linked list in Python?"}]}


async def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def test_proxy_and_operator_do_their_work_under_their_users(acl_redis: AclRedis, proxy_stack: Any,
                                                                  tmp_path: Path) -> None:
    op = aioredis.Redis.from_url(acl_redis.operator_url)
    try:
        doc = PolicyDocument(namespace="team", name="chat", generation=1, created_s=time.time(),
                             spec=parse_spec({"selector": {"matchLabels": {"app": "chat"}}, "mode": "Both",
                                              "eviction": {"maxEntries": 100}}))
        await publish.publish_policy(op, KS, doc)

        labels = tmp_path / "labels"
        labels.write_text('app="chat"\n')
        stack = await proxy_stack(redis_url=acl_redis.sidecar_url, cache_mode="both", semantic_timeout_s=5.0,
                                  cache_single_flight_lease=True, policy_pod_namespace="team",
                                  policy_pod_name="chat-0", policy_pod_labels_file=str(labels))
        assert stack.state.semantic is not None, "the semantic cache did not start under the sidecar user"
        # The sidecar read the policy and acknowledged it.
        await _wait(lambda: status.synced_pods(op, KS, "team", "chat", doc.config_hash), "the sidecar's ack")

        _, headers, first = await stack.post("/v1/chat/completions", CHAT)
        assert headers["X-LLMCache-Status"] == "miss"
        _, headers, again = await stack.post("/v1/chat/completions", CHAT)
        assert headers["X-LLMCache-Status"] == "hit" and again == first

        async def semantic_hit() -> bool:
            _, h, body = await stack.post("/v1/chat/completions", PARAPHRASE,
                                          headers={"Cache-Control": "only-if-cached"})
            return h.get("X-LLMCache-Status") == "semantic-hit" and body == first

        await _wait(semantic_hit, "a semantic hit (vector doc indexed)")
        async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats",
                                  headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200 and (await r.json())["namespaces"] is not None

        # The operator's periodic work on that data.
        assert (await eviction.group_usage(op, KS, "team/chat"))[0] >= 1
        await eviction.enforce_limits(op, KS, "team/chat", eviction.EvictionLimits(max_entries=100))
        await sweep.sweep_once(op, KS, eviction.EvictionLimits(max_entries=100), cursors={})
        await status.policy_counters(op, KS, "team/chat")

        async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"all": True},
                                   headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200 and (await r.json())["deleted"] >= 1
        await publish.unpublish_policy(op, KS, "team", "chat", generation=1)
        await eviction.purge_group(op, KS, "team/chat")

        assert acl_redis.acl_log() == [], "a command was denied to the proxy or the operator"
    finally:
        await op.aclose()


@pytest.mark.parametrize("credentials", ["", "sidecar:wrong-password@"], ids=["no-password", "wrong-password"])
async def test_a_sidecar_without_valid_credentials_fails_open(acl_redis: AclRedis, proxy_stack: Any,
                                                              credentials: str) -> None:
    """An old or misconfigured sidecar is refused by Redis, and answers anyway (uncached), never a 5xx."""
    stack = await proxy_stack(redis_url=f"redis://{credentials}127.0.0.1:{acl_redis.server.port}/0")
    for _ in range(2):
        status, headers, body = await stack.post("/v1/chat/completions", CHAT)
        assert status == 200 and headers["X-LLMCache-Status"] in ("miss", "bypass"), (status, headers, body)
    assert await stack.upstream_count() == 2  # nothing was served from (or stored in) the cache
