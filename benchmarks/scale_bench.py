#!/usr/bin/env python3
"""Scale benchmark: one Redis vs a 3-master Redis Cluster, side by side, in one run.

Both targets are real servers started here (Valkey + RediSearch from the wheels;
the cluster with ``valkey-server --cluster-enabled yes`` + ``valkey-cli --cluster
create``), and every phase runs the same load against each::

    load ── N entries (exact JSON + bookkeeping + 384-d vector doc) ──▶ target
    exact hit   RedisExactStore.get (the proxy's script) × --exact-gets, concurrency 1
    KNN         SearchIndex.search (the proxy's backend; on the cluster: every master, top-k merged)
    scale       P = 1 … 16 `llmcache proxy` processes sharing the target, a mixed load
                (--hit-share of requests from a pool primed through proxy #1 only, the rest unique),
                hits/s, hits per CPU-second (proxies + Redis), hit rate per P

Reported per target: memory per entry (``used_memory`` delta over all masters / N),
exact-hit and KNN p50/p99, and the scale table. Goals (issue 13): KNN p50 ≤ 10 ms at
1M entries, cluster exact-hit p50 ≤ 1.2× single node, hit rate independent of P,
per-CPU-second hit throughput flat in P.

On 2 shared cores every phase is bounded (``--step-seconds``, fixed sample counts);
``--entries`` sizes the run (the 1M run takes long on a small machine: the vector
index is built as entries are loaded).

Run (from the repository root)::

    .venv/bin/python benchmarks/scale_bench.py --entries 20000            # quick, ~4 min
    .venv/bin/python benchmarks/scale_bench.py --entries 1000000          # the issue's size

Writes ``<out>/scale_bench.json`` and ``scale_bench.png`` (``--out``, default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmcache import connection
from llmcache.keyspace import DEFAULT_GROUP, Keyspace
from llmcache.proxy.exact import Entry, RedisExactStore
from llmcache.proxy.index_search import SearchIndex
from llmcache.proxy.vector_index import doc_fields
from llmcache.redis_cluster import EmbeddedCluster
from llmcache.redis_server import EmbeddedRedis, _die_with_parent, free_port

REPO = Path(__file__).resolve().parent.parent

PREFIX = "scale"
SALT = "scale-bench-salt"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


@dataclass
class Target:
    name: str
    url: str
    node_urls: list[str]  # masters (used_memory, CPU)
    pids: list[int]


def _answer(i: int) -> str:
    return json.dumps({"id": f"c{i}", "object": "chat.completion", "model": "bench", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": f"answer number {i} " + "lorem ipsum " * 20},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 40, "completion_tokens": 60, "total_tokens": 100}})


async def used_memory(t: Target) -> int:
    total = 0
    for url in t.node_urls:
        c = connection.connect(url)
        try:
            total += int((await c.info("memory"))["used_memory"])
        finally:
            await c.aclose()
    return total


async def redis_cpu_s(t: Target) -> float:
    total = 0.0
    for url in t.node_urls:
        c = connection.connect(url)
        try:
            info = await c.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        finally:
            await c.aclose()
    return total


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


async def load(t: Target, *, entries: int, dim: int, scopes: int, batch: int = 500) -> dict[str, Any]:
    """Write ``entries`` exact entries with bookkeeping and vector docs, as the proxy stores them."""
    client = connection.connect(t.url)
    ks = Keyspace(PREFIX)
    await SearchIndex.open(client, keyspace=ks, dim=dim)  # the index exists before the docs, as in a sidecar
    before = await used_memory(t)
    started = time.perf_counter()
    now = time.time()
    for start in range(0, entries, batch):
        n = min(batch, entries - start)
        vecs = vectors(n, dim, seed=start)
        async with client.pipeline(transaction=False) as pipe:
            for j in range(n):
                i = start + j
                h = f"{i:064x}"
                blob = Entry(route="/v1/chat/completions", model="bench", created_s=now, body=_answer(i)).to_json()
                pipe.set(ks.entry(h), blob, ex=86400)
                ks.record_access(pipe, DEFAULT_GROUP, h, size_bytes=len(blob), created=True, now_s=now)
                pipe.hset(ks.vector(h), mapping=doc_fields(vecs[j], scope_hash=f"s{i % scopes}",
                                                           text=f"question {i}", ttl_s=86400, now_s=now))
                pipe.expire(ks.vector(h), 86400)
            await pipe.execute()
        if start and start % (batch * 100) == 0:
            print(f"  {t.name}: {start}/{entries} loaded ({time.perf_counter() - started:.0f}s)", flush=True)
    load_s = time.perf_counter() - started
    after = await used_memory(t)
    await client.aclose()
    return {"entries": entries, "load_s": load_s, "memory_bytes": after - before,
            "memory_per_entry_bytes": (after - before) / entries}


async def exact_latency(t: Target, *, entries: int, gets: int) -> dict[str, float]:
    client = connection.connect(t.url)
    store = RedisExactStore(client, keyspace=Keyspace(PREFIX))
    rng = random.Random(1)
    for _ in range(50):  # warm connections and scripts
        await store.get(f"{rng.randrange(entries):064x}", group=DEFAULT_GROUP)
    lat = []
    for _ in range(gets):
        h = f"{rng.randrange(entries):064x}"
        t0 = time.perf_counter()
        value = await store.get(h, group=DEFAULT_GROUP)
        lat.append((time.perf_counter() - t0) * 1000)
        assert value is not None, "a loaded entry was not found"
    await client.aclose()
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat)}


async def knn_latency(t: Target, *, entries: int, dim: int, scopes: int, queries: int, k: int) -> dict[str, float]:
    client = connection.connect(t.url)
    index = await SearchIndex.open(client, keyspace=Keyspace(PREFIX), dim=dim)
    rng = random.Random(2)
    lat, found = [], 0
    picks = [rng.randrange(entries) for _ in range(queries + 20)]
    for n, i in enumerate(picks):
        start = i - i % 500
        q = vectors(min(500, entries - start), dim, seed=start)[i - start]
        q = q + np.random.default_rng(i).normal(scale=0.01, size=dim).astype(np.float32)
        t0 = time.perf_counter()
        hits = await index.search(q, scope_hash=f"s{i % scopes}", k=k, min_similarity=0.5)
        if n >= 20:  # the first 20 warm up
            lat.append((time.perf_counter() - t0) * 1000)
            found += bool(hits) and hits[0].key_hash == f"{i:064x}"
    await client.aclose()
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat), "recall_at_1": found / max(1, len(lat))}


# ---- many proxy processes -----------------------------------------------------------------


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd="/tmp",
                            start_new_session=True, preexec_fn=_die_with_parent,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


async def wait_ready(session: Any, urls: list[str], *, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                async with session.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy {url} not ready within {timeout_s}s")
            await asyncio.sleep(0.2)


def body(text: str) -> dict[str, Any]:
    return {"model": "bench", "temperature": 0, "messages": [{"role": "user", "content": text}]}


async def scale(t: Target, *, procs: list[int], step_s: float, hit_share: float, pool: int, concurrency: int,
                workdir: Path) -> list[dict[str, Any]]:
    import aiohttp

    stub_port = free_port()
    upstream = spawn(["-m", "llmcache.proxy.stub_upstream", "--listen", f"127.0.0.1:{stub_port}",
                      "--latency-ms", "2"], workdir / f"stub-{t.name}.log")
    ports = [free_port() for _ in range(max(procs))]
    proxies = [spawn(["-m", "llmcache", "proxy", "--listen", f"127.0.0.1:{p}", "--redis-url", t.url,
                      "--upstream", f"http://127.0.0.1:{stub_port}", "--mode", "exact", "--tenant-salt", SALT,
                      "--key-prefix", PREFIX + "p", "--redis-timeout-ms", "500"],
                     workdir / f"proxy-{t.name}-{i}.log") for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    rows = []
    headers = {"Authorization": "Bearer sk-bench"}
    try:
        conn = aiohttp.TCPConnector(limit=concurrency * 2)
        async with aiohttp.ClientSession(connector=conn) as session:
            await wait_ready(session, urls)
            for n in procs:
                tag = f"{t.name}-{n}-{time.time_ns()}"
                # Prime the pool through proxy #1 only: other processes can hit only via the shared cache.
                for j in range(pool):
                    async with session.post(urls[0] + "/v1/chat/completions", json=body(f"{tag} pool {j}"),
                                            headers=headers) as r:
                        await r.read()
                active = urls[:n]
                pids = [p.pid for p in proxies[:n]]
                counts = {"hit": 0, "miss": 0, "other": 0, "errors": 0}
                cpu0, rcpu0, t0 = cpu_s(pids), await redis_cpu_s(t), time.perf_counter()
                stop_at = t0 + step_s
                seq = iter(range(10**9))

                async def worker(w: int) -> None:
                    rng = random.Random(w)
                    while time.perf_counter() < stop_at:
                        i = next(seq)
                        text = (f"{tag} pool {rng.randrange(pool)}" if rng.random() < hit_share
                                else f"{tag} unique {i}")
                        try:
                            async with session.post(active[i % n] + "/v1/chat/completions", json=body(text),
                                                    headers=headers) as r:
                                await r.read()
                                status = r.headers.get("X-LLMCache-Status", "")
                                if r.status != 200:
                                    counts["errors"] += 1
                                counts[status if status in ("hit", "miss") else "other"] += 1
                        except aiohttp.ClientError:
                            counts["errors"] += 1

                await asyncio.gather(*(worker(w) for w in range(concurrency)))
                wall = time.perf_counter() - t0
                proxy_cpu, redis_cpu = cpu_s(pids) - cpu0, await redis_cpu_s(t) - rcpu0
                total = counts["hit"] + counts["miss"] + counts["other"]
                row = {"target": t.name, "processes": n, "requests": total, "hits": counts["hit"],
                       "errors": counts["errors"], "hit_rate": counts["hit"] / max(1, total),
                       "hits_per_s": counts["hit"] / wall, "proxy_cpu_s": proxy_cpu, "redis_cpu_s": redis_cpu,
                       "hits_per_cpu_s": counts["hit"] / max(1e-9, proxy_cpu + redis_cpu)}
                rows.append(row)
                print(f"  {t.name} P={n:2d}: {row['hits_per_s']:7.0f} hits/s  {row['hits_per_cpu_s']:6.0f} "
                      f"hits/CPU-s  hit rate {row['hit_rate']:.3f}  errors {row['errors']}", flush=True)
    finally:
        stop(proxies + [upstream])
    return rows


# ---- report -------------------------------------------------------------------------------


def report(result: dict[str, Any], out: Path) -> None:
    names = [n for n in ("single", "cluster") if n in result["targets"]]
    print()
    print(f"entries {result['entries']:,} · dim {result['dim']} · {result['machine']}")
    print(f"{'':28s}" + "".join(f"{n:>16s}" for n in names) + f"{'cluster/single':>16s}")

    def line(label: str, get: Any, fmt: str = "{:16.3f}") -> None:
        vals = [get(result["targets"][n]) for n in names]
        ratio = f"{vals[1] / vals[0]:16.2f}" if len(vals) == 2 and vals[0] else ""
        print(f"{label:28s}" + "".join(fmt.format(v) for v in vals) + ratio)

    line("memory per entry (bytes)", lambda t: t["load"]["memory_per_entry_bytes"], "{:16.0f}")
    line("load time (s)", lambda t: t["load"]["load_s"], "{:16.1f}")
    line("exact hit p50 (ms)", lambda t: t["exact"]["p50_ms"])
    line("exact hit p99 (ms)", lambda t: t["exact"]["p99_ms"])
    line("KNN p50 (ms)", lambda t: t["knn"]["p50_ms"])
    line("KNN p99 (ms)", lambda t: t["knn"]["p99_ms"])
    line("KNN recall@1", lambda t: t["knn"]["recall_at_1"])
    if result.get("scale"):
        print()
        print(f"{'target':8s} {'P':>3s} {'hits/s':>9s} {'hits/CPU-s':>11s} {'hit rate':>9s} {'errors':>7s}")
        for r in result["scale"]:
            print(f"{r['target']:8s} {r['processes']:3d} {r['hits_per_s']:9.0f} {r['hits_per_cpu_s']:11.0f} "
                  f"{r['hit_rate']:9.3f} {r['errors']:7d}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_bench.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot written")
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x = np.arange(len(names))
    for ax, key, title in ((axes[0], "exact", "exact hit (ms)"), (axes[1], "knn", "KNN (ms)")):
        ax.bar(x - 0.2, [result["targets"][n][key]["p50_ms"] for n in names], 0.4, label="p50")
        ax.bar(x + 0.2, [result["targets"][n][key]["p99_ms"] for n in names], 0.4, label="p99")
        ax.set_xticks(x, names)
        ax.set_title(f"{title}, {result['entries']:,} entries")
        ax.legend()
    for n in names:
        rows = [r for r in result.get("scale", []) if r["target"] == n]
        if rows:
            axes[2].plot([r["processes"] for r in rows], [r["hits_per_s"] for r in rows], "o-", label=f"{n} hits/s")
            axes[2].plot([r["processes"] for r in rows], [r["hits_per_cpu_s"] for r in rows], "s--",
                         label=f"{n} hits/CPU-s")
    if result.get("scale"):
        axes[2].set_xscale("log", base=2)
        axes[2].set_xlabel("proxy processes")
        axes[2].set_title("shared cache, mixed load")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale_bench.png", dpi=110)
    print(f"wrote {out / 'scale_bench.json'} and {out / 'scale_bench.png'}")


async def run_target(t: Target, args: argparse.Namespace, procs: list[int], workdir: Path) -> dict[str, Any]:
    print(f"[{t.name}] loading {args.entries:,} entries", flush=True)
    loaded = await load(t, entries=args.entries, dim=args.dim, scopes=args.scopes)
    print(f"[{t.name}] exact hit latency", flush=True)
    exact = await exact_latency(t, entries=args.entries, gets=args.exact_gets)
    print(f"[{t.name}] KNN latency", flush=True)
    knn = await knn_latency(t, entries=args.entries, dim=args.dim, scopes=args.scopes, queries=args.queries, k=args.k)
    out = {"load": loaded, "exact": exact, "knn": knn}
    if procs:
        print(f"[{t.name}] proxy processes {procs}", flush=True)
        out["scale"] = await scale(t, procs=procs, step_s=args.step_seconds, hit_share=args.hit_share,
                                   pool=args.pool, concurrency=args.concurrency, workdir=workdir)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000, help="entries loaded into each target (default 100k)")
    p.add_argument("--dim", type=int, default=384, help="vector dimensions (all-MiniLM-L6-v2: 384)")
    p.add_argument("--scopes", type=int, default=16, help="distinct scopes (tenant × model …) the entries fall into")
    p.add_argument("--exact-gets", type=int, default=2000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--procs", default="1,2,4,8,16", help="proxy process counts ('' skips the phase)")
    p.add_argument("--step-seconds", type=float, default=4.0)
    p.add_argument("--hit-share", type=float, default=0.8)
    p.add_argument("--pool", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--replicas", type=int, default=0, help="replicas per master in the cluster (default 0)")
    p.add_argument("--targets", default="single,cluster")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    procs = [int(x) for x in args.procs.split(",") if x.strip()]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"entries": args.entries, "dim": args.dim, "args": {k: str(v) for k, v in vars(args).items()},
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
                              "command": " ".join(sys.argv), "targets": {}, "scale": []}
    for name in [n.strip() for n in args.targets.split(",") if n.strip()]:
        if name == "single":
            with EmbeddedRedis(with_search=True) as server:
                t = Target("single", server.url, [server.url], [server.pid or 0])
                result["targets"][name] = asyncio.run(run_target(t, args, procs, workdir))
        elif name == "cluster":
            with EmbeddedCluster(with_search=True, replicas_per_master=args.replicas) as c:
                masters = [c.nodes[i].url for i in c.master_indexes()]
                t = Target("cluster", c.url, masters, [n.pid or 0 for n in c.nodes])
                result["targets"][name] = asyncio.run(run_target(t, args, procs, workdir))
        else:
            raise SystemExit(f"unknown target {name!r}: use single and/or cluster")
        result["scale"].extend(result["targets"][name].pop("scale", []))
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
