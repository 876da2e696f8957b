"""The operator runs with only the chart's ClusterRole: the RBAC the chart ships is enough for it.

The ClusterRole comes from ``helm template`` of charts/llmcache (so a rule dropped
from the chart fails here), is bound to a fresh ServiceAccount, and the operator
process gets a kubeconfig holding that account's token (TokenRequest API).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from opkit import API_VERSION, KIND, REPO, cachepolicy, condition, pod_manifest, wait_for

pytestmark = pytest.mark.controlplane


def chart_operator_cluster_role(kube: Any, namespace: str) -> dict[str, Any]:
    rendered = kube.helm("template", "rbac-test", str(REPO / "charts" / "llmcache"), "--namespace", namespace).stdout
    roles = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole"
             and d["metadata"]["name"].endswith("-operator")]
    assert len(roles) == 1, [r["metadata"]["name"] for r in roles]
    return roles[0]


def service_account_kubeconfig(kube: Any, namespace: str, sa: str, path: Path) -> Path:
    resp = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                              "spec": {"expirationSeconds": 3600}})
    assert resp.status_code == 201, resp.text
    token = resp.json()["status"]["token"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": kube.server, "certificate-authority": str(kube.ca)}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa}}],
    }))
    path.chmod(0o600)
    return path


def test_operator_works_with_the_charts_cluster_role(crds: Any, ns: str, redis_plain_url: str,
                                                     start_operator: Callable[..., Any], tmp_path: Path) -> None:
    role = chart_operator_cluster_role(crds, ns)
    name = f"llmcache-rbac-test-{uuid.uuid4().hex[:8]}"
    role["metadata"] = {"name": name}
    crds.apply(role)
    crds.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "llmcache-operator"}},
               namespace=ns)
    crds.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": "llmcache-operator", "namespace": ns}]})
    kubeconfig = service_account_kubeconfig(crds, ns, "llmcache-operator", tmp_path / "sa-kubeconfig")
    try:
        r = redis.Redis.from_url(redis_plain_url)
        op = start_operator(ns, redis_plain_url, env={"KUBECONFIG": str(kubeconfig)})

        crds.apply(pod_manifest("chat-0", {"app": "chat"}), namespace=ns)
        crds.apply(cachepolicy("chat", {"selector": {"matchLabels": {"app": "chat"}}}), namespace=ns)
        wait_for(lambda: r.hget(f"llmcache:policies:{ns}", "chat"), what="publication", logs=[op.log])
        # Status subresource, pod listing and the ConfigMap all worked under the chart's rules.
        wait_for(lambda: ((crds.get(API_VERSION, KIND, "chat", namespace=ns) or {}).get("status") or {})
                 .get("selectedPods") == 1, what="status with the selected pod", logs=[op.log])
        assert condition(crds.get(API_VERSION, KIND, "chat", namespace=ns), "Propagated")["status"] == "True"
        assert crds.get("v1", "ConfigMap", "llmcache-policies", namespace=ns) is not None
        # The finalizer (patching metadata) works too.
        crds.delete(API_VERSION, KIND, "chat", namespace=ns)
        wait_for(lambda: crds.get(API_VERSION, KIND, "chat", namespace=ns) is None, what="deletion",
                 logs=[op.log])
        assert r.hget(f"llmcache:policies:{ns}", "chat") is None
        assert "forbidden" not in op.log.read_text().lower()
        r.close()
    finally:
        crds.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", name)
        crds.delete("rbac.authorization.k8s.io/v1", "ClusterRole", name)
