"""The Kubernetes product on the local single-node cluster (tests/cluster/), measured.

  1. hit latency inside the app container: openai client → injected sidecar (exact
     hit), side by side with the same client → the model server directly;
  2. policy propagation to N injected pods: CachePolicy applied → each pod's
     sidecar answers by the new policy (a poller in every pod sees ``bypass``);
  3. time to Ready of an app pod with and without the injected sidecar.

Needs root and what ``make test-cluster`` builds (``make cluster-bins images``).
Starts its own cluster (or uses ``LLMCACHE_CLUSTER_*`` like tests/cluster),
installs the chart, measures, uninstalls, stops the cluster. Prints a table,
writes JSON + PNG to ``--out`` (default benchmarks/results/cluster_bench.*).

    .venv/bin/python benchmarks/cluster_bench.py --requests 200 --pods 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

import localcluster  # noqa: E402
from controlplane.fixtures import ControlPlane, ControlPlaneBinaries  # noqa: E402
from helpers import exec_in, wait_for, wait_ready  # noqa: E402
from test_scenario import APP_NS, CHART, RELEASE, RELEASE_NS, app_manifest, install_args  # noqa: E402

QUESTION = "What is the capital city of France?"

# Runs inside the app container: N sequential requests, per-request latency in ms.
LATENCY = r'''
import json, sys, time, openai
base, n, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
msgs = [{"role": "user", "content": sys.argv[4]}]
c.chat.completions.create(model="default", messages=msgs, max_tokens=16, temperature=0)  # warm / store
out = []
for _ in range(n):
    t = time.perf_counter()
    raw = c.chat.completions.with_raw_response.create(model="default", messages=msgs, max_tokens=16, temperature=0)
    raw.parse()
    out.append({"ms": (time.perf_counter() - t) * 1000, "status": raw.headers.get("x-llmcache-status", "direct")})
print(json.dumps(out))
'''

# Runs inside each pod: requests until the answer says bypass; prints when that request was sent
# (the previous one, a hit of a few ms, was still under the old policy: resolution = one hit).
FLIP = r'''
import sys, time, urllib.request, json
deadline = time.time() + float(sys.argv[1])
body = json.dumps({"model": "default", "messages": [{"role": "user", "content": sys.argv[2]}],
                   "max_tokens": 16, "temperature": 0}).encode()
while time.time() < deadline:
    req = urllib.request.Request("http://localhost:8080/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer bench"})
    sent = time.time()
    status = urllib.request.urlopen(req, timeout=60).headers.get("x-llmcache-status")
    if status == "bypass":
        print(sent); sys.exit(0)
    time.sleep(0.005)
sys.exit(1)
'''


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def policy(name: str, app: str, *, suspend: bool) -> dict[str, Any]:
    return {"apiVersion": "llmcache.io/v1alpha1", "kind": "CachePolicy", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": app}}, "mode": "Exact", "ttlSeconds": 3600,
                     "suspend": suspend}}


def bench_latency(kube: ControlPlane, pod: str, n: int) -> dict[str, list[float]]:
    direct_url = f"http://{RELEASE}-llmcache-model-server.{RELEASE_NS}.svc:8000/v1"
    result = {}
    for label, base in (("sidecar hit", "http://localhost:8080/v1"), ("model server direct", direct_url)):
        count = n if label == "sidecar hit" else max(5, n // 20)  # direct calls generate: fewer of them
        code, out = exec_in(kube, APP_NS, pod, ["python", "-c", LATENCY, base, str(count), "bench", QUESTION],
                            container="app", timeout_s=900)
        assert code == 0, out
        rows = json.loads(out.strip().splitlines()[-1])
        if label == "sidecar hit":
            assert all(r["status"] == "hit" for r in rows), {r["status"] for r in rows}
        result[label] = [r["ms"] for r in rows]
    return result


def bench_propagation(kube: ControlPlane, pods: list[str], rounds: int) -> list[float]:
    delays: list[float] = []
    for _ in range(rounds):
        kube.apply(policy("bench", "bench", suspend=False), namespace=APP_NS)
        for pod in pods:  # store the entry the pollers probe, under the active policy
            wait_for("a hit", lambda p=pod: exec_in(kube, APP_NS, p, [
                "python", "-c", LATENCY, "http://localhost:8080/v1", "1", "bench", QUESTION],
                container="app", timeout_s=300)[0] == 0, timeout_s=300)
        flips: dict[str, float] = {}

        def poll(pod: str, flips: dict[str, float]) -> None:
            code, out = exec_in(kube, APP_NS, pod, ["python", "-c", FLIP, "120", QUESTION], container="app",
                                timeout_s=200)
            if code == 0:
                flips[pod] = float(out.strip().splitlines()[-1])

        threads = [threading.Thread(target=poll, args=(p, flips)) for p in pods]
        for t in threads:
            t.start()
        time.sleep(2)  # pollers running
        applied = time.time()
        kube.apply(policy("bench", "bench", suspend=True), namespace=APP_NS)
        for t in threads:
            t.join()
        assert len(flips) == len(pods), f"only {len(flips)} of {len(pods)} sidecars applied the policy"
        delays += [(flips[p] - applied) * 1000 for p in pods]
    return delays


def bench_ready(kube: ControlPlane, image: str, rounds: int) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {"with sidecar": [], "without sidecar": []}
    for _ in range(rounds):
        for label, inject in (("with sidecar", True), ("without sidecar", False)):
            name = f"ready-{uuid.uuid4().hex[:6]}"
            start = time.monotonic()
            kube.apply(app_manifest(image, name=name, replicas=1, inject=inject), namespace=APP_NS)
            wait_ready(kube, APP_NS, f"app={name}", timeout_s=300)
            result[label].append((time.monotonic() - start) * 1000)
            kube.delete("apps/v1", "Deployment", name, namespace=APP_NS)
    return result


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("latency", "propagation", "ready"),
                              ("request latency in the app pod (ms)", "policy propagation (ms)",
                               "pod time to Ready (ms)")):
        groups = summary[key]
        names = list(groups)
        ax.bar([f"{n}\np50" for n in names], [groups[n]["p50"] for n in names])
        ax.bar([f"{n}\nmax/p99" for n in names], [groups[n].get("p99", groups[n]["max"]) for n in names])
        ax.set_yscale("log")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": statistics.median(values), "p99": pct(values, 0.99), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="hits measured through the sidecar")
    parser.add_argument("--pods", type=int, default=4, help="injected pods for policy propagation")
    parser.add_argument("--rounds", type=int, default=5, help="policy changes / pod starts measured")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster_bench",
                        help="output path without extension (.json and .png are written)")
    args = parser.parse_args()

    t0 = time.monotonic()
    cluster = localcluster.start()
    try:
        start_s = time.monotonic() - t0
        b = cluster.binaries
        kube = ControlPlane(server=cluster.server, token=cluster.token, ca=cluster.ca, kubeconfig=cluster.kubeconfig,
                            workdir=cluster.workdir, binaries=ControlPlaneBinaries(
                                etcd=b.etcd, kube_apiserver=b.kube_apiserver, helm=b.helm))
        t1 = time.monotonic()
        kube.helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
                  *install_args(cluster.images.refs), "--wait", "--timeout", "12m", timeout_s=900)
        install_s = time.monotonic() - t1
        image = cluster.images.refs["client"]
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}})
        kube.apply(policy("bench", "bench", suspend=False), namespace=APP_NS)
        kube.apply(app_manifest(image, name="bench", replicas=args.pods, inject=True), namespace=APP_NS)
        pods = sorted(p["metadata"]["name"] for p in wait_ready(kube, APP_NS, "app=bench", count=args.pods,
                                                                 timeout_s=600))
        latency = bench_latency(kube, pods[0], args.requests)
        print("latency:", {k: stats(v) for k, v in latency.items()}, flush=True)
        propagation = bench_propagation(kube, pods, args.rounds)
        print("propagation:", stats(propagation), flush=True)
        kube.delete("apps/v1", "Deployment", "bench", namespace=APP_NS)
        ready = bench_ready(kube, image, args.rounds)
        kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", timeout_s=300, check=False)
    finally:
        cluster.stop()
    leftovers = cluster.leftovers()
    if not leftovers:
        shutil.rmtree(cluster.workdir, ignore_errors=True)

    summary = {
        "latency": {k: stats(v) for k, v in latency.items()},
        "propagation": {f"{args.pods} pods": stats(propagation)},
        "ready": {k: stats(v) for k, v in ready.items()},
        "cluster_start_s": start_s, "helm_install_s": install_s, "cluster_timings_s": cluster.timings_s,
        "leftovers_after_stop": leftovers,
    }
    print(f"cluster start {start_s:.1f} s (node Ready), helm install --wait {install_s:.1f} s")
    print(f"{'measure':<38} | {'n':>4} | {'p50 ms':>9} | {'p99 ms':>9} | {'max ms':>9}")
    for key in ("latency", "propagation", "ready"):
        for name, s in summary[key].items():
            print(f"{key + ': ' + name:<38} | {s['n']:>4} | {s['p50']:>9.2f} | {s['p99']:>9.2f} | {s['max']:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(summary, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and .png; leftovers after stop: {leftovers or 'none'}")
    return 0 if not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
