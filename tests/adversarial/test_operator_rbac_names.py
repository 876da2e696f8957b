"""Issue 14, item 11: the operator may touch only its one ConfigMap and one Secret name, anywhere.

The chart is installed on the real API server and the operator's service account is
impersonated: RBAC answers what it may do by verb and name, and the chart's
ValidatingAdmissionPolicy narrows ``create`` (which RBAC cannot limit by name). Creates
are dry runs, so the probes leave nothing behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from controlplane.fixtures import ControlPlane

pytestmark = pytest.mark.controlplane

RELEASE = "llm"
REPO = Path(__file__).resolve().parents[2]


def as_operator(kube: ControlPlane, ns: str, method: str, path: str, *, content_type: str | None = None,
                **kwargs: Any) -> Any:
    headers = {"Impersonate-User": f"system:serviceaccount:{ns}:{RELEASE}-llmcache-operator",
               "Impersonate-Group": "system:serviceaccounts"}
    if content_type:
        headers["Content-Type"] = content_type
    return kube.request(method, path, headers=headers, **kwargs)


def create(kube: ControlPlane, ns: str, namespace: str, kind: str, name: str) -> Any:
    body = {"apiVersion": "v1", "kind": "ConfigMap" if kind == "configmaps" else "Secret",
            "metadata": {"name": name}, "data": {}}
    return as_operator(kube, ns, "POST", f"/api/v1/namespaces/{namespace}/{kind}", params={"dryRun": "All"},
                       json=body)


@pytest.fixture
def installed(kube: ControlPlane, kube_namespace: str) -> Any:
    kube.helm("install", RELEASE, str(REPO / "charts" / "llmcache"), "--namespace", kube_namespace, "--no-hooks")
    yield kube_namespace
    kube.helm("uninstall", RELEASE, "--namespace", kube_namespace, "--no-hooks", check=False)


def test_operator_creates_and_patches_only_its_own_names(kube: ControlPlane, installed: str) -> None:
    ns = installed
    # The API server applies a new admission policy asynchronously: wait until it denies.
    deadline = time.monotonic() + 60
    while create(kube, ns, "kube-system", "configmaps", "kube-proxy").status_code == 201:
        assert time.monotonic() < deadline, "the chart's ValidatingAdmissionPolicy never took effect"
        time.sleep(0.5)

    denied = create(kube, ns, "kube-system", "configmaps", "kube-proxy")
    assert denied.status_code == 403 and "may create only the ConfigMap llmcache-policies" in denied.text
    assert create(kube, ns, ns, "secrets", "llm-llmcache-redis-auth-copy").status_code == 403
    assert create(kube, ns, "kube-system", "secrets", "bootstrap-token-abcdef").status_code == 403
    # Its own names, in any namespace (the ones with policies or injected pods).
    assert create(kube, ns, "kube-system", "configmaps", "llmcache-policies").status_code == 201
    assert create(kube, ns, ns, "secrets", "llmcache-sidecar").status_code == 201

    # Reads: no Secret, no ConfigMap, by name or by listing.
    for path in (f"/api/v1/namespaces/{ns}/secrets/{RELEASE}-llmcache-redis-auth", f"/api/v1/namespaces/{ns}/secrets",
                 "/api/v1/secrets", f"/api/v1/namespaces/{ns}/configmaps", "/api/v1/configmaps",
                 "/api/v1/namespaces/kube-system/configmaps/kube-proxy"):
        assert as_operator(kube, ns, "GET", path).status_code == 403, path
    # Patches: only its own names.
    merge = "application/merge-patch+json"
    for kind, name in (("secrets", f"{RELEASE}-llmcache-redis-auth"), ("configmaps", "other")):
        resp = as_operator(kube, ns, "PATCH", f"/api/v1/namespaces/{ns}/{kind}/{name}", params={"dryRun": "All"},
                           data='{"metadata": {"labels": {"x": "y"}}}', content_type=merge)
        assert resp.status_code == 403, (kind, name, resp.text)
