"""Prefix KV cache benchmark: TTFT with the radix cache on, off (same server), and naive generate.

Workload A (shared): a ~1,000-token system prompt + 30 distinct ~20-token questions,
max_tokens 16, greedy, streamed through the OpenAI client against a real model server
on 127.0.0.1. Modes:

- ``cache-off``  — same server, each request sends ``prefix_cache: false``;
- ``cache-on``   — the first request fills the cache (a miss), the other 29 hit;
- ``naive``      — ``model.generate`` on the whole prompt each time (no server).

The three modes run interleaved question by question (rotating order), so a busy machine
slows them alike.

Workload B (0% shared): distinct prompts with no common prefix, cache on vs off
interleaved request by request, to show the cache's overhead when it never hits. The
server's own ``llmcache_model_prefix_cache_op_seconds`` histogram isolates the time
spent in lookups and inserts.

Greedy equality: the generated text of every question must be identical across modes.

Usage::

    python benchmarks/prefix_bench.py --device cpu --num-threads 1
    python benchmarks/prefix_bench.py --device cuda --model random-1b   # GPU: random ~1.2B Llama, bf16

Writes ``benchmarks/results/prefix_bench_<device>_<model>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai
import torch
from transformers.generation.streamers import BaseStreamer

from llmcache.model_server import handlers, loader
from llmcache.model_server.settings import ModelServerSettings, ModelSettings, PrefixCacheSettings
from llmcache.testing.threaded import serve_in_thread

RESULTS = Path(__file__).resolve().parent / "results"

_POLICY = [
    "Acme Cloud support policy, section {i}.",
    "Agents must greet the customer by name and confirm the account identifier before discussing billing.",
    "Refunds for duplicate charges are issued within five business days to the original payment method.",
    "Object storage buckets in the Team plan are limited to ten terabytes; Enterprise buckets are unlimited.",
    "Managed Postgres backups run nightly at 02:00 UTC and are retained for thirty days on every paid plan.",
    "Serverless functions time out after fifteen minutes; long jobs should use the batch queue instead.",
    "Never ask for a full card number or a password; direct the customer to the billing portal instead.",
    "Outages are announced on the status page; link to it before offering any credit for downtime.",
    "Escalate to a human engineer when the customer reports data loss, a security incident or legal threats.",
]
_TOPICS = ["refund", "backup", "bucket quota", "function timeout", "invoice", "CDN cache", "SSO login",
           "API key rotation", "Postgres upgrade", "status page", "data export", "plan downgrade", "VAT number",
           "egress pricing", "TLS certificate", "DNS record", "support hours", "rate limit", "webhook retry",
           "log retention", "region choice", "free tier", "team invite", "audit log", "billing date",
           "storage class", "snapshot restore", "IP allowlist", "custom domain", "account deletion"]
_OPENERS = ["Alpha", "Brisk", "Copper", "Dusky", "Ember", "Fjord", "Garnet", "Harbor", "Indigo", "Juniper",
            "Kestrel", "Lantern", "Meadow", "Nimbus", "Orchid", "Pebble", "Quartz", "Raven", "Saffron", "Tundra",
            "Umber", "Velvet", "Willow", "Xenon", "Yonder", "Zephyr", "Amber", "Basalt", "Cinder", "Delta"]


def system_prompt(tokenizer: Any, target_tokens: int) -> str:
    """Deterministic policy text of about ``target_tokens`` tokens."""
    parts: list[str] = ["You are the support assistant of Acme Cloud. Follow the policy below exactly."]
    i = 0
    while len(tokenizer(" ".join(parts))["input_ids"]) < target_tokens:
        parts.append(_POLICY[0].format(i=i + 1))
        parts.extend(_POLICY[1 + (i + k) % (len(_POLICY) - 1)] for k in range(3))
        i += 1
    return " ".join(parts)


def questions(n: int) -> list[str]:
    return [f"Customer {i + 101} asks: what exactly is your policy on {_TOPICS[i % len(_TOPICS)]} for my "
            f"Team plan account?" for i in range(n)]


def zero_shared_prompts(tokenizer: Any, n: int, target_tokens: int) -> list[str]:
    """Distinct prompts: different first word and a different sentence order each."""
    out = []
    for i in range(n):
        body = [_POLICY[1 + (i * 7 + k * (i % 5 + 1)) % (len(_POLICY) - 1)] for k in range(200)]
        text = f"{_OPENERS[i % len(_OPENERS)]} memo {i}:"
        k = 0
        while len(tokenizer(text)["input_ids"]) < target_tokens:
            text += " " + body[k % len(body)].replace("the", ["the", "this", "each", "our"][(i + k) % 4], 1)
            k += 1
        out.append(text + "\nSummary:")
    return out


def timed_stream(client: openai.OpenAI, *, chat_messages: list[dict[str, str]] | None = None,
                 prompt: str | None = None, max_tokens: int, prefix_cache: bool) -> dict[str, Any]:
    """One streamed greedy request; TTFT = first non-empty content delta as the client sees it."""
    started = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage = None
    kwargs: dict[str, Any] = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "stream": True,
                              "stream_options": {"include_usage": True}, "extra_body": {"prefix_cache": prefix_cache}}
    if chat_messages is not None:
        stream: Any = client.chat.completions.create(messages=chat_messages, **kwargs)
    else:
        stream = client.completions.create(prompt=prompt, **kwargs)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            piece = c.delta.content if chat_messages is not None else c.text
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - started
                text.append(piece)
    total = time.perf_counter() - started
    cached = usage.prompt_tokens_details.cached_tokens if usage and usage.prompt_tokens_details else 0
    return {"ttft_s": ttft if ttft is not None else total, "total_s": total, "text": "".join(text),
            "prompt_tokens": usage.prompt_tokens if usage else None, "cached_tokens": cached}


class _FirstToken(BaseStreamer):
    """Records when ``generate`` emits its first new token (its second ``put``; the first is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_at: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first_at is None:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def naive_generate(model: loader.LoadedModel, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """``model.generate`` on the whole prompt (what a server without prefix caching does)."""
    tok = model.tokenizer
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=model.device)
    streamer = _FirstToken()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                   do_sample=False, streamer=streamer, pad_token_id=tok.pad_token_id or 0)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    new = out[0, ids.shape[1]:].tolist()
    return {"ttft_s": (streamer.first_at or time.perf_counter()) - started, "total_s": total,
            "text": tok.decode(new, skip_special_tokens=True), "prompt_tokens": ids.shape[1], "cached_tokens": 0}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    ttft = [r["ttft_s"] for r in rows]
    return {"ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99), "ttft_mean_s": statistics.fmean(ttft),
            "total_s": sum(r["total_s"] for r in rows), "requests": len(rows),
            "cached_tokens": sum(r["cached_tokens"] for r in rows)}


def metric_sum(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default | random-1b | random-tiny | PATH")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 CPU, bf16 CUDA) | float32 | bfloat16 | float16")
    ap.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--overhead-prompts", type=int, default=20, help="0%%-shared prompts (each run on and off)")
    ap.add_argument("--overhead-tokens", type=int, default=500, help="length of each 0%%-shared prompt")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    model = loader.load_model(args.model, device=args.device, dtype=args.dtype, num_threads=args.num_threads)
    if model.tokenizer is None:
        print("prefix_bench needs a model with a tokenizer (not random-tiny)", file=sys.stderr)
        return 2
    settings = ModelServerSettings(
        model=ModelSettings(model=args.model, served_model_name=("bench",)),
        prefix_cache=PrefixCacheSettings(budget_bytes=None, budget_fraction=0.3), enable_embeddings=False)
    sys_text = system_prompt(model.tokenizer, args.system_tokens)
    qs = questions(args.questions)
    convs = [[{"role": "system", "content": sys_text}, {"role": "user", "content": q}] for q in qs]
    sys_tokens = len(model.tokenizer(sys_text)["input_ids"])
    q_tokens = statistics.fmean(len(model.tokenizer(q)["input_ids"]) for q in qs)
    print(f"workload: system prompt {sys_tokens} tokens, {len(qs)} questions of ~{q_tokens:.0f} tokens, "
          f"max_tokens {args.max_tokens}, {model.device}, {str(model.dtype).removeprefix('torch.')}, "
          f"threads {torch.get_num_threads()}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {}
    with serve_in_thread(handlers.create_app(settings, loaded=model), shutdown_timeout_s=300) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        # Warm-up (allocator, kernels) on an unrelated prompt, without touching the cache.
        timed_stream(client, chat_messages=[{"role": "user", "content": "Hello"}], max_tokens=4, prefix_cache=False)
        # Interleave the modes question by question (rotating their order) so that load on a
        # shared machine hits every mode alike; cache-off requests neither read nor fill the cache.
        if not args.skip_naive:
            naive_generate(model, [{"role": "user", "content": "Hello"}], 4)  # warm-up
        modes = ["cache-off", "cache-on"] + ([] if args.skip_naive else ["naive-generate"])
        for mode in modes:
            results[mode] = []
        for i, conv in enumerate(convs):
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                if mode == "naive-generate":
                    row = naive_generate(model, conv, args.max_tokens)
                else:
                    row = timed_stream(client, chat_messages=conv, max_tokens=args.max_tokens,
                                       prefix_cache=mode == "cache-on")
                results[mode].append(row)
            print(f"  q{i:02d} ttft ms: " + "  ".join(f"{m} {results[m][-1]['ttft_s'] * 1000:8.1f}" for m in modes)
                  + f"  cached {results['cache-on'][-1]['cached_tokens']}", flush=True)

        # 0%-shared overhead: interleave on/off per prompt so machine noise hits both alike.
        ops_before = metric_sum(url, "llmcache_model_prefix_cache_op_seconds_sum")
        over: dict[str, list[dict[str, Any]]] = {"zero-shared-on": [], "zero-shared-off": []}
        for i, p in enumerate(zero_shared_prompts(model.tokenizer, args.overhead_prompts, args.overhead_tokens)):
            order = (("zero-shared-on", True), ("zero-shared-off", False))
            for mode, use in order if i % 2 == 0 else order[::-1]:
                over[mode].append(timed_stream(client, prompt=p, max_tokens=args.max_tokens, prefix_cache=use))
            print(f"  zero-shared p{i:02d} on {over['zero-shared-on'][-1]['total_s']:.3f}s "
                  f"off {over['zero-shared-off'][-1]['total_s']:.3f}s "
                  f"cached {over['zero-shared-on'][-1]['cached_tokens']}", flush=True)
        cache_op_s = metric_sum(url, "llmcache_model_prefix_cache_op_seconds_sum") - ops_before
        results.update(over)

    summary = {mode: summarize(rows) for mode, rows in results.items()}
    off, on = summary["cache-off"], summary["cache-on"]
    on_warm = summarize(results["cache-on"][1:]) if len(results["cache-on"]) > 1 else on
    texts = {mode: [r["text"] for r in results[mode]] for mode in ("cache-off", "cache-on", "naive-generate")
             if mode in results}
    equal = sum(all(texts[m][i] == texts["cache-off"][i] for m in texts) for i in range(len(qs)))
    zs_on, zs_off = summary["zero-shared-on"], summary["zero-shared-off"]
    paired = [a["total_s"] / b["total_s"] for a, b in zip(over["zero-shared-on"], over["zero-shared-off"])]
    derived = {
        "ttft_speedup_p50_on_vs_off": off["ttft_p50_s"] / on["ttft_p50_s"],
        "ttft_speedup_p50_on_vs_naive": (summary["naive-generate"]["ttft_p50_s"] / on["ttft_p50_s"]
                                         if "naive-generate" in summary else None),
        "ttft_speedup_p50_warm_hits_vs_off": off["ttft_p50_s"] / on_warm["ttft_p50_s"],
        "total_speedup_on_vs_off": off["total_s"] / on["total_s"],
        "zero_shared_overhead_total_pct": 100.0 * (zs_on["total_s"] / zs_off["total_s"] - 1.0),
        "zero_shared_overhead_median_paired_pct": 100.0 * (statistics.median(paired) - 1.0),
        "zero_shared_cache_op_s": cache_op_s,
        "zero_shared_cache_op_pct_of_on_total": 100.0 * cache_op_s / zs_on["total_s"],
        "greedy_equal": equal,
        "greedy_equal_pct": 100.0 * equal / len(qs),
    }

    print()
    print(f"{'mode':18s} {'TTFT p50 ms':>12s} {'TTFT p99 ms':>12s} {'total s':>9s} {'cached tok':>11s}")
    for mode, s in summary.items():
        print(f"{mode:18s} {s['ttft_p50_s'] * 1000:12.1f} {s['ttft_p99_s'] * 1000:12.1f} {s['total_s']:9.2f} "
              f"{s['cached_tokens']:11d}")
    print()
    for k, v in derived.items():
        print(f"{k:42s} {v if v is None or isinstance(v, int) else round(v, 3)}")

    tag = f"{model.device.type}_{Path(args.model).name if os.sep in args.model else args.model}"
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "prefix_bench",
        "command": " ".join(["python", "benchmarks/prefix_bench.py", *(argv or sys.argv[1:])]),
        "model": args.model, "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
        "workload": {"system_tokens": sys_tokens, "questions": len(qs), "question_tokens_mean": q_tokens,
                     "max_tokens": args.max_tokens, "overhead_prompts": args.overhead_prompts,
                     "overhead_tokens": args.overhead_tokens},
        "summary": summary, "summary_cache_on_warm_hits": on_warm, "derived": derived,
        "requests": {mode: [{k: v for k, v in r.items() if k != "text"} for r in rows]
                     for mode, rows in results.items()},
    }
    json_path = args.out / f"prefix_bench_{tag}.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    png_path = args.out / f"prefix_bench_{tag}.png"
    plot(results, summary, derived, png_path, title=f"{args.model} on {model.device} ({payload['dtype']})")
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def plot(results: dict[str, list[dict[str, Any]]], summary: dict[str, dict[str, float]], derived: dict[str, Any],
         path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in ("naive-generate", "cache-off", "cache-on"):
        if mode in results:
            ax1.plot([r["ttft_s"] * 1000 for r in results[mode]], marker="o", ms=3, label=mode)
    ax1.set_yscale("log")
    ax1.set_xlabel("question #")
    ax1.set_ylabel("TTFT (ms, log)")
    ax1.set_title("Shared ~1k-token system prompt: TTFT per request")
    ax1.legend()
    modes = [m for m in ("naive-generate", "cache-off", "cache-on", "zero-shared-off", "zero-shared-on")
             if m in summary]
    ax2.bar(modes, [summary[m]["ttft_p50_s"] * 1000 for m in modes], color="tab:blue", label="p50")
    ax2.scatter(modes, [summary[m]["ttft_p99_s"] * 1000 for m in modes], color="tab:red", zorder=3, label="p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("TTFT (ms, log)")
    ax2.set_title(f"p50 speed-up on/off {derived['ttft_speedup_p50_on_vs_off']:.1f}x, "
                  f"0%-shared overhead {derived['zero_shared_overhead_total_pct']:+.1f}%")
    ax2.tick_params(axis="x", rotation=20)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
