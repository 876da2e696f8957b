#!/usr/bin/env python3
"""Proxy overhead benchmark: llmcache vs calling the upstream directly vs the LiteLLM proxy.

Everything runs on loopback, each part in its own process:

    load generator (wrk, or an aiohttp client process) ──▶ proxy ──miss──▶ stub upstream (fixed latency)
                                                            │
                                                   Redis (embedded Valkey, shared)

Phases, for llmcache and for LiteLLM (same Redis, same upstream), with bounded
durations:

1. **miss**: concurrency 1, every request body unique → p50/p99; the *added*
   latency is the proxy's percentile minus the direct-upstream percentile.
2. **hit latency**: concurrency 1, one primed body repeated → p50/p99.
3. **hit throughput**: concurrency 64, the same primed body → requests/s, and the
   RSS of the proxy's process tree sampled while it runs.

For reference the same miss phase also runs through a bare aiohttp relay (no cache, ~20
lines): the floor any aiohttp-based proxy pays on the machine at that moment.

During the hit phases the stub's request counter must not move (every answer
really came from the cache); the report states the number of upstream calls.

Targets (issue 2): hit p50 ≤ 1 ms, miss overhead p50 ≤ 1 ms, hit throughput ≥ 5×
LiteLLM's.

LiteLLM (``litellm[proxy]`` from PyPI) is installed by this script into its own
virtual environment under ``$LLMCACHE_CACHE_DIR/bench-venv`` (default
``~/.cache/llmcache/bench-venv``), never into the project's ``.venv``. If it cannot
be installed or started the report says exactly what failed and still reports
llmcache.

The load generator is ``wrk`` when it is on ``$PATH`` (Debian: ``apt-get install -y
wrk``): a C client that does not become the bottleneck at concurrency 64 on a small
machine. Without it the script says so and uses an aiohttp client process, whose
own CPU use caps the measurable throughput (the report names the generator used).

Run (from the repository root)::

    .venv/bin/python benchmarks/proxy_bench.py            # ~2 min incl. LiteLLM start-up
    .venv/bin/python benchmarks/proxy_bench.py --skip-litellm --duration-s 3

Writes ``benchmarks/results/proxy_bench.json`` and ``proxy_bench.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CACHE_DIR = Path(os.environ.get("LLMCACHE_CACHE_DIR", Path.home() / ".cache" / "llmcache"))
BENCH_VENV = CACHE_DIR / "bench-venv"
#: Pinned so that numbers are comparable between runs; override with --litellm-spec.
LITELLM_SPEC = "litellm[proxy]==1.108.7"
MODEL = "bench-model"
#: Client key for both proxies; LiteLLM also takes it as its master key (it refuses to start
#: without one), so it is random per run rather than a well-known string.
API_KEY = "sk-" + secrets.token_hex(32)
UPSTREAM_KEY = "sk-stub-upstream-ignores-this"

from llmcache.redis_server import EmbeddedRedis, free_port  # noqa: E402  (installed: `make venv`)

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class LoadResult:
    """One load phase as the generator saw it (latencies in milliseconds)."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    rps: float = 0.0

    def __post_init__(self) -> None:
        if not self.rps and self.duration_s > 0:
            self.rps = self.requests / self.duration_s


@dataclass(slots=True)
class ProxyResult:
    """Everything measured for one proxy (or the error that stopped it)."""

    name: str
    miss: LoadResult | None = None
    hit: LoadResult | None = None
    hit_c64: LoadResult | None = None
    rss_idle_mib: float | None = None
    rss_load_max_mib: float | None = None
    upstream_calls_during_hits: int | None = None
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    """Proxy CPU time (user + system, whole process tree) per request, by phase (miss, hit, hit_c64):
    unlike latency it hardly depends on what else the machine runs."""
    hit_status_header: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

def _wait_http(url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s ({last}):\n{tail}")


@contextmanager
def _process(argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session, stopped (TERM, then KILL) with its children."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_s(root: int) -> float:
    """User + system CPU seconds used so far by a process tree (from /proc; Linux only)."""
    ticks = 0
    for pid in _tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(root: int) -> float:
    """Resident set size of a process tree in MiB."""
    total_kib = 0
    for pid in _tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


class RssSampler:
    """Samples a process tree's RSS every ``interval_s`` in a thread; ``max_mib`` afterwards."""

    def __init__(self, pid: int, *, interval_s: float = 0.25) -> None:
        self._pid, self._interval_s = pid, interval_s
        self._stop = threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mib(self._pid))
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max_mib(self) -> float | None:
        return max(self.samples) if self.samples else None


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------

def _body(tag: str) -> bytes:
    # temperature 0: deterministic, so both proxies cache it by default.
    return json.dumps({"model": MODEL, "temperature": 0, "max_tokens": 16,
                       "messages": [{"role": "user", "content": f"benchmark prompt {tag}"}]}).encode()


_WRK_LUA = textwrap.dedent("""
    -- args: mode (unique|fixed) nonce api_key
    local threads = {}
    function setup(thread)
      thread:set("tid", #threads + 1)
      table.insert(threads, thread)
    end
    function init(args)
      mode = args[1]; nonce = args[2]; key = args[3]; counter = 0
    end
    function request()
      local tag
      if mode == "unique" then
        counter = counter + 1
        tag = nonce .. "-" .. tid .. "-" .. counter
      else
        tag = nonce
      end
      local body = '{"model": "%(model)s", "temperature": 0, "max_tokens": 16, "messages": '
        .. '[{"role": "user", "content": "benchmark prompt ' .. tag .. '"}]}'
      return wrk.format("POST", "/v1/chat/completions",
        {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}, body)
    end
    function done(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        'WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p90_us": %%d, '
        .. '"p99_us": %%d, "max_us": %%d}\\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
    end
""") % {"model": MODEL}


def run_wrk(url: str, *, mode: str, nonce: str, concurrency: int, duration_s: float, workdir: Path) -> LoadResult:
    script = workdir / "bench.lua"
    script.write_text(_WRK_LUA)
    # JSON bodies must match _body() byte for byte so primed entries are hit.
    threads = 1 if concurrency == 1 else 2
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration_s:g}s", "--timeout", "10s",
            "-s", str(script), url, "--", mode, nonce, API_KEY]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (rc {out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}")
    d = json.loads(line[len("WRKJSON "):])
    return LoadResult(requests=d["requests"], duration_s=d["duration_us"] / 1e6, p50_ms=d["p50_us"] / 1e3,
                      p90_ms=d["p90_us"] / 1e3, p99_ms=d["p99_us"] / 1e3, max_ms=d["max_us"] / 1e3,
                      errors=d["errors"])


async def _aiohttp_load(url: str, mode: str, nonce: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = 0
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    stop_at = time.perf_counter() + duration_s
    fixed = _body(nonce)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, counter
        while time.perf_counter() < stop_at:
            counter += 1
            body = _body(f"{nonce}-{counter}") if mode == "unique" else fixed
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - t0) * 1e3)

    t_start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "duration_s": elapsed, "p50_ms": q[49], "p90_ms": q[89],
            "p99_ms": q[98], "max_ms": max(latencies, default=0.0), "errors": errors}


def run_aiohttp(url: str, *, mode: str, nonce: str, concurrency: int, duration_s: float) -> LoadResult:
    """The aiohttp generator in a separate process (never in the process that runs the proxies)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "_loadgen", url, mode, nonce,
            str(concurrency), str(duration_s)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"aiohttp load generator failed: {out.stderr[-1500:]}")
    return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


def _relay_main(port: int, upstream: str) -> None:
    """A bare aiohttp relay (no cache, no parsing): the floor any aiohttp proxy pays on this machine."""
    import aiohttp
    from aiohttp import web

    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def ctx(app: web.Application) -> Any:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[session_key].close()

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[session_key].post(upstream + request.path, data=body,
                                                 headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(ctx)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --------------------------------------------------------------------------------------------
# HTTP helpers (stdlib, outside the timed phases)
# --------------------------------------------------------------------------------------------

def post_chat(base: str, tag: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(base + "/v1/chat/completions", data=_body(tag), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def upstream_calls(stub: str) -> int:
    with urllib.request.urlopen(stub + "/stub/requests", timeout=5) as resp:
        return int(json.loads(resp.read())["total"])


# --------------------------------------------------------------------------------------------
# LiteLLM
# --------------------------------------------------------------------------------------------

def ensure_litellm(spec: str) -> Path:
    """The ``litellm`` executable in the bench venv, installing ``spec`` there if needed."""
    exe = BENCH_VENV / "bin" / "litellm"
    marker = BENCH_VENV / ".installed-spec"
    if exe.exists() and marker.exists() and marker.read_text().strip() == spec:
        return exe
    print(f"installing {spec} into {BENCH_VENV} (separate from the project's .venv; one time) …", flush=True)
    if not (BENCH_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENCH_VENV)], check=True,
                       cwd=tempfile.gettempdir())
    pip = [str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--progress-bar", "off"]
    out = subprocess.run(pip + [spec], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0 or not exe.exists():
        raise RuntimeError(f"pip install {spec!r} failed (rc {out.returncode}): {out.stderr[-1500:]}")
    marker.write_text(spec)
    return exe


def litellm_config(stub: str, redis_port: int) -> str:
    return textwrap.dedent(f"""\
        model_list:
          - model_name: {MODEL}
            litellm_params:
              model: openai/{MODEL}
              api_base: {stub}/v1
              api_key: {UPSTREAM_KEY}
        litellm_settings:
          cache: true
          cache_params:
            type: redis
            host: 127.0.0.1
            port: {redis_port}
            ttl: 3600
          telemetry: false
          set_verbose: false
          json_logs: false
        general_settings:
          disable_spend_logs: true
        """)


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Bench:
    loadgen: str
    duration_s: float
    hit_duration_s: float
    workdir: Path

    def load(self, url: str, *, mode: str, nonce: str, concurrency: int, duration_s: float | None = None) -> LoadResult:
        d = self.duration_s if duration_s is None else duration_s
        if self.loadgen == "wrk":
            return run_wrk(url, mode=mode, nonce=nonce, concurrency=concurrency, duration_s=d, workdir=self.workdir)
        return run_aiohttp(url, mode=mode, nonce=nonce, concurrency=concurrency, duration_s=d)

    def measure_proxy(self, result: ProxyResult, base: str, stub: str, pid: int) -> None:
        run_id = uuid.uuid4().hex[:8]
        # Warm the process (imports, pools) with a few misses that are not measured.
        for i in range(5):
            post_chat(base, f"warm-{run_id}-{i}")
        result.rss_idle_mib = rss_mib(pid)
        print(f"  {result.name}: miss latency (c=1, unique bodies, {self.duration_s:g}s) …", flush=True)
        cpu0 = cpu_s(pid)
        result.miss = self.load(base, mode="unique", nonce=f"miss-{run_id}", concurrency=1)
        result.cpu_us_per_request["miss"] = _per_req_us(cpu_s(pid) - cpu0, result.miss)

        hit_tag = f"hit-{run_id}"
        status, headers, _ = post_chat(base, hit_tag)  # prime
        if status != 200:
            raise RuntimeError(f"priming request answered HTTP {status}")
        deadline = time.monotonic() + 10
        while True:  # LiteLLM writes its cache entry after answering: wait until it is served
            time.sleep(0.05)
            before = upstream_calls(stub)
            status, headers, _ = post_chat(base, hit_tag)
            if status == 200 and upstream_calls(stub) == before:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the primed request never came back from the cache (upstream still called)")
        lowered = {k.lower(): v for k, v in headers.items()}
        result.hit_status_header = lowered.get("x-llmcache-status") or (
            "x-litellm-cache-key present" if "x-litellm-cache-key" in lowered else None)
        self.load(base, mode="fixed", nonce=hit_tag, concurrency=8, duration_s=1.0)  # warm-up, not measured
        calls_before = upstream_calls(stub)
        print(f"  {result.name}: hit latency (c=1, {self.duration_s:g}s) …", flush=True)
        cpu0 = cpu_s(pid)
        result.hit = self.load(base, mode="fixed", nonce=hit_tag, concurrency=1)
        result.cpu_us_per_request["hit"] = _per_req_us(cpu_s(pid) - cpu0, result.hit)
        print(f"  {result.name}: hit throughput (c=64, {self.hit_duration_s:g}s) …", flush=True)
        cpu0 = cpu_s(pid)
        with RssSampler(pid) as sampler:
            result.hit_c64 = self.load(base, mode="fixed", nonce=hit_tag, concurrency=64,
                                       duration_s=self.hit_duration_s)
        result.cpu_us_per_request["hit_c64"] = _per_req_us(cpu_s(pid) - cpu0, result.hit_c64)
        result.rss_load_max_mib = sampler.max_mib
        result.upstream_calls_during_hits = upstream_calls(stub) - calls_before


def _per_req_us(cpu_seconds: float, load: LoadResult) -> float:
    return cpu_seconds / load.requests * 1e6 if load.requests else float("nan")


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def build_report(direct: LoadResult, proxies: list[ProxyResult]) -> tuple[str, dict[str, Any]]:
    cols = ["direct upstream"] + [p.name for p in proxies]
    rows: list[tuple[str, list[str]]] = []

    def per(fn: Any) -> list[str]:
        return [fn(p) if p.error is None else "failed" for p in proxies]

    rows.append(("miss p50 / p99 (ms)", [f"{direct.p50_ms:.2f} / {direct.p99_ms:.2f}"]
                 + per(lambda p: f"{p.miss.p50_ms:.2f} / {p.miss.p99_ms:.2f}")))
    rows.append(("miss overhead p50 / p99 (ms)", ["—"]
                 + per(lambda p: f"{p.miss.p50_ms - direct.p50_ms:.2f} / {p.miss.p99_ms - direct.p99_ms:.2f}")))
    rows.append(("hit p50 / p99 (ms), c=1", ["—"] + per(lambda p: f"{p.hit.p50_ms:.3f} / {p.hit.p99_ms:.3f}")))
    rows.append(("hit throughput c=64 (req/s)", ["—"] + per(lambda p: f"{p.hit_c64.rps:,.0f}")))
    rows.append(("hit p50 / p99 at c=64 (ms)", ["—"]
                 + per(lambda p: f"{p.hit_c64.p50_ms:.2f} / {p.hit_c64.p99_ms:.2f}")))
    rows.append(("proxy CPU µs/request: miss, hit, hit c=64", ["—"] + per(
        lambda p: ", ".join(f"{p.cpu_us_per_request.get(k, float('nan')):.0f}" for k in ("miss", "hit", "hit_c64")))))
    rows.append(("RSS idle → max under load (MiB)", ["—"]
                 + per(lambda p: f"{_fmt(p.rss_idle_mib, digits=0)} → {_fmt(p.rss_load_max_mib, digits=0)}")))
    rows.append(("upstream calls during hit phases", ["—"] + per(lambda p: str(p.upstream_calls_during_hits))))
    rows.append(("errors (non-2xx, socket)", [str(direct.errors)]
                 + per(lambda p: str(p.miss.errors + p.hit.errors + p.hit_c64.errors))))
    rows.append(("requests measured", [str(direct.requests)]
                 + per(lambda p: f"{p.miss.requests}+{p.hit.requests}+{p.hit_c64.requests}")))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [" | ".join([" " * width0] + [c.rjust(w) for c, w in zip(cols, widths)])]
    lines.append("-+-".join(["-" * width0] + ["-" * w for w in widths]))
    for label, vals in rows:
        lines.append(" | ".join([label.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]))

    ours = next((p for p in proxies if p.name == "llmcache"), None)
    lite = next((p for p in proxies if p.name == "litellm"), None)
    targets: dict[str, Any] = {}
    if ours is not None and ours.error is None:
        targets["hit_p50_le_1ms"] = {"value_ms": ours.hit.p50_ms, "pass": ours.hit.p50_ms <= 1.0}
        overhead = ours.miss.p50_ms - direct.p50_ms
        targets["miss_overhead_p50_le_1ms"] = {"value_ms": overhead, "pass": overhead <= 1.0}
        if lite is not None and lite.error is None:
            ratio = ours.hit_c64.rps / lite.hit_c64.rps if lite.hit_c64.rps else float("inf")
            targets["hit_throughput_ge_5x_litellm"] = {"ratio": ratio, "pass": ratio >= 5.0}
        else:
            targets["hit_throughput_ge_5x_litellm"] = {"ratio": None, "pass": None,
                                                      "why": "LiteLLM did not run: " + (lite.error if lite else "skipped")}
    lines.append("")
    for name, t in targets.items():
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        value = t.get("value_ms", t.get("ratio"))
        shown = "—" if value is None else (f"{value:.3f} ms" if "value_ms" in t else f"{value:.1f}×")
        lines.append(f"target {name}: {shown} → {verdict}" + (f" ({t['why']})" if "why" in t else ""))
    for p in proxies:
        if p.error:
            lines.append(f"{p.name} FAILED: {p.error}")
        for note in p.notes:
            lines.append(f"{p.name}: {note}")
    return "\n".join(lines), targets


def plot(direct: LoadResult, proxies: list[ProxyResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in proxies if p.error is None]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = [p.name for p in ok]
    x = range(len(ok))
    w = 0.38
    ax = axes[0]
    ax.bar([i - w / 2 for i in x], [max(p.miss.p50_ms - direct.p50_ms, 0) for p in ok], w, label="p50")
    ax.bar([i + w / 2 for i in x], [max(p.miss.p99_ms - direct.p99_ms, 0) for p in ok], w, label="p99")
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="target p50 ≤ 1 ms")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms added to a miss")
    ax.set_title(f"miss overhead (upstream p50 {direct.p50_ms:.1f} ms)")
    ax.legend()
    ax = axes[1]
    ax.bar([i - w / 2 for i in x], [p.hit.p50_ms for p in ok], w, label="p50")
    ax.bar([i + w / 2 for i in x], [p.hit.p99_ms for p in ok], w, label="p99")
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="target p50 ≤ 1 ms")
    ax.set_yscale("log")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms (log)")
    ax.set_title("hit latency, concurrency 1")
    ax.legend()
    ax = axes[2]
    bars = ax.bar(names, [p.hit_c64.rps for p in ok], color=["tab:green", "tab:red", "tab:blue"][:len(ok)])
    for b, p in zip(bars, ok):
        ax.annotate(f"{p.hit_c64.rps:,.0f}/s\nRSS {_fmt(p.rss_load_max_mib, digits=0)} MiB",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=max(p.hit_c64.rps for p in ok) * 4)
    ax.set_ylabel("requests/s (log)")
    ax.set_title("hit throughput, concurrency 64")
    fig.suptitle(f"llmcache proxy vs LiteLLM proxy (loopback, same Redis, same stub upstream; "
                 f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

# The proxy's own main under a CPU-time profiler (wall time would charge the profiled process
# for every moment the scheduler gave the CPU to Redis, wrk or the upstream).
_PROFILED_MAIN = textwrap.dedent("""\
    import cProfile, sys, time
    from llmcache import cli
    out = sys.argv.pop(1)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        cli.main(sys.argv[1:])
    finally:
        prof.disable()
        prof.dump_stats(out)
    """)


def profile_report(path: Path) -> str:
    """Top functions of a proxy profile, by own time and by cumulative time on the request path."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(
        r"(handlers|exact|breaker|keys|metrics|stats|streaming|web_protocol|web_response|client\.py|"
        r"connection\.py|tasks\.py)", 40)
    return buf.getvalue()


def choose_loadgen(requested: str) -> tuple[str, str | None]:
    if requested == "aiohttp":
        return "aiohttp", None
    if shutil.which("wrk"):
        return "wrk", None
    why = ("wrk is not installed (Debian/Ubuntu: `apt-get install -y wrk`); using the aiohttp client "
           "process instead, whose own CPU use caps the hit throughput it can measure")
    if requested == "wrk":
        raise SystemExit(f"proxy_bench: --loadgen wrk requested but {why.split(';')[0]}")
    return "aiohttp", why


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=6.0, help="length of each c=1 phase (default 6 s)")
    ap.add_argument("--hit-duration-s", type=float, default=10.0, help="length of the c=64 phase (default 10 s)")
    ap.add_argument("--upstream-latency-ms", type=float, default=20.0, help="stub's fixed answer time (default 20)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    ap.add_argument("--skip-litellm", action="store_true", help="measure llmcache and the direct upstream only")
    ap.add_argument("--litellm-spec", default=LITELLM_SPEC, help=f"pip spec for LiteLLM (default {LITELLM_SPEC})")
    ap.add_argument("--profile", action="store_true",
                    help="run llmcache under cProfile (CPU-time clock) and write the hot functions to "
                         "benchmarks/results/proxy_bench_profile.txt; implies --skip-litellm, and its "
                         "numbers (inflated by the profiler) go to proxy_bench_profiled.json")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/proxy_bench.json)")
    args = ap.parse_args(argv)
    if args.profile:
        args.skip_litellm = True
    if args.out is None:
        args.out = RESULTS / ("proxy_bench_profiled.json" if args.profile else "proxy_bench.json")

    loadgen, loadgen_note = choose_loadgen(args.loadgen)
    if loadgen_note:
        print("note:", loadgen_note, flush=True)
    work = Path(tempfile.mkdtemp(prefix="llmcache-proxybench-"))
    # Children import the installed llmcache, never a tree that PYTHONPATH happens to name.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    bench = Bench(loadgen=loadgen, duration_s=args.duration_s, hit_duration_s=args.hit_duration_s, workdir=work)
    proxies: list[ProxyResult] = []
    started = time.time()
    load_at_start = os.getloadavg()[0]
    with EmbeddedRedis(with_search=False) as redis_server:
        stub_port, ours_port, lite_port = free_port(), free_port(), free_port()
        stub = f"http://127.0.0.1:{stub_port}"
        with _process([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{stub_port}",
                       "--latency-ms", f"{args.upstream_latency_ms:g}"], log=work / "stub.log", env=env, cwd=work) as sp:
            _wait_http(stub + "/v1/models", timeout_s=60, proc=sp, log=work / "stub.log")
            for i in range(5):
                post_chat(stub, f"warm-direct-{i}")
            print(f"direct upstream: miss latency (c=1, {args.duration_s:g}s) …", flush=True)
            direct = bench.load(stub, mode="unique", nonce=f"direct-{uuid.uuid4().hex[:8]}", concurrency=1)

            relay_port = free_port()
            relay_floor: dict[str, Any] | None = None
            if not args.profile:
                print(f"bare aiohttp relay (floor): miss latency (c=1, {args.duration_s:g}s) …", flush=True)
                with _process([sys.executable, str(Path(__file__).resolve()), "_relay", str(relay_port), stub],
                              log=work / "relay.log", env=env, cwd=work) as rp:
                    rbase = f"http://127.0.0.1:{relay_port}"
                    _wait_http(rbase + "/healthz", timeout_s=60, proc=rp, log=work / "relay.log")
                    for i in range(5):
                        post_chat(rbase, f"warm-relay-{i}")
                    cpu0 = cpu_s(rp.pid)
                    rl = bench.load(rbase, mode="unique", nonce=f"relay-{uuid.uuid4().hex[:8]}", concurrency=1)
                    relay_floor = {**asdict(rl), "cpu_us_per_request": _per_req_us(cpu_s(rp.pid) - cpu0, rl)}

            ours = ProxyResult("llmcache")
            proxies.append(ours)
            base = f"http://127.0.0.1:{ours_port}"
            prof_path = work / "llmcache.prof"
            launcher = ["-c", _PROFILED_MAIN, str(prof_path)] if args.profile else ["-m", "llmcache"]
            argv_ours = [sys.executable, *launcher, "proxy", "--listen", f"127.0.0.1:{ours_port}",
                         "--upstream", stub, "--redis-url", redis_server.url, "--mode", "exact"]
            try:
                with _process(argv_ours, log=work / "llmcache.log", env=env, cwd=work) as pp:
                    _wait_http(base + "/healthz", timeout_s=60, proc=pp, log=work / "llmcache.log")
                    bench.measure_proxy(ours, base, stub, pp.pid)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                ours.error = f"{type(exc).__name__}: {exc}"

            if args.profile and prof_path.exists():
                report = profile_report(prof_path)
                (RESULTS / "proxy_bench_profile.txt").write_text(report)
                print(report)

            lite = ProxyResult("litellm")
            if args.skip_litellm:
                lite.error = "skipped (--skip-litellm)"
            else:
                proxies.append(lite)
                try:
                    exe = ensure_litellm(args.litellm_spec)
                    cfg = work / "litellm_config.yaml"
                    cfg.write_text(litellm_config(stub, redis_server.port))
                    lenv = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                    # Offline and quiet: no model-cost map download, no telemetry, warnings only.
                    lenv.update({"LITELLM_MASTER_KEY": API_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                                 "LITELLM_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"})
                    base = f"http://127.0.0.1:{lite_port}"
                    with _process([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(lite_port),
                                   "--num_workers", "1"], log=work / "litellm.log", env=lenv, cwd=work) as lp:
                        _wait_http(base + "/health/liveliness", timeout_s=240, proc=lp, log=work / "litellm.log")
                        bench.measure_proxy(lite, base, stub, lp.pid)
                except Exception as exc:  # noqa: BLE001 - reported in the table, ours still reported
                    lite.error = f"{type(exc).__name__}: {exc}"[:2000]

    table, targets = build_report(direct, proxies)
    if relay_floor is not None:
        table += (f"\nreference: a bare aiohttp relay (no cache) adds p50 {relay_floor['p50_ms'] - direct.p50_ms:.2f}"
                  f" / p99 {relay_floor['p99_ms'] - direct.p99_ms:.2f} ms to a miss and uses "
                  f"{relay_floor['cpu_us_per_request']:.0f} µs CPU per request on this machine right now")
    header = (f"proxy_bench: upstream {args.upstream_latency_ms:g} ms fixed, loadgen {loadgen}, "
              f"{os.cpu_count()} CPUs, load avg {load_at_start:.1f} → {os.getloadavg()[0]:.1f}, "
              f"{time.time() - started:.0f}s total")
    print()
    print(header)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "proxy_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, "benchmarks/proxy_bench.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": load_at_start,
                    "load_avg_1m_at_end": os.getloadavg()[0],
                    "python": platform.python_version(), "platform": platform.platform()},
        "config": {"upstream_latency_ms": args.upstream_latency_ms, "duration_s": args.duration_s,
                   "hit_duration_s": args.hit_duration_s, "loadgen": loadgen, "loadgen_note": loadgen_note,
                   "litellm_spec": None if args.skip_litellm else args.litellm_spec},
        "direct_upstream": asdict(direct),
        "bare_aiohttp_relay": relay_floor,
        "proxies": [asdict(p) for p in proxies],
        "targets": targets,
        "logs_dir": str(work),
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    if any(p.error is None for p in proxies):
        plot(direct, proxies, png)
    print(f"\nwrote {args.out} and {png}; process logs in {work}")
    return 0 if ours.error is None else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_relay":
        _relay_main(int(sys.argv[2]), sys.argv[3])
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        _url, _mode, _nonce, _conc, _dur = sys.argv[2:7]
        print(json.dumps(asyncio.run(_aiohttp_load(_url, _mode, _nonce, int(_conc), float(_dur)))))
        raise SystemExit(0)
    raise SystemExit(main())
