"""The sidecar-injection webhook: the patch itself, and a real kube-apiserver calling the HTTPS server."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from opkit import apply_json_patch, pod_manifest, wait_for, write_self_signed_cert

from llmcache.errors import ConfigError
from llmcache.operator import webhook
from llmcache.operator.settings import SidecarSettings, WebhookSettings
from llmcache.redis_server import free_port

SIDECAR = SidecarSettings(image="example.test/llmcache-proxy:1", upstream="http://model:8000",
                          redis_url="redis://redis:6379/0")
CREDENTIALS = "llmcache-sidecar"


def labelled_pod(**extra: Any) -> dict[str, Any]:
    pod = pod_manifest("web", {"app": "web", "llmcache.io/inject": "enabled"})
    pod["spec"].update(extra)
    return pod


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- the patch, without an API server ---------------------------------------------------------

def test_native_sidecar_patch_shape() -> None:
    pod = labelled_pod()
    out = apply_json_patch(pod, webhook.injection_patch(pod, SIDECAR, native=True, configmap_name="cm"))

    (sidecar,) = out["spec"]["initContainers"]
    assert sidecar["name"] == "llmcache-proxy" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SIDECAR.image
    env = env_of(sidecar)
    assert env["LLMCACHE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["LLMCACHE_UPSTREAM"] == "http://model:8000"
    assert env["LLMCACHE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["LLMCACHE_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["LLMCACHE_POD_LABELS_FILE"] == "/etc/podinfo/labels"
    assert "LLMCACHE_TENANT_SALT" not in env
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    assert volumes["llmcache-podinfo"]["downwardAPI"]["items"] == [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
    assert volumes["llmcache-policies"]["configMap"] == {"name": "cm", "optional": True}
    assert {"name": "llmcache-podinfo", "mountPath": "/etc/podinfo", "readOnly": True} in sidecar["volumeMounts"]
    assert out["metadata"]["annotations"] == {"llmcache.io/inject-status": "injected"}
    assert out["spec"]["containers"] == pod["spec"]["containers"]  # the app is untouched


def test_classic_sidecar_is_appended_to_containers() -> None:
    pod = labelled_pod()
    out = apply_json_patch(pod, webhook.injection_patch(pod, SIDECAR, native=False, configmap_name="cm"))
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", "llmcache-proxy"]
    assert "restartPolicy" not in out["spec"]["containers"][1]
    assert "initContainers" not in out["spec"]


def test_existing_init_containers_volumes_and_annotations_are_kept() -> None:
    pod = labelled_pod(initContainers=[{"name": "migrate", "image": "m"}],
                       volumes=[{"name": "data", "emptyDir": {}}])
    pod["metadata"]["annotations"] = {"team": "x"}
    out = apply_json_patch(pod, webhook.injection_patch(pod, SIDECAR, native=True, configmap_name="cm"))
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["llmcache-proxy", "migrate"]
    assert [v["name"] for v in out["spec"]["volumes"]] == ["data", "llmcache-podinfo", "llmcache-policies"]
    assert out["metadata"]["annotations"] == {"team": "x", "llmcache.io/inject-status": "injected"}


@pytest.mark.parametrize("pod", [
    pytest.param(pod_manifest("plain", {"app": "web"}), id="unlabelled"),
    pytest.param(pod_manifest("off", {"llmcache.io/inject": "disabled"}), id="label-not-enabled"),
    pytest.param({**labelled_pod(), "metadata": {**labelled_pod()["metadata"],
                                                 "annotations": {"llmcache.io/inject-status": "injected"}}},
                 id="already-annotated"),
    pytest.param(labelled_pod(initContainers=[{"name": "llmcache-proxy", "image": "x"}]), id="already-has-sidecar"),
])
def test_no_patch_when_not_wanted(pod: dict[str, Any]) -> None:
    assert webhook.injection_patch(pod, SIDECAR, native=True, configmap_name="cm") == []


def test_patch_is_idempotent() -> None:
    pod = labelled_pod()
    once = apply_json_patch(pod, webhook.injection_patch(pod, SIDECAR, native=True, configmap_name="cm"))
    assert webhook.injection_patch(once, SIDECAR, native=True, configmap_name="cm") == []


def test_llm_traffic_stays_in_the_pod_and_probes_use_the_health_port() -> None:
    sidecar = webhook.sidecar_container(SidecarSettings(port=8080, health_port=18081), native=True)
    env = env_of(sidecar)
    assert env["LLMCACHE_LISTEN"] == "127.0.0.1:8080"  # never the pod IP
    assert env["LLMCACHE_HEALTH_LISTEN"] == "0.0.0.0:18081"
    assert sidecar["ports"] == [{"name": "llmcache-health", "containerPort": 18081, "protocol": "TCP"}]
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/healthz"), ("livenessProbe", "/healthz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "llmcache-health"}, probe
    # A wedged event loop is restarted: liveness fails after a bounded time.
    live = sidecar["livenessProbe"]
    assert live["timeoutSeconds"] * live["failureThreshold"] <= 30


def test_credentials_come_from_the_namespace_secret_never_as_literals() -> None:
    sidecar = SidecarSettings(redis_url="redis://sidecar:s3cret@redis:6379/0", tenant_salt="salty",
                              credentials_secret="llmcache-sidecar", redis_ca_file="/etc/ca.crt")
    pod = labelled_pod()
    out = apply_json_patch(pod, webhook.injection_patch(pod, sidecar, native=True, configmap_name="cm"))
    container = out["spec"]["initContainers"][0]
    env = env_of(container)
    assert env["LLMCACHE_REDIS_URL"] == {"secretKeyRef": {"name": "llmcache-sidecar", "key": "redis-url",
                                                          "optional": True}}
    assert env["LLMCACHE_TENANT_SALT"] == {"secretKeyRef": {"name": "llmcache-sidecar", "key": "tenant-salt",
                                                            "optional": True}}
    assert "s3cret" not in json.dumps(out) and "salty" not in json.dumps(out)
    ca = next(v for v in out["spec"]["volumes"] if v["name"] == "llmcache-redis-ca")
    assert ca["secret"] == {"secretName": "llmcache-sidecar", "optional": True,
                            "items": [{"key": "redis-ca.crt", "path": "ca.crt"}]}
    assert {"name": "llmcache-redis-ca", "mountPath": "/etc/llmcache/redis-tls", "readOnly": True} in \
        container["volumeMounts"]


def test_sidecar_pull_secrets_are_added_once() -> None:
    sidecar = SidecarSettings(image_pull_secrets=("regcred", "mirror"))
    pod = labelled_pod()
    out = apply_json_patch(pod, webhook.injection_patch(pod, sidecar, native=True, configmap_name="cm"))
    assert out["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    pod = labelled_pod(imagePullSecrets=[{"name": "app-cred"}, {"name": "mirror"}])
    out = apply_json_patch(pod, webhook.injection_patch(pod, sidecar, native=True, configmap_name="cm"))
    assert out["spec"]["imagePullSecrets"] == [{"name": "app-cred"}, {"name": "mirror"}, {"name": "regcred"}]


@pytest.mark.parametrize("port", [8080, 18081])
def test_a_port_clash_admits_the_pod_without_the_sidecar_and_says_why(port: int) -> None:
    pod = labelled_pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": port}]
    out = apply_json_patch(pod, webhook.injection_patch(pod, SidecarSettings(port=8080, health_port=18081),
                                                        native=True, configmap_name="cm"))
    assert "initContainers" not in out["spec"] and out["spec"]["containers"] == pod["spec"]["containers"]
    status = out["metadata"]["annotations"]["llmcache.io/inject-status"]
    assert status.startswith("skipped:") and f"port {port}" in status and "'app'" in status
    # Other ports (and UDP on ours) are no clash.
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 9000}, {"containerPort": port, "protocol": "UDP"}]
    assert webhook.port_conflict(pod, SidecarSettings(port=8080, health_port=18081)) is None


def test_tenant_salt_from_a_secret_wins_over_a_literal() -> None:
    sidecar = SidecarSettings(tenant_salt="literal", tenant_salt_secret="llmcache-salt")
    env = env_of(webhook.sidecar_container(sidecar, native=True))
    assert env["LLMCACHE_TENANT_SALT"] == {"secretKeyRef": {"name": "llmcache-salt", "key": "tenant-salt",
                                                            "optional": True}}
    env = env_of(webhook.sidecar_container(SidecarSettings(tenant_salt="literal"), native=True))
    assert env["LLMCACHE_TENANT_SALT"] == "literal"


def test_a_sidecar_on_its_namespaces_redis_user_runs_without_the_near_cache() -> None:
    """That user has no CLIENT TRACKING (README, isolation): the sidecar must not try it."""
    env = env_of(webhook.sidecar_container(SidecarSettings(credentials_secret="llmcache-redis"), native=True))
    assert env["LLMCACHE_NEAR_CACHE_BYTES"] == "0"
    assert "LLMCACHE_NEAR_CACHE_BYTES" not in env_of(webhook.sidecar_container(SidecarSettings(), native=True))


def test_review_response_echoes_uid_and_base64_patch() -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u-1", "namespace": "ns", "object": labelled_pod()}}
    resp = webhook.review_response(review, SIDECAR, native=True, configmap_name="cm")["response"]
    assert resp["uid"] == "u-1" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    assert ops == webhook.injection_patch(labelled_pod(), SIDECAR, native=True, configmap_name="cm")


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
async def test_an_injection_fault_follows_the_failure_policy(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A labelled pod the webhook cannot patch is refused under Fail (its controller retries) rather
    than run without the sidecar it asked for; admitted unchanged under Ignore. Through the server."""
    def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(webhook, "sidecar_container", broken)  # the fault: an internal error mid-patch
    settings = WebhookSettings(sidecar=SIDECAR, failure_policy=policy)
    app = webhook.create_app(settings, native_sidecar=True, configmap_name="cm")
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u-2", "namespace": "ns", "object": labelled_pod()}}
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/mutate-pods", json=review)
        answer = (await resp.json())["response"]
    assert resp.status == 200 and answer["uid"] == "u-2" and "patch" not in answer
    if policy == "Fail":
        assert answer["allowed"] is False
        assert "retried" in answer["status"]["message"] and "injected fault" not in answer["status"]["message"]
    else:
        assert answer["allowed"] is True and "status" not in answer


# -- a real kube-apiserver calling the webhook ------------------------------------------------

@dataclass
class WebhookUnderTest:
    url: str
    ca: str
    log: Path


@pytest.fixture
def webhook_operator(crds: Any, ns: str, redis_plain_url: str, start_operator: Callable[..., Any],
                     tmp_path: Path) -> Iterator[WebhookUnderTest]:
    """An operator serving the webhook on 127.0.0.1 and a MutatingWebhookConfiguration pointing at it."""
    cert_pem = write_self_signed_cert(tmp_path / "certs")
    port = free_port()
    op = start_operator(ns, redis_plain_url, webhook_listen=f"127.0.0.1:{port}", cert_dir=tmp_path / "certs",
                        env={"LLMCACHE_SIDECAR_IMAGE": SIDECAR.image, "LLMCACHE_SIDECAR_UPSTREAM": SIDECAR.upstream,
                             "LLMCACHE_SIDECAR_REDIS_URL": SIDECAR.redis_url,
                             "LLMCACHE_SIDECAR_CREDENTIALS_SECRET": CREDENTIALS})
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    under_test = WebhookUnderTest(url=f"https://127.0.0.1:{port}", ca=str(tmp_path / "ca.pem"), log=op.log)
    name = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    crds.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.llmcache.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",  # as the chart's: the Secret is written on real admissions
            # Fail (not the chart's Ignore) so a broken webhook fails the test instead of hiding.
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"url": f"{under_test.url}/mutate-pods",
                             "caBundle": base64.b64encode(cert_pem).decode()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            # No objectSelector: every pod of the namespace reaches the webhook, so leaving
            # unlabelled pods alone is the webhook's own decision, and a test of it can fail.
        }],
    })
    yield under_test
    crds.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", name)


def _dry_run_injected(kube: Any, ns: str) -> bool:
    resp = kube.request("POST", f"/api/v1/namespaces/{ns}/pods", params={"dryRun": "All"},
                        json=labelled_pod() | {"metadata": {"name": "probe",
                                                            "labels": {"llmcache.io/inject": "enabled"}}})
    return resp.status_code == 201 and "llmcache.io/inject-status" in (resp.json()["metadata"].get("annotations")
                                                                       or {})


@pytest.mark.controlplane
def test_api_server_injects_labelled_pods_and_leaves_others_alone(crds: Any, ns: str,
                                                                   webhook_operator: WebhookUnderTest) -> None:
    # The API server picks up a new webhook configuration asynchronously: probe with dry runs.
    wait_for(lambda: _dry_run_injected(crds, ns), what="the webhook to be called", logs=[webhook_operator.log])

    crds.apply(labelled_pod(), namespace=ns)
    pod = crds.get("v1", "Pod", "web", namespace=ns)
    assert pod["metadata"]["annotations"]["llmcache.io/inject-status"] == "injected"
    # kube-apiserver 1.37 supports native sidecars: the proxy is the first init container.
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "llmcache-proxy" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SIDECAR.image
    env = {e["name"]: e for e in sidecar["env"]}
    # The URL is referenced from the Secret the operator wrote into this namespace before answering.
    assert env["LLMCACHE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == CREDENTIALS
    secret = crds.get("v1", "Secret", CREDENTIALS, namespace=ns)
    assert secret is not None
    assert base64.b64decode(secret["data"]["redis-url"]).decode() == SIDECAR.redis_url
    assert env["LLMCACHE_UPSTREAM"]["value"] == SIDECAR.upstream
    assert env["LLMCACHE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["llmcache-podinfo"]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.labels"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]

    # The webhook was called for this pod too (no objectSelector) and left it alone.
    calls_before = webhook_operator.log.read_text().count("injecting")
    crds.apply(pod_manifest("plain", {"app": "web"}), namespace=ns)
    plain = crds.get("v1", "Pod", "plain", namespace=ns)
    assert webhook_operator.log.read_text().count("injecting") == calls_before
    assert "llmcache.io/inject-status" not in (plain["metadata"].get("annotations") or {})
    assert not plain["spec"].get("initContainers")
    assert not any(v["name"].startswith("llmcache-") for v in plain["spec"].get("volumes") or [])


@pytest.mark.controlplane
def test_webhook_server_answers_reviews_without_patching_unwanted_pods(webhook_operator: WebhookUnderTest) -> None:
    def review(pod: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "abc", "namespace": "x", "object": pod}}
        resp = requests.post(f"{webhook_operator.url}/mutate-pods", json=body, verify=webhook_operator.ca,
                             timeout=10)
        assert resp.status_code == 200
        return resp.json()["response"]

    assert "patch" not in review(pod_manifest("plain", {"app": "web"}))
    injected = labelled_pod()
    injected["metadata"]["annotations"] = {"llmcache.io/inject-status": "injected"}
    assert "patch" not in review(injected)
    assert review(labelled_pod())["patchType"] == "JSONPatch"
    bad = requests.post(f"{webhook_operator.url}/mutate-pods", data=b"not json",
                        verify=webhook_operator.ca, timeout=10)
    assert bad.status_code == 400 and "AdmissionReview" in bad.json()["error"]


# -- the HTTPS server in-process -----------------------------------------------------------------

async def test_server_reloads_a_rotated_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    first = write_self_signed_cert(certs)
    port = free_port()
    settings = WebhookSettings(listen=f"127.0.0.1:{port}", cert_dir=str(certs), sidecar=SIDECAR)

    async def healthz(ca_pem: bytes) -> bool:
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        try:
            async with aiohttp.ClientSession() as session, \
                    session.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as resp:
                return resp.status == 200
        except aiohttp.ClientConnectorError:
            return False

    async with webhook.serve(settings, native_sidecar=True, configmap_name="cm", reload_interval_s=0.05):
        assert await healthz(first)
        await asyncio.sleep(0.02)  # a different mtime for the rotated files
        second = write_self_signed_cert(certs)  # what cert-manager / the cert Job do on renewal
        for _ in range(100):
            if await healthz(second):
                break
            await asyncio.sleep(0.05)
        assert await healthz(second)
        assert not await healthz(first)


async def test_server_without_certificates_says_how_to_fix_it(tmp_path: Path) -> None:
    settings = WebhookSettings(listen="127.0.0.1:0", cert_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--webhook-listen ''"):
        async with webhook.serve(settings, native_sidecar=True, configmap_name="cm"):
            pass


def test_embedder_url_makes_the_sidecar_embed_remotely() -> None:
    env = env_of(webhook.sidecar_container(SidecarSettings(embedder_url="http://ms.llm.svc:8000"), native=True))
    assert env["LLMCACHE_EMBEDDER"] == "remote"
    assert env["LLMCACHE_EMBEDDER_URL"] == "http://ms.llm.svc:8000"
    # Without one the sidecar is not told to embed remotely (exact-only in a torch-free image).
    env = env_of(webhook.sidecar_container(SidecarSettings(), native=True))
    assert "LLMCACHE_EMBEDDER" not in env and "LLMCACHE_EMBEDDER_URL" not in env


def test_sidecar_embedder_url_is_read_from_the_env() -> None:
    assert SidecarSettings.from_env({"LLMCACHE_SIDECAR_EMBEDDER_URL": "http://e:1"}).embedder_url == "http://e:1"
    assert SidecarSettings.from_env({}).embedder_url == ""


def test_write_timeout_reaches_the_sidecar_env() -> None:
    """``sidecar.writeTimeoutSeconds`` → ``LLMCACHE_SIDECAR_WRITE_TIMEOUT_SECONDS`` → the proxy's flag's env."""
    settings = SidecarSettings.from_env({"LLMCACHE_SIDECAR_WRITE_TIMEOUT_SECONDS": "12.5"})
    assert env_of(webhook.sidecar_container(settings, native=True))["LLMCACHE_WRITE_TIMEOUT_SECONDS"] == "12.5"
    assert "LLMCACHE_WRITE_TIMEOUT_SECONDS" not in env_of(webhook.sidecar_container(SidecarSettings(), native=True))
