"""Continuous batching side by side: our model server (batching on / off) vs `transformers serve` (CB on).

The same streamed, greedy OpenAI chat requests go to each server, one server at a time,
in one run, on the same machine:

- ``ours-batched``   — ``llmcache model-server`` (continuous batching, radix prefix cache);
- ``ours-unbatched`` — the same with ``--no-enable-batching`` (one forward pass per
  sequence per step: the server before batching);
- ``transformers``   — ``transformers serve --continuous-batching`` (paged attention),
  serving the same dequantised SmolLM2 weights, saved to a temporary directory because
  ``transformers serve`` cannot read the bundled GGUF's config.

Workloads (``--requests`` at ``--concurrency``, ``--max-tokens`` each):

1. ``distinct`` — distinct prompts;
2. ``shared-system`` — the same with a shared ~1k-token system prompt (``--system-tokens``).

``ours-unbatched`` runs workload 1 only unless ``--baseline-workloads`` says otherwise: it is
the slow baseline (about half an hour for 64 requests on a shared 2-core machine) and only
workload 1 has a goal that refers to it. Servers run in ``--servers`` order (the peer
first, so the comparison that matters is complete even if the run is cut short), and the
JSON is rewritten after each server.

Printed per server and workload: aggregate output tokens/s, TTFT p50/p99, inter-token
latency p50/p99 (gaps between streamed content chunks as the client sees them), and the
cached-token share (``usage.prompt_tokens_details.cached_tokens`` / prompt tokens; our
servers run with ``--report-cached-tokens always``; ``transformers serve`` reports none).
Every server gets the same torch thread count (``--threads``).

    python benchmarks/batch_bench.py                         # the issue's workloads, CPU fp32
    python benchmarks/batch_bench.py --requests 8 --max-tokens 8 --out /tmp/bb   # a quick look

Writes ``batch_bench_<device>.json`` and ``.png`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefix_bench import pct, system_prompt

from llmcache.redis_server import free_port

RESULTS = Path(__file__).resolve().parent / "results"
_SUBJECTS = ["a lighthouse keeper", "a lost robot", "a desert caravan", "a mountain village", "a deep-sea diver",
             "a clockmaker", "a night train", "a honeybee colony", "a chess prodigy", "a volcano observatory",
             "a river ferry", "an old library", "a space station cook", "a fox and a crow", "a glass blower",
             "a winter market"]
_ASKS = ["Write a short story about {s}.", "Describe a day in the life of {s}.", "Explain what {s} teaches us.",
         "Write a letter from {s} to a friend."]


def distinct_prompts(n: int) -> list[list[dict[str, str]]]:
    """``n`` different user prompts that each invite a long answer."""
    return [[{"role": "user",
              "content": _ASKS[(i // len(_SUBJECTS)) % len(_ASKS)].format(s=_SUBJECTS[i % len(_SUBJECTS)])
              + f" (request {i})"}] for i in range(n)]


def shared_prompts(n: int, system: str) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": system}, *conv] for conv in distinct_prompts(n)]


async def one_request(http: aiohttp.ClientSession, url: str, model: str, messages: list[dict[str, str]],
                      max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    stamps: list[float] = []
    usage: dict[str, Any] | None = None
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return {"status": resp.status, "error": (await resp.text())[:300]}
        buf = b""
        async for raw in resp.content.iter_any():
            buf += raw
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ").strip()
                if not data or data == b"[DONE]":
                    continue
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = obj["usage"]
                for c in obj.get("choices") or []:
                    if (c.get("delta") or {}).get("content"):
                        stamps.append(time.perf_counter())
    end = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens") or len(stamps)
    details = (usage or {}).get("prompt_tokens_details") or {}
    return {"status": 200, "started": started, "end": end, "ttft_s": (stamps[0] - started) if stamps else end - started,
            "itl_s": [b - a for a, b in itertools.pairwise(stamps)], "tokens": tokens,
            "prompt_tokens": (usage or {}).get("prompt_tokens"), "cached_tokens": details.get("cached_tokens")}


async def run_workload(url: str, model: str, convs: list[list[dict[str, str]]], *, concurrency: int,
                       max_tokens: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        async def bounded(conv: list[dict[str, str]]) -> dict[str, Any]:
            async with sem:
                return await one_request(http, url, model, conv, max_tokens)

        started = time.perf_counter()
        rows = await asyncio.gather(*(bounded(c) for c in convs))
        wall = time.perf_counter() - started
    ok = [r for r in rows if r["status"] == 200]
    itl = [x for r in ok for x in r["itl_s"]]
    ttft = [r["ttft_s"] for r in ok]
    prompt = sum(r["prompt_tokens"] or 0 for r in ok)
    cached = [r["cached_tokens"] for r in ok if r["cached_tokens"] is not None]
    return {
        "requests": len(rows), "ok": len(ok), "errors": [r.get("error") for r in rows if r["status"] != 200][:3],
        "wall_s": wall, "output_tokens": sum(r["tokens"] for r in ok),
        "output_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_s": pct(ttft, 0.5) if ttft else None, "ttft_p99_s": pct(ttft, 0.99) if ttft else None,
        "itl_p50_s": pct(itl, 0.5) if itl else None, "itl_p99_s": pct(itl, 0.99) if itl else None,
        "cached_share": (sum(cached) / prompt) if cached and prompt else None,
        "mean_output_tokens": statistics.fmean(r["tokens"] for r in ok) if ok else 0,
    }


def export_weights(dest: Path) -> None:
    """The bundled GGUF, dequantised to fp32, as a plain transformers directory (for `transformers serve`)."""
    from llmcache.model_server import loader

    loaded = loader.load_model("default", device="cpu", dtype="float32")
    model = loaded.model
    model.hf_quantizer = None  # the weights are plain fp32 tensors by now; only the flag blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(dest)
    loaded.tokenizer.save_pretrained(dest)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}; see its log")
        for path in ("/healthz", "/health"):
            try:
                with urllib.request.urlopen(url + path, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every server (same for all)")
    ap.add_argument("--servers", default="transformers,ours-batched,ours-unbatched")
    ap.add_argument("--workloads", default="distinct,shared-system")
    ap.add_argument("--baseline-workloads", default="distinct", help="workloads of ours-unbatched")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    servers = args.servers.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "LLMCACHE_NUM_THREADS": str(args.threads), "LLMCACHE_ENABLE_EMBEDDINGS": "false"}
    from transformers import AutoTokenizer

    workdir = Path(tempfile.mkdtemp(prefix="batch_bench_"))
    weights = workdir / "smollm2-135m-fp32"
    print("exporting the bundled SmolLM2 weights (fp32) for transformers serve …", flush=True)
    export_weights(weights)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    system = system_prompt(tokenizer, args.system_tokens)
    workloads = {"distinct": distinct_prompts(args.requests), "shared-system": shared_prompts(args.requests, system)}
    chosen = {w: workloads[w] for w in args.workloads.split(",")}
    print(f"workloads: {args.requests} requests, {args.concurrency} concurrent, max_tokens {args.max_tokens}, "
          f"system prompt {len(tokenizer(system)['input_ids'])} tokens, threads {args.threads}", flush=True)

    py = [sys.executable, "-m", "llmcache", "model-server", "--model", "default", "--device", "cpu",
          "--dtype", "float32", "--served-model-name", "bench", "--report-cached-tokens", "always"]
    commands = {
        "ours-batched": py + ["--enable-batching", "--max-num-seqs", str(args.concurrency)],
        "ours-unbatched": py + ["--no-enable-batching", "--max-num-seqs", str(args.concurrency)],
        "transformers": [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
                         "--continuous-batching", "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1"],
    }
    results: dict[str, dict[str, Any]] = {}
    for name in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = commands[name] + (["--listen", f"127.0.0.1:{port}"] if name.startswith("ours")
                                else ["--port", str(port), str(weights)])
        model = "bench" if name.startswith("ours") else str(weights)
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            wait_healthy(url, proc, 600)
            asyncio.run(run_workload(url, model, [[{"role": "user", "content": "Hello"}]], concurrency=1,
                                     max_tokens=4))  # warm-up (lazy init, allocator)
            results[name] = {}
            mine = args.baseline_workloads.split(",") if name == "ours-unbatched" else list(chosen)
            for wname, convs in chosen.items():
                if wname not in mine:
                    continue
                print(f"  {name:15s} {wname:14s} …", end="", flush=True)
                r = asyncio.run(run_workload(url, model, convs, concurrency=args.concurrency,
                                             max_tokens=args.max_tokens))
                results[name][wname] = r
                print(f" {r['output_tokens_per_s']:7.1f} tok/s, TTFT p50 {fmt_ms(r['ttft_p50_s'])}, "
                      f"{r['ok']}/{r['requests']} ok, {r['wall_s']:.0f} s", flush=True)
                write_json(args, argv, results)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    print()
    print(f"{'server':15s} {'workload':14s} {'tok/s':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'ITL p50':>8s} "
          f"{'ITL p99':>8s} {'cached':>7s} {'ok':>6s}")
    for name, per in results.items():
        for wname, r in per.items():
            share = f"{r['cached_share']:.0%}" if r["cached_share"] is not None else "n/a"
            print(f"{name:15s} {wname:14s} {r['output_tokens_per_s']:8.1f} {fmt_ms(r['ttft_p50_s']):>9s} "
                  f"{fmt_ms(r['ttft_p99_s']):>9s} {fmt_ms(r['itl_p50_s']):>8s} {fmt_ms(r['itl_p99_s']):>8s} "
                  f"{share:>7s} {r['ok']:>3d}/{r['requests']}")
    shutil.rmtree(weights, ignore_errors=True)  # 540 MB of fp32 weights; the servers' logs stay in workdir
    print(f"server logs: {workdir}")
    derived = ratios(results)
    print()
    for k, v in derived.items():
        print(f"{k:52s} {v:.2f}x" if v is not None else f"{k:52s} n/a")
    json_path = write_json(args, argv, results)
    png_path = args.out / "batch_bench_cpu.png"
    plot(results, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def write_json(args: argparse.Namespace, argv: list[str] | None, results: dict[str, dict[str, Any]]) -> Path:
    payload = {"benchmark": "batch_bench", "command": " ".join(["python", "benchmarks/batch_bench.py",
                                                                *(argv if argv is not None else sys.argv[1:])]),
               "model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised)", "device": "cpu", "dtype": "float32",
               "threads": args.threads, "platform": platform.platform(), "cpus": os.cpu_count(),
               "load_avg": os.getloadavg(),
               "workload": {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                            "system_tokens": args.system_tokens},
               "results": results, "derived": ratios(results)}
    json_path = args.out / "batch_bench_cpu.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return json_path


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.0f}ms"


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(server: str, workload: str, key: str) -> float | None:
        return (results.get(server) or {}).get(workload, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "distinct: tok/s batched / unbatched (goal >= 5)": ratio(
            get("ours-batched", "distinct", "output_tokens_per_s"),
            get("ours-unbatched", "distinct", "output_tokens_per_s")),
        "distinct: tok/s batched / transformers (goal >= 1)": ratio(
            get("ours-batched", "distinct", "output_tokens_per_s"),
            get("transformers", "distinct", "output_tokens_per_s")),
        "shared-system: TTFT p50 transformers / batched (goal >= 5)": ratio(
            get("transformers", "shared-system", "ttft_p50_s"), get("ours-batched", "shared-system", "ttft_p50_s")),
        "shared-system: tok/s batched / transformers": ratio(
            get("ours-batched", "shared-system", "output_tokens_per_s"),
            get("transformers", "shared-system", "output_tokens_per_s")),
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    workloads = sorted({w for per in results.values() for w in per})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(workloads))]
        per = results[name]
        axes[0].bar(xs, [per.get(w, {}).get("output_tokens_per_s") or 0 for w in workloads], width, label=name)
        axes[1].bar(xs, [(per.get(w, {}).get("ttft_p50_s") or 0) * 1000 for w in workloads], width, label=name)
        axes[2].bar(xs, [(per.get(w, {}).get("itl_p50_s") or 0) * 1000 for w in workloads], width, label=name)
    for ax, title in zip(axes, ("aggregate output tokens/s", "TTFT p50 (ms, log)", "inter-token latency p50 (ms)")):
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(workloads))], workloads)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle("SmolLM2-135M, CPU fp32: continuous batching vs one pass per sequence vs transformers serve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
