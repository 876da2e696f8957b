"""The operator runs with exactly what the chart gives it: command line, env, RBAC, peering.

``helm install`` puts the Deployment, ServiceAccount, RBAC and peering object
on the real API server. The test then runs the operator as a local process the
way the kubelet would: the container's command and args (``$(VAR)`` expanded),
its env, and a token of the chart's ServiceAccount. Only what has no meaning
outside a cluster is substituted: the Redis URL (a local Redis instead of the
in-cluster Service), loopback ports instead of ``0.0.0.0``, and a certificate
directory in place of the mounted Secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from controlplane.fixtures import ControlPlane

from llmcache.redis_server import free_port

pytestmark = pytest.mark.controlplane

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmcache"
RELEASE = "llm"
WAIT_S = 60.0


def write_self_signed(directory: Path) -> Path:
    """tls.crt/tls.key for 127.0.0.1, as the webhook Secret would mount them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-llmcache-webhook")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "tls.crt"


def wait_for(predicate: Any, *, what: str, log: Path, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else "(no log)"
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; operator log tail:\n{tail}")


class ChartOperator:
    """The chart's operator container, run as a local process."""

    def __init__(self, kube: ControlPlane, namespace: str, redis_url: str, workdir: Path) -> None:
        deployment = kube.get("apps/v1", "Deployment", f"{RELEASE}-llmcache-operator", namespace=namespace)
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        self.container = next(c for c in pod["containers"] if c["name"] == "operator")
        self.health_port, self.webhook_port = free_port(), free_port()
        self.cert_dir = workdir / "webhook-certs"
        self.ca = write_self_signed(self.cert_dir)
        self.log = workdir / "operator.log"

        env: dict[str, str] = {}
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                # Secret refs: the chart's Redis URL names an in-cluster Service (use the local Redis);
                # the others (the namespace users' key, the tenant salt) are used as the chart made them.
                ref = item["valueFrom"]["secretKeyRef"]
                secret = kube.get("v1", "Secret", ref["name"], namespace=namespace)
                assert secret is not None, ref
                if ref["key"] not in secret["data"]:
                    assert ref.get("optional"), ref
                    continue
                env[item["name"]] = (redis_url if ref["name"].endswith("-redis-url")
                                     else base64.b64decode(secret["data"][ref["key"]]).decode())
        self.env_from_chart = dict(env)

        def expand(arg: str) -> str:  # the kubelet's $(VAR) expansion
            return re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)

        args = [expand(a) for a in self.container["args"]]
        args = [re.sub(r"^--health-listen=0\.0\.0\.0:\d+$", f"--health-listen=127.0.0.1:{self.health_port}", a)
                for a in args]
        args = [re.sub(r"^--webhook-listen=0\.0\.0\.0:\d+$", f"--webhook-listen=127.0.0.1:{self.webhook_port}", a)
                for a in args]
        args = [f"--webhook-cert-dir={self.cert_dir}" if a.startswith("--webhook-cert-dir=") else a for a in args]
        self.args = args

        executable = shutil.which(self.container["command"][0], path=str(Path(sys.executable).parent))
        assert executable, f"{self.container['command'][0]} is not installed next to {sys.executable}"
        full_env = {k: v for k, v in kube.env().items() if not k.startswith("LLMCACHE_")}
        full_env.update(env)
        full_env["KUBECONFIG"] = str(kube.service_account_kubeconfig(namespace, pod["serviceAccountName"]))
        self.cmd = [executable, *args]
        self.full_env = full_env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChartOperator:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.full_env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                return requests.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, what="the operator's /healthz", log=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def installed(kube: ControlPlane, kube_namespace: str) -> Iterator[str]:
    """The chart installed (no hooks) with two replicas watching this test's namespace only."""
    ns = kube_namespace
    kube.helm("install", RELEASE, str(CHART), "--namespace", ns, "--no-hooks",
              "--set", "operator.replicas=2", "--set", f"operator.namespace={ns}",
              "--set", "operator.configmapName=chart-policies",
              "--set", "sidecar.image.repository=registry.example/llmcache-proxy",
              "--set", "sidecar.image.tag=9.9.9")
    yield ns
    kube.helm("uninstall", RELEASE, "--namespace", ns, "--no-hooks", check=False)


def test_operator_runs_with_the_charts_command_env_and_rbac(kube: ControlPlane, installed: str,
                                                            redis_plain_url: str, tmp_path: Path) -> None:
    ns = installed
    operator = ChartOperator(kube, ns, redis_plain_url, tmp_path)
    assert operator.env_from_chart["LLMCACHE_STANDALONE"] == "false"  # two replicas: kopf peering
    operator.start()
    try:
        # Reconcile: the policy's status and the chart-named ConfigMap copy appear.
        kube.apply({"apiVersion": "llmcache.io/v1alpha1", "kind": "CachePolicy", "metadata": {"name": "chat"},
                    "spec": {"selector": {"matchLabels": {"app": "chat"}}, "mode": "Exact", "ttlSeconds": 120}},
                   namespace=ns)

        def reconciled() -> dict[str, Any] | None:
            policy = kube.get("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=ns)
            status = (policy or {}).get("status") or {}
            return policy if status.get("observedGeneration") == 1 else None

        wait_for(reconciled, what="status.observedGeneration of the CachePolicy", log=operator.log)
        configmap = wait_for(lambda: kube.get("v1", "ConfigMap", "chart-policies", namespace=ns),
                             what="the chart-named policies ConfigMap", log=operator.log)
        assert "chat" in json.dumps(configmap["data"])

        # The webhook serves on the chart's path and injects the chart's sidecar settings.
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-0000-0000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns, "operation": "CREATE",
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "app", "namespace": ns,
                                        "labels": {"app": "chat", "llmcache.io/inject": "enabled"}},
                           "spec": {"containers": [{"name": "app", "image": "busybox"}]}},
            },
        }
        path = kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                        next(iter(_cluster_webhooks(kube, ns))))["webhooks"][0]["clientConfig"]["service"]["path"]
        response = requests.post(f"https://127.0.0.1:{operator.webhook_port}{path}", json=review,
                                 verify=str(operator.ca), timeout=10)
        assert response.status_code == 200, response.text
        answer = response.json()["response"]
        assert answer["allowed"] is True and answer["uid"] == review["request"]["uid"]
        patch = base64.b64decode(answer["patch"]).decode()
        assert "registry.example/llmcache-proxy:9.9.9" in patch
        assert f"http://llm-llmcache-model-server.{ns}.svc:8000" in patch
        # The Redis URL (a credential) is referenced, never inlined: the operator wrote it, under the
        # chart's RBAC and admission policy, into the credentials Secret of the pod's namespace.
        assert redis_plain_url not in patch and '"name": "llmcache-sidecar", "key": "redis-url"' in patch
        secret = kube.get("v1", "Secret", "llmcache-sidecar", namespace=ns)
        assert secret is not None, operator.log.read_text()[-3000:]
        # ...as this namespace's own Redis user, made by the operator: it reaches this namespace's keys only.
        namespace_url = base64.b64decode(secret["data"]["redis-url"]).decode()
        assert namespace_url.startswith(f"redis://llmcache-ns-{ns}:") and namespace_url != redis_plain_url
        with redis.Redis.from_url(namespace_url) as sidecar:
            assert sidecar.set(f"llmcache:n:{ns}:e:{{00}}:x", "1")
            with pytest.raises(redis.exceptions.NoPermissionError):
                sidecar.get("llmcache:n:another-namespace:e:{00}:x")

        # Delete goes through the finalizer while the operator runs.
        kube.delete("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=ns)
        wait_for(lambda: kube.get("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=ns) is None,
                 what="the CachePolicy to be deleted through the finalizer", log=operator.log)
    finally:
        operator.stop()


def _cluster_webhooks(kube: ControlPlane, ns: str) -> set[str]:
    proc = kube.helm("get", "manifest", RELEASE, "--namespace", ns)
    return set(re.findall(r"kind: MutatingWebhookConfiguration\nmetadata:\n  name: (\S+)", proc.stdout))
