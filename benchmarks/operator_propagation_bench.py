"""Policy propagation: a CachePolicy change through the API server until every proxy applied it.

Real parts: etcd + kube-apiserver (the test control plane, ``make controlplane``),
an embedded Redis, the stub upstream, ``llmcache operator`` and N ``llmcache proxy``
processes (each with a downward-API style labels file, pod name and namespace).
For each of K spec changes (alternating ``ttlSeconds``) it records, from the
moment the client sends the update:

- ``event``    — the operator's ``PUBLISH`` reaching a Redis subscriber;
- ``first``    — the first proxy's ack (``appliedAt``) of the new generation;
- ``all``      — the last proxy's ack: the change is live everywhere.

Usage::

    python benchmarks/operator_propagation_bench.py --proxies 1 4 --changes 30

Writes ``benchmarks/results/operator_propagation_bench.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from controlplane.fixtures import start_control_plane  # noqa: E402

from llmcache.keyspace import Keyspace  # noqa: E402
from llmcache.redis_server import EmbeddedRedis, free_port  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
KS = Keyspace()
NS = "bench"


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def wait(pred: Any, what: str, timeout_s: float = 120.0, interval_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_round(kube: Any, r: redis.Redis, num_proxies: int, num_changes: int, workdir: Path,
              env: dict[str, str], upstream_url: str, redis_url: str) -> dict[str, Any]:
    policy = f"chat-{num_proxies}"
    labels = {"app": policy}
    procs: list[subprocess.Popen[bytes]] = []
    pods = [f"{policy}-pod-{i}" for i in range(num_proxies)]
    try:
        for pod in pods:
            kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": labels},
                        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}},
                       namespace=NS)
        spec = {"selector": {"matchLabels": labels}, "mode": "Exact", "ttlSeconds": 600}
        cpol = {"apiVersion": "llmcache.io/v1alpha1", "kind": "CachePolicy", "metadata": {"name": policy}}
        kube.apply({**cpol, "spec": spec}, namespace=NS)
        labels_file = workdir / f"labels-{policy}"
        labels_file.write_text(f'app="{policy}"\n')
        for pod in pods:
            port = free_port()
            procs.append(spawn([sys.executable, "-m", "llmcache", "proxy", "--listen", f"127.0.0.1:{port}",
                                "--upstream", upstream_url, "--redis-url", redis_url, "--mode", "exact",
                                "--tenant-salt", "bench", "--pod-labels-file", str(labels_file),
                                "--pod-namespace", NS, "--pod-name", pod], workdir / f"{pod}.log", env))
            wait(lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz"), f"proxy {pod}", interval_s=0.2)

        def acks(generation: int) -> list[float] | None:
            raw = r.hgetall(KS.acks(NS, policy))
            got = [json.loads(raw[p.encode()]) for p in pods if p.encode() in raw]
            if len(got) == len(pods) and all(a["generation"] == generation for a in got):
                return [a["appliedAt"] for a in got]
            return None

        wait(lambda: acks(1), "all proxies on generation 1")
        sub = r.pubsub(ignore_subscribe_messages=True)
        sub.subscribe(KS.policy_channel(NS))
        rows = []
        for generation in range(2, num_changes + 2):
            t0 = time.time()
            kube.apply({**cpol, "spec": {**spec, "ttlSeconds": 600 + generation}}, namespace=NS)
            event_s = None
            while event_s is None:
                msg = sub.get_message(timeout=30)
                if msg and json.loads(msg["data"]) == {"namespace": NS, "name": policy, "generation": generation}:
                    event_s = time.time() - t0
            applied = wait(lambda g=generation: acks(g), f"generation {generation} everywhere")
            rows.append({"generation": generation, "event_s": event_s, "first_s": min(applied) - t0,
                         "all_s": max(applied) - t0})
            time.sleep(0.2)  # let status patches settle; changes arrive one at a time, like humans make them
        sub.close()
        out: dict[str, Any] = {"proxies": num_proxies, "changes": num_changes, "samples": rows}
        for key in ("event_s", "first_s", "all_s"):
            xs = [row[key] for row in rows]
            out[key.replace("_s", "")] = {"p50_ms": round(statistics.median(xs) * 1000, 1),
                                          "p95_ms": round(percentile(xs, 0.95) * 1000, 1),
                                          "max_ms": round(max(xs) * 1000, 1)}
        return out
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rnd in rounds:
        xs = sorted(row["all_s"] * 1000 for row in rnd["samples"])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{rnd['proxies']} proxies: all applied")
        ev = sorted(row["event_s"] * 1000 for row in rnd["samples"])
        ax.step(ev, ys, where="post", linestyle="--", label=f"{rnd['proxies']} proxies: event published")
    ax.axvline(2000, color="red", linewidth=1, label="2 s budget")
    ax.set_xscale("log")
    ax.set_xlabel("ms from the API update to …")
    ax.set_ylabel("fraction of changes")
    ax.set_title("llmcache: CachePolicy propagation (kube-apiserver → operator → Redis → proxies)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the JSON and PNG (default benchmarks/results, the committed figures)")
    parser.add_argument("--crd-dir", type=Path, default=REPO / "charts" / "llmcache" / "crds",
                        help="the chart's CRDs (default: charts/llmcache/crds of this checkout)")
    args = parser.parse_args()
    crds = sorted(args.crd_dir.glob("*.yaml"))
    if not crds:
        parser.error(f"no CRD YAML in {args.crd_dir}: run from a checkout with charts/ or pass --crd-dir")
    workdir = Path(tempfile.mkdtemp(prefix="llmcache-propbench-"))
    kube = start_control_plane(workdir / "cp")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for crd in crds:
            kube.apply(crd.read_text())
        wait(lambda: kube.request("GET", "/apis/llmcache.io/v1alpha1/cachepolicies").status_code == 200,
             "CachePolicy storage", interval_s=0.2)
        kube.dynamic.resources.invalidate_cache()
        kube.create_namespace(NS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCACHE_")} | kube.env()
        with EmbeddedRedis(with_search=False) as server:
            r = redis.Redis.from_url(server.url)
            up_port, health_port = free_port(), free_port()
            procs.append(spawn([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen",
                                f"127.0.0.1:{up_port}"], workdir / "upstream.log", env))
            procs.append(spawn([sys.executable, "-m", "llmcache", "operator", "--redis-url", server.url,
                                "--namespace", NS, "--standalone", "--webhook-listen", "",
                                "--health-listen", f"127.0.0.1:{health_port}"], workdir / "operator.log", env))
            wait(lambda: http_ok(f"http://127.0.0.1:{up_port}/v1/models"), "stub upstream", interval_s=0.2)
            wait(lambda: http_ok(f"http://127.0.0.1:{health_port}/healthz"), "operator", interval_s=0.2)
            rounds = [run_round(kube, r, n, args.changes, workdir, env, f"http://127.0.0.1:{up_port}", server.url)
                      for n in args.proxies]
            r.close()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        kube.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'proxies':>8} | {'changes':>7} | {'event p50/p95/max ms':>22} | {'first p50/p95/max ms':>22} | "
          f"{'all p50/p95/max ms':>22}")
    for rnd in rounds:
        cols = [f"{rnd[k]['p50_ms']}/{rnd[k]['p95_ms']}/{rnd[k]['max_ms']}" for k in ("event", "first", "all")]
        print(f"{rnd['proxies']:>8} | {rnd['changes']:>7} | {cols[0]:>22} | {cols[1]:>22} | {cols[2]:>22}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "operator_propagation", "machine": platform.platform(), "cpus": os.cpu_count(),
           "load_avg_1m": os.getloadavg()[0], "rounds": rounds}
    (args.out / "operator_propagation_bench.json").write_text(json.dumps(out, indent=2))
    plot(rounds, args.out / "operator_propagation_bench.png")
    print(f"wrote {args.out / 'operator_propagation_bench.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
