"""Chart values for an external Redis Cluster (issue 13): what URL the operator and sidecars get.

The URL lives only in the chart's URL Secret (pods read it through secretKeyRef);
these tests read that Secret from ``helm template`` and, for credentials looked up
from a Secret, from a server-side dry-run against the real API server.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane.fixtures import ControlPlane, ControlPlaneBinaries
from test_chart import CHART, RELEASE, binaries, find, helm_home, render, run_helm  # noqa: F401 - fixtures

pytestmark = pytest.mark.controlplane

CLUSTER = ("redis.bundled.enabled=false", "redis.external.cluster.endpoints={r1.example:6379,r2.example:7000}")


def url_secret(objects: list[dict[str, Any]]) -> dict[str, str]:
    [secret] = list(find(objects, "Secret", "redis-url"))
    return secret.get("stringData") or {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_cluster_endpoints_render_a_cluster_url_and_no_bundled_redis(binaries: ControlPlaneBinaries,
                                                                       helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, *CLUSTER)
    assert url_secret(objects) == {"url": "redis+cluster://r1.example:6379,r2.example:7000"}
    assert not find(objects, "StatefulSet")  # the chart's own Redis is not deployed
    tls = render(binaries, helm_home, *CLUSTER, "redis.external.cluster.tls=true")
    assert url_secret(tls)["url"] == "rediss+cluster://r1.example:6379,r2.example:7000"
    # By default the chart's own Redis stays single-node and no cluster URL appears.
    assert "cluster" not in url_secret(render(binaries, helm_home))["url"]


def test_external_tls_ca_is_mounted_named_in_the_url_and_handed_to_sidecars(binaries: ControlPlaneBinaries,
                                                                           helm_home: dict[str, str]) -> None:
    """A managed service with its own server CA (Memorystore): the operator mounts it, its URL (and so
    every namespace user's, built from it) verifies against it, and it is copied to every sidecar."""
    objects = render(binaries, helm_home, *CLUSTER, "redis.external.cluster.tls=true",
                     "redis.external.tls.caSecret=memorystore-ca", "redis.external.tls.caKey=server-ca.pem")
    ca = "?ssl_ca_certs=/etc/llmcache/redis-tls/ca.crt"
    assert url_secret(objects) == {"url": "rediss+cluster://r1.example:6379,r2.example:7000" + ca}
    [operator] = [d for d in find(objects, "Deployment") if d["metadata"]["name"].endswith("operator")]
    pod = operator["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "redis-tls"]
    assert volume["secret"] == {"secretName": "memorystore-ca", "items": [{"key": "server-ca.pem", "path": "ca.crt"}]}
    [container] = [c for c in pod["containers"] if c["name"] == "operator"]
    assert {"name": "redis-tls", "mountPath": "/etc/llmcache/redis-tls", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMCACHE_SIDECAR_REDIS_CA_FILE"] == "/etc/llmcache/redis-tls/ca.crt"
    # Without a CA Secret the system CAs are used: nothing mounted, nothing named.
    plain = render(binaries, helm_home, *CLUSTER, "redis.external.cluster.tls=true")
    [operator] = [d for d in find(plain, "Deployment") if d["metadata"]["name"].endswith("operator")]
    assert all(v["name"] != "redis-tls" for v in operator["spec"]["template"]["spec"]["volumes"])
    assert "ssl_ca_certs" not in url_secret(plain)["url"]


@pytest.mark.parametrize("setting", ["redis.external.cluster.endpoints={r1.example}",
                                     "redis.external.cluster.endpoints={a:1,b}",
                                     "redis.external.cluster.tls=yes-please",
                                     "redis.external.cluster.endpoint=r1:6379"])
def test_schema_rejects_bad_cluster_values(binaries: ControlPlaneBinaries, helm_home: dict[str, str],
                                           setting: str) -> None:
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "redis.bundled.enabled=false",
                    "--set", setting)
    assert proc.returncode != 0 and "schema" in (proc.stderr + proc.stdout).lower()


def test_acl_users_come_from_a_secret(kube: ControlPlane, kube_namespace: str, tmp_path: Path) -> None:
    ns = kube_namespace
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cache-acl"}, "stringData": {
        "username": "llmcache-op", "password": "p@ss/word"}}, namespace=ns)
    proc = kube.helm("install", RELEASE, str(CHART), "--namespace", ns, "--no-hooks", "--dry-run=server",
                     *(arg for item in (*CLUSTER, "redis.external.cluster.tls=true",
                                        "redis.external.cluster.credentialsSecret=cache-acl")
                       for arg in ("--set", item)))
    manifest = proc.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    assert url_secret(objects) == {
        "url": "rediss+cluster://llmcache-op:p%40ss%2Fword@r1.example:6379,r2.example:7000"}
