"""Error-bounded semantic caching on a stream of blind-written prompt clusters.

    .venv/bin/python benchmarks/semantic_stream.py [--requests 12000]
        [--tenants 16] [--epoch 1000] [--deltas 0.01,0.05] [--static-thresholds 0.70,0.92]
        [--judges answer,noisy] [--noise 0.05] [--latency-requests 1000] [--out benchmarks/results]
        [--name semantic_stream]

The defaults (six proxies, 12 000 requests) take about 8 minutes on the shared 2-core machine at load ~10.

Data: ``benchmarks/data/semantic_stream_clusters.jsonl`` (124 clusters in 6 styles, written blind by
an author who had not read the verifier: a base prompt with its answer, 4–8 paraphrases, 2–5 hard
negatives each with its own answer). Nothing in the verifier or the error-bound model was tuned on it.

The stream (seeded): each request picks a tenant (API key) uniformly, a cluster by Zipf(1.0)
popularity, then a prompt of that cluster (the base twice as likely as each paraphrase or
negative). Each tenant's cache turns over every ``--epoch`` of its requests (its
``X-LLMCache-Namespace`` changes, as a TTL would), so prompts keep coming back as semantic
candidates; learning is per policy and survives the turnover. Repeats are exact hits.

Everything runs for real: Redis with the Query Engine, the stub upstream in meaning-class mode
(each prompt gets its cluster's answer, each negative its own: a semantic hit is wrong exactly when
the answer served is not the prompt's own), and one ``llmcache proxy`` process per configuration,
all fed the same stream side by side (each request to every proxy, the next when all answered; each
proxy its own key prefix; MiniLM served once by ``helpers/embed_server.py``, the sidecar's remote
embedder setup, so the machine's CPU goes to the proxies):

* static: the verifier at each ``--static-thresholds`` similarity (the lowest, 0.70, is the default
  policy); the higher thresholds in between are estimated from the lowest's run (its semantic hits at or above each
  threshold: an estimate, since a stricter cache would also have stored the requests it missed);
* bound δ, answer judge: ``--semantic-max-error-rate δ`` with the default judge (fresh vs cached answer);
* bound δ, noisy judge: ``--judge-url`` pointing at an oracle that flips ``--noise`` (5 %) of its
  judgements at random (an imperfect judge);
* bound δ, systematic noisy judge (first δ only; ``--judges answer,noisy,systematic``): the oracle
  misjudges a fixed 5 % of pairs, every time it sees them (a judge whose errors repeat, which asking
  again cannot fix).

Printed: semantic hits, wrong ones and the wrong share with its exact 95 % interval
(Clopper–Pearson), the semantic hit rate after warm-up (the stream's second half) beside the best
static threshold that meets δ on this stream, explorations (the extra upstream calls) against their
budget; then client latency p50 by status of the static verifier and the first bound, warm, in the
same run, one request at a time on a continuation of the stream (``--latency-requests``), alternating
which goes first. Writes ``<name>.json`` and ``<name>.png`` (hit rate and observed error rate over
the stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web

from llmcache import errorbound as eb
from llmcache.errorbound import beta_ppf
from llmcache.proxy.settings import DEFAULT_SIMILARITY_THRESHOLD
from llmcache.redis_server import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "semantic_stream_clusters.jsonl"
CHAT = "/v1/chat/completions"
ADMIN = "bench-admin"
MODEL = "stub-model"


# --------------------------------------------------------------------------- data and stream


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    cls: str
    """Meaning class: the cluster id for the base and paraphrases, ``<cluster>/n<i>`` for a negative."""
    answer: str
    kind: str
    """base, paraphrase or the negative's kind."""


def load_prompts(path: Path) -> tuple[list[list[Prompt]], dict[str, Prompt]]:
    clusters: list[list[Prompt]] = []
    by_text: dict[str, Prompt] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        cid = c["cluster_id"]
        base = c["base"]
        ps = [Prompt(base["prompt"], cid, base["answer"], "base")]
        ps += [Prompt(p, cid, base["answer"], "paraphrase") for p in c["paraphrases"]]
        ps += [Prompt(n["prompt"], f"{cid}/n{i}", n["answer"], n["kind"]) for i, n in enumerate(c["negatives"])]
        clusters.append(ps)
        for p in ps:
            by_text.setdefault(p.text, p)
    return clusters, by_text


@dataclass(frozen=True, slots=True)
class Request:
    tenant: int
    namespace: str
    prompt: Prompt


def make_stream(clusters: list[list[Prompt]], *, num_requests: int, num_tenants: int, epoch: int,
                seed: int) -> list[Request]:
    rng = random.Random(seed)
    order = list(range(len(clusters)))
    rng.shuffle(order)
    weights = [1.0 / (rank + 1) for rank in range(len(order))]
    offsets = [rng.randrange(epoch) for _ in range(num_tenants)]
    seen = [0] * num_tenants
    out = []
    for _ in range(num_requests):
        t = rng.randrange(num_tenants)
        cluster = clusters[rng.choices(order, weights)[0]]
        prompt = rng.choices(cluster, [2.0] + [1.0] * (len(cluster) - 1))[0]
        out.append(Request(t, f"t{t}-e{(seen[t] + offsets[t]) // epoch}", prompt))
        seen[t] += 1
    return out


# --------------------------------------------------------------------------- the judge oracle


_REQUEST = re.compile(r"^Request:\n(.*?)\n\n(?:Reference answer|Cached answer):\n", re.S)
_CACHED = re.compile(r"Cached answer:\n(.*?)(?:\n\nReference answer:\n|\n\nDoes the cached answer)", re.S)


class Oracle:
    """An OpenAI-compatible judge that knows the meaning classes and errs on purpose.

    ``mode``: ``random`` flips each judgement with probability ``noise``; ``systematic`` misjudges a
    fixed ``noise`` share of (request, cached answer) pairs, every time; ``clean`` never errs.
    """

    def __init__(self, by_text: dict[str, Prompt], *, mode: str, noise: float, seed: int) -> None:
        self.by_text = by_text
        self.by_answer = {p.answer: p.cls for p in by_text.values()}
        self.mode = mode
        self.noise = noise
        self.rng = random.Random(seed)
        self.num_calls = 0
        self.num_flipped = 0
        self.num_unknown = 0

    def truth(self, request: str, cached: str) -> bool | None:
        p = self.by_text.get(request)
        cls = self.by_answer.get(cached)
        if p is None or cls is None:
            return None
        return p.cls == cls

    def flip(self, request: str, cached: str) -> bool:
        if self.mode == "random":
            return self.rng.random() < self.noise
        if self.mode == "systematic":
            return random.Random(f"{request}\x00{cached}").random() < self.noise
        return False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.num_calls += 1
        m, c = _REQUEST.search(text), _CACHED.search(text)
        verdict = None if m is None or c is None else self.truth(m.group(1), c.group(1))
        if verdict is None:
            self.num_unknown += 1
            word = "unsure"
        else:
            if self.flip(m.group(1), c.group(1)):  # type: ignore[union-attr]
                verdict = not verdict
                self.num_flipped += 1
            word = "yes" if verdict else "no"
        return web.json_response({"id": "judge", "object": "chat.completion", "model": body.get("model"),
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": word},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


# --------------------------------------------------------------------------- processes


def _wait_http(url: str, *, timeout_s: float = 180.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Config:
    """One proxy of the run."""

    name: str
    kind: str
    """``static`` or ``bound``."""
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    """The verifier's similarity threshold (a bound's proxies keep the default: the bound decides after it)."""
    max_error_rate: float | None = None
    judge: str | None = None
    """``answer`` (the default judge), ``noisy``, ``systematic`` or ``oracle`` (an LLM judge the benchmark serves)."""
    prefix: str = ""
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    oracle: Oracle | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    latency: list[Outcome] = field(default_factory=list)
    """The latency phase (this proxy against its peer, one request at a time)."""
    bound: dict[str, Any] | None = None
    cells: dict[str, list[int]] = field(default_factory=dict)
    """What the bound learned: ``class|similarity`` → [seen, judged, wrong] (empty for static runs)."""


def start_proxy(cfg: Config, *, redis_url: str, upstream: str, embedder: str, judge_base: str,
                workdir: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "llmcache", "proxy", "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url,
            "--upstream", upstream, "--mode", "both", "--similarity-threshold", str(cfg.threshold),
            "--embedder", "remote", "--embedder-url", embedder, "--key-prefix", cfg.prefix,
            "--tenant-salt", "bench-salt", "--admin-token", ADMIN, "--semantic-timeout-ms", "30000",
            "--redis-timeout-ms", "1000", "--upstream-cache-salt", "off", "--log-level", "WARNING"]
    if cfg.max_error_rate is not None:
        args += ["--semantic-max-error-rate", str(cfg.max_error_rate)]
    if cfg.judge not in (None, "answer"):
        args += ["--judge-url", f"{judge_base}/judge/{cfg.prefix}"]
    log_path = workdir / f"{cfg.prefix}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        cfg.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    cfg.url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(cfg.url + "/readyz", proc=cfg.proc)
    except Exception:
        _stop(cfg.proc)
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise


# --------------------------------------------------------------------------- running a stream


@dataclass
class Outcome:
    status: str
    similarity: float | None
    correct: bool | None
    """For a semantic hit: was the answer served this prompt's own? ``None`` for other statuses."""
    latency_ms: float


async def send(http: aiohttp.ClientSession, url: str, req: Request) -> Outcome:
    body = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": req.prompt.text}]}
    headers = {"Authorization": f"Bearer sk-tenant-{req.tenant}", "X-LLMCache-Namespace": req.namespace}
    t0 = time.perf_counter()
    async with http.post(url + CHAT, json=body, headers=headers) as r:
        data = await r.json()
        status = r.headers.get("X-LLMCache-Status", "?")
        sim = r.headers.get("X-LLMCache-Similarity")
    latency_ms = (time.perf_counter() - t0) * 1000
    correct = None
    if status == "semantic-hit":
        correct = data["choices"][0]["message"]["content"] == req.prompt.answer
    return Outcome(status, float(sim) if sim else None, correct, latency_ms)


async def run_stream(http: aiohttp.ClientSession, configs: list[Config], stream: list[Request]) -> None:
    """Each request to every proxy at once; the next request only when all answered (order matters)."""
    t0 = time.monotonic()
    for i, req in enumerate(stream):
        outcomes = await asyncio.gather(*(send(http, c.url, req) for c in configs))
        for c, o in zip(configs, outcomes, strict=True):
            c.outcomes.append(o)
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1}/{len(stream)} in {time.monotonic() - t0:.0f} s: " + ", ".join(
                f"{c.name} {sum(o.status == 'semantic-hit' for o in c.outcomes)}" for c in configs), flush=True)


async def latency_phase(http: aiohttp.ClientSession, pair: list[Config], stream: list[Request]) -> dict[str, Any]:
    """The feature off and on, one request at a time, alternating which goes first: p50 by status."""
    for i, req in enumerate(stream):
        for c in pair if i % 2 == 0 else reversed(pair):
            c.latency.append(await send(http, c.url, req))
    out: dict[str, Any] = {}
    for status in ("hit", "semantic-hit", "miss"):
        p50s = [_p50([o.latency_ms for o in c.latency if o.status == status]) for c in pair]
        counts = [sum(o.status == status for o in c.latency) for c in pair]
        out[status] = {"off_p50_ms": p50s[0], "on_p50_ms": p50s[1], "off_n": counts[0], "on_n": counts[1],
                       "on_over_off": (p50s[1] / p50s[0]) if p50s[0] and p50s[1] else None}
    return out


def read_cells(redis_url: str, prefix: str) -> dict[str, list[int]]:
    client = redis.Redis.from_url(redis_url)
    try:
        state = eb.parse(client.hgetall(f"{prefix}:b:_default"))
    finally:
        client.close()
    return {f"{cls}|{eb.SIMILARITY_EDGES[b]:.2f}": [c.seen, c.judged, c.wrong]
            for (cls, b), c in sorted(state.cells.items())}


# --------------------------------------------------------------------------- figures


def clopper_pearson(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return lo, hi


def _p50(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def summarize(run: Config, *, window: int) -> dict[str, Any]:
    o = run.outcomes
    n = len(o)
    half = n // 2
    sem = [x for x in o if x.status == "semantic-hit"]
    wrong = sum(1 for x in sem if x.correct is False)
    lo, hi = clopper_pearson(wrong, len(sem))
    after = o[half:]
    sem_after = [x for x in after if x.status == "semantic-hit"]
    wrong_after = sum(1 for x in sem_after if x.correct is False)
    lookups = sum(1 for x in o if x.status in ("semantic-hit", "miss"))
    windows = []
    for start in range(0, n, window):
        w = o[start:start + window]
        s = [x for x in w if x.status == "semantic-hit"]
        windows.append({"end": start + len(w), "semantic_hit_rate": len(s) / len(w),
                        "hit_rate": sum(x.status in ("hit", "semantic-hit") for x in w) / len(w)})
    cumulative = []
    k = m = 0
    for i, x in enumerate(o):
        if x.status == "semantic-hit":
            m += 1
            k += x.correct is False
        if (i + 1) % window == 0 or i + 1 == n:
            cumulative.append({"end": i + 1, "semantic_hits": m, "wrong": k, "error_rate": k / m if m else None})
    latency = {status: _p50([x.latency_ms for x in o if x.status == status]) for status in ("hit", "semantic-hit",
                                                                                             "miss")}
    process = ((run.bound or {}).get("process") or {})
    explored = int(process.get("explored", 0))
    return {
        "name": run.name, "kind": run.kind, "threshold": run.threshold, "max_error_rate": run.max_error_rate,
        "judge": run.judge, "requests": n,
        "exact_hits": sum(x.status == "hit" for x in o), "semantic_hits": len(sem), "wrong": wrong,
        "error_rate": wrong / len(sem) if sem else None, "error_ci95": [lo, hi],
        "semantic_hit_rate": len(sem) / n if n else 0.0,
        "semantic_hit_rate_after_warmup": len(sem_after) / len(after) if after else 0.0,
        "semantic_hits_after_warmup": len(sem_after), "wrong_after_warmup": wrong_after,
        "error_rate_after_warmup": wrong_after / len(sem_after) if sem_after else None,
        "error_ci95_after_warmup": list(clopper_pearson(wrong_after, len(sem_after))),
        "semantic_lookups": lookups, "explorations": explored,
        "exploration_budget": round((run.bound or {}).get("budget", 0.05) * lookups, 1)
        if run.kind == "bound" and run.bound else None,
        "upstream_calls": sum(x.status == "miss" for x in o),
        "judge_calls": run.oracle.num_calls if run.oracle else None,
        "judge_flipped": run.oracle.num_flipped if run.oracle else None,
        "latency_p50_ms_concurrent_pass": latency, "windows": windows, "cumulative_error": cumulative,
        "bound": run.bound, "cells": run.cells,
    }


SWEEP = (0.70, 0.74, 0.78, 0.82, 0.86, 0.90, 0.92, 0.94, 0.96, 0.98)


def threshold_sweep(run: Config) -> list[dict[str, Any]]:
    """The static verifier at stricter thresholds, estimated from this (the lowest) run: its semantic hits at or
    above each threshold. Only an estimate: a stricter cache misses those below, stores their answers and
    so meets later prompts with other nearest entries."""
    out = []
    n = len(run.outcomes)
    for t in (x for x in SWEEP if x >= run.threshold - 1e-9):
        sem = [i for i, x in enumerate(run.outcomes)
               if x.status == "semantic-hit" and x.similarity is not None and x.similarity >= t]
        after = sum(i >= n // 2 for i in sem)
        wrong = sum(run.outcomes[i].correct is False for i in sem)
        out.append({"threshold": t, "semantic_hits": len(sem), "wrong": wrong,
                    "error_rate": wrong / len(sem) if sem else None,
                    "error_ci95": list(clopper_pearson(wrong, len(sem))),
                    "semantic_hit_rate_after_warmup": after / max(1, n - n // 2)})
    return out


async def answer_judge_blind_spots(clusters: list[list[Prompt]]) -> dict[str, Any]:
    """The default answer judge on every ordered pair of different answers within a cluster (different
    meanings, so each "equivalent" is a judge error the bound inherits): how often it says equivalent."""
    from llmcache.proxy.semantic.judge import AnswerJudge

    judge = AnswerJudge()
    n, examples = 0, []
    for ps in clusters:
        answers = list(dict.fromkeys(p.answer for p in ps))
        for a in answers:
            for b in answers:
                if a != b:
                    n += 1
                    if await judge.judge(request="", fresh=a, cached=b):
                        examples.append([a, b])
    return {"pairs": n, "judged_equivalent": len(examples), "examples": examples}


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "—" if x is None else format(x, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("config", "sem hits", "wrong", "wrong/hits [95% CI]", "sem-hit rate", "after warm-up",
            "wrong/hits after [95% CI]", "explore/budget", "judged")
    lines = []
    for r in rows:
        lo, hi = r["error_ci95"]
        ci = f"{_fmt(r['error_rate'])} [{lo:.4f}, {hi:.4f}]"
        lo2, hi2 = r["error_ci95_after_warmup"]
        after = f"{_fmt(r['error_rate_after_warmup'])} [{lo2:.4f}, {hi2:.4f}]"
        explore = "—" if r["exploration_budget"] is None else f"{r['explorations']}/{r['exploration_budget']:g}"
        judged = ((r["bound"] or {}).get("process") or {}).get("judged") if r["kind"] == "bound" else None
        lines.append((r["name"], str(r["semantic_hits"]), str(r["wrong"]), ci, f"{r['semantic_hit_rate']:.4f}",
                      f"{r['semantic_hit_rate_after_warmup']:.4f}", after, explore,
                      "—" if judged is None else str(judged)))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def plot(rows: list[dict[str, Any]], path: Path, *, deltas: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, r in enumerate(rows):
        style = "--" if r["kind"] == "static" else "-"
        color = f"C{i}"  # the same colour for a configuration in both panels
        xs = [w["end"] for w in r["windows"]]
        ax1.plot(xs, [w["semantic_hit_rate"] for w in r["windows"]], style, color=color, label=r["name"])
        pts = [(c["end"], c["error_rate"]) for c in r["cumulative_error"] if c["error_rate"] is not None]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=r["name"])
    for d in deltas:
        ax2.axhline(d, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("request")
    ax1.set_ylabel("semantic hits / requests (window)")
    ax1.set_title("semantic hit rate over the stream")
    ax2.set_xlabel("request")
    ax2.set_ylabel("wrong / semantic hits (cumulative)")
    ax2.set_title("observed error rate (dotted: δ)")
    ax2.set_yscale("symlog", linthresh=0.01)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main


def report(result: dict[str, Any], *, segment: int = 4000) -> None:
    """Print the tables of a result (also ``--report FILE.json``, from a saved run)."""
    rows = result["rows"]
    print()
    print_table(rows)
    sweep = result.get("static_sweep_estimate")
    if sweep:
        print(f"\nstatic verifier at stricter thresholds, estimated from the {sweep['from']} run "
              "(its semantic hits at or above each):")
        for x in sweep["rows"]:
            lo, hi = x["error_ci95"]
            print(f"  ≥ {x['threshold']:.2f}: {x['semantic_hits']:5d} hits, {x['wrong']:4d} wrong, "
                  f"{_fmt(x['error_rate'])} [{lo:.4f}, {hi:.4f}], hit rate after warm-up "
                  f"{x['semantic_hit_rate_after_warmup']:.4f}")
    print()
    for cmp in result["comparison"]:
        print(f"{cmp['config']}: semantic hit rate after warm-up {cmp['hit_rate_after_warmup']:.4f} vs "
              f"{cmp['static_at_delta'] or 'no static threshold meets δ'} {cmp['static_hit_rate_after_warmup']:.4f}"
              + (f" ({cmp['ratio']:.2f}×)" if cmp["ratio"] else ""))
    print(f"\nsemantic hit rate over the stream, per {segment} requests:")
    for r in rows:
        sized, prev = [], 0
        for w in r["windows"]:  # (end, size, rate) of each window
            sized.append((w["end"], w["end"] - prev, w["semantic_hit_rate"]))
            prev = w["end"]
        per = []
        for start in range(0, r["requests"], segment):
            sel = [(size, rate) for end, size, rate in sized if start < end <= start + segment]
            per.append(sum(size * rate for size, rate in sel) / max(1, sum(size for size, _ in sel)))
        print(f"  {r['name']:40s} " + " ".join(f"{x:.3f}" for x in per))
    spots = result.get("answer_judge_blind_spots")
    if spots:
        print(f"\nthe answer judge on the clusters' different-meaning answer pairs: {spots['judged_equivalent']} of "
              f"{spots['pairs']} judged equivalent ({spots['judged_equivalent'] / spots['pairs']:.1%}), e.g.")
        for a, b in spots["examples"][:4]:
            print(f"  {a[:60]!r} ~ {b[:60]!r}")
    lat = result["latency_same_run"]
    print(f"\nclient latency p50, {lat['off']} (off) vs {lat['on']} (on), same run, one request at a time:")
    for status, v in lat["by_status"].items():
        ratio = "—" if v["on_over_off"] is None else f"{v['on_over_off']:.3f}×"
        print(f"  {status:13s} off {_fmt(v['off_p50_ms'], '.2f')} ms (n={v['off_n']})  on "
              f"{_fmt(v['on_p50_ms'], '.2f')} ms (n={v['on_n']})  on/off {ratio}")


def make_configs(args: argparse.Namespace) -> list[Config]:
    deltas = [float(x) for x in args.deltas.split(",") if x]
    configs = [Config(f"static {t:.2f}", "static", threshold=t)
               for t in sorted(float(x) for x in args.static_thresholds.split(",") if x)]
    labels = {"answer": "answer judge", "noisy": f"noisy judge ({args.noise:.0%} flipped)",
              "systematic": f"systematic noisy judge ({args.noise:.0%})", "oracle": "oracle judge"}
    for d in deltas:
        for j in (x for x in args.judges.split(",") if x):
            if j == "systematic" and d != deltas[0]:
                continue  # the repeating judge once, at the strictest bound
            configs.append(Config(f"bound {d:g} {labels[j]}", "bound", max_error_rate=d, judge=j))
    for i, c in enumerate(configs):
        c.prefix = f"bench{i}"
    return configs


def compare(rows: list[dict[str, Any]], deltas: list[float]) -> list[dict[str, Any]]:
    """Each bound beside the static threshold that meets its δ on this stream with the most hits."""
    statics = [r for r in rows if r["kind"] == "static"]
    out = []
    for d in deltas:
        ok = [r for r in statics if r["error_rate"] is not None and r["error_rate"] <= d]
        best = max(ok, key=lambda r: r["semantic_hit_rate_after_warmup"]) if ok else None
        if best is not None:
            best["best_static_for"] = sorted({*best.get("best_static_for", []), d})
        base = best["semantic_hit_rate_after_warmup"] if best else 0.0
        for r in rows:
            if r["kind"] == "bound" and r["max_error_rate"] == d:
                out.append({"config": r["name"], "static_at_delta": best["name"] if best else None,
                            "static_hit_rate_after_warmup": base,
                            "hit_rate_after_warmup": r["semantic_hit_rate_after_warmup"],
                            "ratio": (r["semantic_hit_rate_after_warmup"] / base) if base else None})
    return out


async def main_async(args: argparse.Namespace) -> int:
    clusters, by_text = load_prompts(Path(args.data))
    stream = make_stream(clusters, num_requests=args.requests, num_tenants=args.tenants, epoch=args.epoch,
                         seed=args.seed)
    configs = make_configs(args)
    deltas = sorted({c.max_error_rate for c in configs if c.max_error_rate is not None})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="semantic-stream-"))
    answers = workdir / "answers.json"
    answers.write_text(json.dumps({p.text: p.answer for p in by_text.values()}))
    print(f"{len(clusters)} clusters, {len(by_text)} prompts; stream of {len(stream)} requests, {args.tenants} "
          f"tenants, cache turnover every {args.epoch} requests per tenant; {len(configs)} proxies side by side",
          flush=True)
    up_port, embed_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen",
                               f"127.0.0.1:{up_port}", "--answers", str(answers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, str(HERE / "helpers" / "embed_server.py"), "--listen",
                               f"127.0.0.1:{embed_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})]
    upstream, embedder = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{embed_port}"
    judges = web.Application()
    for c in configs:
        if c.judge not in (None, "answer"):
            mode = {"noisy": "random", "systematic": "systematic", "oracle": "clean"}[c.judge]
            c.oracle = Oracle(by_text, mode=mode, noise=args.noise, seed=args.seed)
            judges.router.add_post(f"/judge/{c.prefix}/v1/chat/completions", c.oracle.handle)
    runner = web.AppRunner(judges, access_log=None)
    await runner.setup()
    judge_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", judge_port).start()
    t_start = time.monotonic()
    try:
        _wait_http(upstream + "/v1/models", proc=procs[0])
        _wait_http(embedder + "/v1/models", proc=procs[1])
        with EmbeddedRedis(with_search=True) as server:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
                # Every prompt embedded once up front (the proxies' own LRUs start cold, as in a new pod).
                async with http.post(embedder + "/v1/embeddings", json={"input": list(by_text)}) as r:
                    assert r.status == 200
                try:
                    for c in configs:
                        start_proxy(c, redis_url=server.url, upstream=upstream, embedder=embedder,
                                    judge_base=f"http://127.0.0.1:{judge_port}", workdir=workdir)
                    await run_stream(http, configs, stream)
                    for c in configs:
                        async with http.get(c.url + "/llmcache/v1/stats",
                                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                            c.bound = (await r.json()).get("error_bound")
                        c.cells = read_cells(server.url, c.prefix) if c.kind == "bound" else {}
                    # Latency: the static verifier and the first bound, warm, on a continuation of the stream.
                    pair = [min((c for c in configs if c.kind == "static"), key=lambda c: c.threshold),
                            next(c for c in configs if c.kind == "bound")]
                    for c in configs:
                        if c not in pair and c.proc is not None:
                            _stop(c.proc)
                    more = make_stream(clusters, num_requests=args.latency_requests, num_tenants=args.tenants,
                                       epoch=args.epoch, seed=args.seed + 1)
                    print(f"latency: {pair[0].name} vs {pair[1].name}, {len(more)} requests one at a time",
                          flush=True)
                    latency = await latency_phase(http, pair, [Request(r.tenant, "L" + r.namespace, r.prompt)
                                                               for r in more])
                finally:
                    for c in configs:
                        if c.proc is not None:
                            _stop(c.proc)
    finally:
        await runner.cleanup()
        for proc in procs:
            _stop(proc)
    rows = [summarize(c, window=args.window) for c in configs]
    comparison = compare(rows, deltas)
    base = min((c for c in configs if c.kind == "static"), key=lambda c: c.threshold, default=None)
    result = {"data": str(DATA.relative_to(HERE.parent)), "clusters": len(clusters), "prompts": len(by_text),
              "stream": {"requests": args.requests, "tenants": args.tenants, "epoch": args.epoch, "seed": args.seed},
              "noise": args.noise, "wall_s": round(time.monotonic() - t_start), "load_average": os.getloadavg(),
              "rows": rows, "comparison": comparison,
              "static_sweep_estimate": {"from": base.name, "rows": threshold_sweep(base)} if base else None,
              "answer_judge_blind_spots": await answer_judge_blind_spots(clusters),
              "latency_same_run": {"off": pair[0].name, "on": pair[1].name, "by_status": latency}}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    report(result)
    plot(rows, out / f"{args.name}.png", deltas=deltas)
    print(f"wrote {out / (args.name + '.json')} and .png")
    with contextlib.suppress(OSError):
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--requests", type=int, default=12000)
    p.add_argument("--tenants", type=int, default=16)
    p.add_argument("--epoch", type=int, default=1000, help="requests per tenant before its cache turns over")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--deltas", default="0.01,0.05")
    p.add_argument("--static-thresholds", default=f"{DEFAULT_SIMILARITY_THRESHOLD:.2f},0.92",
                   help="a proxy each (the lowest is the latency peer and the sweep's source; default: the policy "
                        "default and 0.92)")
    p.add_argument("--judges", default="answer,noisy", help="answer, noisy, systematic, oracle")
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--latency-requests", type=int, default=1000,
                   help="requests of the latency phase (feature off vs on, one at a time)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="semantic_stream")
    p.add_argument("--report", default=None, metavar="FILE.json", help="print a saved run's tables and redraw its plot")
    args = p.parse_args()
    if args.report:
        result = json.loads(Path(args.report).read_text())
        if "answer_judge_blind_spots" not in result:  # a run saved before the check: it needs only the data
            clusters, _ = load_prompts(Path(args.data))
            result["answer_judge_blind_spots"] = asyncio.run(answer_judge_blind_spots(clusters))
            Path(args.report).write_text(json.dumps(result, indent=1))
        report(result)
        deltas = sorted({r["max_error_rate"] for r in result["rows"] if r["max_error_rate"] is not None})
        plot(result["rows"], Path(args.report).with_suffix(".png"), deltas=deltas)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
