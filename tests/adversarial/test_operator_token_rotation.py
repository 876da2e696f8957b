"""Issue 14, item 11: the operator re-reads its service-account token (projected tokens expire).

The operator runs from a kubeconfig whose ``tokenFile`` holds a TokenRequest token bound to a
Secret. The file is then rewritten with a new token (what the kubelet does for projected
tokens) and the first token is revoked by deleting its Secret. A policy created afterwards must
still be reconciled end to end: kopf's watch and status patch, and the operator's own
ConfigMap write. An operator that kept the first token gets 401s and never gets there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml
from operator_kit import crds, ns, start_operator  # noqa: F401 - fixtures
from opkit import API_VERSION, KIND, cachepolicy, wait_for

pytestmark = pytest.mark.controlplane


def bound_token(kube: Any, namespace: str, sa: str, secret: str) -> str:
    """A token for ``sa`` that stops working when the Secret ``secret`` is deleted."""
    obj = kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "type": "Opaque"},
                     namespace=namespace)[0]
    resp = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token", json={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600, "boundObjectRef": {"apiVersion": "v1", "kind": "Secret",
                                                               "name": secret, "uid": obj["metadata"]["uid"]}}})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["status"]["token"])


def accepted(kube: Any, token: str) -> bool:
    resp = requests.get(kube.server + "/version", headers={"Authorization": f"Bearer {token}"},
                        verify=str(kube.ca), timeout=10)
    return resp.status_code == 200


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_operator_keeps_working_after_its_token_rotates(crds: Any, ns: str, redis_plain_url: str,
                                                        start_operator: Callable[..., Any], tmp_path: Path) -> None:
    sa, binding = "rotating-operator", f"llmcache-rotation-{uuid.uuid4().hex[:8]}"
    crds.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}, namespace=ns)
    crds.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
    token_file = tmp_path / "token"
    token_file.write_text(bound_token(crds, ns, sa, "token-a"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": crds.server, "certificate-authority": str(crds.ca)}}],
        "users": [{"name": sa, "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa}}]}))
    r = redis.Redis.from_url(redis_plain_url)
    try:
        op = start_operator(ns, redis_plain_url, env={"KUBECONFIG": str(kubeconfig)})
        crds.apply(cachepolicy("before", {"selector": {}}), namespace=ns)
        wait_for(lambda: r.hget(f"llmcache:policies:{ns}", "before"), what="publication with the first token",
                 logs=[op.log])

        first = token_file.read_text()
        write_atomically(token_file, bound_token(crds, ns, sa, "token-b"))
        crds.delete("v1", "Secret", "token-a", namespace=ns)
        wait_for(lambda: not accepted(crds, first), what="the first token to be revoked")

        crds.apply(cachepolicy("after", {"selector": {}}), namespace=ns)
        wait_for(lambda: r.hget(f"llmcache:policies:{ns}", "after"), what="publication after the rotation",
                 logs=[op.log])
        wait_for(lambda: ((crds.get(API_VERSION, KIND, "after", namespace=ns) or {}).get("status") or {})
                 .get("observedGeneration") == 1, what="status patched with the new token", logs=[op.log])
        configmap = wait_for(lambda: crds.get("v1", "ConfigMap", "llmcache-policies", namespace=ns),
                             what="the policies ConfigMap")
        wait_for(lambda: "after" in str((crds.get("v1", "ConfigMap", "llmcache-policies", namespace=ns)
                                         or configmap).get("data")),
                 what="the ConfigMap rewritten with the new token", logs=[op.log])
    finally:
        r.close()
        crds.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", binding)
