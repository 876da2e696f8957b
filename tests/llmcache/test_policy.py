"""CachePolicy parsing, defaults, selection and the Redis document round trip."""

from __future__ import annotations

import pytest

from llmcache import policy
from llmcache.errors import PolicyError


def test_documented_defaults_are_pinned() -> None:
    spec = policy.parse_spec({})
    assert spec.mode == "Both"
    assert spec.ttl_seconds == 3600
    assert spec.similarity_threshold == 0.70
    assert spec.non_deterministic == "bypass"
    assert spec.tenant_header == "Authorization"
    assert spec.eviction_policy == "LRU"
    assert spec.max_entries is None and spec.suspend is False
    assert spec.max_error_rate is None  # no error bound: every candidate the verifier accepts is served


def test_full_spec_round_trips() -> None:
    raw = {
        "selector": {"matchLabels": {"app": "chat"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
        "priority": 5, "mode": "Exact", "ttlSeconds": 60,
        "semantic": {"similarityThreshold": 0.85, "embedding": {"provider": "remote", "url": "http://m/v1"},
                     "index": "client", "maxErrorRate": 0.01},
        "eviction": {"policy": "LFU", "maxEntries": 100, "maxMemory": "64Mi"},
        "scope": {"tenantHeader": "X-Team"}, "nonDeterministic": "cache-if-seeded", "suspend": True,
        "invalidateBefore": "2026-01-01T00:00:00Z",
    }
    spec = policy.parse_spec(raw)
    assert spec.max_memory_bytes == 64 * 1024 * 1024
    assert spec.max_error_rate == 0.01 and spec.to_spec_dict()["semantic"]["maxErrorRate"] == 0.01
    assert policy.parse_spec(spec.to_spec_dict()) == spec
    doc = policy.PolicyDocument("ns", "p", 3, spec)
    assert policy.PolicyDocument.from_json(doc.to_json()) == doc


@pytest.mark.parametrize("raw, field", [
    ({"mode": "Fuzzy"}, "spec.mode"),
    ({"ttlSeconds": 0}, "spec.ttlSeconds"),
    ({"ttlSeconds": True}, "spec.ttlSeconds"),
    ({"semantic": {"similarityThreshold": 1.5}}, "similarityThreshold"),
    ({"semantic": {"embedding": {"provider": "remote"}}}, "embedding.url"),
    ({"eviction": {"maxEntries": 0}}, "maxEntries"),
    ({"eviction": {"maxMemory": "lots"}}, "maxMemory"),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "values"),
    ({"nonDeterministic": "sometimes"}, "nonDeterministic"),
    ({"ttl": 5}, "unknown"),
    ({"semantic": {"maxErrorRate": 0}}, "maxErrorRate"),
    ({"semantic": {"maxErrorRate": 0.75}}, "maxErrorRate"),
    ({"semantic": {"maxErrorRate": True}}, "maxErrorRate"),
    ({"semantic": {"maxErrorRate": "0.01"}}, "maxErrorRate"),
])
def test_invalid_specs_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        policy.parse_spec(raw)


def test_select_policy_by_labels_then_priority() -> None:
    def doc(name: str, prio: int, labels: dict[str, str], created: float = 0.0) -> policy.PolicyDocument:
        return policy.PolicyDocument("ns", name, 1, policy.parse_spec(
            {"priority": prio, "selector": {"matchLabels": labels}}), created_s=created)

    docs = [doc("all", 0, {}), doc("chat", 10, {"app": "chat"}), doc("chat-old", 10, {"app": "chat"}, -1.0)]
    assert policy.select_policy(docs, {"app": "chat"}).name == "chat-old"
    assert policy.select_policy(docs, {"app": "other"}).name == "all"
    assert policy.select_policy(docs[1:], {"app": "other"}) is None


def test_config_hash_changes_with_spec() -> None:
    a = policy.parse_spec({"ttlSeconds": 10})
    b = policy.parse_spec({"ttlSeconds": 11})
    assert policy.config_hash(a) != policy.config_hash(b)
    assert policy.config_hash(a) == policy.config_hash(policy.parse_spec({"ttlSeconds": 10}))


def test_a_bound_changes_the_config_hash_sidecars_acknowledge() -> None:
    """Adding maxErrorRate is a new configuration (the operator waits for every pod to apply it)."""
    assert policy.config_hash(policy.parse_spec({"semantic": {"maxErrorRate": 0.01}})) != policy.config_hash(
        policy.parse_spec({}))
