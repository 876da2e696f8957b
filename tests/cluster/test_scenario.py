"""The product as users run it, on a real node: helm install → injected sidecars → an OpenAI client.

One release for the module (``release`` fixture: ``helm install --wait`` with the
offline images, hooks and all), one app namespace with a labelled 2-replica
Deployment running an unmodified ``openai`` client (tests/cluster/images/
app_client.py) and an unlabelled one. The tests run in file order and build on
each other's state the way an operator's day would: install, inject, cache,
change policy, evict, lose Redis, route misses between two model-server replicas by
cached prefix and scale them to one and back, helm test / upgrade / uninstall.

Every wait has a deadline; nothing asserts on wall-clock time (the benchmark
measures time: benchmarks/cluster_bench.py).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import localcluster
import pytest
from controlplane.fixtures import ControlPlane
from helpers import exec_in, pods, wait_for, wait_ready

pytestmark = pytest.mark.cluster

RELEASE = "llm"
RELEASE_NS = "llmcache-system"
APP_NS = "app"
CHART = localcluster.REPO / "charts" / "llmcache"
SIDECAR = "llmcache-proxy"

MODEL_SERVER_SELECTOR = "app.kubernetes.io/component=model-server"
#: Each replica's prefix cache: 682 tokens at 46,080 B a token (SmolLM2, float32), ≈ 3.6 of the
#: routing workload's ~187-token prompts. A replica given three of its five tenants holds them all
#: (with their questions); one that sees all five in turn evicts each prompt before it comes back.
#: (36Mi held 1.8 prompts of an earlier 435-token workload: every replica thrashed whatever the
#: routing, and the routed workload read 0 cached tokens. Prompts of 335 tokens against 54Mi
#: showed the same at twice the prefill work.)
ROUTING_PREFIX_CACHE = "30Mi"

# Semantic pairs: a paraphrase of QUESTION that must hit, and a hard negative
# (same shape, another entity) that must not.
QUESTION = "What is the capital city of France?"
PARAPHRASE = "What's the capital city of France?"
HARD_NEGATIVE = "What is the capital city of Germany?"


def helm_image_values(images: dict[str, str]) -> list[str]:
    """``--set`` pairs that point every image of the chart at the offline builds.

    llmcache's own three move with ``global.imageRegistry`` (what the README tells users to
    set after pushing them), each keeping only its own tag; the others are set per image.
    """
    def split(ref: str) -> tuple[str, str]:
        repo, _, tag = ref.rpartition(":")
        return repo, tag

    own = {"operator.image": "operator", "sidecar.image": "proxy", "modelServer.image": "model-server"}
    registries = {split(images[name])[0].rpartition("/")[0] for name in own.values()}
    assert len(registries) == 1, registries
    args = ["--set", f"global.imageRegistry={registries.pop()}"]
    for key, name in own.items():
        args += ["--set", f"{key}.tag={split(images[name])[1]}"]
    others = {"redis.bundled.image": "redis", "webhook.certificate.certgen.image": "certgen", "tests.image": "tools"}
    for key, name in others.items():
        repo, tag = split(images[name])
        args += ["--set", f"{key}.repository={repo}", "--set", f"{key}.tag={tag}"]
    return args


def install_args(images: dict[str, str], *extra: str) -> list[str]:
    return [
        *helm_image_values(images),
        # A CPU node: no GPU limit or toleration, small requests (two shared cores).
        "--set", "modelServer.device=cpu",
        # (null removes the default GPU limit: helm merges maps.)
        "--set-json", 'modelServer.resources={"requests":{"cpu":"100m","memory":"512Mi"},'
                      '"limits":{"memory":"6Gi","nvidia.com/gpu":null}}',
        "--set-json", "modelServer.tolerations=[]",
        # No storage provisioner on the node.
        "--set", "redis.bundled.persistence.enabled=false",
        "--set", "operator.evictionIntervalSeconds=2", "--set", "operator.statusIntervalSeconds=2",
        # Two replicas: the sidecars route by cached prefix (headless Service). Each replica's prefix
        # cache holds about two of test_routing's four tenants' system prompts.
        "--set", "modelServer.replicas=2",
        # One torch thread each: two replicas on two shared cores, and OpenMP threads that spin against
        # each other make every forward pass about ten times slower (ModelSettings.num_threads).
        "--set-json", f'modelServer.extraArgs=["--prefix-cache-bytes={ROUTING_PREFIX_CACHE}","--num-threads=1"]',
        *extra,
    ]


@pytest.fixture(scope="module")
def release(cluster: localcluster.LocalCluster, kube_cluster: ControlPlane) -> Iterator[ControlPlane]:
    kube = kube_cluster
    kube.helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
              *install_args(cluster.images.refs), "--wait", "--timeout", "12m", timeout_s=900)
    yield kube
    if os.environ.get("LLMCACHE_CLUSTER_KEEP_RELEASE"):  # debugging against a kept cluster
        return
    # Normally test_purge_on_delete_then_uninstall_leaves_nothing did it already.
    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", check=False, timeout_s=300)


def app_manifest(image: str, *, name: str, replicas: int, inject: bool) -> str:
    inject_label = "\n        llmcache.io/inject: enabled" if inject else ""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels:
        app: {name}{inject_label}
    spec:
      containers:
        - name: app
          image: {image}
          imagePullPolicy: Never
          command: ["python", "-c", "import time; time.sleep(86400)"]
          env:
            - {{name: OPENAI_BASE_URL, value: "http://localhost:8080/v1"}}
"""


POLICY = {
    "apiVersion": "llmcache.io/v1alpha1", "kind": "CachePolicy",
    "metadata": {"name": "chat", "annotations": {"llmcache.io/purge-on-delete": "true"}},
    "spec": {"selector": {"matchLabels": {"app": "chat"}}, "priority": 10, "mode": "Both", "ttlSeconds": 3600,
             "semantic": {"similarityThreshold": 0.85}},
}


@pytest.fixture(scope="module")
def app(release: ControlPlane, cluster: localcluster.LocalCluster) -> list[str]:
    """The labelled 2-replica app (and an unlabelled one); returns the chat pod names."""
    kube = release
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}})
    kube.apply(POLICY, namespace=APP_NS)
    image = cluster.images.refs["client"]
    kube.apply(app_manifest(image, name="plain", replicas=1, inject=False), namespace=APP_NS)
    plain = wait_ready(kube, APP_NS, "app=plain", timeout_s=300)[0]["metadata"]["name"]
    # The model server loads its embedder on the first /v1/embeddings call; a sidecar whose
    # probe times out meanwhile starts exact-only. Warm it first, from a pod like any client.
    # Every replica: the Service would warm only the one it picks.
    for replica in wait_ready(kube, RELEASE_NS, MODEL_SERVER_SELECTOR, count=2, timeout_s=300):
        url = f"http://{replica['status']['podIP']}:8000/v1/embeddings"
        warm = (f"import json,urllib.request;r=urllib.request.Request({url!r},data=json.dumps({{'model':"
                "'all-MiniLM-L6-v2','input':['warm up']}).encode(),headers={'Content-Type':'application/json'});"
                "print(urllib.request.urlopen(r,timeout=60).status)")
        wait_for("the model server's embedder", lambda w=warm: exec_in(kube, APP_NS, plain, ["python", "-c", w],
                                                                        container="app")[0] == 0,
                 timeout_s=240, interval_s=3)
    kube.apply(app_manifest(image, name="chat", replicas=2, inject=True), namespace=APP_NS)
    chat = sorted(p["metadata"]["name"] for p in wait_ready(kube, APP_NS, "app=chat", count=2, timeout_s=300))
    # The namespace's Redis user may not create its vector index: its sidecars ask, the operator
    # creates it on its next pass, and their semantic caches start. Wait for that, as a client would
    # (before it the sidecars answer from the exact cache only).
    semantic_up = ("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18081/metrics',timeout=5)"
                   ".read().decode())")
    for pod in chat:
        wait_for(f"{pod}'s semantic cache", lambda pod=pod: "llmcache_semantic_up 1" in exec_in(
            kube, APP_NS, pod, ["python", "-c", semantic_up], container="app")[1], timeout_s=180, interval_s=2)
    return chat


def ask(kube: ControlPlane, pod: str, *prompts: str, key: str = "tenant-a", max_tokens: int = 16,
        only_if_cached: bool = False) -> list[dict[str, Any]]:
    flags = ["--only-if-cached"] if only_if_cached else []
    code, out = exec_in(kube, APP_NS, pod, ["env", f"OPENAI_API_KEY={key}", "python", "/app_client.py", "ask",
                                            "--max-tokens", str(max_tokens), *flags, *prompts], container="app",
                        timeout_s=300)
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Load:
    """``app_client.py load`` in the app container for ``seconds``, through one blocking exec in a thread."""

    def __init__(self, kube: ControlPlane, pod: str, prompts: list[str], *, seconds: float) -> None:
        self._out = f"/tmp/load-{uuid.uuid4().hex[:8]}.json"
        self._kube, self._pod = kube, pod
        cmd = ["python", "/app_client.py", "load", "--seconds", str(seconds), "--out", self._out, *prompts]
        self._result: tuple[int, str] | None = None
        self._thread = threading.Thread(target=self._run, args=(cmd, seconds), daemon=True)
        self._thread.start()

    def _run(self, cmd: list[str], seconds: float) -> None:
        self._result = exec_in(self._kube, APP_NS, self._pod, cmd, container="app", timeout_s=seconds + 300)

    def num_requests(self) -> int:
        """Requests made so far (the client writes its count after each)."""
        code, out = exec_in(self._kube, APP_NS, self._pod, ["cat", f"{self._out}.count"], container="app")
        return int(out) if code == 0 and out.strip().isdigit() else 0

    def results(self) -> list[dict[str, Any]]:
        """Wait for the run to end; every request's http code, cache status and end time."""
        self._thread.join(timeout=600)
        assert self._result is not None and self._result[0] == 0, self._result
        code, raw = exec_in(self._kube, APP_NS, self._pod, ["cat", self._out], container="app")
        assert code == 0, raw
        return json.loads(raw)


def policy_status(kube: ControlPlane) -> dict[str, Any]:
    obj = kube.get("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=APP_NS) or {}
    return obj.get("status") or {}


# -- install -------------------------------------------------------------------


def test_install_ran_the_certgen_hooks_and_every_pod_is_ready(release: ControlPlane) -> None:
    kube = release
    secret = kube.get("v1", "Secret", f"{RELEASE}-llmcache-webhook-tls", namespace=RELEASE_NS)
    assert secret is not None, "the certgen create hook did not write the webhook certificate"
    assert {"ca", "cert", "key"} <= set(secret["data"])
    (conf,) = kube.list_objects("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                                label_selector=f"app.kubernetes.io/instance={RELEASE}")
    ca_bundles = {h["clientConfig"].get("caBundle") for h in conf["webhooks"]}
    assert ca_bundles == {secret["data"]["ca"]}, "the certgen patch hook did not set the caBundle"
    assert b"BEGIN CERTIFICATE" in base64.b64decode(secret["data"]["ca"])
    all_pods = kube.list_objects("v1", "Pod", namespace=RELEASE_NS)
    running = [p for p in all_pods if (p.get("status") or {}).get("phase") != "Succeeded"]
    assert running and all((p["status"].get("conditions") or []) and
                           {c["type"]: c["status"] for c in p["status"]["conditions"]}.get("Ready") == "True"
                           for p in running), [(p["metadata"]["name"], p["status"].get("phase")) for p in running]
    names = " ".join(p["metadata"]["name"] for p in running)
    for component in ("operator", "redis", "model-server"):
        assert f"-{component}-" in names, names


def test_webhook_injects_only_labelled_pods(app: list[str], release: ControlPlane) -> None:
    kube = release
    for pod in pods(kube, APP_NS, "app=chat"):
        inits = {c["name"]: c for c in pod["spec"].get("initContainers") or []}
        assert SIDECAR in inits and inits[SIDECAR].get("restartPolicy") == "Always", "native sidecar expected"
        assert pod["metadata"]["annotations"].get("llmcache.io/inject-status") == "injected"
        env = {e["name"]: e.get("value") for e in inits[SIDECAR]["env"]}
        assert env.get("LLMCACHE_EMBEDDER") == "remote" and env.get("LLMCACHE_EMBEDDER_URL", "").startswith("http")
    for pod in pods(kube, APP_NS, "app=plain"):
        names = [c["name"] for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]]
        assert SIDECAR not in names
    for pod in kube.list_objects("v1", "Pod", namespace=RELEASE_NS):
        assert SIDECAR not in [c["name"] for c in pod["spec"].get("initContainers") or []]


# -- caching through the sidecars ------------------------------------------------


def test_openai_client_miss_hit_hard_negative(app: list[str], release: ControlPlane) -> None:
    kube = release
    first, second = app
    miss, hit = ask(kube, first, QUESTION, QUESTION)
    assert (miss["http"], miss["status"]) == (200, "miss"), miss
    assert (hit["http"], hit["status"]) == (200, "hit"), hit
    assert hit["content"] == miss["content"]

    (negative,) = ask(kube, first, HARD_NEGATIVE)
    assert (negative["http"], negative["status"]) == (200, "miss"), negative

    # The other replica shares the cache: an exact hit with the same answer.
    (other,) = ask(kube, second, QUESTION)
    assert (other["http"], other["status"]) == (200, "hit"), other
    assert other["content"] == miss["content"]
    # Tenants stay apart: another API key misses.
    (stranger,) = ask(kube, second, QUESTION, key="tenant-b")
    assert stranger["status"] == "miss", stranger


def test_paraphrase_is_a_semantic_hit_through_the_sidecar(app: list[str], release: ControlPlane) -> None:
    kube = release
    first = app[0]
    (miss,) = ask(kube, first, QUESTION)  # stored by the test above (a hit) or now
    assert miss["http"] == 200 and miss["status"] in ("hit", "miss"), miss

    # The semantic entry is indexed in the background after a miss: wait for it, probing
    # with only-if-cached so that a probe that comes too early stores nothing (504).
    def paraphrase_hits() -> dict[str, Any] | None:
        (r,) = ask(kube, first, PARAPHRASE, only_if_cached=True)
        assert r["http"] in (200, 504), r
        return r if r["status"] == "semantic-hit" else None

    sem = wait_for("a semantic hit for the paraphrase", paraphrase_hits, timeout_s=60, interval_s=2)
    assert sem["content"] == miss["content"] and float(sem["similarity"]) >= 0.85


#: Run in a sidecar container of another namespace with what that namespace holds (the sidecar's
#: env, from its namespace's Secret): every command on the app namespace's keys, one line of JSON.
ATTACK = """
import json, os, urllib.parse, redis
url = os.environ["LLMCACHE_REDIS_URL"]
r = redis.Redis.from_url(url)
entry, index, own = {entry!r}, {index!r}, {own!r}
docs = entry.split(":e:")[0] + ":v:"
out = {{"user": urllib.parse.urlsplit(url).username}}
def attempt(name, *command):
    try:
        r.execute_command(*command)
        out[name] = "allowed"
    except redis.exceptions.NoPermissionError:
        out[name] = "refused"
    except redis.exceptions.ResponseError as exc:
        out[name] = "refused" if "no permissions" in str(exc).lower() else "error: " + str(exc)
attempt("own SET", "SET", own, "1")
attempt("GET entry", "GET", entry)
attempt("SET entry KEEPTTL", "SET", entry, "forged", "KEEPTTL")
attempt("DEL entry", "DEL", entry)
attempt("EXPIRE entry", "EXPIRE", entry, 1)
attempt("SCAN", "SCAN", "0")
attempt("KEYS", "KEYS", "*")
attempt("FT._LIST", "FT._LIST")
attempt("FT.SEARCH its index", "FT.SEARCH", index, "*")
attempt("FT.CREATE over its documents", "FT.CREATE", own + "idx", "ON", "HASH", "PREFIX", 1, docs,
        "SCHEMA", "t", "TEXT")
attempt("HGETALL its policies", "HGETALL", "llmcache:policies:app")
attempt("PUBLISH its policy channel", "PUBLISH", "llmcache:policies:events:app", "{{}}")
print(json.dumps(out))
"""


def test_another_namespace_reaches_nothing_of_this_one(app: list[str], release: ControlPlane,
                                                      cluster: localcluster.LocalCluster) -> None:
    """Issue 18, item 1, on the real node: a pod of namespace ``other``, with what its namespace holds
    (its sidecar's env, from ``other``'s credentials Secret), is refused on every key and the vector
    index of namespace ``app``, and cannot make ``app``'s sidecar serve a forged answer."""
    kube = release
    (before,) = ask(kube, app[0], QUESTION)
    assert before["status"] == "hit", before
    # The app namespace's entry keys, read the way an admin would: redis-cli as the operator.
    redis_pod = pods(kube, RELEASE_NS, "app.kubernetes.io/component=redis")[0]["metadata"]["name"]
    auth = kube.get("v1", "Secret", f"{RELEASE}-llmcache-redis-auth", namespace=RELEASE_NS)
    password = base64.b64decode(auth["data"]["operator-password"]).decode()
    scan = (f"REDISCLI_AUTH={password} redis-cli --user operator --no-auth-warning --scan "
            "--pattern 'llmcache:n:app:e:*'")
    code, out = exec_in(kube, RELEASE_NS, redis_pod, ["sh", "-c", scan])
    entries = [line for line in out.split() if line.startswith("llmcache:n:app:e:")]
    assert code == 0 and entries, out

    other = "other"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        kube.apply(app_manifest(cluster.images.refs["client"], name="intruder", replicas=1, inject=True),
                   namespace=other)
        intruder = wait_ready(kube, other, "app=intruder", timeout_s=300)[0]["metadata"]["name"]
        script = ATTACK.format(entry=entries[0], index="llmcache:n:app:vidx", own="llmcache:n:other:e:{00}:x")
        code, out = exec_in(kube, other, intruder, ["python", "-c", script], container=SIDECAR)
        assert code == 0, out
        result = json.loads(out.strip().splitlines()[-1])
        assert result.pop("user") == "llmcache-ns-other"  # its namespace's own user, no shared one
        assert result.pop("own SET") == "allowed", result  # its own partition works
        assert set(result.values()) == {"refused"}, result
    finally:
        kube.delete("v1", "Namespace", other)
    # The app namespace still serves its own answer.
    (after,) = ask(kube, app[0], QUESTION)
    assert after["status"] == "hit" and after["content"] == before["content"], after


def test_policy_change_reaches_both_sidecars(app: list[str], release: ControlPlane) -> None:
    kube = release
    before = policy_status(kube).get("configHash")
    suspended = json.loads(json.dumps(POLICY))
    suspended["spec"]["suspend"] = True
    kube.apply(suspended, namespace=APP_NS)

    def synced() -> dict[str, Any] | None:
        s = policy_status(kube)
        ok = s.get("configHash") not in (None, before) and s.get("selectedPods") == 2 and s.get("syncedPods") == 2
        return s if ok else None

    wait_for("both sidecars to acknowledge the new policy", synced, timeout_s=120)
    # Applied, not just acknowledged: both replicas now bypass the cache.
    for pod in app:
        (r,) = ask(kube, pod, QUESTION)
        assert (r["http"], r["status"]) == (200, "bypass"), (pod, r)
    kube.apply(POLICY, namespace=APP_NS)
    wait_for("both sidecars back on the active policy",
             lambda: policy_status(kube).get("syncedPods") == 2 and all(
                 ask(kube, pod, QUESTION)[0]["status"] == "hit" for pod in app), timeout_s=120, interval_s=2)


def test_eviction_keeps_the_policy_within_max_entries(app: list[str], release: ControlPlane) -> None:
    kube = release
    bounded = json.loads(json.dumps(POLICY))
    bounded["spec"]["eviction"] = {"maxEntries": 3}
    kube.apply(bounded, namespace=APP_NS)
    wait_for("policy synced", lambda: policy_status(kube).get("syncedPods") == 2, timeout_s=120)
    prompts = [f"Give one word for the number {n}." for n in range(8)]
    for i, prompt in enumerate(prompts):
        (r,) = ask(kube, app[i % 2], prompt, max_tokens=4)
        assert r["http"] == 200, r
    wait_for("eviction down to maxEntries=3",
             lambda: 0 < int(policy_status(kube).get("entries") or 0) <= 3, timeout_s=120, interval_s=2)
    kube.apply(POLICY, namespace=APP_NS)


def test_redis_pod_deleted_mid_load_fails_open_then_hits_again(app: list[str], release: ControlPlane) -> None:
    kube = release
    pod = app[0]
    load = Load(kube, pod, [QUESTION], seconds=40)
    # Let the load hit the cache before Redis goes away.
    wait_for("the load's first requests", lambda: load.num_requests() >= 5, timeout_s=120, interval_s=1)
    redis_pods = pods(kube, RELEASE_NS, "app.kubernetes.io/component=redis")
    assert redis_pods
    deleted_at = time.time()
    kube.delete("v1", "Pod", redis_pods[0]["metadata"]["name"], namespace=RELEASE_NS)
    results = load.results()
    failed = [r for r in results if r["http"] != 200]
    assert not failed, failed[:5]
    before = {r["status"] for r in results if r["t"] < deleted_at}
    after = [r["status"] for r in results if r["t"] > deleted_at]
    assert "hit" in before, before
    # While Redis was away (bypass) and right after it came back empty (miss), answers came
    # from the model server; the exact interleaving depends on how fast it restarts.
    assert any(status in ("bypass", "miss") for status in after), after
    wait_ready(kube, RELEASE_NS, "app.kubernetes.io/component=redis", timeout_s=180)
    # Redis is back (empty: no persistence here): a miss stores again, then hits.
    wait_for("hits after Redis is back", lambda: ask(kube, pod, QUESTION)[0]["status"] == "hit", timeout_s=180,
             interval_s=3)


def _scale(kube: ControlPlane, deployment: str, replicas: int) -> None:
    resp = kube.request("PATCH", f"/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/{deployment}/scale",
                        json={"spec": {"replicas": replicas}},
                        headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status_code == 200, resp.text


def _bare_pod(name: str, image: str, *, inject: bool) -> dict[str, Any]:
    labels = {"app": name, **({"llmcache.io/inject": "enabled"} if inject else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [
                {"name": "app", "image": image, "imagePullPolicy": "Never",
                 "command": ["python", "-c", "import time; time.sleep(86400)"]}]}}


def test_webhook_down_refuses_labelled_pods_only(app: list[str], release: ControlPlane,
                                                 cluster: localcluster.LocalCluster) -> None:
    """Issue 18 item 8: with the operator (the webhook's only backend) scaled to 0, a pod that asked
    for the sidecar is not created (failurePolicy Fail: its controller retries until the webhook is
    back, instead of the app running its whole life without its localhost:8080); a pod that did not
    ask is created as usual (the objectSelector never sends it to the webhook)."""
    kube = release
    operator = f"{RELEASE}-llmcache-operator"
    image = cluster.images.refs["client"]
    pods_path = f"/api/v1/namespaces/{APP_NS}/pods"
    _scale(kube, operator, 0)
    try:
        wait_for("the operator's pods to be gone",
                 lambda: not pods(kube, RELEASE_NS, "app.kubernetes.io/component=operator"), timeout_s=120)
        refused = kube.request("POST", pods_path, json=_bare_pod("asked-for-sidecar", image, inject=True))
        assert refused.status_code >= 400 and "sidecar-injector.llmcache.io" in refused.text, refused.text
        assert kube.get("v1", "Pod", "asked-for-sidecar", namespace=APP_NS) is None
        created = kube.request("POST", pods_path, json=_bare_pod("no-sidecar", image, inject=False))
        assert created.status_code == 201, created.text
        kube.delete("v1", "Pod", "no-sidecar", namespace=APP_NS)
    finally:
        _scale(kube, operator, 1)
    wait_ready(kube, RELEASE_NS, "app.kubernetes.io/component=operator", timeout_s=300)

    # Back: the same labelled pod is admitted again, with its sidecar (server-side dry run: nothing runs).
    def admitted() -> bool:
        resp = kube.request("POST", pods_path, params={"dryRun": "All"},
                            json=_bare_pod("asked-for-sidecar", image, inject=True))
        return resp.status_code == 201 and any(c["name"] == SIDECAR
                                               for c in resp.json()["spec"].get("initContainers") or [])
    wait_for("the webhook to inject again", admitted, timeout_s=120)
# -- routing between model-server replicas ----------------------------------------

# Run inside the app container (python + the openai client): a multi-tenant workload, each tenant
# with its own ~187-token system prompt, questions interleaved, Cache-Control keeping the proxy's
# own caches out of it. "sidecar": through the injected sidecar (it salts per API key and routes);
# "round-robin": straight to the replicas in turn (argv[2] lists them), with per-tenant salts: what
# a Service's even spread gives. Five tenants, an odd number: in turn, a tenant lands on the other
# replica each round, so a replica sees all five and its cache (sized for 3.6 of them, see
# ROUTING_PREFIX_CACHE) has evicted each prompt before it comes back. Deterministic on purpose: a
# random spread would make the comparison a matter of luck.
WORKLOAD = r"""
import json, sys, openai
mode, bases, run = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
tenants, questions = int(sys.argv[4]), int(sys.argv[5])
rules = ["Greet the customer by name and confirm the account before discussing billing.",
         "Refunds for duplicate charges go back to the original payment method within five days.",
         "Never ask for a full card number or a password; point to the billing portal instead.",
         "Escalate to a human on data loss, a security incident or a legal threat."]
def system(t):
    return chr(10).join([f"You are the support assistant of company {t} ({run}). Answer in one word."]
                     + [f"Rule {t}.{i}: {rules[(t + i) % len(rules)]}" for i in range(6)])
out, n = [], 0
for q in range(questions):
    for t in range(tenants):
        c = openai.OpenAI(base_url=bases[n % len(bases)], api_key=f"sk-{run}-tenant-{t}", max_retries=0,
                          timeout=300)
        n += 1
        extra = {"cache_salt": f"{run}-tenant-{t}"} if mode == "round-robin" else None
        r = c.chat.completions.create(
            model="default", max_tokens=2, temperature=0, extra_body=extra,
            extra_headers={"Cache-Control": "no-cache, no-store"},
            messages=[{"role": "system", "content": system(t)},
                      {"role": "user", "content": f"Question {q}: which rule covers case {q * 7 + t}?"}])
        out.append([r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens])
        c.close()
print(json.dumps(out))
"""


def cached_fraction(kube: ControlPlane, pod: str, mode: str, bases: list[str]) -> float:
    code, out = exec_in(kube, APP_NS, pod, ["python", "-c", WORKLOAD, mode, ",".join(bases),
                                            f"{mode}-{uuid.uuid4().hex[:6]}", "5", "3"], container="app",
                        timeout_s=900)
    assert code == 0, out
    pairs = json.loads(out.strip().splitlines()[-1])
    # ROUTING_PREFIX_CACHE is sized for prompts of this length; a change of template or tokenizer that
    # moves them out of it would make the comparison below meaningless, so it fails here, by name.
    assert all(165 <= p <= 210 for p, _ in pairs), f"prompt tokens {[p for p, _ in pairs]}: resize ROUTING_PREFIX_CACHE"
    return sum(c for _, c in pairs) / sum(p for p, _ in pairs)


@pytest.mark.timeout(1500)  # two workloads of 15 requests on a busy 2-core node; each exec has its own deadline
def test_sidecars_route_misses_to_the_replica_holding_the_prefix(app: list[str], release: ControlPlane) -> None:
    kube = release
    replicas = wait_ready(kube, RELEASE_NS, MODEL_SERVER_SELECTOR, count=2, timeout_s=300)
    in_turn = cached_fraction(kube, app[0], "round-robin",
                              [f"http://{r['status']['podIP']}:8000/v1" for r in replicas])
    routed = cached_fraction(kube, app[0], "sidecar", ["http://localhost:8080/v1"])
    assert routed >= 1.5 * in_turn and routed > 0.4, (routed, in_turn)


# Runs in the app container until the stop file appears: distinct questions through the sidecar,
# every status code recorded (0: no HTTP answer at all). Each from a new tenant (API key), so each is
# a prefix no replica holds, placed where the least prefix is: a replica that joins takes new
# tenants at once. (One tenant's requests stay with the replica holding its prefix, even its
# chat template's first blocks, while the load allows: that is the router's point, so a
# single-tenant load would not show a new replica being used.)
SCALE_LOAD = r"""
import json, os, sys, time, openai
out, stop = sys.argv[1], sys.argv[1] + ".stop"
results, i, deadline = [], 0, time.monotonic() + 900
while not os.path.exists(stop) and time.monotonic() < deadline:
    c = openai.OpenAI(base_url="http://localhost:8080/v1", api_key=f"sk-scaling-{i}", max_retries=0, timeout=300)
    try:
        c.chat.completions.create(model="default", max_tokens=2, temperature=0,
                                  extra_headers={"Cache-Control": "no-cache, no-store"},
                                  messages=[{"role": "user", "content": f"Say a number above {i}."}])
        results.append(200)
    except openai.APIStatusError as exc:
        results.append(exc.status_code)
    except openai.APIError:
        results.append(0)
    c.close()
    i += 1
    with open(out + ".count", "w") as f:
        f.write(str(len(results)))
with open(out, "w") as f:
    json.dump(results, f)
"""


def test_scaling_the_model_server_to_one_replica_and_back_loses_no_request(app: list[str],
                                                                           release: ControlPlane) -> None:
    kube = release
    pod, out = app[1], f"/tmp/scale-{uuid.uuid4().hex[:8]}.json"
    result: list[tuple[int, str]] = []
    runner = threading.Thread(target=lambda: result.append(exec_in(
        kube, APP_NS, pod, ["python", "-c", SCALE_LOAD, out], container="app", timeout_s=1000)), daemon=True)
    runner.start()

    def count() -> int:
        code, raw = exec_in(kube, APP_NS, pod, ["cat", f"{out}.count"], container="app")
        return int(raw) if code == 0 and raw.strip().isdigit() else 0

    wait_for("the load's first requests", lambda: count() >= 3, timeout_s=300, interval_s=1)
    _scale(kube, f"{RELEASE}-llmcache-model-server", 1)
    wait_for("one model-server pod left", lambda: len(pods(kube, RELEASE_NS, MODEL_SERVER_SELECTOR)) == 1,
             timeout_s=180, interval_s=1)
    at_one = count()
    wait_for("requests served by the one replica", lambda: count() >= at_one + 3, timeout_s=300, interval_s=1)
    (survivor,) = pods(kube, RELEASE_NS, MODEL_SERVER_SELECTOR)  # listed before the new one is created
    _scale(kube, f"{RELEASE}-llmcache-model-server", 2)
    wait_ready(kube, RELEASE_NS, MODEL_SERVER_SELECTOR, count=2, timeout_s=600)
    new_ip = next(p["status"]["podIP"] for p in pods(kube, RELEASE_NS, MODEL_SERVER_SELECTOR)
                  if p["metadata"]["name"] != survivor["metadata"]["name"])
    metrics = ("import urllib.request;print(urllib.request.urlopen('http://localhost:18081/metrics',timeout=10)"
               ".read().decode())")

    seen: dict[str, Any] = {}

    def new_replica_served() -> bool:
        code, text = exec_in(kube, APP_NS, pod, ["python", "-c", metrics], container="app")
        seen["routes"] = [line for line in text.splitlines() if line.startswith("llmcache_route_")]
        seen["requests"] = count()
        return code == 0 and any(line.startswith("llmcache_route_requests_total{") and f"//{new_ip}:" in line
                                 for line in text.splitlines())

    try:
        wait_for("the sidecar routing to the new replica", new_replica_served, timeout_s=180, interval_s=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; new replica {new_ip}, survivor {survivor['status'].get('podIP')}, "
                             f"what the sidecar saw: {seen}") from exc
    exec_in(kube, APP_NS, pod, ["touch", f"{out}.stop"], container="app")
    runner.join(timeout=600)
    assert result and result[0][0] == 0, result
    code, raw = exec_in(kube, APP_NS, pod, ["cat", out], container="app")
    assert code == 0, raw
    statuses = json.loads(raw)
    assert len(statuses) >= at_one + 3 and all(s == 200 for s in statuses), statuses


# -- helm lifecycle ----------------------------------------------------------------


def test_helm_test_passes(release: ControlPlane) -> None:
    proc = release.helm("test", RELEASE, "--namespace", RELEASE_NS, "--timeout", "5m", timeout_s=400)
    assert "Phase:          Succeeded" in proc.stdout or "Succeeded" in proc.stdout, proc.stdout


def test_helm_upgrade_rolls_out_without_a_failed_request(app: list[str], release: ControlPlane,
                                                          cluster: localcluster.LocalCluster) -> None:
    kube = release
    pod = app[1]
    load = Load(kube, pod, [QUESTION, PARAPHRASE], seconds=45)
    before = {p["metadata"]["name"] for p in pods(kube, RELEASE_NS, "app.kubernetes.io/component=operator")}
    kube.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS,
              *install_args(cluster.images.refs, "--set", "operator.logLevel=debug"), "--wait", "--timeout", "8m",
              timeout_s=600)

    # `helm --wait` returns once the new operator pod is ready; the old one may still be shutting
    # down (kopf finishes its handlers first) and is listed until it is gone: wait for that.
    def rolled_out() -> set[str] | None:
        after = {p["metadata"]["name"] for p in pods(kube, RELEASE_NS, "app.kubernetes.io/component=operator")}
        return after if after and not (after & before) else None

    wait_for("the operator to roll out (its old pod gone, a new one there)", rolled_out, timeout_s=120)
    results = load.results()
    assert results and all(r["http"] == 200 for r in results), [r for r in results if r["http"] != 200][:5]


def test_purge_on_delete_then_uninstall_leaves_nothing(app: list[str], release: ControlPlane) -> None:
    kube = release
    (r,) = ask(kube, app[0], QUESTION)
    assert r["status"] in ("hit", "miss")
    wait_for("entries counted", lambda: int(policy_status(kube).get("entries") or 0) > 0, timeout_s=60)
    kube.delete("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=APP_NS)
    wait_for("the policy (and its finalizer) gone",
             lambda: kube.get("llmcache.io/v1alpha1", "CachePolicy", "chat", namespace=APP_NS) is None, timeout_s=120)
    # Purged: the same question is a miss now (no policy → the sidecar's default, still cached per request).
    (after,) = ask(kube, app[0], QUESTION)
    assert after["status"] != "hit", after
    kube.delete("apps/v1", "Deployment", "chat", namespace=APP_NS)
    kube.delete("apps/v1", "Deployment", "plain", namespace=APP_NS)
    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", "--timeout", "5m", timeout_s=400)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    left: list[str] = []
    for api_version, kind, namespaced in [
        ("v1", "Pod", True), ("v1", "Service", True), ("v1", "Secret", True), ("v1", "ConfigMap", True),
        ("v1", "ServiceAccount", True), ("apps/v1", "Deployment", True), ("apps/v1", "StatefulSet", True),
        ("batch/v1", "Job", True), ("rbac.authorization.k8s.io/v1", "ClusterRole", False),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", False),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", False),
    ]:
        ns = RELEASE_NS if namespaced else None

        def remaining(api_version: str = api_version, kind: str = kind, ns: str | None = ns) -> list[str]:
            return [f"{kind}/{o['metadata']['name']}" for o in
                    kube.list_objects(api_version, kind, namespace=ns, label_selector=selector)]

        try:
            wait_for(f"no {kind} of the release", lambda: not remaining(), timeout_s=120)
        except AssertionError:
            left += remaining()
    assert not left, left
    stuck = [o["metadata"]["name"] for o in kube.list_objects("llmcache.io/v1alpha1", "CachePolicy")
             if o["metadata"].get("finalizers")]
    assert not stuck, stuck
