"""The sidecar's policy watcher against real Redis: selection, updates, outages, files, acks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from llmcache import policy
from llmcache.errors import PolicyError
from llmcache.keyspace import Keyspace
from llmcache.proxy import policy_watch

NS = "team-a"
POD = "chat-7d9f-abcde"
KS = Keyspace()
FAST = policy_watch.WatchSettings(redis_timeout_s=1.0, reconnect_min_s=0.05, reconnect_max_s=0.3,
                                  poll_interval_s=0.05, ack_ttl_s=600, ack_refresh_s=0.2)


def make_doc(name: str, *, labels: dict[str, str] | None = None, priority: int = 0, generation: int = 1,
             ttl_s: int = 60, created_s: float = 0.0, namespace: str = NS) -> policy.PolicyDocument:
    spec = policy.parse_spec({"selector": {"matchLabels": labels or {}}, "priority": priority,
                              "ttlSeconds": ttl_s, "mode": "Exact"})
    return policy.PolicyDocument(namespace, name, generation, spec, created_s=created_s)


async def store(r: aioredis.Redis, doc: policy.PolicyDocument, *, publish: bool = True) -> int:
    """What the operator does (HSET then PUBLISH); returns the number of subscribers reached."""
    await r.hset(KS.policies(doc.namespace), doc.name, doc.to_json())
    if not publish:
        return 0
    event = json.dumps({"namespace": doc.namespace, "name": doc.name, "generation": doc.generation})
    return int(await r.publish(KS.policy_channel(NS), event))


async def wait_until(pred: Callable[[], bool], *, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll ``pred`` (a liveness bound for the test, not a latency assertion)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def write_kubelet_labels(root: Path, labels: dict[str, str], *, version: int) -> Path:
    """Lay out a downward-API volume like the kubelet's atomic writer and swap ``..data``.

    ``root/labels`` → ``..data/labels``; ``..data`` → ``..<version>``; the swap is a rename
    of a fresh symlink over ``..data``, exactly how the kubelet updates it.
    """
    ts_dir = root / f"..2026_11_26_{version:04d}"
    ts_dir.mkdir()
    lines = [f'{k}={json.dumps(v)}' for k, v in sorted(labels.items())]  # Go %q == JSON for these
    (ts_dir / "labels").write_text("\n".join(lines))
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(ts_dir.name)
    os.replace(tmp_link, root / "..data")
    user_link = root / "labels"
    if not user_link.is_symlink():
        user_link.symlink_to("..data/labels")
    return user_link


@pytest.fixture
async def r(redis_plain_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_plain_url)
    yield client
    await client.aclose()


@pytest.fixture
def labels_dir(tmp_path: Path) -> Path:
    d = tmp_path / "podinfo"
    d.mkdir()
    return d


def watcher(client: aioredis.Redis, labels_file: Path | None, **kwargs: Any) -> policy_watch.PolicyWatcher:
    return policy_watch.PolicyWatcher(client, keyspace=KS, namespace=NS, pod_name=POD,
                                      labels_file=str(labels_file) if labels_file else None,
                                      settings=FAST, **kwargs)


# ---- labels file ------------------------------------------------------------------------------

def test_parse_labels_decodes_go_quoting() -> None:
    text = ('app="chat"\n'
            'note="say \\"hi\\"\\tnow\\\\"\n'
            'city="Z\\u00fcrich"\n'
            'raw=unquoted\n'
            'broken="\\q"\n'
            'no-equals-sign\n'
            'app.kubernetes.io/name="llm"')
    labels = policy_watch.parse_labels(text)
    assert labels == {"app": "chat", "note": 'say "hi"\tnow\\', "city": "Zürich", "raw": "unquoted",
                      "app.kubernetes.io/name": "llm"}


# ---- selection --------------------------------------------------------------------------------

async def test_selects_by_labels_then_priority_and_skips_invalid_documents(
        r: aioredis.Redis, labels_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = write_kubelet_labels(labels_dir, {"app": "chat", "tier": "gold"}, version=1)
    await store(r, make_doc("low", labels={"app": "chat"}, priority=1))
    await store(r, make_doc("high", labels={"app": "chat"}, priority=5))
    await store(r, make_doc("other-app", labels={"app": "search"}, priority=100))
    await r.hset(KS.policies(NS), "garbage", b"{not json")
    bad = json.loads(make_doc("bad-ttl", labels={"app": "chat"}, priority=1000).to_json())
    bad["spec"]["ttlSeconds"] = 0
    await r.hset(KS.policies(NS), "bad-ttl", json.dumps(bad))
    caplog.set_level(logging.WARNING, logger="llmcache.proxy.policy_watch")

    w = watcher(r, labels)
    await w.start()
    try:
        assert w.current is not None and w.current.name == "high"
        assert w.source == "redis" and w.applied_at_s is not None
        assert w.labels == {"app": "chat", "tier": "gold"}
        warned = " ".join(rec.getMessage() for rec in caplog.records)
        assert "garbage" in warned and "bad-ttl" in warned and "ttlSeconds" in warned
    finally:
        await w.stop()


async def test_no_labels_file_matches_only_empty_selectors(r: aioredis.Redis) -> None:
    await store(r, make_doc("needs-label", labels={"app": "chat"}, priority=9))
    await store(r, make_doc("everyone", priority=0))
    async with watcher(r, None) as w:
        assert w.current is not None and w.current.name == "everyone"


# ---- updates ----------------------------------------------------------------------------------

async def test_publish_applies_new_generation_and_calls_on_change(r: aioredis.Redis, labels_dir: Path) -> None:
    labels = write_kubelet_labels(labels_dir, {"app": "chat"}, version=1)
    await store(r, make_doc("p", labels={"app": "chat"}, generation=1, ttl_s=60))
    seen: list[policy.PolicyDocument | None] = []
    w = watcher(r, labels, on_change=seen.append)
    await w.start()
    try:
        assert [d.generation for d in seen if d] == [1]
        await wait_until(lambda: w.subscribed, what="subscription")
        receivers = await store(r, make_doc("p", labels={"app": "chat"}, generation=2, ttl_s=120))
        assert receivers >= 1
        await wait_until(lambda: w.current is not None and w.current.generation == 2, what="generation 2")
        assert w.current is not None and w.current.spec.ttl_seconds == 120
        assert [d.generation for d in seen if d] == [1, 2]

        # Deleting the policy (HDEL + publish) drops it: proxy defaults apply again.
        await r.hdel(KS.policies(NS), "p")
        await r.publish(KS.policy_channel(NS), json.dumps({"namespace": NS, "name": "p", "generation": 3}))
        await wait_until(lambda: w.current is None, what="policy removal")
        assert seen[-1] is None
    finally:
        await w.stop()


async def test_async_on_change_errors_do_not_stop_updates(r: aioredis.Redis) -> None:
    await store(r, make_doc("p", generation=1))
    calls: list[int] = []

    async def on_change(doc: policy.PolicyDocument | None) -> None:
        calls.append(doc.generation if doc else -1)
        raise RuntimeError("callback bug")

    async with watcher(r, None, on_change=on_change) as w:
        await wait_until(lambda: w.subscribed, what="subscription")
        await store(r, make_doc("p", generation=2))
        await wait_until(lambda: w.current is not None and w.current.generation == 2, what="generation 2")
    assert calls == [1, 2]


async def test_invalid_update_is_ignored_and_later_valid_one_applies(r: aioredis.Redis) -> None:
    await store(r, make_doc("base", priority=1))
    async with watcher(r, None) as w:
        await wait_until(lambda: w.subscribed, what="subscription")
        refreshes = w.num_refreshes
        await r.hset(KS.policies(NS), "top", '{"schema": 99}')
        await r.publish(KS.policy_channel(NS), json.dumps({"namespace": NS, "name": "top", "generation": 1}))
        await wait_until(lambda: w.num_refreshes > refreshes, what="re-read after the bad publish")
        assert w.current is not None and w.current.name == "base"
        await store(r, make_doc("top", priority=2))
        await wait_until(lambda: w.current is not None and w.current.name == "top", what="valid top policy")


async def test_events_for_other_namespaces_do_not_change_selection(r: aioredis.Redis) -> None:
    await store(r, make_doc("mine", priority=1))
    async with watcher(r, None) as w:
        await wait_until(lambda: w.subscribed, what="subscription")
        await store(r, make_doc("theirs", priority=50, namespace="team-b"))
        # A document stored under our namespace but claiming another is not applied either.
        foreign = make_doc("imposter", priority=99, namespace="team-b")
        await r.hset(KS.policies(NS), "imposter", foreign.to_json())
        await store(r, make_doc("mine", priority=1, generation=2))
        await wait_until(lambda: w.current is not None and w.current.generation == 2, what="generation 2")
        assert w.current is not None and w.current.namespace == NS and w.current.name == "mine"


# ---- acks -------------------------------------------------------------------------------------

async def test_ack_carries_config_hash_and_expires(r: aioredis.Redis, labels_dir: Path) -> None:
    labels = write_kubelet_labels(labels_dir, {"app": "chat"}, version=1)
    first = make_doc("first", labels={"app": "chat"}, priority=1)
    await store(r, first)
    async with watcher(r, labels) as w:
        raw = await r.hget(KS.acks(NS, "first"), POD)
        assert raw is not None
        ack = json.loads(raw)
        assert ack == {"configHash": first.config_hash, "generation": 1, "appliedAt": w.applied_at_s}
        ttl_s = await r.ttl(KS.acks(NS, "first"))
        assert 0 < ttl_s <= FAST.ack_ttl_s

        # The heartbeat re-creates an ack that vanished (e.g. Redis lost it) within ack_refresh_s.
        await r.delete(KS.acks(NS, "first"))
        deadline = time.monotonic() + 10
        while await r.hget(KS.acks(NS, "first"), POD) is None:
            assert time.monotonic() < deadline, "ack was not refreshed"
            await asyncio.sleep(0.05)

        # Switching to another policy moves the ack.
        await wait_until(lambda: w.subscribed, what="subscription")
        second = make_doc("second", labels={"app": "chat"}, priority=2, ttl_s=30)
        await store(r, second)
        await wait_until(lambda: w.current is not None and w.current.name == "second", what="switch")
        deadline = time.monotonic() + 10
        while await r.hget(KS.acks(NS, "second"), POD) is None:
            assert time.monotonic() < deadline, "no ack for the new policy"
            await asyncio.sleep(0.02)
        assert json.loads(await r.hget(KS.acks(NS, "second"), POD))["configHash"] == second.config_hash
        assert await r.hget(KS.acks(NS, "first"), POD) is None


# ---- outages ----------------------------------------------------------------------------------

async def test_redis_restart_keeps_policy_then_resubscribes_and_rereads(
        redis_factory: Callable[..., Any]) -> None:
    server = redis_factory(with_search=False)
    r = aioredis.from_url(server.url)
    try:
        await store(r, make_doc("p", generation=1))
        async with watcher(r, None) as w:
            await wait_until(lambda: w.subscribed, what="subscription")
            server.kill()
            await wait_until(lambda: not w.subscribed, what="noticing the outage")
            assert w.current is not None and w.current.generation == 1  # last good policy kept

            server.restart()  # comes back empty, like a Redis without persistence
            deadline = time.monotonic() + 20
            doc2 = make_doc("p", generation=2)
            while True:  # PUBLISH reaches us only once we have resubscribed
                try:
                    if await store(r, doc2) >= 1:
                        break
                except (ConnectionError, OSError, aioredis.ConnectionError):
                    pass
                assert time.monotonic() < deadline, "watcher never resubscribed"
                await asyncio.sleep(0.05)
            await wait_until(lambda: w.current is not None and w.current.generation == 2, what="re-read")
            assert w.source == "redis"
            # The ack lost with the old server's memory is written again.
            deadline = time.monotonic() + 10
            while await r.hget(KS.acks(NS, "p"), POD) is None:
                assert time.monotonic() < deadline, "ack not rewritten after restart"
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def test_pubsub_reconnect_rereads_without_any_event(r: aioredis.Redis) -> None:
    await store(r, make_doc("p", generation=1))
    async with watcher(r, None) as w:
        await wait_until(lambda: w.subscribed, what="subscription")
        # A change that was never announced (its PUBLISH lost while we were disconnected) ...
        await store(r, make_doc("p", generation=2), publish=False)
        await asyncio.sleep(0.2)
        assert w.current is not None and w.current.generation == 1
        # ... is picked up when the subscription connection drops and comes back.
        await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: w.current is not None and w.current.generation == 2, what="re-read on reconnect")


async def test_file_fallback_when_redis_is_down_at_start(redis_factory: Callable[..., Any], tmp_path: Path) -> None:
    server = redis_factory(with_search=False)
    server.kill()
    file_doc = make_doc("from-file", priority=3)
    other_ns = make_doc("elsewhere", priority=9, namespace="team-b")
    policy_file = tmp_path / "policies.json"
    # The operator's ConfigMap shape: {name: document object}.
    policy_file.write_text(json.dumps({d.name: json.loads(d.to_json()) for d in (file_doc, other_ns)}))
    r = aioredis.from_url(server.url, socket_connect_timeout=0.5)
    try:
        w = watcher(r, None, policy_file=str(policy_file))
        await w.start()
        try:
            assert w.source == "file"
            assert w.current is not None and w.current.name == "from-file"
            server.restart()
            await store(r, make_doc("from-redis", priority=1), publish=False)
            await wait_until(lambda: w.source == "redis", what="switch to redis")
            assert w.current is not None and w.current.name == "from-redis"
        finally:
            await w.stop()
    finally:
        await r.aclose()


async def test_nothing_available_gives_source_none(redis_factory: Callable[..., Any]) -> None:
    server = redis_factory(with_search=False)
    server.kill()
    r = aioredis.from_url(server.url, socket_connect_timeout=0.5)
    try:
        async with watcher(r, None, policy_file="/nonexistent/policies.json") as w:
            assert w.source == "none" and w.current is None
    finally:
        await r.aclose()


@pytest.mark.parametrize("shape", ["wrapper", "list", "mapping", "strings"])
def test_policy_file_shapes(tmp_path: Path, shape: str) -> None:
    docs = [make_doc("a", priority=1), make_doc("b", priority=2)]
    objs = [json.loads(d.to_json()) for d in docs]
    body: Any = {
        "wrapper": {"policies": objs},
        "list": objs,
        "mapping": {d.name: o for d, o in zip(docs, objs)},
        "strings": {d.name: d.to_json() for d in docs},
    }[shape]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(body))
    loaded = policy_watch.load_policy_file(path, namespace=NS)
    assert sorted(d.name for d in loaded) == ["a", "b"]
    assert policy.select_policy(loaded, {}) == docs[1]


def test_policy_file_that_is_not_json_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("policies: [")
    with pytest.raises(PolicyError, match="not JSON"):
        policy_watch.load_policy_file(path, namespace=NS)


# ---- label changes ----------------------------------------------------------------------------

async def test_label_file_symlink_swap_reselects(r: aioredis.Redis, labels_dir: Path) -> None:
    labels = write_kubelet_labels(labels_dir, {"app": "chat"}, version=1)
    await store(r, make_doc("chat", labels={"app": "chat"}))
    await store(r, make_doc("search", labels={"app": "search"}))
    seen: list[str | None] = []
    async with watcher(r, labels, on_change=lambda d: seen.append(d.name if d else None)) as w:
        assert w.current is not None and w.current.name == "chat"
        write_kubelet_labels(labels_dir, {"app": "search", "tier": "x"}, version=2)
        await wait_until(lambda: w.current is not None and w.current.name == "search", what="re-selection")
        write_kubelet_labels(labels_dir, {"app": "none"}, version=3)
        await wait_until(lambda: w.current is None, what="no match")
    assert seen == ["chat", "search", None]


# ---- packaging --------------------------------------------------------------------------------

def test_module_needs_no_kubernetes_client() -> None:
    code = ("import sys, llmcache.proxy.policy_watch; "
            "bad = [m for m in ('kopf', 'kubernetes') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_documented_watch_defaults_are_pinned() -> None:
    d = policy_watch.WatchSettings()
    assert (d.redis_timeout_s, d.reconnect_min_s, d.reconnect_max_s) == (2.0, 0.1, 5.0)
    assert (d.ping_interval_s, d.poll_interval_s) == (15.0, 1.0)
    assert (d.ack_ttl_s, d.ack_refresh_s) == (600, 60.0)
    assert d.ack_refresh_s < d.ack_ttl_s  # a live pod's ack never lapses between refreshes
