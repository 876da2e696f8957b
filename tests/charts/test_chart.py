"""The Helm chart: lint, render, schema, and install/upgrade/uninstall on a real API server.

Rendering tests run the built helm (`make controlplane`) with no cluster.
Lifecycle tests run it against the ``kube`` fixture (etcd + kube-apiserver).
There is no kubelet or controller-manager there, so nothing runs: installs use
``--no-hooks`` (the certificate hook Jobs and the ``helm test`` Pod would wait
forever for a pod that never starts), and the hooks' own contract is checked
separately: rendered, and their RBAC applied and probed with
SubjectAccessReviews against the real authorizer.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane.fixtures import ControlPlane, ControlPlaneBinaries, ControlPlaneMissing, find_binaries

pytestmark = pytest.mark.controlplane

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmcache"
RELEASE = "llm"


# -- helpers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def binaries() -> ControlPlaneBinaries:
    missing: str | None = None
    try:
        return find_binaries()
    except ControlPlaneMissing as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
    }


def run_helm(binaries: ControlPlaneBinaries, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries.helm), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def render(binaries: ControlPlaneBinaries, env: dict[str, str], *sets: str, namespace: str = "ns1",
           release: str = RELEASE) -> list[dict[str, Any]]:
    """``helm template`` with ``--set`` pairs; hooks included; returns the parsed objects."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for item in sets:
        args += ["--set", item]
    proc = run_helm(binaries, env, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(objects, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield o["metadata"]["name"], o["spec"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# -- lint, schema, documentation -----------------------------------------------


def test_helm_lint_is_clean_with_defaults_and_options(binaries: ControlPlaneBinaries,
                                                       helm_home: dict[str, str]) -> None:
    for sets in ([], ["webhook.certificate.provider=cert-manager", "exampleApp.enabled=true"],
                 ["redis.bundled.enabled=false", "redis.external.url=redis://redis.example:6379/0"]):
        args = ["lint", "--strict", str(CHART)]
        for item in sets:
            args += ["--set", item]
        proc = run_helm(binaries, helm_home, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.replica=2", "'replica' not allowed"),  # typo of replicas
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
        ("modelServer.device=tpu", "device"),
        ("redis.external.url=http://not-redis", "url"),
        ("sidecarr.port=1", "'sidecarr' not allowed"),
        ("sidecar.tenantSalt.secret=x", "'secret' not allowed"),  # typo of existingSecret
        ("sidecar.tenantSalt.existingSecret=Not_A_Name", "existingSecret"),
        ("global.imageRegistry=https://registry.example.com", "imageRegistry"),  # a registry, not a URL
        ("global.imageRegistri=registry.example.com", "'imageRegistri' not allowed"),
        ("sidecar.writeTimeoutSeconds=0", "writeTimeoutSeconds"),
    ],
)
def test_schema_rejects_bad_values(binaries: ControlPlaneBinaries, helm_home: dict[str, str], setting: str,
                                   complaint: str) -> None:
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert "schema" in proc.stderr and complaint in proc.stderr, proc.stderr


def test_every_value_is_commented() -> None:
    """Each value the schema names (leaf or free-form object) has a comment right above it in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented: list[str] = []
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):(\s|$)", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        node: dict[str, Any] = schema
        free_form = False
        for part in path:
            if "properties" not in node:
                free_form = True  # inside a Kubernetes-shaped value, documented as a whole
                break
            child = node["properties"].get(part)
            assert child is not None, f"values.yaml key {'.'.join(path)} is not in values.schema.json"
            node = child
        if free_form:
            continue
        if "properties" in node:
            continue  # a group: its members carry the comments
        previous = lines[index - 1].strip() if index else ""
        if not previous.startswith("#"):
            undocumented.append(".".join(path))
    assert not undocumented, f"values without a comment: {undocumented}"


# -- rendering -----------------------------------------------------------------


def test_defaults_render_operator_webhook_redis_model_server(binaries: ControlPlaneBinaries,
                                                               helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home)
    operator = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]
    c = container(operator, "operator")
    assert c["command"] == ["llmcache"]
    args = c["args"]
    assert args[args.index("operator") :] == [
        "operator",
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-cert-dir=/etc/llmcache/webhook-certs",
        "--webhook-failure-policy=Fail",
        "--health-listen=0.0.0.0:8081",
        "--namespace=",
    ]
    env = env_of(c)
    assert env["LLMCACHE_SIDECAR_IMAGE"] == "ghcr.io/llmcache/proxy:0.1.0"
    assert env["LLMCACHE_SIDECAR_UPSTREAM"] == "http://llm-llmcache-model-server.ns1.svc:8000"
    assert env["LLMCACHE_REDIS_URL"] == {"secretKeyRef": {"name": "llm-llmcache-redis-url", "key": "url"}}
    # No shared sidecar credential: each app namespace gets its own Redis user, its password derived
    # from a generated key the operator reads from a Secret.
    assert "LLMCACHE_SIDECAR_REDIS_URL" not in env and env["LLMCACHE_SIDECAR_REDIS_USERS"] == "namespace"
    assert env["LLMCACHE_NAMESPACE_USERS_KEY"] == {"secretKeyRef": {"name": "llm-llmcache-namespace-users",
                                                                    "key": "key"}}
    assert re.fullmatch(r"[A-Za-z0-9]{48}", base64.b64decode(
        one(objects, "Secret", "-namespace-users")["data"]["key"]).decode())
    assert env["LLMCACHE_STANDALONE"] == "true"
    assert env["LLMCACHE_EVICTION_INTERVAL_SECONDS"] == "10"
    secret = one(objects, "Secret", "-redis-url")
    # One ACL user for the operator, with a generated password; none for sidecars in any Secret.
    assert re.fullmatch(r"redis://operator:[A-Za-z0-9]{40}@llm-llmcache-redis\.ns1\.svc:6379/0",
                        secret["stringData"]["url"])
    assert set(secret["stringData"]) == {"url"}
    assert set(one(objects, "Secret", "-redis-auth")["stringData"]) == {"operator-password", "users.acl"}
    # The certgen Secret's cert/key become the tls.crt/tls.key the operator reads.
    certs = next(v for v in operator["volumes"] if v["name"] == "webhook-certs")["secret"]
    assert {i["path"] for i in certs["items"]} == {"tls.crt", "tls.key"}

    hook = one(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"] == {
        "service": {"name": "llm-llmcache-webhook", "namespace": "ns1", "path": "/mutate-pods", "port": 443}
    }
    assert hook["objectSelector"] == {"matchLabels": {"llmcache.io/inject": "enabled"}}
    # Fail closed, for the labelled pods only: they asked for the sidecar, no other pod is sent here.
    assert (hook["failurePolicy"], hook["sideEffects"]) == ("Fail", "NoneOnDryRun")
    service = one(objects, "Service", "-webhook")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"https": "webhook", "health": "health"}

    redis = one(objects, "StatefulSet", "-redis")
    assert container(redis["spec"]["template"]["spec"], "redis")["image"].startswith("redis:8")
    redis_args = container(redis["spec"]["template"]["spec"], "redis")["args"]
    flags = dict(zip(redis_args[1::2], redis_args[2::2], strict=False))
    assert "--protected-mode" not in flags and flags["--aclfile"] == "/etc/redis-acl/users.acl"
    assert (flags["--maxmemory"], flags["--maxmemory-policy"], flags["--appendonly"]) == ("1gb", "volatile-lru", "no")
    # Redis is fenced: only the operator, injected pods and helm test may connect.
    policy = one(objects, "NetworkPolicy", "-redis")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    peers = policy["spec"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"].get("app.kubernetes.io/component", "") for p in peers[:2]] == [
        "operator", "test"]
    assert peers[2]["podSelector"] == {"matchLabels": {"llmcache.io/inject": "enabled"}}
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]} in \
        peers[2]["namespaceSelector"]["matchExpressions"]
    assert env["LLMCACHE_SIDECAR_CREDENTIALS_SECRET"] == "llmcache-sidecar"
    assert env["LLMCACHE_DEFAULT_MAX_ENTRIES"] == "100000"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"

    model = one(objects, "Deployment", "-model-server")["spec"]["template"]["spec"]
    mc = container(model, "model-server")
    assert mc["args"][:4] == ["model-server", "--listen=0.0.0.0:8000", "--model=default", "--device=auto"]
    assert mc["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert model["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert not find(objects, "Deployment", "-example-app")


def test_global_image_registry_moves_llmcaches_own_images_only(binaries: ControlPlaneBinaries,
                                                               helm_home: dict[str, str]) -> None:
    """What the README's "images" steps rely on: one value points the chart at your registry."""
    def images(*sets: str) -> tuple[str, str, str, str, str]:
        objects = render(binaries, helm_home, *sets)
        operator = container(one(objects, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
        model = container(one(objects, "Deployment", "-model-server")["spec"]["template"]["spec"], "model-server")
        redis = container(one(objects, "StatefulSet", "-redis")["spec"]["template"]["spec"], "redis")
        certgen = one(objects, "Job", "-certgen-create")["spec"]["template"]["spec"]["containers"][0]
        return (operator["image"], env_of(operator)["LLMCACHE_SIDECAR_IMAGE"], model["image"], redis["image"],
                certgen["image"])

    default = images()
    assert default[:3] == ("ghcr.io/llmcache/operator:0.1.0", "ghcr.io/llmcache/proxy:0.1.0",
                           "ghcr.io/llmcache/model-server:0.1.0")
    moved = images("global.imageRegistry=registry.example.com:5000/team/", "modelServer.image.tag=0.1.0-cpu")
    assert moved[:3] == ("registry.example.com:5000/team/operator:0.1.0", "registry.example.com:5000/team/proxy:0.1.0",
                         "registry.example.com:5000/team/model-server:0.1.0-cpu")
    assert moved[3:] == default[3:]  # Redis and the certgen hook are public images: untouched
    # Per image, without the global value: the repository as given.
    assert images("operator.image.repository=mirror.example/llmcache-operator")[0] == \
        "mirror.example/llmcache-operator:0.1.0"


def test_every_pod_runs_with_secure_defaults(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, "exampleApp.enabled=true")
    specs = dict(pod_specs(objects))
    assert set(specs) >= {"llm-llmcache-operator", "llm-llmcache-redis", "llm-llmcache-model-server",
                                  "llm-llmcache-example-app", "llm-llmcache-test", "llm-llmcache-certgen-create"}
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])


def test_hooks_make_the_certificate_and_test_the_release(binaries: ControlPlaneBinaries,
                                                           helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home)
    create = one(objects, "Job", "-certgen-create")
    patch = one(objects, "Job", "-certgen-patch")
    assert create["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert patch["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    create_args = create["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--host=llm-llmcache-webhook,llm-llmcache-webhook.ns1.svc" in create_args
    assert "--secret-name=llm-llmcache-webhook-tls" in create_args
    patch_args = patch["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-name=ns1-llm-llmcache-sidecar-injector" in patch_args
    assert "--patch-failure-policy=Fail" in patch_args
    test_pod = one(objects, "Pod", "-test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    commands = [" ".join(c["command"]) for c in test_pod["spec"]["containers"]]
    assert any("llm-llmcache-webhook:8081/healthz" in cmd for cmd in commands)
    assert any("redis-cli" in cmd for cmd in commands)


def test_cert_manager_replaces_the_hook_jobs(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, "webhook.certificate.provider=cert-manager")
    assert not find(objects, "Job")
    cert = one(objects, "Certificate")
    assert cert["spec"]["secretName"] == "llm-llmcache-webhook-tls"
    assert "llm-llmcache-webhook.ns1.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"]["name"] == one(objects, "Issuer")["metadata"]["name"]
    webhook = one(objects, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ns1/llm-llmcache-webhook"
    operator = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]
    certs = next(v for v in operator["volumes"] if v["name"] == "webhook-certs")["secret"]
    assert "items" not in certs  # cert-manager writes tls.crt/tls.key itself

    own_issuer = render(binaries, helm_home, "webhook.certificate.provider=cert-manager",
                        "webhook.certificate.certManager.issuerRef.name=corp-ca",
                        "webhook.certificate.certManager.issuerRef.kind=ClusterIssuer")
    assert not find(own_issuer, "Issuer")
    assert one(own_issuer, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_external_redis_by_url_or_existing_secret(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    by_url = render(binaries, helm_home, "redis.bundled.enabled=false",
                    "redis.external.url=rediss://:pw@cache.internal:6380/1")
    assert not find(by_url, "StatefulSet")
    assert one(by_url, "Secret", "-redis-url")["stringData"]["url"] == "rediss://:pw@cache.internal:6380/1"

    by_secret = render(binaries, helm_home, "redis.bundled.enabled=false", "redis.external.existingSecret=my-redis",
                       "redis.external.existingSecretKey=uri")
    assert not find(by_secret, "Secret", "-redis-url")
    operator = one(by_secret, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert env_of(container(operator, "operator"))["LLMCACHE_REDIS_URL"] == {
        "secretKeyRef": {"name": "my-redis", "key": "uri"}
    }

    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "redis.bundled.enabled=false")
    assert proc.returncode != 0
    assert "set redis.external.url or redis.external.existingSecret" in proc.stderr


def test_redis_tls_serves_rediss_only_and_hands_out_its_ca(binaries: ControlPlaneBinaries,
                                                          helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, "redis.bundled.tls.enabled=true",
                     "redis.bundled.tls.existingSecret=redis-tls")
    urls = one(objects, "Secret", "-redis-url")["stringData"]
    assert urls["url"].startswith("rediss://") and urls["url"].endswith("?ssl_ca_certs=/etc/llmcache/redis-tls/ca.crt")
    redis_args = container(one(objects, "StatefulSet", "-redis")["spec"]["template"]["spec"], "redis")["args"]
    flags = dict(zip(redis_args[1::2], redis_args[2::2], strict=False))
    assert (flags["--port"], flags["--tls-port"]) == ("0", "6379")  # no plaintext port at all
    operator = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert env_of(container(operator, "operator"))["LLMCACHE_SIDECAR_REDIS_CA_FILE"] == \
        "/etc/llmcache/redis-tls/ca.crt"
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "redis.bundled.tls.enabled=true")
    assert proc.returncode != 0 and "redis.bundled.tls.existingSecret" in proc.stderr


def test_no_credential_in_any_argv_or_literal_env(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    """Redis passwords (bundled or external) reach pods through secretKeyRef only."""
    for sets in ([], ["redis.bundled.enabled=false", "redis.external.url=rediss://:hunter2pw@cache.internal:6380/1"]):
        objects = render(binaries, helm_home, *sets)
        urls = one(objects, "Secret", "-redis-url")["stringData"]
        secrets = {u.split("@")[0].rpartition(":")[2] for u in urls.values()}
        assert all(len(s) >= 8 for s in secrets), secrets
        for name, spec in pod_specs(objects):
            for c in spec["containers"] + spec.get("initContainers", []):
                text = json.dumps([c.get("command"), c.get("args"), [e.get("value") for e in c.get("env", [])]])
                assert not any(s in text for s in secrets), (name, c["name"])


def test_sidecars_share_one_tenant_salt_generated_or_from_existing_secret(binaries: ControlPlaneBinaries,
                                                                           helm_home: dict[str, str]) -> None:
    generated = render(binaries, helm_home)
    secret = one(generated, "Secret", "-tenant-salt")
    assert secret["metadata"]["namespace"] == "ns1"
    salt = base64.b64decode(secret["data"]["tenant-salt"]).decode()
    assert len(salt) == 48 and salt.isalnum()
    env = env_of(container(one(generated, "Deployment", "-operator")["spec"]["template"]["spec"], "operator"))
    assert env["LLMCACHE_SIDECAR_TENANT_SALT"] == {
        "secretKeyRef": {"name": "llm-llmcache-tenant-salt", "key": "tenant-salt"}}
    assert "LLMCACHE_SIDECAR_TENANT_SALT_SECRET" not in env

    shared = render(binaries, helm_home, "sidecar.tenantSalt.existingSecret=llm-salt")
    assert not find(shared, "Secret", "-tenant-salt")
    env = env_of(container(one(shared, "Deployment", "-operator")["spec"]["template"]["spec"], "operator"))
    assert env["LLMCACHE_SIDECAR_TENANT_SALT_SECRET"] == "llm-salt"
    assert "LLMCACHE_SIDECAR_TENANT_SALT" not in env


def test_example_app_is_labelled_for_injection(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, "exampleApp.enabled=true")
    app = one(objects, "Deployment", "-example-app")
    assert app["spec"]["template"]["metadata"]["labels"]["llmcache.io/inject"] == "enabled"
    # Refused until the webhook answers (failurePolicy Fail, certificate from a post-install hook):
    # `helm install --wait` must not wait for it, or it would wait for the hook that runs after.
    assert app["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == app["spec"]["replicas"] == 1
    script = container(app["spec"]["template"]["spec"], "client")["args"][0]
    assert "http://localhost:8080/v1/chat/completions" in script
    # Its CachePolicy selects exactly its pods, with the CRD's field names.
    policy = one(render(binaries, helm_home, "exampleApp.enabled=true", "exampleApp.policy.ttlSeconds=120",
                        "exampleApp.policy.mode=Exact"), "CachePolicy")
    assert policy["spec"]["selector"]["matchLabels"] == app["spec"]["selector"]["matchLabels"]
    assert (policy["spec"]["mode"], policy["spec"]["ttlSeconds"]) == ("Exact", 120)
    assert policy["spec"]["semantic"] == {"similarityThreshold": 0.92}
    assert not find(render(binaries, helm_home, "exampleApp.enabled=true", "exampleApp.policy.enabled=false"),
                    "CachePolicy")
    # The error bound, under the CRD's name, only when set (a number: --set would send a string).
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "exampleApp.enabled=true",
                    "--set-json", "exampleApp.policy.maxErrorRate=0.01")
    assert proc.returncode == 0, proc.stderr
    bounded = one([d for d in yaml.safe_load_all(proc.stdout) if d], "CachePolicy")
    assert bounded["spec"]["semantic"] == {"similarityThreshold": 0.92, "maxErrorRate": 0.01}
    refused = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "exampleApp.enabled=true",
                       "--set-json", "exampleApp.policy.maxErrorRate=0")
    assert refused.returncode != 0 and "maxErrorRate" in refused.stderr


def test_model_server_gpu_scheduling_and_volume_are_configurable(binaries: ControlPlaneBinaries,
                                                                   helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home, "modelServer.device=cuda:0",
                     "modelServer.nodeSelector.gpu-type=h100",
                     "modelServer.modelVolume.source.persistentVolumeClaim.claimName=models",
                     "modelServer.resources.limits.nvidia\\.com/gpu=2")
    spec = one(objects, "Deployment", "-model-server")["spec"]["template"]["spec"]
    assert "--device=cuda:0" in container(spec, "model-server")["args"]
    assert spec["nodeSelector"] == {"gpu-type": "h100"}
    assert container(spec, "model-server")["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert next(v for v in spec["volumes"] if v["name"] == "models") == {
        "name": "models", "persistentVolumeClaim": {"claimName": "models"}
    }
    no_model = render(binaries, helm_home, "modelServer.enabled=false", "sidecar.upstream=http://vllm.ai:8000")
    assert not find(no_model, "Deployment", "-model-server")
    operator = one(no_model, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert env_of(container(operator, "operator"))["LLMCACHE_SIDECAR_UPSTREAM"] == "http://vllm.ai:8000"


def test_model_server_replicas_turn_on_routing_through_a_headless_service(
        binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    def upstream_env(objects: list[dict]) -> str:
        operator = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]
        return env_of(container(operator, "operator"))["LLMCACHE_SIDECAR_UPSTREAM"]

    one_replica = render(binaries, helm_home)
    assert upstream_env(one_replica) == "http://llm-llmcache-model-server.ns1.svc:8000"
    assert not find(one_replica, "Service", "-model-server-headless")
    two = render(binaries, helm_home, "modelServer.replicas=2")
    # Sidecars resolve every ready replica through the headless Service: no API access, no RBAC.
    assert upstream_env(two) == "dns+http://llm-llmcache-model-server-headless.ns1.svc:8000"
    headless = one(two, "Service", "-model-server-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["ports"][0]["port"] == 8000
    assert headless["selector"] == one(two, "Service", "-model-server")["spec"]["selector"]
    assert one(two, "Deployment", "-model-server")["spec"]["replicas"] == 2
    # An explicit upstream wins.
    assert upstream_env(render(binaries, helm_home, "modelServer.replicas=2",
                               "sidecar.upstream=http://vllm.ai:8000")) == "http://vllm.ai:8000"


def test_sidecar_embedder_defaults_to_the_model_server_and_can_be_overridden(
        binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    def embedder_env(*sets: str) -> str | None:
        operator = one(render(binaries, helm_home, *sets), "Deployment", "-operator")["spec"]["template"]["spec"]
        return env_of(container(operator, "operator")).get("LLMCACHE_SIDECAR_EMBEDDER_URL")

    # Semantic caching works in pods: the chart's model server serves /v1/embeddings.
    assert embedder_env() == "http://llm-llmcache-model-server.ns1.svc:8000"
    assert embedder_env("sidecar.embedderUrl=http://embed.ai:9000") == "http://embed.ai:9000"
    # No model server and no URL: no remote embedder (the sidecars run exact-only).
    assert embedder_env("modelServer.enabled=false", "sidecar.upstream=http://vllm.ai:8000") is None
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--set", "sidecar.embedderUrl=embed.ai")
    assert proc.returncode != 0 and "embedderUrl" in proc.stderr


def test_sidecar_write_timeout_reaches_the_operator(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    def value(*sets: str) -> Any:
        operator = one(render(binaries, helm_home, *sets), "Deployment", "-operator")["spec"]["template"]["spec"]
        return env_of(container(operator, "operator"))["LLMCACHE_SIDECAR_WRITE_TIMEOUT_SECONDS"]

    assert value() == "30"
    assert value("sidecar.writeTimeoutSeconds=12") == "12"


def test_long_release_names_stay_within_63_characters(binaries: ControlPlaneBinaries,
                                                        helm_home: dict[str, str]) -> None:
    release = "a-very-long-release-name-for-a-platform-team-x"  # 53: the most helm allows
    namespace = "namespace-with-a-long-name-as-well-" + "n" * 28  # 63, the most Kubernetes allows
    objects = render(binaries, helm_home, release=release, namespace=namespace)
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 for n in names), [n for n in names if len(n) > 63]
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names), names
    # Truncation must not make two objects of one kind collide, and keeps the component suffix.
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)
    assert one(objects, "MutatingWebhookConfiguration")["metadata"]["name"].endswith("-sidecar-injector")
    # ... nor two releases' cluster-scoped objects: the namespace is hashed in when it does not fit.
    other = render(binaries, helm_home, release=release, namespace=namespace[:-1] + "x")
    assert one(objects, "ClusterRole", "-operator")["metadata"]["name"] != one(other, "ClusterRole", "-operator")[
        "metadata"]["name"]


def test_operator_cluster_role_is_least_privilege(binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    objects = render(binaries, helm_home)
    role = one(objects, "ClusterRole", "-operator")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert not any("*" in item for item in granted)
    assert not any(r in {"mutatingwebhookconfigurations", "clusterkopfpeerings"} for _, r, _ in granted)
    assert {v for _, r, v in granted if r == "pods"} == {"list"}
    assert ("llmcache.io", "cachepolicies/status", "patch") in granted
    # ConfigMaps and Secrets: create (narrowed by the admission policy) and patch of one name only.
    for resource, name in (("configmaps", "llmcache-policies"), ("secrets", "llmcache-sidecar")):
        rules = [r for r in role["rules"] if resource in r["resources"]]
        assert sorted((tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in rules) == [
            (("create",), ()), (("patch",), (name,))], rules
    policy = one(objects, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:ns1:llm-llmcache-operator'")
    assert one(objects, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"] == ["Deny"]
    # Peering only with more than one replica: the chart makes the peering
    # object, the operator may read and patch that kind but not create it.
    assert not find(objects, "ClusterKopfPeering") and not find(objects, "Role", "-operator")
    peered = render(binaries, helm_home, "operator.replicas=2")
    peering = one(peered, "ClusterKopfPeering")
    env = env_of(container(one(peered, "Deployment", "-operator")["spec"]["template"]["spec"], "operator"))
    assert (env["LLMCACHE_STANDALONE"], env["LLMCACHE_PEERING_NAME"]) == ("false", peering["metadata"]["name"])
    peer_rules = [r for r in one(peered, "ClusterRole", "-operator")["rules"]
                  if "clusterkopfpeerings" in r["resources"]]
    assert peer_rules == [{"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
                           "verbs": ["get", "list", "watch", "patch"]}]
    # An operator watching one namespace meets in a KopfPeering there, with a Role there.
    scoped = render(binaries, helm_home, "operator.replicas=2", "operator.namespace=apps")
    assert one(scoped, "KopfPeering")["metadata"]["namespace"] == "apps"
    role = one(scoped, "Role", "-operator")
    assert (role["metadata"]["namespace"], role["rules"][0]["resources"]) == ("apps", ["kopfpeerings"])
    assert not any("clusterkopfpeerings" in r["resources"] for r in one(scoped, "ClusterRole", "-operator")["rules"])


# -- against the real API server -------------------------------------------------


def can(kube: ControlPlane, user: str, verb: str, resource: str, *, group: str = "", namespace: str | None = None,
        name: str | None = None, subresource: str | None = None) -> bool:
    """Ask the API server's real RBAC authorizer (a SubjectAccessReview)."""
    attributes: dict[str, Any] = {"verb": verb, "group": group, "resource": resource}
    if namespace is not None:
        attributes["namespace"] = namespace
    if name is not None:
        attributes["name"] = name
    if subresource is not None:
        attributes["subresource"] = subresource
    response = kube.request(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": attributes}},
    )
    assert response.status_code == 201, response.text
    return bool(response.json()["status"].get("allowed"))


def cluster_names(kube: ControlPlane, namespace: str) -> dict[str, str]:
    """Kind -> name of the chart's cluster-scoped objects for a release in ``namespace`` (as rendered)."""
    proc = kube.helm("template", RELEASE, str(CHART), "--namespace", namespace, "--no-hooks")
    return {d["kind"]: d["metadata"]["name"] for d in yaml.safe_load_all(proc.stdout)
            if d and d["kind"] in {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                                   "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}}


def release_objects(kube: ControlPlane, namespace: str) -> dict[str, set[str]]:
    """The release's objects that exist now, by kind (cluster-scoped ones: only this release's)."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    mine = set(cluster_names(kube, namespace).values())
    found: dict[str, set[str]] = {}
    for api_version, kind, namespaced in [
        ("apps/v1", "Deployment", True), ("apps/v1", "StatefulSet", True), ("v1", "Service", True),
        ("v1", "Secret", True), ("v1", "ServiceAccount", True), ("rbac.authorization.k8s.io/v1", "Role", True),
        ("networking.k8s.io/v1", "NetworkPolicy", True),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", False),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding", False),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", False),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", False),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", False),
    ]:
        items = kube.list_objects(api_version, kind, namespace=namespace if namespaced else None,
                                  label_selector=selector)
        names = {i["metadata"]["name"] for i in items if namespaced or i["metadata"]["name"] in mine}
        if names:
            found[kind] = names
    return found


def test_install_upgrade_uninstall_on_the_api_server(kube: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.helm("install", RELEASE, str(CHART), "--namespace", ns, "--no-hooks", "--set", "exampleApp.enabled=true")
    status = json.loads(kube.helm("status", RELEASE, "--namespace", ns, "--output", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)

    objects = release_objects(kube, ns)
    names = cluster_names(kube, ns)
    assert objects["Deployment"] == {"llm-llmcache-operator", "llm-llmcache-model-server", "llm-llmcache-example-app"}
    assert objects["StatefulSet"] == {"llm-llmcache-redis"}
    assert objects["Service"] == {"llm-llmcache-webhook", "llm-llmcache-redis", "llm-llmcache-model-server"}
    assert objects["Secret"] == {"llm-llmcache-redis-url", "llm-llmcache-redis-auth", "llm-llmcache-tenant-salt",
                                 "llm-llmcache-namespace-users"}
    salt = kube.get("v1", "Secret", "llm-llmcache-tenant-salt", namespace=ns)
    assert salt is not None and len(base64.b64decode(salt["data"]["tenant-salt"])) == 48
    users_key = kube.get("v1", "Secret", "llm-llmcache-namespace-users", namespace=ns)
    assert users_key is not None and len(base64.b64decode(users_key["data"]["key"])) == 48
    assert objects["ClusterRole"] == {names["ClusterRole"]}
    assert objects["ClusterRoleBinding"] == {names["ClusterRoleBinding"]}
    assert objects["MutatingWebhookConfiguration"] == {names["MutatingWebhookConfiguration"]}
    # Redis's NetworkPolicy and the operator's admission policy passed the API server's validation.
    assert objects["NetworkPolicy"] == {"llm-llmcache-redis"}
    assert objects["ValidatingAdmissionPolicy"] == {names["ValidatingAdmissionPolicy"]}
    assert objects["ValidatingAdmissionPolicyBinding"] == {names["ValidatingAdmissionPolicyBinding"]}
    assert "Role" not in objects  # one replica: no peering RBAC
    # The CRD comes from crds/ with the install.
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "cachepolicies.llmcache.io")
    assert crd is not None and crd["spec"]["names"]["kind"] == "CachePolicy"

    # The example CachePolicy passed the CRD's validation on the API server.
    policy = kube.get("llmcache.io/v1alpha1", "CachePolicy", "llm-llmcache-example-app", namespace=ns)
    assert policy is not None and policy["spec"]["ttlSeconds"] == 3600

    # The API server stored the webhook as the chart meant it.
    webhook = kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                       names["MutatingWebhookConfiguration"])
    assert webhook is not None
    assert webhook["webhooks"][0]["clientConfig"]["service"]["namespace"] == ns

    # The operator's RBAC, as the real authorizer sees it.
    operator = f"system:serviceaccount:{ns}:llm-llmcache-operator"
    assert can(kube, operator, "watch", "cachepolicies", group="llmcache.io")
    assert can(kube, operator, "patch", "cachepolicies", group="llmcache.io", namespace="any", subresource="status")
    assert can(kube, operator, "list", "pods", namespace="any")
    assert not can(kube, operator, "watch", "pods", namespace="any")
    assert can(kube, operator, "create", "configmaps", namespace="any")
    assert can(kube, operator, "patch", "configmaps", namespace="any", name="llmcache-policies")
    assert not can(kube, operator, "patch", "configmaps", namespace="kube-system", name="kube-proxy")
    for verb in ("get", "list", "watch", "delete", "update"):
        assert not can(kube, operator, verb, "configmaps", namespace="any"), verb
        assert not can(kube, operator, verb, "secrets", namespace=ns), verb
    assert can(kube, operator, "patch", "secrets", namespace="any", name="llmcache-sidecar")
    assert not can(kube, operator, "patch", "secrets", namespace=ns, name="llm-llmcache-redis-auth")
    assert not can(kube, operator, "create", "pods", namespace="any")
    assert not can(kube, operator, "update", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io")

    # Which pods reach the webhook is tested with the chart's selectors against a live webhook
    # in test_chart_webhook_selectors_send_only_labelled_pods (here, without hooks, it has no CA).

    kube.helm("upgrade", RELEASE, str(CHART), "--namespace", ns, "--no-hooks",
              "--set", "operator.replicas=2", "--set", "exampleApp.enabled=false")
    status = json.loads(kube.helm("status", RELEASE, "--namespace", ns, "--output", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 2)
    deployment = kube.get("apps/v1", "Deployment", "llm-llmcache-operator", namespace=ns)
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    # The upgrade kept the generated salt (a new one would orphan every cached entry).
    kept = kube.get("v1", "Secret", "llm-llmcache-tenant-salt", namespace=ns)
    assert kept is not None and kept["data"]["tenant-salt"] == salt["data"]["tenant-salt"]
    # ...and the namespace users' key (a new one would lock every running sidecar out of Redis).
    kept = kube.get("v1", "Secret", "llm-llmcache-namespace-users", namespace=ns)
    assert kept is not None and kept["data"] == users_key["data"]
    assert kube.get("apps/v1", "Deployment", "llm-llmcache-example-app", namespace=ns) is None
    policy = kube.get("llmcache.io/v1alpha1", "CachePolicy", "llm-llmcache-example-app", namespace=ns)
    assert policy is None or policy["metadata"].get("deletionTimestamp")  # an operator's finalizer may hold it
    # Two replicas: the chart made their kopf peering object; they may patch it, not make others.
    peering_name = env_of(container(deployment["spec"]["template"]["spec"], "operator"))["LLMCACHE_PEERING_NAME"]
    assert kube.get("kopf.dev/v1", "ClusterKopfPeering", peering_name) is not None
    assert can(kube, operator, "patch", "clusterkopfpeerings", group="kopf.dev", name=peering_name)
    assert not can(kube, operator, "create", "clusterkopfpeerings", group="kopf.dev")

    kube.helm("uninstall", RELEASE, "--namespace", ns, "--no-hooks")
    assert release_objects(kube, ns) == {}
    assert kube.get("kopf.dev/v1", "ClusterKopfPeering", peering_name) is None
    assert kube.helm("status", RELEASE, "--namespace", ns, check=False).returncode != 0
    # Helm never deletes CRDs (or the policies in them).
    assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "cachepolicies.llmcache.io") is not None


def test_certgen_hook_rbac_allows_exactly_its_secret_and_webhook(kube: ControlPlane, kube_namespace: str,
                                                                 binaries: ControlPlaneBinaries,
                                                                 helm_home: dict[str, str]) -> None:
    """The hook Jobs cannot run here (no kubelet); their RBAC is applied and probed instead."""
    ns = kube_namespace
    proc = run_helm(binaries, helm_home, "template", RELEASE, str(CHART), "--namespace", ns,
                    "--show-only", "templates/webhook-certgen.yaml")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] != "Job"]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    kube.apply(docs, namespace=ns)
    try:
        certgen = f"system:serviceaccount:{ns}:llm-llmcache-certgen"
        # The webhook configuration's name carries the (long, truncated) namespace: take it from the rule.
        webhook = one(docs, "ClusterRole")["rules"][0]["resourceNames"][0]
        assert webhook.endswith("-sidecar-injector")
        assert can(kube, certgen, "create", "secrets", namespace=ns)
        assert can(kube, certgen, "get", "secrets", namespace=ns, name="llm-llmcache-webhook-tls")
        assert not can(kube, certgen, "get", "secrets", namespace=ns, name="someone-elses")
        assert not can(kube, certgen, "create", "secrets", namespace="default")
        assert can(kube, certgen, "update", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io",
                   name=webhook)
        assert not can(kube, certgen, "update", "mutatingwebhookconfigurations",
                       group="admissionregistration.k8s.io", name="another-webhook")
    finally:
        for d in docs:
            if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                kube.delete("rbac.authorization.k8s.io/v1", d["kind"], d["metadata"]["name"])


def test_hook_objects_pass_api_server_validation(kube: ControlPlane, kube_namespace: str,
                                                 binaries: ControlPlaneBinaries, helm_home: dict[str, str]) -> None:
    """The hook Jobs and the `helm test` Pod are never created here (--no-hooks), so dry-run them on the server."""
    ns = kube_namespace
    hooks = [o for o in render(binaries, helm_home, namespace=ns)
             if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    assert {o["kind"] for o in hooks} >= {"Job", "Pod", "ServiceAccount", "ClusterRole"}
    for obj in hooks:
        resource = kube.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        stored = resource.create(body=obj, namespace=ns if resource.namespaced else None, dry_run="All").to_dict()
        assert stored["metadata"]["name"] == obj["metadata"]["name"]
        if obj["kind"] == "Job":
            # Defaulted and validated by the server, including the restricted security context.
            pod = stored["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
    # Dry runs persist nothing.
    assert not kube.list_objects("batch/v1", "Job", namespace=ns)


# -- the chart's webhook selectors, with a webhook that would inject everything ------------------


class _AnnotateEverything:
    """An HTTPS admission webhook that annotates *every* pod it is asked about.

    Standing in for the operator, it makes the chart's objectSelector and namespaceSelector the
    only thing between a pod and a patch: if a selector let a pod through, that pod is annotated.
    """

    def __init__(self, cert_dir: Path) -> None:
        import http.server
        import ssl
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                patch = [{"op": "add", "path": "/metadata/annotations", "value": {"seen-by": "webhook"}}]
                body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                    "uid": review["request"]["uid"], "allowed": True, "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode()}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/mutate-pods"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dry_run_pod(kube: ControlPlane, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    resp = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", params={"dryRun": "All"},
                        json={"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"generateName": "probe-", "labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_chart_webhook_selectors_send_only_labelled_pods(kube: ControlPlane, kube_namespace: str,
                                                          tmp_path: Path) -> None:
    """The chart's MutatingWebhookConfiguration, pointed at a webhook that patches everything."""
    from test_chart_operator import write_self_signed

    ns = kube_namespace
    cert = write_self_signed(tmp_path / "certs")
    server = _AnnotateEverything(tmp_path / "certs")
    rendered = kube.helm("template", RELEASE, str(CHART), "--namespace", ns, "--no-hooks",
                         "--show-only", "templates/webhook-configuration.yaml").stdout
    config = yaml.safe_load(rendered)
    name = config["metadata"]["name"]
    # Only the transport changes: the selectors, rules and scope are the chart's own.
    config["webhooks"][0]["clientConfig"] = {"url": server.url,
                                             "caBundle": base64.b64encode(cert.read_bytes()).decode()}
    config["webhooks"][0]["failurePolicy"] = "Fail"  # an unreachable webhook fails the test, not hides it
    kube.apply(config)
    try:
        labelled = {"app": "web", "llmcache.io/inject": "enabled"}

        def seen(pod: dict[str, Any]) -> bool:
            return (pod["metadata"].get("annotations") or {}).get("seen-by") == "webhook"

        deadline = time.monotonic() + 60
        while not seen(_dry_run_pod(kube, ns, labelled)):  # the API server loads new configs asynchronously
            assert time.monotonic() < deadline, "the chart's webhook configuration never called the webhook"
            time.sleep(0.2)
        # The selectors are all that keeps these pods from the (patch-everything) webhook.
        assert not seen(_dry_run_pod(kube, ns, {"app": "web"}))
        assert not seen(_dry_run_pod(kube, ns, {"app": "web", "llmcache.io/inject": "disabled"}))
        # No controller-manager here makes kube-system's default ServiceAccount: the ServiceAccount
        # admission plugin needs it for any pod there.
        if kube.get("v1", "ServiceAccount", "default", namespace="kube-system") is None:
            kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
                       namespace="kube-system")
        assert not seen(_dry_run_pod(kube, "kube-system", labelled))
        assert seen(_dry_run_pod(kube, ns, labelled))
    finally:
        kube.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", name)
        server.close()
