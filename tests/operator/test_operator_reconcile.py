"""The operator process against the real API server and Redis: publish, status, update, delete, restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from opkit import API_VERSION, KIND, cachepolicy, condition, pod_manifest, wait_for

from llmcache.keyspace import Keyspace
from llmcache.policy import PolicyDocument, parse_spec
from llmcache.proxy.policy_watch import load_policy_file

pytestmark = pytest.mark.controlplane

KS = Keyspace()


@pytest.fixture
def r(redis_plain_url: str) -> Any:
    client = redis.Redis.from_url(redis_plain_url)
    yield client
    client.close()


def stored_doc(r: redis.Redis, ns: str, name: str) -> PolicyDocument | None:
    blob = r.hget(KS.policies(ns), name)
    return None if blob is None else PolicyDocument.from_json(blob)


def get_cpol(kube: Any, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get(API_VERSION, KIND, name, namespace=ns)


def configmap_docs(kube: Any, ns: str, tmp_path: Path) -> list[PolicyDocument] | None:
    cm = kube.get("v1", "ConfigMap", "llmcache-policies", namespace=ns)
    if cm is None:
        return None
    # Read it the way a sidecar does, through the proxy's own loader.
    path = tmp_path / "policies.json"
    path.write_text(cm["data"]["policies.json"])
    return load_policy_file(path, namespace=ns)


class Events:
    """A subscriber on the policy-events channel, opened before the change it should see."""

    def __init__(self, r: redis.Redis, namespace: str) -> None:
        self.pubsub = r.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(KS.policy_channel(namespace))
        self.seen: list[dict[str, Any]] = []

    def wait(self, expected: dict[str, Any]) -> None:
        def got() -> bool:
            while (msg := self.pubsub.get_message(timeout=0.05)) is not None:
                self.seen.append(json.loads(msg["data"]))
            return expected in self.seen
        wait_for(got, what=f"policy event {expected}")

    def close(self) -> None:
        self.pubsub.close()


def status_is(kube: Any, ns: str, name: str, **fields: Any) -> Callable[[], bool]:
    def check() -> bool:
        obj = get_cpol(kube, ns, name) or {}
        st = obj.get("status") or {}
        return all(st.get(k) == v for k, v in fields.items())
    return check


def test_create_update_status_and_delete(crds: Any, ns: str, r: redis.Redis, redis_plain_url: str,
                                         start_operator: Callable[..., Any], tmp_path: Path) -> None:
    op = start_operator(ns, redis_plain_url)
    events = Events(r, ns)
    spec = {"selector": {"matchLabels": {"app": "chat"}}, "mode": "Exact", "ttlSeconds": 600,
            "eviction": {"policy": "LRU", "maxEntries": 100}}
    crds.apply(cachepolicy("chat", spec), namespace=ns)

    # Published: the document in Redis, the event, the ConfigMap copy.
    doc = wait_for(lambda: stored_doc(r, ns, "chat"), what="the policy in Redis", logs=[op.log])
    assert doc.generation == 1 and doc.namespace == ns
    assert doc.spec == parse_spec(get_cpol(crds, ns, "chat")["spec"])
    assert doc.spec.ttl_seconds == 600 and doc.spec.max_entries == 100
    events.wait({"namespace": ns, "name": "chat", "generation": 1})
    assert wait_for(lambda: configmap_docs(crds, ns, tmp_path), what="the ConfigMap copy") == [doc]

    # Status: generation, hash and conditions.
    wait_for(status_is(crds, ns, "chat", observedGeneration=1, configHash=doc.config_hash, selectedPods=0),
             what="status of generation 1", logs=[op.log])
    obj = get_cpol(crds, ns, "chat")
    assert condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "Propagated")["status"] == "True"
    assert condition(obj, "Degraded")["status"] == "False"
    # kopf's bookkeeping went to annotations, not into the strict status.
    assert "kopf" not in obj["status"]
    assert "llmcache.io/last-handled-configuration" in obj["metadata"]["annotations"]

    # Update: a new generation reaches Redis, the channel and the status.
    crds.apply(cachepolicy("chat", {**spec, "ttlSeconds": 120}), namespace=ns)
    events.wait({"namespace": ns, "name": "chat", "generation": 2})
    doc2 = stored_doc(r, ns, "chat")
    assert doc2.generation == 2 and doc2.spec.ttl_seconds == 120 and doc2.config_hash != doc.config_hash
    wait_for(status_is(crds, ns, "chat", observedGeneration=2, configHash=doc2.config_hash),
             what="status of generation 2", logs=[op.log])

    # Selected and synced pods: two pods match, one acked the current hash, one an old one.
    crds.apply([pod_manifest("chat-a", {"app": "chat"}), pod_manifest("chat-b", {"app": "chat"}),
                pod_manifest("other", {"app": "other"})], namespace=ns)
    r.hset(KS.acks(ns, "chat"), mapping={
        "chat-a": json.dumps({"configHash": doc2.config_hash, "appliedAt": 1.0}),
        "chat-b": json.dumps({"configHash": doc.config_hash, "appliedAt": 1.0}),
        "gone-pod": json.dumps({"configHash": doc2.config_hash, "appliedAt": 1.0}),  # not a pod any more
    })
    wait_for(status_is(crds, ns, "chat", selectedPods=2, syncedPods=1), what="1/2 pods synced", logs=[op.log])
    ready = condition(get_cpol(crds, ns, "chat"), "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Syncing" and "1/2" in ready["message"]
    r.hset(KS.acks(ns, "chat"), "chat-b", json.dumps({"configHash": doc2.config_hash, "appliedAt": 2.0}))
    wait_for(status_is(crds, ns, "chat", selectedPods=2, syncedPods=2), what="2/2 pods synced", logs=[op.log])
    wait_for(lambda: condition(get_cpol(crds, ns, "chat"), "Ready")["status"] == "True", what="Ready again")

    # Entries of the group show up in status; without the purge annotation they outlive the policy.
    part = KS.for_partition(ns)  # where the namespace's pods keep them
    pipe = r.pipeline()
    pipe.set(part.entry("h1"), b"{}")
    part.record_access(pipe, f"{ns}/chat", "h1", size_bytes=321, created=True)
    pipe.execute()
    wait_for(status_is(crds, ns, "chat", entries=1, memoryBytes=321), what="entries in status")

    # Delete: the finalizer unpublishes before the object goes away.
    crds.delete(API_VERSION, KIND, "chat", namespace=ns)
    wait_for(lambda: get_cpol(crds, ns, "chat") is None, what="the policy to be deleted", logs=[op.log])
    assert stored_doc(r, ns, "chat") is None
    assert not r.exists(KS.acks(ns, "chat"))
    events.wait({"namespace": ns, "name": "chat", "generation": 2})
    assert configmap_docs(crds, ns, tmp_path) == []
    assert r.exists(part.entry("h1"))  # not purged: it expires with its TTL
    assert not r.exists(*part.group_keys(f"{ns}/chat", "lru"))  # but no orphaned bookkeeping is left behind
    events.close()


def test_delete_with_purge_annotation_removes_the_entries(crds: Any, ns: str, r: redis.Redis,
                                                          redis_plain_url: str,
                                                          start_operator: Callable[..., Any]) -> None:
    op = start_operator(ns, redis_plain_url)
    crds.apply(cachepolicy("purged", {}, annotations={"llmcache.io/purge-on-delete": "true"}), namespace=ns)
    crds.apply(cachepolicy("kept", {}), namespace=ns)
    wait_for(lambda: stored_doc(r, ns, "purged") and stored_doc(r, ns, "kept"), what="both policies published",
             logs=[op.log])
    part = KS.for_partition(ns)  # where the namespace's pods keep them
    pipe = r.pipeline()
    for i in range(5):
        pipe.set(part.entry(f"p{i}"), b"{}")
        pipe.hset(part.vector(f"p{i}"), mapping={"x": 1})
        part.record_access(pipe, f"{ns}/purged", f"p{i}", size_bytes=10, created=True)
    pipe.set(part.entry("k0"), b"{}")
    part.record_access(pipe, f"{ns}/kept", "k0", size_bytes=10, created=True)
    pipe.execute()

    crds.delete(API_VERSION, KIND, "purged", namespace=ns)
    wait_for(lambda: get_cpol(crds, ns, "purged") is None, what="deletion", logs=[op.log])

    assert not any(r.exists(part.entry(f"p{i}")) or r.exists(part.vector(f"p{i}")) for i in range(5))
    assert not r.exists(*part.group_keys(f"{ns}/purged", "lru"))
    assert r.exists(part.entry("k0")) and stored_doc(r, ns, "kept") is not None


def test_operator_restarted_midway_resumes(crds: Any, ns: str, r: redis.Redis, redis_plain_url: str,
                                           start_operator: Callable[..., Any]) -> None:
    op = start_operator(ns, redis_plain_url)
    crds.apply(cachepolicy("a", {"ttlSeconds": 60}), namespace=ns)
    crds.apply(cachepolicy("b", {}), namespace=ns)
    wait_for(lambda: stored_doc(r, ns, "a") and stored_doc(r, ns, "b"), what="a and b published", logs=[op.log])
    op.stop()

    # While the operator is down: create c, update a, delete b (held by the finalizer).
    crds.apply(cachepolicy("c", {"mode": "Semantic"}), namespace=ns)
    crds.apply(cachepolicy("a", {"ttlSeconds": 90}), namespace=ns)
    crds.delete(API_VERSION, KIND, "b", namespace=ns)
    assert get_cpol(crds, ns, "b")["metadata"].get("deletionTimestamp")
    assert stored_doc(r, ns, "c") is None and stored_doc(r, ns, "a").spec.ttl_seconds == 60

    op.start()
    wait_for(lambda: stored_doc(r, ns, "c") is not None, what="c published after restart", logs=[op.log])
    wait_for(lambda: (d := stored_doc(r, ns, "a")) is not None and d.spec.ttl_seconds == 90 and d.generation == 2,
             what="a's update published after restart", logs=[op.log])
    wait_for(lambda: get_cpol(crds, ns, "b") is None, what="b's deletion finished", logs=[op.log])
    assert stored_doc(r, ns, "b") is None
    wait_for(status_is(crds, ns, "c", observedGeneration=1), what="c's status", logs=[op.log])


def test_redis_outage_degrades_then_recovers_and_republishes(crds: Any, ns: str,
                                                             redis_factory: Callable[..., Any],
                                                             start_operator: Callable[..., Any]) -> None:
    server = redis_factory(with_search=False)
    client = redis.Redis.from_url(server.url)
    op = start_operator(ns, server.url)
    server.kill()

    crds.apply(cachepolicy("p", {}), namespace=ns)
    wait_for(lambda: (c := condition(get_cpol(crds, ns, "p"), "Degraded")) and c["status"] == "True",
             what="Degraded while Redis is down", logs=[op.log])
    obj = get_cpol(crds, ns, "p")
    assert condition(obj, "Degraded")["reason"] == "RedisUnavailable"
    assert condition(obj, "Propagated")["status"] == "False"

    server.restart()  # TemporaryError retries publish once Redis is back
    wait_for(lambda: stored_doc(client, ns, "p") is not None, what="published after Redis came back",
             logs=[op.log])
    wait_for(lambda: (c := condition(get_cpol(crds, ns, "p"), "Degraded")) and c["status"] == "False",
             what="Degraded cleared", logs=[op.log])

    # Redis restarted empty (no persistence): the status timer notices and publishes again.
    server.kill()
    server.restart()
    wait_for(lambda: stored_doc(client, ns, "p") is not None, what="republished into an empty Redis",
             logs=[op.log])
    client.close()


def test_policy_the_parser_rejects_is_marked_degraded(crds: Any, ns: str, r: redis.Redis, redis_plain_url: str,
                                                      start_operator: Callable[..., Any]) -> None:
    # Half a byte passes the schema's pattern but is 0 bytes to the operator: PermanentError.
    op = start_operator(ns, redis_plain_url)
    crds.apply(cachepolicy("tiny", {"eviction": {"maxMemory": "0.5"}}), namespace=ns)
    wait_for(lambda: (c := condition(get_cpol(crds, ns, "tiny"), "Degraded")) and c["status"] == "True",
             what="Degraded for an invalid spec", logs=[op.log])
    degraded = condition(get_cpol(crds, ns, "tiny"), "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.eviction.maxMemory" in degraded["message"]
    assert stored_doc(r, ns, "tiny") is None


def test_replicas_peer_and_the_standby_takes_over(crds: Any, ns: str, r: redis.Redis, redis_plain_url: str,
                                                  start_operator: Callable[..., Any]) -> None:
    standby = start_operator(ns, redis_plain_url, peering_priority=10)
    active = start_operator(ns, redis_plain_url, peering_priority=20)
    assert crds.get("kopf.dev/v1", "KopfPeering", "llmcache", namespace=ns) is not None  # created at start
    wait_for(lambda: "Pausing operations in favour of" in standby.log.read_text(), what="the standby to pause",
             logs=[standby.log])

    crds.apply(cachepolicy("p", {}), namespace=ns)
    wait_for(lambda: stored_doc(r, ns, "p") is not None, what="publication", logs=[active.log])
    assert "published policy" in active.log.read_text()
    assert "published policy" not in standby.log.read_text()

    # The active replica goes away (a rollout, a node loss): the standby resumes and reconciles.
    active.stop()
    def resumed_after_pause() -> bool:
        text = standby.log.read_text()
        return "Resuming operations" in text[text.rindex("Pausing operations in favour of"):]
    wait_for(resumed_after_pause, what="the standby to resume", logs=[standby.log])
    crds.apply(cachepolicy("p", {"ttlSeconds": 5}), namespace=ns)
    wait_for(lambda: (d := stored_doc(r, ns, "p")) is not None and d.generation == 2,
             what="the standby publishing generation 2", logs=[standby.log])


def test_error_bound_state_reaches_status_and_leaves_with_the_bound(crds: Any, ns: str, r: redis.Redis,
                                                                   redis_plain_url: str,
                                                                   start_operator: Callable[..., Any]) -> None:
    """status.semantic says "learning (N judged)" until the sidecars' judged outcomes certify the bound."""
    from llmcache import errorbound as eb

    op = start_operator(ns, redis_plain_url)
    spec = {"mode": "Both", "semantic": {"maxErrorRate": 0.05}}
    crds.apply(cachepolicy("bounded", spec), namespace=ns)
    wait_for(status_is(crds, ns, "bounded", semantic="learning (0 judged)", judgedSamples=0),
             what="status.semantic learning", logs=[op.log])
    group, v, b = f"{ns}/bounded", "v1", eb.similarity_bin(0.95)
    # Written where the namespace's sidecars learn: its partition (the operator reads it there).
    r.hset(KS.for_partition(ns).bound(group), mapping={
        "current": v, eb.cell_field(v, "a", b, "n"): 80, eb.cell_field(v, "a", b, "j"): 60,
        eb.total_field(v, "explored"): 4, eb.total_field(v, "gained"): 9})
    wait_for(status_is(crds, ns, "bounded", judgedSamples=60, explorationCalls=4, hitsGained=9),
             what="status with the judged counts", logs=[op.log])
    st = get_cpol(crds, ns, "bounded")["status"]
    assert st["semantic"].startswith("bounded (error ≤ ") and st["errorRateUpper"] <= 0.05
    # Without a bound the fields go away (the status schema is strict; stale numbers would mislead).
    crds.apply(cachepolicy("bounded", {"mode": "Both"}), namespace=ns)
    wait_for(lambda: "semantic" not in (get_cpol(crds, ns, "bounded") or {}).get("status", {}),
             what="status.semantic removed", logs=[op.log])
    assert "errorRateUpper" not in get_cpol(crds, ns, "bounded")["status"]
