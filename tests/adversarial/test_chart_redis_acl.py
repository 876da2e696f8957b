"""The chart's Redis ACL and the namespace users the operator makes, applied to a real Redis.

Issue 14, item 1: the chart's Redis is no longer open. Issue 18, item 1: one namespace can no
longer read or poison another's cache. The chart renders ``users.acl`` (templates/_redis.tpl
``llmcache.redisAcl``: ``default`` and ``operator``) and its password into a Secret; here that
file is loaded by a real Valkey with the search module (``--aclfile``), and the operator's
own code (:mod:`llmcache.operator.partitions`, running as the chart's operator user) gives each
app namespace its Redis user. Then:

- without a password a client may PING and nothing else (the probes);
- a namespace's user reads its policies but cannot rewrite them, forge events or administer;
- the operator user cannot flush, reconfigure or script the server;
- what a pod of namespace A holds (its Secret's URL) reaches nothing of namespace B: not its
  entries, vector documents, bookkeeping, stats, acks, policies, index or channel, neither
  read, listed (SCAN, KEYS, FT._LIST), written nor deleted, and B keeps serving its own answer;
- and both users still do their real work: a real proxy (exact + semantic + policy watch +
  stats + invalidation + cross-pod lease) and the operator's publish, status, eviction, sweep
  and index creation, with ``ACL LOG`` empty afterwards (no command was denied);
- the users come back after Redis restarts empty, and go once their namespace has no pods.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
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
from llmcache.operator import credentials, eviction, partitions, publish, status, sweep, webhook
from llmcache.operator.settings import NamespaceUserSettings, SidecarSettings
from llmcache.policy import PolicyDocument, parse_spec
from llmcache.redis_server import EmbeddedRedis

pytestmark = pytest.mark.controlplane  # helm comes from `make controlplane`

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmcache"
KS = Keyspace()
#: A test-only admin to read ACL LOG and restart users; the chart itself ships no user that may.
ADMIN = "user testadmin on >admin-pw ~* &* +@all"
USERS = NamespaceUserSettings(mode="namespace", key="test-key", grace_s=0.0)


@dataclass
class AclRedis:
    server: EmbeddedRedis
    operator_password: str
    acl_file: Path

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.server.port}/0"

    @property
    def operator_url(self) -> str:
        return self.url("operator", self.operator_password)

    def client(self, user: str | None = None, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.server.port, username=user, password=password)

    def acl_log(self) -> list[Any]:
        """Denials, less the one a namespace's proxy makes by design: it tries FT.CREATE once, then asks
        the operator for its vector index."""
        admin = self.client("testadmin", "admin-pw")
        try:
            entries = [{(k.decode() if isinstance(k, bytes) else k): v for k, v in e.items()}
                       for e in admin.execute_command("ACL", "LOG")]
        finally:
            admin.close()
        return [e for e in entries if not (e.get("object") in (b"FT.CREATE", "FT.CREATE")
                                           and str(e.get("username", b"")).find("-ns-") >= 0)]


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
    yield AclRedis(server, rendered_auth["operator-password"], acl)


@pytest.fixture
async def operator_side(acl_redis: AclRedis) -> AsyncIterator[tuple[aioredis.Redis, partitions.NamespaceUsers]]:
    """The operator's Redis client (the chart's operator user) and its namespace users."""
    op = aioredis.Redis.from_url(acl_redis.operator_url)
    try:
        yield op, partitions.NamespaceUsers(op, KS, USERS, base_url=acl_redis.operator_url)
    finally:
        await op.aclose()


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
                  ("KEYS", "*"), ("ACL", "LIST"), ("ACL", "GETUSER", "operator"), ("ACL", "SAVE"),
                  ("ACL", "LOAD"), ("DEBUG", "SLEEP", "0"),
                  ("MODULE", "LIST"), ("FUNCTION", "FLUSH"), ("SWAPDB", "0", "1"), ("SHUTDOWN",),
                  ("MONITOR",), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"), ("SAVE",),
                  ("REPLICAOF", "127.0.0.1", "1")]
#: What only the operator may do besides: manage the namespace users.
USER_ADMIN = [("ACL", "SETUSER", "x", "on"), ("ACL", "DELUSER", "x"), ("ACL", "USERS")]


def test_a_client_without_password_may_only_ping(acl_redis: AclRedis) -> None:
    anonymous = acl_redis.client()
    try:
        assert anonymous.ping() is True  # what the readiness probe needs, and all it gets
        team = KS.for_partition("team")
        for command in [("GET", team.entry("x")), ("HGETALL", "llmcache:policies:team"),
                        ("SET", team.entry("x"), "1"), ("FT.SEARCH", team.vector_index, "*"), ("SCAN", "0"),
                        ("SUBSCRIBE", KS.policy_channel("team")), *ADMIN_COMMANDS, *USER_ADMIN]:
            assert denied(anonymous, *command), command
    finally:
        anonymous.close()


async def test_a_namespace_user_reads_its_policies_but_cannot_rewrite_them_or_administer(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers]) -> None:
    _, users = operator_side
    await users.ensure("team")
    operator = acl_redis.client("operator", acl_redis.operator_password)
    sidecar = redis.Redis.from_url(users.url("team"))
    try:
        operator.hset("llmcache:policies:team", "chat", "{}")
        assert sidecar.hgetall("llmcache:policies:team") == {b"chat": b"{}"}
        assert denied(sidecar, "HSET", "llmcache:policies:team", "chat", "forged")
        assert denied(sidecar, "HDEL", "llmcache:policies:team", "chat")
        assert denied(sidecar, "DEL", "llmcache:policies:team")
        assert denied(sidecar, "PUBLISH", KS.policy_channel("team"), "{}")  # no forged change events
        assert denied(sidecar, "SET", "somebody-elses:key", "1")  # outside the prefix
        assert denied(sidecar, "GET", "somebody-elses:key")
        assert denied(sidecar, "EVAL", "return redis.call('HSET', KEYS[1], 'chat', 'x')", 1,
                      "llmcache:policies:team")  # not through a script either
        for command in [*ADMIN_COMMANDS, *USER_ADMIN, ("INFO",)]:
            assert denied(sidecar, *command), command
        assert operator.hget("llmcache:policies:team", "chat") == b"{}"
        with pytest.raises(redis.exceptions.AuthenticationError):
            acl_redis.client(users.user("team"), "wrong-password").ping()
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
        assert denied(operator, "SUBSCRIBE", "somebody-elses:channel")
    finally:
        operator.close()


# The near cache as the webhook sets it for a sidecar on its namespace's Redis user (that user has no
# CLIENT TRACKING): the proxies here run as the injected ones do.
NEAR_OFF = int(next(e["value"] for e in webhook.sidecar_container(
    SidecarSettings(credentials_secret="llmcache-redis"), native=True)["env"]
    if e["name"] == "LLMCACHE_NEAR_CACHE_BYTES"))

CHAT = {"model": "stub-model", "temperature": 0, "messages": [
    {"role": "system", "content": "You answer questions about data structures."},
    {"role": "user", "content": "How do I reverse a linked list in Python?"}]}
PARAPHRASE = {**CHAT, "messages": [CHAT["messages"][0],
                                   {"role": "user", "content": "How can I reverse a linked list in Python?"}]}
ADMIN_TOKEN = {"Authorization": "Bearer admin-secret"}


async def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def _semantic_proxy(proxy_stack: Any, op: aioredis.Redis, users: partitions.NamespaceUsers, namespace: str,
                          tmp_path: Path, **overrides: Any) -> Any:
    """A proxy of pod namespace ``namespace`` as its namespace's user, with the semantic cache: its user may
    not create the vector index, so it asks and the operator does (what the reconciler's pass runs)."""
    await users.ensure(namespace)
    labels = tmp_path / f"labels-{namespace}"
    labels.write_text('app="chat"\n')
    stack = await proxy_stack(redis_near_cache_bytes=NEAR_OFF,
                              redis_url=users.url(namespace), cache_mode="both", semantic_timeout_s=5.0,
                              policy_pod_namespace=namespace, policy_pod_name="chat-0",
                              policy_pod_labels_file=str(labels), **overrides)
    part = KS.for_partition(namespace)

    async def asked() -> bool:
        return await op.exists(part.vector_index_spec) == 1
    await _wait(asked, f"{namespace}'s sidecar to ask for its vector index")
    assert await partitions.ensure_vector_indexes(op, KS, namespace) == 1
    await _wait(lambda: asyncio.sleep(0, result=stack.state.semantic is not None),
                f"{namespace}'s semantic cache (on the index the operator made)")
    return stack


async def test_proxy_and_operator_do_their_work_under_their_users(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers], proxy_stack: Any,
        tmp_path: Path) -> None:
    op, users = operator_side
    team = KS.for_partition("team")
    doc = PolicyDocument(namespace="team", name="chat", generation=1, created_s=time.time(),
                         spec=parse_spec({"selector": {"matchLabels": {"app": "chat"}}, "mode": "Both",
                                          "eviction": {"maxEntries": 100}}))
    await publish.publish_policy(op, KS, doc)
    stack = await _semantic_proxy(proxy_stack, op, users, "team", tmp_path, cache_single_flight_lease=True)
    # The sidecar read the policy and acknowledged it.
    await _wait(lambda: status.synced_pods(op, KS, "team", "chat", doc.config_hash), "the sidecar's ack")

    _, headers, first = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "miss"
    _, headers, again = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit" and again == first

    async def semantic_hit() -> bool:
        _, h, body = await stack.post("/v1/chat/completions", PARAPHRASE, headers={"Cache-Control": "only-if-cached"})
        return h.get("X-LLMCache-Status") == "semantic-hit" and body == first

    await _wait(semantic_hit, "a semantic hit (vector doc indexed)")
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN_TOKEN) as r:
        rows = (await r.json())["namespaces"]
        assert r.status == 200 and rows and {row["partition"] for row in rows} == {"team"}

    # The operator's periodic work on that data.
    assert (await eviction.group_usage(op, team, "team/chat"))[0] >= 1
    await eviction.enforce_limits(op, team, "team/chat", eviction.EvictionLimits(max_entries=100))
    await sweep.sweep_once(op, KS, eviction.EvictionLimits(max_entries=100), cursors={})
    await sweep.cap_stats_keys(op, KS, max_keys=100)
    await status.policy_counters(op, team, "team/chat")
    await users.reconcile({"team"})

    async with stack.http.post(stack.proxy_url + "/llmcache/v1/invalidate", json={"all": True},
                               headers=ADMIN_TOKEN) as r:
        assert r.status == 200 and (await r.json())["deleted"] >= 1
    await publish.unpublish_policy(op, KS, "team", "chat", generation=1)
    await eviction.purge_group(op, team, "team/chat")

    assert acl_redis.acl_log() == [], "a command was denied to the proxy or the operator"


async def test_answers_stored_before_the_operator_made_the_index_are_found_once_it_does(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers], proxy_stack: Any,
        tmp_path: Path) -> None:
    """A new namespace's first requests arrive before the operator's reconciler has created its vector index
    (the sidecar may not). Its semantic cache runs anyway: the misses store their vector documents, lookups
    are quiet misses, and once the operator creates the index those answers are found by meaning. (Before:
    the semantic cache stayed off until the index existed, so the answers stored meanwhile were exact-only
    for good; on the real node the paraphrase of such an answer was never a hit.)"""
    op, users = operator_side
    await users.ensure("team")
    labels = tmp_path / "labels-team"
    labels.write_text('app="chat"\n')
    stack = await proxy_stack(redis_near_cache_bytes=NEAR_OFF,
                              redis_url=users.url("team"), cache_mode="both", semantic_timeout_s=5.0,
                              policy_pod_namespace="team", policy_pod_name="chat-0",
                              policy_pod_labels_file=str(labels))
    part = KS.for_partition("team")
    await _wait(lambda: asyncio.sleep(0, result=stack.state.semantic is not None),
                "the semantic cache to run while its index is still the operator's to create")
    assert await op.exists(part.vector_index_spec) == 1, "the sidecar did not ask for its vector index"
    assert stack.state.semantic.stats()["index_pending"] is True

    _, headers, first = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "miss"
    [entry] = [k.decode() async for k in op.scan_iter(match=part.entry_pattern)]
    await _wait(lambda: op.exists(part.vector(KS.key_hash_of(entry))), "the miss's vector document")
    # Until the index exists a paraphrase is a plain miss, not a failed lookup.
    _, headers, _ = await stack.post("/v1/chat/completions", PARAPHRASE, headers={"Cache-Control": "only-if-cached"})
    assert headers["X-LLMCache-Status"] == "miss"
    stats = stack.state.semantic.stats()
    assert stats["errors"] == 0 and stats["num_pending_lookups"] >= 1, stats

    assert await partitions.ensure_vector_indexes(op, KS, "team") == 1  # the reconciler's pass

    async def semantic_hit() -> bool:
        _, h, body = await stack.post("/v1/chat/completions", PARAPHRASE, headers={"Cache-Control": "only-if-cached"})
        return h.get("X-LLMCache-Status") == "semantic-hit" and body == first

    await _wait(semantic_hit, "a semantic hit for the answer stored before the index existed")
    stats = stack.state.semantic.stats()
    assert stats["index_pending"] is False and stats["errors"] == 0, stats


async def test_a_namespace_reaches_nothing_of_another(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers], proxy_stack: Any,
        tmp_path: Path) -> None:
    """Issue 18, item 1, with the review's trigger: what namespace A holds (its Secret's Redis URL, the
    sidecar's env) is refused on every kind of key of namespace B, and a forged answer never reaches B."""
    op, users = operator_side
    b = await _semantic_proxy(proxy_stack, op, users, "team-b", tmp_path)
    _, headers, answer = await b.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "miss"
    await _wait(lambda: op.exists(*[KS.for_partition("team-b").vector_index_spec]), "B's documents")
    async with b.http.get(b.proxy_url + "/llmcache/v1/stats", headers=ADMIN_TOKEN) as r:
        assert r.status == 200  # flushes B's counters
    part_b = KS.for_partition("team-b")
    [entry] = [k.decode() async for k in op.scan_iter(match=part_b.entry_pattern)]
    key_hash = KS.key_hash_of(entry)
    await _wait(lambda: op.exists(part_b.vector(key_hash)), "B's vector document")
    [stats_key] = [k.decode() async for k in op.scan_iter(match=part_b.stats_pattern)]
    b_keys = {"entry": entry, "vector": part_b.vector(key_hash), "lru": part_b.group_of("_default", "lru", key_hash),
              "size": part_b.group_of("_default", "size", key_hash), "stats": stats_key,
              "stats index": part_b.stats_index, "vector spec": part_b.vector_index_spec,
              "lease": part_b.lease(key_hash), "acks": KS.acks("team-b", "chat")}

    await users.ensure("team-a")
    # What a pod of team-a holds: its credentials Secret, written by the operator for team-a only.
    mirror = credentials.CredentialsMirror(object(), SidecarSettings(credentials_secret="llmcache-sidecar"),  # type: ignore[arg-type]
                                           users=users, mode="namespace")
    secret_url = mirror.data("team-a")["redis-url"]
    assert "team-b" not in secret_url and users.user("team-a") in secret_url
    a = redis.Redis.from_url(secret_url)
    try:
        assert a.ping() and a.set(KS.for_partition("team-a").entry("own"), "1")  # its own partition works
        forged = answer.replace(b"linked list", b"FORGED ANSWER")
        for what, key in b_keys.items():
            for command in [("GET", key), ("HGETALL", key), ("ZRANGE", key, 0, -1), ("XRANGE", key, "-", "+"),
                            ("EXISTS", key), ("TYPE", key), ("TTL", key), ("DUMP", key),
                            ("SET", key, forged, "KEEPTTL"), ("HSET", key, "text", "x"), ("ZADD", key, 1, "x"),
                            ("DEL", key), ("UNLINK", key), ("EXPIRE", key, 1), ("RENAME", key, "llmcache:n:team-a:x"),
                            ("EVAL", "return redis.call('GET', KEYS[1])", 1, key)]:
                assert denied(a, *command), (what, command)
        # Listing: no SCAN, KEYS or index list (they would name B's keys whatever the key patterns say).
        for command in [("SCAN", "0"), ("SCAN", "0", "MATCH", "llmcache:n:team-b:*"), ("KEYS", "*"), ("FT._LIST",),
                        ("RANDOMKEY",), ("DBSIZE",), ("INFO", "keyspace"), ("MEMORY", "USAGE", entry)]:
            assert denied(a, *command), command
        # B's vector documents: not through B's index, nor through an index of A's own over B's prefix.
        assert denied(a, "FT.SEARCH", part_b.vector_index, "*", "RETURN", 1, "text")
        assert denied(a, "FT.INFO", part_b.vector_index)
        assert denied(a, "FT.AGGREGATE", part_b.vector_index, "*", "LOAD", 1, "@text")
        assert denied(a, "FT.CREATE", KS.for_partition("team-a").vector_index_for_slot("evil"), "ON", "HASH",
                      "PREFIX", 1, part_b.vector_prefix, "SCHEMA", "text", "TEXT")
        assert denied(a, "FT.DROPINDEX", part_b.vector_index)
        # B's policies and their channel.
        assert denied(a, "HGETALL", KS.policies("team-b"))
        assert denied(a, "SUBSCRIBE", KS.policy_channel("team-b"))
        assert denied(a, "PUBLISH", KS.policy_channel("team-b"), "{}")
    finally:
        a.close()
    # B's next request is still a hit with its own answer; nothing of B changed.
    _, headers, again = await b.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "hit" and again == answer
    for what, key in b_keys.items():
        if what not in ("lease", "acks"):  # those two exist only while a miss / a policy is in flight
            assert await op.exists(key), what


async def test_admin_api_of_one_namespace_reaches_only_its_partition(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers], proxy_stack: Any,
        tmp_path: Path) -> None:
    """Issue 18, item 2: proxy A's invalidate ({"namespace": …} or {"all": true}) and stats act on A's
    partition only; B's entry survives and B's counters are not A's to read."""
    _, users = operator_side
    stacks = {}
    for namespace in ("team-a", "team-b"):
        await users.ensure(namespace)
        stacks[namespace] = await proxy_stack(redis_near_cache_bytes=NEAR_OFF, redis_url=users.url(namespace),
                                              policy_pod_namespace=namespace, admin_token="admin-secret")
    a, b = stacks["team-a"], stacks["team-b"]
    for stack in (a, b):
        for headers in ({}, {"X-LLMCache-Namespace": "payroll-team"}):
            assert (await stack.post("/v1/chat/completions", CHAT, headers=headers))[1]["X-LLMCache-Status"] == "miss"
    for body in ({"namespace": "payroll-team"}, {"all": True}):
        async with a.http.post(a.proxy_url + "/llmcache/v1/invalidate", json=body, headers=ADMIN_TOKEN) as r:
            assert r.status == 200, await r.text()
    async with a.http.get(a.proxy_url + "/llmcache/v1/stats", headers=ADMIN_TOKEN) as r:
        rows = (await r.json())["namespaces"]
    assert {row["partition"] for row in rows} == {"team-a"}
    for headers in ({}, {"X-LLMCache-Namespace": "payroll-team"}):
        assert (await a.post("/v1/chat/completions", CHAT, headers=headers))[1]["X-LLMCache-Status"] == "miss"
        assert (await b.post("/v1/chat/completions", CHAT, headers=headers))[1]["X-LLMCache-Status"] == "hit"
    assert acl_redis.acl_log() == [], "the admin endpoints tried something their user may not"


async def test_namespace_users_come_back_after_a_restart_and_go_with_their_pods(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers]) -> None:
    _, users = operator_side
    await users.ensure("team")
    assert redis.Redis.from_url(users.url("team")).ping()
    # Redis restarts with nothing but its ACL file (no persistence): the namespace's user is gone.
    port = acl_redis.server.port
    acl_redis.server.stop()
    acl_redis.server.port = port
    acl_redis.server.start()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(users.url("team")).ping()
    async def next_pass() -> tuple[int, int] | None:
        try:
            return await users.reconcile({"team"})
        except redis.exceptions.ConnectionError:
            return None  # the pass that met the restart (the reconciler logs it); the next one works
    assert await _wait(next_pass, "a reconcile pass after the restart") == (1, 0)
    assert redis.Redis.from_url(users.url("team")).ping()
    # No injected pod left in the namespace (grace 0 here): its user goes, and its Secret opens nothing.
    assert await users.reconcile(set()) == (0, 1)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(users.url("team")).ping()


@pytest.mark.parametrize("credentials", ["", "llmcache-ns-team:wrong-password@"], ids=["no-password", "wrong-password"])
async def test_a_sidecar_without_valid_credentials_fails_open(acl_redis: AclRedis, proxy_stack: Any,
                                                              credentials: str) -> None:
    """An old or misconfigured sidecar is refused by Redis, and answers anyway (uncached), never a 5xx."""
    stack = await proxy_stack(redis_url=f"redis://{credentials}127.0.0.1:{acl_redis.server.port}/0",
                              policy_pod_namespace="team")
    for _ in range(2):
        status_code, headers, body = await stack.post("/v1/chat/completions", CHAT)
        assert status_code == 200 and headers["X-LLMCache-Status"] in ("miss", "bypass"), (status_code, headers, body)
    assert await stack.upstream_count() == 2  # nothing was served from (or stored in) the cache


async def test_the_error_bound_learns_per_partition_and_is_dropped_under_the_namespace_users(
        acl_redis: AclRedis, operator_side: tuple[aioredis.Redis, partitions.NamespaceUsers], proxy_stack: Any,
        tmp_path: Path) -> None:
    """Issue 20's learned state (an entry's judged outcomes, the policy's model, its judged pairs) is written by
    a bounded sidecar under its namespace's user, inside that namespace's partition: another namespace can
    neither read nor poison it. The operator reads it for status and drops it with the group."""
    from llmcache import errorbound
    from llmcache.connection import as_text
    from llmcache.keyspace import DEFAULT_GROUP
    from llmcache.testing.stub_upstream import StubConfig

    op, users = operator_side
    answer = "Walk the list once, pointing each node's next at the previous node."
    stub = StubConfig(answers={CHAT["messages"][-1]["content"]: answer,
                               PARAPHRASE["messages"][-1]["content"]: answer})
    stack = await _semantic_proxy(proxy_stack, op, users, "team-a", tmp_path, semantic_max_error_rate=0.3,
                                  judge_refresh_s=0.2, stub=stub)
    bound = stack.state.bound
    assert bound is not None, "the error bound did not start (see the log)"
    part_a, part_b = KS.for_partition("team-a"), KS.for_partition("team-b")
    _, headers, _ = await stack.post("/v1/chat/completions", CHAT)
    assert headers["X-LLMCache-Status"] == "miss"
    _, headers, _ = await stack.post("/v1/chat/completions", PARAPHRASE)
    assert headers["X-LLMCache-Status"] == "miss"  # a candidate, not certified yet: judged afterwards
    await bound.drain()
    await bound.flush_all()
    assert bound.counters.num_judged == 1 and bound.counters.num_failed == 0
    judged = [k.decode() async for k in op.scan_iter(match=f"{KS.all_partitions_prefix}*:j:*")]
    pairs = [k.decode() async for k in op.scan_iter(match=f"{KS.all_partitions_prefix}*:ap:*")]
    assert judged and pairs and all(k.startswith(part_a.partition_prefix) for k in judged + pairs)
    assert await op.exists(part_a.bound(DEFAULT_GROUP)) and not await op.exists(part_b.bound(DEFAULT_GROUP))
    fields = await status.semantic_status(op, part_a, DEFAULT_GROUP, 0.3)
    assert fields["judgedSamples"] == 1 and fields["semantic"].startswith("learning (1 judged")
    assert (await status.semantic_status(op, part_b, DEFAULT_GROUP, 0.3))["judgedSamples"] == 0
    async with stack.http.get(stack.proxy_url + "/llmcache/v1/stats", headers=ADMIN_TOKEN) as r:
        stats = await r.json()
    assert stats["error_bound"]["policies"][DEFAULT_GROUP]["judged"] == 1
    assert [row["error_bound"][DEFAULT_GROUP]["judged"] for row in stats["namespaces"]] == [1]

    assert acl_redis.acl_log() == [], "a command was denied to the proxy"
    # Namespace B, with what its pods hold, can neither read A's learned state nor poison it.
    await users.ensure("team-b")
    b = redis.Redis.from_url(users.url("team-b"))
    try:
        for key in [part_a.bound(DEFAULT_GROUP), judged[0], pairs[0]]:
            for command in [("HGETALL", key), ("HGET", key, "current"), ("HLEN", key), ("HRANDFIELD", key),
                            ("HINCRBY", key, "x", 1000), ("HSET", key, "veto", "0"), ("DEL", key),
                            ("EVAL", "return redis.call('HINCRBY', KEYS[1], 'x', 1)", 1, key)]:
                assert denied(b, *command), (key, command)
        assert b.hset(part_b.bound(DEFAULT_GROUP), "x", 1) == 1  # its own partition's model is its own
    finally:
        b.close()
    assert errorbound.parse(await op.hgetall(part_a.bound(DEFAULT_GROUP))).num_judged == 1

    await eviction.purge_group(op, part_a, DEFAULT_GROUP)
    assert errorbound.parse(await op.hgetall(part_a.bound(DEFAULT_GROUP))).num_judged == 0
    assert [k async for k in op.scan_iter(match=f"{part_a.partition_prefix}j:*")] == []
    assert [k async for k in op.scan_iter(match=f"{part_a.partition_prefix}ap:*")] == []
    assert await op.exists(part_b.bound(DEFAULT_GROUP))  # another partition's purge leaves B's alone
    # The only denials are B's probes above: none to the proxy or the operator.
    users_denied = {as_text(e.get("username", b"")) for e in acl_redis.acl_log()}
    assert users_denied == {users.user("team-b")}, "a command was denied to the proxy or the operator"
