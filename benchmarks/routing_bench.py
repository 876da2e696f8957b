"""Routing misses across model-server replicas: round-robin vs consistent hashing vs the precise prefix router.

Workload: ``--tenants`` tenants (16), each with its own ``--system-tokens``-token system prompt
(850), asking ``--questions`` short questions each (12), interleaved (every round asks each
tenant once, in a shuffled order), ``--concurrency`` requests in flight (4), streamed, greedy,
``--max-tokens`` 4. Each request carries its tenant's API key; the proxy turns it into the
tenant's ``cache_salt``. Behind one proxy: ``--replicas`` model servers (2, the bundled
SmolLM2 on CPU, one thread each: the machine has 2 cores) whose prefix cache holds about half the system prompts each
(``--prefix-cache-bytes`` = tenants / 2 × prompt tokens × KV bytes per token).

Each phase starts its own model servers (a cold prefix cache each), its own proxy and its own
tenant salt. Sharing the servers across phases is not the same room: under GDSF eviction a
previous phase's prompts, each used a dozen times, outlive a new phase's once-used ones for a
while, which cost a later phase whole prompts (one run: 0.684 cached, 61 requests placed anew).
Phases:

- ``round-robin`` — what a Service's spread gives today (``--routing round-robin``);
- ``hash``        — consistent hashing of the prompt's prefix, no cache state (approximate);
- ``prefix``      — the precise router: the replica holding the longest cached prefix, weighed
                    against load (``--routing prefix``, the default).

Then a ``dynamic`` phase with new tenants: the proxy reads
its replicas from a ``file:`` source listing two of them; the third is added to the file
mid-run (how long until it serves a request?), later another one is killed with SIGKILL
(do requests that had not been sent to it see any error?).

Printed side by side: cached-token fraction (Σ ``cached_tokens`` / Σ ``prompt_tokens`` as the
model servers report them), TTFT p50/p90 (client side, to the first streamed token),
throughput, requests per replica. Targets (issue 21): prefix cached fraction ≥ 0.85 and ≥ 1.5×
round-robin, TTFT p90 ≥ 3× better than round-robin, no replica > 60 % of the requests, an added
replica served within 5 s, no client error after a kill for requests not yet sent to it.

Usage::

    .venv/bin/python benchmarks/routing_bench.py
    .venv/bin/python benchmarks/routing_bench.py --quick        # 8 tenants x 4 questions, 2 replicas

Writes ``benchmarks/results/routing_bench.json`` and ``.png`` (``--out`` to change the folder).
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp

from llmcache.redis_server import EmbeddedRedis, free_port

RESULTS = Path(__file__).resolve().parent / "results"
LLMCACHE = [sys.executable, "-m", "llmcache"]
KV_BYTES_PER_TOKEN = 46_080  # SmolLM2-135M, float32: 2 x 30 layers x 3 KV heads x 64 x 4 B (llmcache kv-estimate)
TEMPLATE_TOKENS = 40  # chat template and question around the system prompt

_COMPANIES = ["Acme Cloud", "Borealis Bank", "Cobalt Health", "Dune Logistics", "Ember Energy", "Fjord Foods",
              "Granite Games", "Harbor Hotels", "Indigo Insurance", "Juniper Jets", "Kestrel Kitchens",
              "Lumen Labs", "Meadow Media", "Nimbus Networks", "Orchid Optics", "Pebble Pay", "Quartz Quarry",
              "Raven Retail", "Saffron Spa", "Tundra Travel", "Umber Utilities", "Velvet Venues", "Willow Wine",
              "Xenon Xray", "Yonder Yachts", "Zephyr Zoos"]
_RULES = [
    "Agents greet the customer by name and confirm the account identifier before discussing billing.",
    "Refunds for duplicate charges go back to the original payment method within five business days.",
    "Storage quotas on the team plan stop at ten terabytes; the enterprise plan has no fixed quota.",
    "Nightly backups run at two in the morning and are kept for thirty days on every paid plan.",
    "Long jobs belong in the batch queue: interactive sessions end after fifteen minutes of work.",
    "Never ask for a full card number or a password; send the customer to the billing portal instead.",
    "Outages are announced on the status page; link to it before offering any credit for downtime.",
    "Escalate to a human when the customer reports data loss, a security incident or a legal threat.",
    "Invoices are issued on the first day of the month and are payable within thirty days.",
    "Price changes are announced sixty days ahead by email to every account owner.",
    "Accessibility requests are answered within one business day by the dedicated team.",
    "Data exports are prepared within forty-eight hours and stay downloadable for one week.",
]
_TOPICS = ["a refund", "my backup", "the storage quota", "a job timeout", "my invoice", "the status page",
           "single sign-on", "key rotation", "a plan upgrade", "data export", "a downgrade", "tax numbers",
           "egress prices", "certificates", "DNS records", "support hours", "rate limits", "webhooks",
           "log retention", "regions", "the free tier", "team invites", "audit logs", "billing dates"]


def system_prompt(tenant: int, target_tokens: int) -> str:
    """Tenant ``tenant``'s own policy text, about ``target_tokens`` tokens (≈ 4.6 characters a SmolLM2 token)."""
    rng = random.Random(tenant)
    company = _COMPANIES[tenant % len(_COMPANIES)] + (f" {tenant // len(_COMPANIES) + 1}" if tenant >= 26 else "")
    parts = [f"You are the support assistant of {company}, customer number {1000 + tenant}. "
             "Follow the policy below exactly and answer in one short sentence."]
    section = 1
    while sum(len(p) for p in parts) < target_tokens * 4.6:
        rules = rng.sample(_RULES, 4)
        parts.append(f"Section {section} of the {company} policy. " + " ".join(rules))
        section += 1
    return "\n".join(parts)


def question(tenant: int, i: int) -> str:
    rng = random.Random(tenant * 1000 + i)
    return f"Question {i + 1}: what does the policy say about {rng.choice(_TOPICS)}?"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def start_model_server(logs: Path, *, prefix_cache_bytes: int, num_threads: int) -> Proc:
    port = free_port()
    log = logs / f"model-server-{port}.log"
    proc = subprocess.Popen([*LLMCACHE, "model-server", "--listen", f"127.0.0.1:{port}", "--model", "default",
                             "--device", "cpu", "--num-threads", str(num_threads),
                             "--prefix-cache-bytes", str(prefix_cache_bytes), "--no-enable-embeddings"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return Proc(f"http://127.0.0.1:{port}", proc, log)


def start_proxy(logs: Path, *, upstreams: list[str], routing: str, redis_url: str, salt: str,
                refresh_s: float = 2.0) -> Proc:
    port = free_port()
    log = logs / f"proxy-{routing}-{port}.log"
    args = [*LLMCACHE, "proxy", "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url, "--mode", "exact",
            "--routing", routing, "--tenant-salt", salt, "--upstream-refresh-seconds", str(refresh_s),
            "--upstream-timeout-seconds", "900"]
    for u in upstreams:
        args += ["--upstream", u]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Proc(f"http://127.0.0.1:{port}", proc, log)


async def wait_ready(http: aiohttp.ClientSession, procs: list[Proc], path: str, deadline_s: float = 600) -> None:
    deadline = time.monotonic() + deadline_s
    for p in procs:
        while True:
            if p.proc.poll() is not None:
                raise SystemExit(f"{p.url} exited; see {p.log}")
            try:
                async with http.get(p.url + path, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{p.url} not ready in time; see {p.log}")
            await asyncio.sleep(0.5)


async def metric(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> dict[str, float]:
    """``{label set → value}`` of metric ``name`` at ``url``/metrics."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                out[head] = float(value)
    return out


# ---------------------------------------------------------------- workload


@dataclass
class Result:
    tenant: int
    question: int
    started: float
    ttft_s: float | None = None
    total_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Workload:
    tenants: list[int]
    questions: int
    system_tokens: int
    max_tokens: int
    seed: int
    order: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for i in range(self.questions):
            rnd = list(self.tenants)
            rng.shuffle(rnd)
            self.order.extend((t, i) for t in rnd)
        self.prompts = {t: system_prompt(t, self.system_tokens) for t in self.tenants}


async def one(http: aiohttp.ClientSession, proxy: str, w: Workload, tenant: int, i: int) -> Result:
    res = Result(tenant, i, time.monotonic())
    body = {"model": "default", "temperature": 0, "max_tokens": w.max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": w.prompts[tenant]},
                         {"role": "user", "content": question(tenant, i)}]}
    try:
        async with http.post(proxy + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer sk-bench-tenant-{tenant}"}) as r:
            if r.status != 200:
                res.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                return res
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.error = str(chunk["error"])[:200]
                    return res
                if res.ttft_s is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", ())):
                    res.ttft_s = time.monotonic() - res.started
                usage = chunk.get("usage")
                if usage:
                    res.prompt_tokens = usage["prompt_tokens"]
                    res.completion_tokens = usage["completion_tokens"]
                    res.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        res.total_s = time.monotonic() - res.started
        if res.ttft_s is None:
            res.ttft_s = res.total_s
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:200]
    return res


async def run_workload(http: aiohttp.ClientSession, proxy: str, w: Workload, concurrency: int,
                       on_progress: Any = None) -> list[Result]:
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in w.order:
        queue.put_nowait(item)
    results: list[Result] = []

    async def worker() -> None:
        while not queue.empty():
            tenant, i = queue.get_nowait()
            results.append(await one(http, proxy, w, tenant, i))
            if on_progress is not None:
                await on_progress(len(results))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def summarize(results: list[Result], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    prompt = sum(r.prompt_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    # After each tenant's first question (cold for every router alike): what routing keeps.
    warm = [r for r in ok if r.question > 0]
    warm_prompt = sum(r.prompt_tokens for r in warm)
    warm_ttfts = [r.ttft_s for r in warm if r.ttft_s is not None]
    return {
        "requests": len(results), "errors": len(results) - len(ok),
        "cached_token_fraction": sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0,
        "ttft_p50_s": pct(ttfts, 0.5), "ttft_p90_s": pct(ttfts, 0.9),
        "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None,
        "warm_cached_token_fraction": sum(r.cached_tokens for r in warm) / warm_prompt if warm_prompt else 0.0,
        "warm_ttft_p50_s": pct(warm_ttfts, 0.5), "warm_ttft_p90_s": pct(warm_ttfts, 0.9),
        "prompt_tokens_mean": prompt / len(ok) if ok else 0.0,
        "prompt_tokens_min": min((r.prompt_tokens for r in ok), default=0),
        "throughput_rps": len(ok) / wall_s if wall_s else 0.0,
        "throughput_prompt_tok_s": prompt / wall_s if wall_s else 0.0,
        "wall_s": wall_s,
        "samples": [[r.tenant, r.question, r.prompt_tokens, r.cached_tokens, round(r.ttft_s, 4)]
                    for r in ok if r.ttft_s is not None],
        "samples_columns": ["tenant", "question", "prompt_tokens", "cached_tokens", "ttft_s"],
    }


async def per_replica(http: aiohttp.ClientSession, proxy: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for head, value in (await metric(http, proxy, "llmcache_route_requests_total")).items():
        replica = head.split('replica="', 1)[1].split('"', 1)[0]
        counts[replica] = counts.get(replica, 0.0) + value
    return counts


# ---------------------------------------------------------------- phases


async def comparison_phase(http: aiohttp.ClientSession, args: argparse.Namespace, logs: Path, redis_url: str,
                           routing: str, w: Workload, servers: list[Proc]) -> dict[str, Any]:
    proxy = start_proxy(logs, upstreams=[s.url for s in servers], routing=routing, redis_url=redis_url,
                        salt=f"bench-{routing}-{time.time_ns()}")
    await wait_ready(http, [proxy], "/readyz")
    await asyncio.sleep(1.0)  # the proxy's first state polls (prefix routing falls back to hashing until then)
    print(f"[{routing}] {len(w.order)} requests over {len(servers)} replicas", flush=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()

    async def progress(n: int) -> None:
        if n % max(1, len(w.order) // 8) == 0:
            print(f"  [{routing}] {n}/{len(w.order)} in {time.monotonic() - started:.0f}s", flush=True)

    results = await run_workload(http, proxy.url, w, args.concurrency, progress)
    summary = summarize(results, time.monotonic() - started)
    # The machine is shared: how busy it was, so phases can be compared knowingly.
    summary["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    summary["requests_per_replica"] = await per_replica(http, proxy.url)
    chosen_by: dict[str, float] = {}
    for head, value in (await metric(http, proxy.url, "llmcache_route_requests_total")).items():
        by = head.split('chosen_by="', 1)[1].split('"', 1)[0]
        chosen_by[by] = chosen_by.get(by, 0.0) + value
    summary["chosen_by"] = chosen_by
    summary["predicted_cached_tokens"] = sum((await metric(http, proxy.url,
                                                           "llmcache_route_predicted_cached_tokens_total")).values())
    summary["reported_cached_tokens"] = sum((await metric(http, proxy.url,
                                                          "llmcache_route_reported_cached_tokens_total")).values())
    proxy.stop()
    return summary


async def dynamic_phase(http: aiohttp.ClientSession, args: argparse.Namespace, logs: Path, redis_url: str,
                        servers: list[Proc], w: Workload) -> dict[str, Any]:
    """Prefix routing from a file: source; add the last replica mid-run, later SIGKILL the first."""
    listing = logs / "upstreams"
    listing.write_text("\n".join(s.url for s in servers[:-1]) + "\n")
    proxy = start_proxy(logs, upstreams=[f"file:{listing}"], routing="prefix", redis_url=redis_url,
                        salt=f"bench-dynamic-{time.time_ns()}", refresh_s=args.refresh_seconds)
    await wait_ready(http, [proxy], "/readyz")
    added, victim = servers[-1], servers[0]
    out: dict[str, Any] = {"added_replica": added.url, "killed_replica": victim.url}
    events: dict[str, float] = {}
    n_total = len(w.order)

    async def admitted_by(url: str) -> float:
        """Prompt tokens the replica has admitted: it moves when a request arrives, not when it ends."""
        return sum((await metric(http, url, "llmcache_model_prompt_tokens_total")).values())

    base_added = await admitted_by(added.url)
    add_after = max(2, len(w.tenants) // 3)  # early in the first round: new prefixes are still arriving

    async def progress(n: int) -> None:
        if "add" not in events and n >= add_after:
            listing.write_text("\n".join(s.url for s in servers) + "\n")
            events["add"] = time.monotonic()
            print(f"  [dynamic] added {added.url} to the upstream file", flush=True)
        if "kill" not in events and n >= n_total // 2:
            victim.stop(signal.SIGKILL)
            events["kill"] = time.monotonic()
            print(f"  [dynamic] killed {victim.url} (SIGKILL)", flush=True)

    async def routable() -> float:
        return sum((await metric(http, proxy.url, "llmcache_route_replicas", state="routable")).values())

    async def watch() -> None:
        while "first_on_added" not in events:
            if "add" in events and "routable" not in events and await routable() >= len(servers):
                events["routable"] = time.monotonic()
            if "add" in events and await admitted_by(added.url) > base_added:
                events["first_on_added"] = time.monotonic()
                events.setdefault("routable", events["first_on_added"])
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    started = time.monotonic()
    results = await run_workload(http, proxy.url, w, args.concurrency, progress)
    watcher.cancel()
    summary = summarize(results, time.monotonic() - started)
    kill_t = events.get("kill", float("inf"))
    after = [r for r in results if r.started >= kill_t]
    during = [r for r in results if r.started < kill_t and r.started + (r.total_s or 1e9) > kill_t]
    out.update(summary)
    out["added_replica_first_request_s"] = (events["first_on_added"] - events["add"]
                                            if "first_on_added" in events and "add" in events else None)
    # The workload is a closed loop of slow requests: after the replica is routable, the next
    # request may start seconds later. How many started in between and went elsewhere says
    # whether routing, not the workload, delayed it.
    out["added_replica_routable_s"] = (events["routable"] - events["add"]
                                       if "routable" in events and "add" in events else None)
    out["requests_started_after_routable_before_first_on_added"] = sum(
        1 for r in results if events.get("routable", float("inf")) <= r.started < events.get("first_on_added", 0.0))
    out["requests_started_after_kill"] = len(after)
    out["errors_after_kill"] = sum(1 for r in after if r.error is not None)
    out["requests_in_flight_at_kill"] = len(during)
    out["errors_in_flight_at_kill"] = sum(1 for r in during if r.error is not None)
    out["error_samples"] = [r.error for r in results if r.error][:5]
    out["requests_per_replica"] = await per_replica(http, proxy.url)
    proxy.stop()
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = ["round-robin", "hash", "prefix"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    colors = ["#9e9e9e", "#64b5f6", "#2e7d32"]
    axes[0].bar(phases, [summary[p]["cached_token_fraction"] for p in phases], color=colors)
    axes[0].set_title("cached-token fraction")
    axes[0].set_ylim(0, 1)
    x = range(len(phases))
    for shift, q, color in ((-0.2, "p50", "#90caf9"), (0.2, "p90", "#1565c0")):
        axes[1].bar([i + shift for i in x], [summary[p][f"ttft_{q}_s"] for p in phases], width=0.4, label=q,
                    color=color)
    axes[1].set_xticks(list(x), phases)
    axes[1].set_title("TTFT (s, client side)")
    axes[1].legend()
    axes[2].bar(phases, [summary[p]["throughput_rps"] for p in phases], color=colors)
    axes[2].set_title("throughput (requests/s)")
    bottoms = [0.0] * len(phases)
    for k in range(max(len(summary[p]["requests_per_replica"]) for p in phases)):
        vals = []
        for p in phases:
            counts = sorted(summary[p]["requests_per_replica"].values(), reverse=True)
            vals.append(counts[k] / sum(counts) if k < len(counts) else 0.0)
        axes[3].bar(phases, vals, bottom=bottoms, label=f"replica {k + 1} (busiest first)")
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    axes[3].axhline(0.6, color="red", lw=0.8, ls="--")
    axes[3].set_title("share of requests per replica")
    axes[3].legend(fontsize=7)
    fig.suptitle(f"routing_bench: {summary['config']['tenants']} tenants x {summary['config']['questions']} questions, "
                 f"{summary['config']['replicas']} SmolLM2 replicas on CPU", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="routing_bench_"))
    redis = EmbeddedRedis().start()
    summary: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                           "load_avg_at_start": os.getloadavg()}}
    servers: list[Proc] = []
    try:
        timeout = aiohttp.ClientTimeout(total=1800, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
            w = Workload(list(range(args.tenants)), args.questions, args.system_tokens, args.max_tokens, args.seed)
            budget = int(len(w.tenants) / 2 * (args.system_tokens + TEMPLATE_TOKENS) * KV_BYTES_PER_TOKEN)
            summary["config"]["prefix_cache_bytes_per_replica"] = budget

            async def fresh_servers() -> list[Proc]:
                for s in servers:
                    s.stop()
                servers[:] = [start_model_server(logs, prefix_cache_bytes=budget, num_threads=args.num_threads)
                              for _ in range(args.replicas)]
                print(f"starting {args.replicas} model servers, prefix cache {budget / 2**20:.0f} MiB each "
                      f"(about {len(w.tenants) // 2} of the {len(w.tenants)} system prompts)", flush=True)
                await wait_ready(http, servers, "/healthz")
                return servers

            for routing in args.phases:
                result = await comparison_phase(http, args, logs, redis.url, routing, w, await fresh_servers())
                summary[routing] = result
                print(f"  [{routing}] cached {result['cached_token_fraction']:.3f}  "
                      f"TTFT p50 {result['ttft_p50_s']:.2f}s p90 {result['ttft_p90_s']:.2f}s  "
                      f"{result['throughput_rps']:.2f} req/s  errors {result['errors']}  "
                      f"per replica {sorted(result['requests_per_replica'].values(), reverse=True)}", flush=True)
            if not args.skip_dynamic:
                dyn = Workload(list(range(args.tenants, args.tenants + args.dynamic_tenants)), args.dynamic_questions,
                               args.system_tokens, args.max_tokens, args.seed + 1)
                summary["dynamic"] = await dynamic_phase(http, args, logs, redis.url, await fresh_servers(), dyn)
    finally:
        for s in servers:
            s.stop()
        redis.stop()
    summary["logs"] = str(logs)
    return summary


def report(summary: dict[str, Any]) -> None:
    rr, ch, pr = summary["round-robin"], summary["hash"], summary["prefix"]
    print("\n                      round-robin     hash     prefix")
    for key, fmt in (("cached_token_fraction", "{:>12.3f}"), ("ttft_p50_s", "{:>12.2f}"), ("ttft_p90_s", "{:>12.2f}"),
                     ("warm_cached_token_fraction", "{:>12.3f}"), ("warm_ttft_p50_s", "{:>12.2f}"),
                     ("warm_ttft_p90_s", "{:>12.2f}"), ("throughput_rps", "{:>12.3f}"),
                     ("prompt_tokens_mean", "{:>12.0f}"), ("errors", "{:>12d}")):
        print(f"{key:<22}" + "".join(fmt.format(p[key]) for p in (rr, ch, pr)))
    for name, p in (("round-robin", rr), ("hash", ch), ("prefix", pr)):
        counts = sorted(p["requests_per_replica"].values(), reverse=True)
        print(f"requests per replica  {name:<12} {[int(c) for c in counts]}  "
              f"busiest share {counts[0] / sum(counts):.2f}")
    derived = {
        "prefix_vs_round_robin_cached": pr["cached_token_fraction"] / max(rr["cached_token_fraction"], 1e-9),
        "round_robin_vs_prefix_ttft_p90": rr["ttft_p90_s"] / pr["ttft_p90_s"],
        "round_robin_vs_prefix_warm_ttft_p90": rr["warm_ttft_p90_s"] / pr["warm_ttft_p90_s"],
        "prefix_busiest_replica_share": (max(pr["requests_per_replica"].values())
                                         / sum(pr["requests_per_replica"].values())),
    }
    if "dynamic" in summary:
        d = summary["dynamic"]
        derived.update({k: d[k] for k in ("added_replica_routable_s", "added_replica_first_request_s",
                                          "requests_started_after_routable_before_first_on_added", "errors_after_kill",
                                          "requests_started_after_kill", "errors_in_flight_at_kill",
                                          "requests_in_flight_at_kill")})
    summary["derived"] = derived
    print("\n" + "\n".join(f"{k:<36} {v}" for k, v in derived.items()))
    targets = {
        "prefix cached fraction >= 0.85": pr["cached_token_fraction"] >= 0.85,
        "prefix cached >= 1.5x round-robin": derived["prefix_vs_round_robin_cached"] >= 1.5,
        "TTFT p90 >= 3x better than round-robin": derived["round_robin_vs_prefix_ttft_p90"] >= 3,
        "no replica > 60% of requests (prefix)": derived["prefix_busiest_replica_share"] <= 0.6,
        "warm (2nd question on): prefix cached >= 0.85": pr["warm_cached_token_fraction"] >= 0.85,
        "warm: TTFT p90 >= 3x better than round-robin": derived["round_robin_vs_prefix_warm_ttft_p90"] >= 3,
    }
    if "dynamic" in summary:
        d = summary["dynamic"]
        targets["added replica served within 5 s"] = (d["added_replica_first_request_s"] is not None
                                                      and d["added_replica_first_request_s"] <= 5)
        targets["no client error after a kill"] = d["errors_after_kill"] == 0
    summary["targets"] = targets
    print("\n" + "\n".join(f"{'met ' if ok else 'MISS'}  {name}" for name, ok in targets.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--tenants", type=int, default=16)
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--system-tokens", type=int, default=850)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--num-threads", type=int, default=1, help="torch threads per model server")
    ap.add_argument("--dynamic-tenants", type=int, default=8)
    ap.add_argument("--dynamic-questions", type=int, default=2)
    ap.add_argument("--refresh-seconds", type=float, default=2.0, help="the dynamic phase's --upstream-refresh-seconds")
    ap.add_argument("--skip-dynamic", action="store_true")
    ap.add_argument("--phases", nargs="+", default=["round-robin", "hash", "prefix"],
                    choices=["round-robin", "hash", "prefix"], help="comparison phases, in this order")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="8 tenants x 4 questions, 2 replicas (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.tenants, args.questions, args.replicas, args.dynamic_tenants, args.dynamic_questions = 8, 4, 2, 6, 2
    summary = asyncio.run(main_async(args))
    complete = sorted(args.phases) == ["hash", "prefix", "round-robin"]
    if complete:
        report(summary)
    name = "routing_bench_quick" if args.quick else "routing_bench"
    if not complete:
        name += "_" + "_".join(args.phases)  # a partial run never overwrites the comparison
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if complete:
        plot(summary, args.out / f"{name}.png")
    print(f"\nwrote {args.out / (name + '.json')} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
