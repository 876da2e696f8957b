"""The CachePolicy CRD on a real kube-apiserver: installs, defaults, and rejects bad policies itself."""

from __future__ import annotations

from typing import Any

import pytest
from opkit import API_VERSION, KIND, cachepolicy

from llmcache import policy

pytestmark = pytest.mark.controlplane


def test_crd_is_served_with_short_name_status_and_printer_columns(crds: Any) -> None:
    crd = crds.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "cachepolicies.llmcache.io")
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["cpol"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for name in ("Mode", "TTL", "Threshold", "Pods", "Ready", "Age"):
        assert name in columns
    # The server's table view uses them: `kubectl get cpol` shows Mode/TTL/Threshold.
    resp = crds.request("GET", "/apis/llmcache.io/v1alpha1/cachepolicies",
                        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert resp.status_code == 200, resp.text
    assert [c["name"] for c in resp.json()["columnDefinitions"]][:4] == ["Name", "Mode", "TTL", "Threshold"]


def test_schema_defaults_equal_the_documented_defaults(crds: Any, ns: str) -> None:
    (stored,) = crds.apply(cachepolicy("defaults", {}), namespace=ns)
    spec = stored["spec"]
    assert spec["mode"] == policy.DEFAULTS["mode"]
    assert spec["ttlSeconds"] == policy.DEFAULTS["ttl_seconds"]
    assert spec["priority"] == policy.DEFAULTS["priority"]
    assert spec["semantic"]["similarityThreshold"] == policy.DEFAULTS["similarity_threshold"]
    assert spec["semantic"]["embedding"] == {"provider": policy.DEFAULTS["embedding_provider"],
                                             "model": policy.DEFAULTS["embedding_model"]}
    assert spec["semantic"]["index"] == policy.DEFAULTS["index"]
    assert spec["eviction"] == {"policy": policy.DEFAULTS["eviction_policy"]}
    assert spec["scope"]["tenantHeader"] == policy.DEFAULTS["tenant_header"]
    # Requests without the tenant header are not cached unless a policy opts in (issue 14 item 2).
    assert spec["scope"]["anonymous"] == policy.DEFAULTS["anonymous"] == "Bypass"
    assert spec["nonDeterministic"] == policy.DEFAULTS["non_deterministic"]
    assert spec["suspend"] is policy.DEFAULTS["suspend"]
    # No bound unless a policy states one: the schema has no default for it.
    assert "maxErrorRate" not in spec["semantic"] and policy.DEFAULTS["max_error_rate"] is None
    # What the API server stored parses to exactly the defaulted model.
    assert policy.parse_spec(spec) == policy.parse_spec({})


def test_full_valid_policy_is_accepted_and_parses_identically(crds: Any, ns: str) -> None:
    raw = {
        "selector": {"matchLabels": {"app": "chat"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                          {"key": "canary", "operator": "DoesNotExist"}]},
        "priority": 5, "mode": "Semantic", "ttlSeconds": 60,
        "semantic": {"similarityThreshold": 0.85, "index": "client", "maxErrorRate": 0.01,
                     "embedding": {"provider": "remote", "model": "e5", "url": "http://embed:8000/v1"}},
        "eviction": {"policy": "LFU", "maxEntries": 100, "maxMemory": "64Mi"},
        "scope": {"tenantHeader": "X-Team", "anonymous": "PerNamespace"}, "nonDeterministic": "cache-if-seeded",
        "suspend": True,
        "invalidateBefore": "2026-01-01T00:00:00Z",
    }
    (stored,) = crds.apply(cachepolicy("full", raw), namespace=ns)
    assert policy.parse_spec(stored["spec"]) == policy.parse_spec(raw)


#: Cases the schema rejects although llmcache.policy.parse_spec would accept them
#: (it only needs a non-empty URL): caught at the door, harmless past it.
STRICTER_THAN_PARSER = {"embedding-url-scheme-cel"}

INVALID = [
    pytest.param({"mode": "Fuzzy"}, 'spec.mode: Unsupported value: "Fuzzy"', id="mode-enum"),
    pytest.param({"semantic": {"similarityThreshold": 1.5}},
                 "spec.semantic.similarityThreshold", id="threshold-above-1"),
    pytest.param({"semantic": {"similarityThreshold": -0.1}},
                 "spec.semantic.similarityThreshold", id="threshold-below-0"),
    pytest.param({"semantic": {"maxErrorRate": 0}}, "spec.semantic.maxErrorRate", id="max-error-rate-zero"),
    pytest.param({"semantic": {"maxErrorRate": 0.6}}, "spec.semantic.maxErrorRate", id="max-error-rate-above-half"),
    pytest.param({"semantic": {"maxErrorRate": "1%"}}, "spec.semantic.maxErrorRate", id="max-error-rate-string"),
    pytest.param({"ttlSeconds": 0}, "spec.ttlSeconds", id="ttl-zero"),
    pytest.param({"ttlSeconds": 31 * 24 * 3600}, "spec.ttlSeconds", id="ttl-over-30-days"),
    pytest.param({"semantic": {"embedding": {"provider": "remote"}}},
                 "semantic.embedding.url is required when provider is remote", id="remote-without-url-cel"),
    pytest.param({"semantic": {"embedding": {"provider": "remote", "url": "ftp://x"}}},
                 "semantic.embedding.url must be an http:// or https:// URL", id="embedding-url-scheme-cel"),
    pytest.param({"eviction": {"maxMemory": "lots"}},
                 "eviction.maxMemory must be a positive byte size", id="max-memory-not-a-size"),
    pytest.param({"eviction": {"maxMemory": "0Gi"}},
                 "eviction.maxMemory must be a positive byte size", id="max-memory-zero-string"),
    pytest.param({"eviction": {"maxMemory": 0}},
                 "eviction.maxMemory must be a positive byte size", id="max-memory-zero-int"),
    pytest.param({"eviction": {"maxEntries": 0}}, "spec.eviction.maxEntries", id="max-entries-zero"),
    pytest.param({"eviction": {"policy": "FIFO"}}, 'spec.eviction.policy: Unsupported value: "FIFO"',
                 id="eviction-policy-enum"),
    pytest.param({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
                 "operators In and NotIn need at least one value", id="selector-in-without-values-cel"),
    pytest.param({"selector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
                 "operators Exists and DoesNotExist take no values", id="selector-exists-with-values-cel"),
    pytest.param({"scope": {"tenantHeader": "bad header"}}, "spec.scope.tenantHeader", id="tenant-header"),
    pytest.param({"scope": {"anonymous": "Everyone"}}, 'spec.scope.anonymous: Unsupported value: "Everyone"',
                 id="anonymous-enum"),
    pytest.param({"nonDeterministic": "always"}, "spec.nonDeterministic", id="non-deterministic-enum"),
    pytest.param({"invalidateBefore": "yesterday"}, "spec.invalidateBefore", id="invalidate-before-format"),
    pytest.param({"ttlSeconds": "60"}, "spec.ttlSeconds", id="ttl-wrong-type"),
]


@pytest.mark.parametrize("spec, message", INVALID)
def test_invalid_policies_are_rejected_by_the_api_server(crds: Any, ns: str, spec: dict[str, Any],
                                                         message: str, request: pytest.FixtureRequest) -> None:
    """Each kind of invalid spec gets a 422 naming the field, and the operator's parser agrees."""
    # A plain create, as `kubectl create -f` sends it.
    resp = crds.request("POST", f"/apis/llmcache.io/v1alpha1/namespaces/{ns}/cachepolicies",
                        json=cachepolicy("bad", spec))
    assert resp.status_code == 422, resp.text
    server_message = resp.json()["message"]
    assert message in server_message
    assert crds.get(API_VERSION, KIND, "bad", namespace=ns) is None
    if request.node.callspec.id not in STRICTER_THAN_PARSER:
        with pytest.raises(policy.PolicyError):
            policy.parse_spec(spec)
