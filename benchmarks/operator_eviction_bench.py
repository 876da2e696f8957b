"""Cost of the operator's eviction timer and status estimate as a policy's group grows.

For each group size N the group is filled as sidecars fill it (an entry + a vector
doc + :meth:`Keyspace.record_access`, pipelined), then timed against a real
embedded Redis (Valkey):

- ``idle pass``   — :func:`enforce_limits` on a group inside its limits (prune a
                    1,000-member ZSCAN window + ZCARD + HVALS of the sizes);
- ``trim 10 %``   — one pass that evicts N/10 entries (maxEntries = 0.9 N);
- ``trim memory`` — one pass that frees 10 % of the recorded bytes (maxMemory);
- ``usage``       — :func:`eviction.group_usage` (entries + Σ sizes inside Redis: status, memory limits);
- ``hit estimate``— :func:`llmcache.operator.status.group_counters` (exact ≤ 1,000 members, sampled above).

Usage::

    python benchmarks/operator_eviction_bench.py                 # N = 1k, 10k, 100k
    python benchmarks/operator_eviction_bench.py --sizes 1000 5000 --repeats 5

Writes ``benchmarks/results/operator_eviction_bench.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from llmcache.keyspace import Keyspace
from llmcache.operator import eviction, status
from llmcache.redis_server import EmbeddedRedis

RESULTS = Path(__file__).resolve().parent / "results"
GROUP = "bench/policy"
ENTRY_BYTES = 600


async def fill(r: aioredis.Redis, ks: Keyspace, n: int) -> None:
    blob = b"x" * ENTRY_BYTES
    for start in range(0, n, 2000):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 2000)):
                h = hashlib.sha256(str(i).encode()).hexdigest()
                pipe.set(ks.entry(h), blob, ex=3600)
                pipe.hset(ks.vector(h), mapping={"s": "scope"})
                ks.record_access(pipe, GROUP, h, size_bytes=ENTRY_BYTES, created=True, now_s=1_000 + i)
                if i % 3 == 0:
                    ks.record_access(pipe, GROUP, h, now_s=2_000_000 + i)
            await pipe.execute()


async def timed(coro_fn: Any) -> float:
    t0 = time.perf_counter()
    await coro_fn()
    return time.perf_counter() - t0


async def bench_size(url: str, n: int, repeats: int) -> dict[str, Any]:
    r = aioredis.from_url(url)
    ks = Keyspace()
    rows: dict[str, list[float]] = {"idle_pass_s": [], "trim_10pct_s": [], "trim_memory_s": [], "hit_estimate_s": [],
                                    "usage_s": []}
    evicted = 0
    for _ in range(repeats):
        await r.flushall()
        await fill(r, ks, n)
        inside = eviction.EvictionLimits("LRU", max_entries=n)
        rows["idle_pass_s"].append(await timed(lambda lim=inside: eviction.enforce_limits(r, ks, GROUP, lim)))
        rows["usage_s"].append(await timed(lambda: eviction.group_usage(r, ks, GROUP)))
        rows["hit_estimate_s"].append(await timed(lambda: status.group_counters(r, ks, GROUP)))
        trim = eviction.EvictionLimits("LRU", max_entries=int(n * 0.9))
        t0 = time.perf_counter()
        result = await eviction.enforce_limits(r, ks, GROUP, trim)
        rows["trim_10pct_s"].append(time.perf_counter() - t0)
        evicted = result.num_evicted
        _, memory = await eviction.group_usage(r, ks, GROUP)
        mem = eviction.EvictionLimits("LFU", max_memory_bytes=int(memory * 0.9))
        rows["trim_memory_s"].append(await timed(lambda lim=mem: eviction.enforce_limits(r, ks, GROUP, lim)))
    await r.aclose()
    out: dict[str, Any] = {"entries": n, "evicted_per_trim": evicted}
    for k, v in rows.items():
        out[k.replace("_s", "_ms_median")] = round(statistics.median(v) * 1000, 2)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["entries"] for r in rows]
    for key, label in (("idle_pass_ms_median", "idle pass"), ("trim_10pct_ms_median", "trim 10 % (count)"),
                       ("trim_memory_ms_median", "trim 10 % (memory)"), ("usage_ms_median", "usage (Σ sizes)"),
                       ("hit_estimate_ms_median", "hit estimate")):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries in the policy's group")
    ax.set_ylabel("ms per call (median)")
    ax.set_title("llmcache operator: eviction pass cost vs group size (Valkey, loopback)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the JSON and PNG (default benchmarks/results, the committed figures)")
    args = parser.parse_args()
    with EmbeddedRedis(with_search=False) as server:
        rows = [asyncio.run(bench_size(server.url, n, args.repeats)) for n in args.sizes]
    header = ["entries", "evicted/trim", "idle pass ms", "trim 10% ms", "trim mem ms", "usage ms", "hit est. ms"]
    print(" | ".join(f"{h:>13}" for h in header))
    for r in rows:
        print(" | ".join(f"{v:>13}" for v in (r["entries"], r["evicted_per_trim"], r["idle_pass_ms_median"],
                                               r["trim_10pct_ms_median"], r["trim_memory_ms_median"],
                                               r["usage_ms_median"], r["hit_estimate_ms_median"])))
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "operator_eviction", "machine": platform.platform(), "python": platform.python_version(),
           "entry_bytes": ENTRY_BYTES, "repeats": args.repeats, "rows": rows}
    (args.out / "operator_eviction_bench.json").write_text(json.dumps(out, indent=2))
    plot(rows, args.out / "operator_eviction_bench.png")
    print(f"wrote {args.out / 'operator_eviction_bench.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
