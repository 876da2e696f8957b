"""The test control plane itself: what other suites rely on when they use ``kube``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.exceptions import ApiException

from controlplane.fixtures import ControlPlane, ControlPlaneMissing, find_binaries

pytestmark = pytest.mark.controlplane


def test_missing_binaries_name_the_command_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCACHE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ControlPlaneMissing, match="make controlplane"):
        find_binaries()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "controlplane.env").write_text(
        f"ETCD={tmp_path}/etcd\nKUBE_APISERVER={tmp_path}/kube-apiserver\nHELM={tmp_path}/helm\n"
    )
    with pytest.raises(ControlPlaneMissing, match=r"etcd is missing.*make controlplane"):
        find_binaries()


def test_kubeconfig_works_for_the_official_client(kube: ControlPlane) -> None:
    client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        version = kubernetes.client.VersionApi(client).get_code()
        assert version.major == "1" and int(version.minor) >= 29
        names = {n.metadata.name for n in kubernetes.client.CoreV1Api(client).list_namespace().items}
        assert {"default", "kube-system"} <= names
    finally:
        client.close()


def test_a_wrong_token_is_rejected(kube: ControlPlane) -> None:
    response = kube.request("GET", "/api/v1/namespaces", headers={"Authorization": "Bearer not-the-token"})
    assert response.status_code == 401


def test_pods_are_admitted_and_stay_pending(kube: ControlPlane, kube_namespace: str) -> None:
    pod = kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "x"}},
                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, namespace=kube_namespace)[0]
    assert pod["status"]["phase"] == "Pending"
    listed = kube.list_objects("v1", "Pod", namespace=kube_namespace, label_selector="app=x")
    assert listed[0]["metadata"]["name"] == "p"
    # The ServiceAccount admission plugin ran: the token volume was projected in.
    assert any("projected" in v for v in pod["spec"]["volumes"])


def test_service_account_tokens_carry_exactly_their_rbac(kube: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]},
    ], namespace=ns)
    client = kubernetes.config.new_client_from_config(config_file=str(kube.service_account_kubeconfig(ns, "reader")))
    try:
        core = kubernetes.client.CoreV1Api(client)
        assert core.list_namespaced_config_map(ns).items is not None
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(ns)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_config_map("default")
        assert denied.value.status == 403
    finally:
        client.close()


def test_helm_talks_to_the_api_server(kube: ControlPlane) -> None:
    proc = kube.helm("list", "--all-namespaces", "--output", "json")
    assert proc.stdout.strip().startswith("[")
    bad = kube.helm("status", "no-such-release", check=False)
    assert bad.returncode != 0 and "not found" in bad.stderr


def test_control_plane_processes_are_alive_until_the_session_ends(kube: ControlPlane) -> None:
    assert kube.request("GET", "/readyz").status_code == 200
    pids = subprocess.run(["pgrep", "-f", str(kube.workdir)], capture_output=True, text=True, check=False).stdout
    assert len(pids.split()) >= 2  # etcd (data dir) and kube-apiserver (cert dir) both live under workdir
