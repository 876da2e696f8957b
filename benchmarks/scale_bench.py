#!/usr/bin/env python3
"""Scale benchmark: one Redis vs a 3-master Redis Cluster, side by side, in one run.

Both targets are real servers started here (Valkey + RediSearch from the wheels;
the cluster with ``valkey-server --cluster-enabled yes`` + ``valkey-cli --cluster
create``), and every phase runs the same load against each::

    load ── N entries (exact JSON + bookkeeping + 384-d vector doc) ──▶ target
    exact hit   RedisExactStore.get (the proxy's script) × --exact-gets, concurrency 1
    KNN         SearchIndex.search (the proxy's backend; on the cluster: every master, top-k merged)
    scale       P = 1 … 16 `llmcache proxy` processes sharing the target, driven by wrk (one
                thread per proxy): --hit-share of requests from a pool primed through proxy #1
                only, the rest unique; 'per-proc' load gives every proxy its own clients,
                'fixed' spreads --clients over them; hits/s, hits per CPU-second (proxies +
                Redis), hit rate per P
    control     the same rounds against P helpers/scale_control.py servers: aiohttp awaiting one Redis
                GET per request on the target, and bare aiohttp (what P event loops cost here)

Reported per target: memory per entry (``used_memory`` delta over all masters / N),
exact-hit and KNN p50/p99, and the scale table. Goals (issue 13): KNN p50 ≤ 10 ms at
1M entries, cluster exact-hit p50 ≤ 1.2× single node, hit rate independent of P,
per-CPU-second hit throughput flat in P.

On 2 shared cores every phase is bounded (``--step-seconds``, fixed sample counts);
``--entries`` sizes the run (the 1M run takes long on a small machine: the vector
index is built as entries are loaded).

Run (from the repository root)::

    .venv/bin/python benchmarks/scale_bench.py --entries 20000            # processes + controls, ~8 min
    .venv/bin/python benchmarks/scale_bench.py --entries 1000000 --procs '' --out benchmarks/results/scale_1m
                                                                          # the issue's size, ~1 h here

The process phase needs ``wrk`` (``apt-get install wrk``).

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
import shutil
import signal
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
from llmcache.proxy.semantic.index_search import SearchIndex
from llmcache.proxy.semantic.vector_index import doc_fields
from llmcache.redis_server import EmbeddedRedis, _die_with_parent, free_port
from llmcache.testing.redis_cluster import EmbeddedCluster

REPO = Path(__file__).resolve().parent.parent

PREFIX = "scale"
SALT = "scale-bench-salt"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


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


async def load(t: Target, *, entries: int, dim: int, scopes: int, batch: int = 500,
               in_flight: int = 3) -> dict[str, Any]:
    """Write ``entries`` exact entries with bookkeeping and vector docs, as the proxy stores them.

    ``in_flight`` pipelines at a time, so Redis indexes one batch while the next is built (and
    a cluster's masters index theirs side by side).
    """
    client = connection.connect(t.url)
    ks = Keyspace(PREFIX)
    await SearchIndex.open(client, keyspace=ks, dim=dim)  # the index exists before the docs, as in a sidecar
    before = await used_memory(t)
    started = time.perf_counter()
    now = time.time()
    slots = asyncio.Semaphore(in_flight)
    report_every = max(batch, entries // 20 // batch * batch)

    async def write(start: int) -> None:
        try:
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
            if start and start % report_every == 0:
                spent = time.perf_counter() - started
                print(f"  {t.name}: {start:,}/{entries:,} loaded ({spent:.0f} s, {start / spent:.0f}/s)", flush=True)
        finally:
            slots.release()

    tasks = []
    for start in range(0, entries, batch):
        await slots.acquire()
        tasks.append(asyncio.create_task(write(start)))
        done = [x for x in tasks if x.done()]
        for x in done:
            x.result()  # raise a failed batch's error now
            tasks.remove(x)
    await asyncio.gather(*tasks)
    load_s = time.perf_counter() - started
    after = await used_memory(t)
    await client.aclose()
    return {"entries": entries, "load_s": load_s, "entries_per_s": entries / load_s, "memory_bytes": after - before,
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


async def wait_ready(session: Any, urls: list[str], *, path: str = "/readyz", timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                async with session.get(url + path) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready ({path}) within {timeout_s}s")
            await asyncio.sleep(0.2)


def body(text: str) -> dict[str, Any]:
    return {"model": "bench", "temperature": 0, "messages": [{"role": "user", "content": text}]}


LOAD_MODELS = {
    "per-proc": "each proxy process has its own --clients-per-proc clients (sidecars: each app brings its own)",
    "fixed": "--clients in all, split over the processes (the same load spread ever thinner)",
}


def wrk_round(ports: list[int], *, connections: int, seconds: float, tag: str, hit_share: float,
              pool: int) -> dict[str, Any]:
    """One wrk run: thread i drives proxy i (``scale_mix.lua``); returns its SCALE_RESULT counts."""
    env = {**os.environ, "SCALE_PORTS": ",".join(map(str, ports)), "SCALE_TAG": tag,
           "SCALE_HIT_SHARE": str(hit_share), "SCALE_POOL": str(pool)}
    cmd = ["wrk", f"-t{len(ports)}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(REPO / "benchmarks" / "scale_mix.lua"), f"http://127.0.0.1:{ports[0]}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SCALE_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    return json.loads(line.split(" ", 1)[1])


async def rounds(name: str, t: Target | None, ports: list[int], pids: list[int], *, procs: list[int],
                 models: list[str], step_s: float, hit_share: float, pool: int, clients_per_proc: int,
                 clients: int, prime: Any = None) -> list[dict[str, Any]]:
    """For each load model and P: (prime the pool,) one wrk round over the first P servers, CPU measured."""
    rows = []
    for model in models:
        for n in procs:
            tag = f"{name}-{model}-{n}-{time.time_ns()}"
            if prime is not None:
                await prime(tag)
            conns = clients_per_proc * n if model == "per-proc" else max(n, clients)
            cpu0, rcpu0, t0 = cpu_s(pids[:n]), (await redis_cpu_s(t) if t else 0.0), time.perf_counter()
            got = await asyncio.to_thread(wrk_round, ports[:n], connections=conns, seconds=step_s, tag=tag,
                                          hit_share=hit_share, pool=pool)
            wall = time.perf_counter() - t0
            proxy_cpu, redis_cpu = cpu_s(pids[:n]) - cpu0, (await redis_cpu_s(t) - rcpu0 if t else 0.0)
            total = got["hits"] + got["misses"] + got["other"]
            cpu = max(1e-9, proxy_cpu + redis_cpu)
            row = {"target": name, "load_model": model, "processes": n, "clients": conns, "requests": total,
                   "hits": got["hits"], "errors": got["errors"] + got["socket_errors"],
                   "hit_rate": got["hits"] / max(1, total), "hits_per_s": got["hits"] / wall,
                   "requests_per_s": total / wall,
                   "latency_p50_ms": got["latency_p50_ms"], "latency_p99_ms": got["latency_p99_ms"],
                   "proxy_cpu_s": proxy_cpu, "redis_cpu_s": redis_cpu,
                   "proxy_cpu_ms_per_request": proxy_cpu / max(1, total) * 1000,
                   "hits_per_cpu_s": got["hits"] / cpu, "requests_per_cpu_s": total / cpu}
            rows.append(row)
            print(f"  {name} {model:8s} P={n:2d} ({conns:3d} clients): {row['requests_per_s']:6.0f} req/s "
                  f"{row['hits_per_s']:6.0f} hits/s  {row['requests_per_cpu_s']:6.0f} req/CPU-s "
                  f"{row['hits_per_cpu_s']:6.0f} hits/CPU-s  hit rate {row['hit_rate']:.3f}  errors {row['errors']}",
                  flush=True)
    return rows


async def scale(t: Target, *, procs: list[int], workdir: Path, **load: Any) -> list[dict[str, Any]]:
    """P = 1 … 16 proxy processes sharing ``t``; wrk (C, one thread per proxy) drives them.

    The load generator must not be what saturates: a Python client tops out near the proxies'
    own rate, so each proxy then holds one or two requests at a time and every request pays a
    wake-up of its own. wrk's CPU is not counted in hits per CPU-second (proxies + Redis are).
    """
    import aiohttp

    stub_port = free_port()
    upstream = spawn(["-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{stub_port}",
                      "--latency-ms", "2"], workdir / f"stub-{t.name}.log")
    ports = [free_port() for _ in range(max(procs))]
    proxies = [spawn(["-m", "llmcache", "proxy", "--listen", f"127.0.0.1:{p}", "--redis-url", t.url,
                      "--upstream", f"http://127.0.0.1:{stub_port}", "--mode", "exact", "--tenant-salt", SALT,
                      "--key-prefix", PREFIX + "p", "--redis-timeout-ms", "500"],
                     workdir / f"proxy-{t.name}-{i}.log") for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    headers = {"Authorization": "Bearer sk-bench"}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, urls)

            async def prime(tag: str) -> None:
                # The pool goes in through proxy #1 only: the others can hit only via the shared cache.
                for j in range(load["pool"]):
                    async with session.post(urls[0] + "/v1/chat/completions", json=body(f"{tag} pool {j}"),
                                            headers=headers) as r:
                        await r.read()

            return await rounds(t.name, t, ports, [p.pid for p in proxies], procs=procs, prime=prime, **load)
    finally:
        stop(proxies + [upstream])


async def control(t: Target | None, *, procs: list[int], workdir: Path, **load: Any) -> list[dict[str, Any]]:
    """The same rounds against P control servers (``helpers/scale_control.py``): bare aiohttp answering
    JSON (``t`` None, row target ``control``), or the same awaiting one Redis GET on ``t`` per
    request (``<t>+get``), as a cache hit waits on Redis once. They show what running P Python
    event loops, with and without a Redis wait, costs on this machine by itself; llmcache's
    curve is read against them.
    """
    import aiohttp

    name = "control" if t is None else f"{t.name}+get"
    ports = [free_port() for _ in range(max(procs))]
    extra = [] if t is None else ["--redis-url", t.url]
    servers = [spawn([str(REPO / "benchmarks" / "helpers" / "scale_control.py"), "--listen", f"127.0.0.1:{p}", *extra],
                     workdir / f"{name}-{i}.log") for i, p in enumerate(ports)]
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, [f"http://127.0.0.1:{p}" for p in ports], path="/v1/models", timeout_s=60)
        return await rounds(name, t, ports, [s.pid for s in servers], procs=procs, **load)
    finally:
        stop(servers)


# ---- report -------------------------------------------------------------------------------


def procs_of(result: dict[str, Any]) -> list[int]:
    return sorted({r["processes"] for r in result.get("scale", [])}) or [1]


def report(result: dict[str, Any], out: Path) -> None:
    names = [n for n in ("single", "cluster") if n in result["targets"]]
    for r in result.get("scale", []):  # rows written before the control and load models existed
        r.setdefault("load_model", "fixed")
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
        print(f"{'target':12s} {'load':8s} {'P':>3s} {'clients':>7s} {'hits/s':>8s} {'hits/CPU-s':>11s} "
              f"{'proxy ms/req':>12s} {'hit rate':>9s} {'p50 ms':>7s} {'errors':>7s}")
        for r in result["scale"]:
            print(f"{r['target']:12s} {r['load_model']:8s} {r['processes']:3d} {r['clients']:7d} "
                  f"{r['hits_per_s']:8.0f} "
                  f"{r['hits_per_cpu_s']:11.0f} {r['proxy_cpu_ms_per_request']:12.3f} {r['hit_rate']:9.3f} "
                  f"{r['latency_p50_ms']:7.2f} {r['errors']:7d}")
        def curve(target: str, model: str, key: str) -> list[tuple[int, float]]:
            return [(r["processes"], r[key]) for r in result["scale"]
                    if r["target"] == target and r["load_model"] == model]

        for model in LOAD_MODELS:
            for n in names:
                parts = []
                for target, key, label in ((n, "hits_per_cpu_s", "llmcache hits"),
                                           (f"{n}+get", "requests_per_cpu_s", "aiohttp+GET requests"),
                                           ("control", "requests_per_cpu_s", "bare aiohttp requests")):
                    c = curve(target, model, key)
                    if len(c) > 1:
                        parts.append(f"{label} {c[-1][1] / c[0][1]:.2f}")
                rows = [r for r in result["scale"] if r["target"] == n and r["load_model"] == model]
                if parts and rows:
                    rates = [r["hit_rate"] for r in rows]
                    redis_us = [r["redis_cpu_s"] / max(1, r["requests"]) * 1e6 for r in rows]
                    print(f"{n}, {model} load, per CPU-second at P={max(procs_of(result))} over P=1: "
                          + ", ".join(parts) + f"; llmcache hit rate {min(rates):.3f}-{max(rates):.3f}, Redis CPU "
                          f"per request {redis_us[0]:.0f} -> {redis_us[-1]:.0f} us")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_bench.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot written")
        return
    panels = 3 if result.get("scale") else 2
    fig, axes = plt.subplots(1, panels, figsize=(14 if panels == 3 else 9.5, 4))
    x = np.arange(len(names))
    for ax, key, title in ((axes[0], "exact", "exact hit (ms)"), (axes[1], "knn", "KNN (ms)")):
        ax.bar(x - 0.2, [result["targets"][n][key]["p50_ms"] for n in names], 0.4, label="p50")
        ax.bar(x + 0.2, [result["targets"][n][key]["p99_ms"] for n in names], 0.4, label="p99")
        ax.set_xticks(x, names)
        ax.set_title(f"{title}, {result['entries']:,} entries")
        ax.legend()
    styles = {"per-proc": "o-", "fixed": "s--"}
    for n in [*names, *(f"{x}+get" for x in names), "control"]:
        for model in LOAD_MODELS:
            rows = [r for r in result.get("scale", []) if r["target"] == n and r["load_model"] == model]
            key = "hits_per_cpu_s" if n in names else "requests_per_cpu_s"
            if rows and key in rows[0] and rows[0][key]:
                axes[2].plot([r["processes"] for r in rows], [r[key] / rows[0][key] for r in rows], styles[model],
                             label=f"{n}, {model} load", alpha=1.0 if n in names else 0.45)
    if result.get("scale"):
        axes[2].set_xscale("log", base=2)
        axes[2].set_xlabel("server processes")
        axes[2].set_ylabel("per CPU-second, relative to 1 process")
        axes[2].set_ylim(0, 1.3)
        axes[2].axhline(1.0, color="grey", linewidth=0.5)
        axes[2].set_title("llmcache hits vs control requests")
        axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "scale_bench.png", dpi=110)
    print(f"wrote {out / 'scale_bench.json'} and {out / 'scale_bench.png'}")


def load_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"models": args.load_models, "step_s": args.step_seconds, "hit_share": args.hit_share, "pool": args.pool,
            "clients_per_proc": args.clients_per_proc, "clients": args.clients}


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
        out["scale"] = await scale(t, procs=procs, workdir=workdir, **load_args(args))
        if args.control:
            print(f"[{t.name}] control: aiohttp + one Redis GET per request, same load", flush=True)
            out["scale"] += await control(t, procs=procs, workdir=workdir, **load_args(args))
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
    p.add_argument("--clients-per-proc", type=int, default=16, help="'per-proc' load: clients per proxy process")
    p.add_argument("--clients", type=int, default=32, help="'fixed' load: clients in all, split over the processes")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control rounds (P aiohttp servers, bare and with one Redis GET, same load)")
    p.add_argument("--load-models", default="per-proc,fixed",
                   help="; ".join(f"{k}: {v}" for k, v in LOAD_MODELS.items()))
    p.add_argument("--replicas", type=int, default=0, help="replicas per master in the cluster (default 0)")
    p.add_argument("--targets", default="single,cluster")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    procs = [int(x) for x in args.procs.split(",") if x.strip()]
    args.load_models = [m.strip() for m in args.load_models.split(",") if m.strip()]
    if unknown := [m for m in args.load_models if m not in LOAD_MODELS]:
        p.error(f"--load-models: unknown {', '.join(unknown)}; choose from {', '.join(LOAD_MODELS)}")
    if procs and shutil.which("wrk") is None:
        p.error("the proxy-process phase drives the proxies with wrk, which is not installed: "
                "apt-get install wrk (or pass --procs '' to skip the phase)")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"entries": args.entries, "dim": args.dim,
                              "args": {k: str(v) for k, v in vars(args).items()},
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
    if procs and args.control:
        print("[control] bare aiohttp servers (scale_control.py, no Redis), same load", flush=True)
        result["scale"].extend(asyncio.run(control(None, procs=procs, workdir=workdir, **load_args(args))))
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
