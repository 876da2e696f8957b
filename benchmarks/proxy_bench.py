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
lines) on the same event loop as llmcache (``--event-loop``): the floor any aiohttp-based
proxy pays on the machine at that moment. CPU time per request (user + system, from
``/proc``, of each proxy's process tree) is reported beside every latency: unlike latency
it hardly depends on what else the machine runs.

During the hit phases the stub's request counter must not move (every answer
really came from the cache); the report states the number of upstream calls.

Targets (issue 23), each computed only from figures of the same run:

- miss overhead p50 ≤ 1.0 ms, and ≤ 1.4× the bare relay's overhead;
- miss CPU per request ≤ 1.3× the relay's;
- exact hit p50 ≤ 0.30 ms at concurrency 1;
- hit throughput at concurrency 64 ≥ 30× LiteLLM's.

A figure whose side had errors (non-2xx answers, socket errors) is marked ``invalid`` in
the table and no target is derived from it: a proxy that fails fast is not a fast proxy.

LiteLLM (``litellm[proxy]`` from PyPI) is installed by this script into its own
virtual environment under ``$LLMCACHE_CACHE_DIR/bench-venv`` (default
``~/.cache/llmcache/bench-venv``), never into the project's ``.venv``. If it cannot
be installed or started the report says exactly what failed and still reports
llmcache. Both proxies take the same client key (passed to every load generator
explicitly), and LiteLLM's master key is that key.

The load generator is ``wrk`` (Debian: ``apt-get install -y wrk``), required: a C client
that does not become the bottleneck at concurrency 64 on a small machine. Without it the
script stops and says how to install it; ``--loadgen aiohttp`` runs an aiohttp client
process instead, whose own CPU use caps the measurable throughput (the report says so).

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
from contextlib import contextmanager, suppress
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


def _wait_near_cache(base: str, *, timeout_s: float) -> bool:
    """Wait until llmcache's near cache serves and its key filter answers misses (``/metrics``), so that
    every phase measures the steady state, not the set-up; False (and a note) if not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(urllib.error.URLError, OSError), urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            if b"llmcache_near_cache_filter_ready 1.0" in resp.read():
                return True
        time.sleep(0.2)
    print(f"  note: the near cache of {base} was not ready within {timeout_s:.0f} s; measuring anyway", flush=True)
    return False


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
    """CPU seconds used so far by a process tree (Linux only): the scheduler's count in nanoseconds of
    every live thread (``/proc/<pid>/task/<tid>/schedstat``), or user + system time in clock ticks
    where the kernel keeps no schedstat.

    Ticks are 10 ms and charged to whoever runs when one falls: a 6-second miss phase of ~270
    requests spends only ~25-35 of them per process, so its CPU per request moved by ±20 % from run
    to run (one tree read 882, 1,078 and 1,331 µs per miss in three runs). The nanosecond count
    does not sample. It is per live thread: a thread that ends takes its count with it (the servers
    measured here keep theirs: the event loop and its executor's workers).
    """
    total_ns = 0
    ticks = 0
    for pid in _tree_pids(root):
        try:
            total_ns += sum(int((task / "schedstat").read_text().split()[0])
                            for task in Path(f"/proc/{pid}/task").iterdir())
        except (OSError, ValueError, IndexError):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return total_ns / 1e9 + ticks / os.sysconf("SC_CLK_TCK")


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


async def _aiohttp_load(url: str, mode: str, nonce: str, concurrency: int, duration_s: float,
                        api_key: str) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = 0
    # The key comes from the parent: this runs in a child process that imports this module anew,
    # and a module-level random key would differ from the one the proxies were started with.
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
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
            str(concurrency), str(duration_s), API_KEY]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"aiohttp load generator failed: {out.stderr[-1500:]}")
    return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


def _relay_main(port: int, upstream: str, event_loop: str = "asyncio") -> None:
    """A bare aiohttp relay (no cache, no parsing): the floor any aiohttp proxy pays on this machine.

    It runs on the event loop llmcache runs on (``event_loop``, as ``llmcache proxy --event-loop``),
    so the ratio of the two measures the cache's work, not the loop's.
    """
    import aiohttp
    from aiohttp import web

    from llmcache.proxy.cli import new_event_loop

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
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_event_loop(event_loop))


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
    profile: bool = False
    """Signal the proxy (SIGUSR1/SIGUSR2) to profile each measured phase on its own."""

    @contextmanager
    def _phase(self, pid: int) -> Iterator[None]:
        if self.profile:
            os.kill(pid, signal.SIGUSR1)
        try:
            yield
        finally:
            if self.profile:
                os.kill(pid, signal.SIGUSR2)

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
        with self._phase(pid):
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
        with self._phase(pid):
            result.hit = self.load(base, mode="fixed", nonce=hit_tag, concurrency=1)
        result.cpu_us_per_request["hit"] = _per_req_us(cpu_s(pid) - cpu0, result.hit)
        print(f"  {result.name}: hit throughput (c=64, {self.hit_duration_s:g}s) …", flush=True)
        cpu0 = cpu_s(pid)
        with RssSampler(pid) as sampler, self._phase(pid):
            result.hit_c64 = self.load(base, mode="fixed", nonce=hit_tag, concurrency=64,
                                       duration_s=self.hit_duration_s)
        result.cpu_us_per_request["hit_c64"] = _per_req_us(cpu_s(pid) - cpu0, result.hit_c64)
        result.rss_load_max_mib = sampler.max_mib
        result.upstream_calls_during_hits = upstream_calls(stub) - calls_before


def _per_req_us(cpu_seconds: float, load: LoadResult) -> float:
    return cpu_seconds / load.requests * 1e6 if load.requests else float("nan")


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def _invalid(load: LoadResult | None) -> str | None:
    """Why a phase's figures may not be used (``None``: they may)."""
    if load is None:
        return "not measured"
    if load.requests == 0:
        return "no request completed"
    if load.errors:
        return f"invalid: {load.errors} of {load.requests} requests failed"
    return None


def _target(value: float | None, limit: float, *, unit: str, why: str | None = None,
            ratio_of: str | None = None) -> dict[str, Any]:
    """One target result; ``value`` None (with ``why``) when its inputs were invalid: never a pass."""
    if value is None:
        return {"value": None, "limit": limit, "unit": unit, "pass": None, "why": why or "not measured"}
    out: dict[str, Any] = {"value": value, "limit": limit, "unit": unit,
                           "pass": value <= limit if unit != "x_min" else value >= limit}
    if ratio_of:
        out["ratio_of"] = ratio_of
    return out


def build_report(direct: LoadResult, proxies: list[ProxyResult], *,
                 relay: ProxyResult | None = None) -> tuple[str, dict[str, Any]]:
    """The table (every figure beside its peers of the same run) and the targets derived from valid figures only."""
    columns = ([relay] if relay is not None else []) + proxies
    cols = ["direct upstream"] + [p.name for p in columns]
    rows: list[tuple[str, list[str]]] = []

    def per(phase: str, fn: Any) -> list[str]:
        out = []
        for p in columns:
            load = getattr(p, phase)
            if p.error is not None:
                out.append("failed")
            elif load is None:
                out.append("—")
            else:
                bad = _invalid(load)
                out.append(fn(p, load) if bad is None else f"invalid ({load.errors} errors)")
        return out

    direct_bad = _invalid(direct)
    rows.append(("miss p50 / p99 (ms)", [f"{direct.p50_ms:.2f} / {direct.p99_ms:.2f}" if not direct_bad else "invalid"]
                 + per("miss", lambda p, m: f"{m.p50_ms:.2f} / {m.p99_ms:.2f}")))
    rows.append(("miss overhead p50 / p99 (ms)", ["—"]
                 + per("miss", lambda p, m: f"{m.p50_ms - direct.p50_ms:.2f} / {m.p99_ms - direct.p99_ms:.2f}")))

    def cpu(phase: str) -> Any:
        return lambda p, m: f"{p.cpu_us_per_request.get(phase, float('nan')):.0f}"

    rows.append(("CPU µs/request, miss", ["—"] + per("miss", cpu("miss"))))
    rows.append(("hit p50 / p99 (ms), c=1", ["—"] + per("hit", lambda p, m: f"{m.p50_ms:.3f} / {m.p99_ms:.3f}")))
    rows.append(("CPU µs/request, hit c=1", ["—"] + per("hit", cpu("hit"))))
    rows.append(("hit throughput c=64 (req/s)", ["—"] + per("hit_c64", lambda p, m: f"{m.rps:,.0f}")))
    rows.append(("hit p50 / p99 at c=64 (ms)", ["—"] + per("hit_c64", lambda p, m: f"{m.p50_ms:.2f} / {m.p99_ms:.2f}")))
    rows.append(("CPU µs/request, hit c=64", ["—"] + per("hit_c64", cpu("hit_c64"))))
    rows.append(("RSS idle → max under load (MiB)", ["—"] + [
        "—" if p.error is not None or p.hit_c64 is None else
        f"{_fmt(p.rss_idle_mib, digits=0)} → {_fmt(p.rss_load_max_mib, digits=0)}" for p in columns]))
    rows.append(("upstream calls during hit phases", ["—"] + [
        "—" if p.upstream_calls_during_hits is None else str(p.upstream_calls_during_hits) for p in columns]))
    rows.append(("errors (non-2xx, socket)", [str(direct.errors)] + [
        "failed" if p.error is not None else
        str(sum(x.errors for x in (p.miss, p.hit, p.hit_c64) if x is not None)) for p in columns]))
    rows.append(("requests measured", [str(direct.requests)] + [
        "failed" if p.error is not None else
        "+".join(str(x.requests) for x in (p.miss, p.hit, p.hit_c64) if x is not None) for p in columns]))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [" | ".join([" " * width0] + [c.rjust(w) for c, w in zip(cols, widths)])]
    lines.append("-+-".join(["-" * width0] + ["-" * w for w in widths]))
    for label, vals in rows:
        lines.append(" | ".join([label.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]))

    ours = next((p for p in proxies if p.name == "llmcache"), None)
    lite = next((p for p in proxies if p.name == "litellm"), None)
    targets: dict[str, Any] = {}
    if ours is not None:
        ours_why = ours.error
        miss_bad = ours_why or _invalid(ours.miss) or (f"direct upstream {direct_bad}" if direct_bad else None)
        overhead = None if miss_bad else ours.miss.p50_ms - direct.p50_ms
        targets["miss_overhead_p50_le_1ms"] = _target(overhead, 1.0, unit="ms", why=miss_bad)
        relay_bad = ("no relay run" if relay is None else relay.error or _invalid(relay.miss))
        bad = miss_bad or (f"relay {relay_bad}" if relay_bad else None)
        relay_overhead = None if bad else relay.miss.p50_ms - direct.p50_ms
        ratio = None if bad else overhead / max(relay_overhead, 1e-3)
        targets["miss_overhead_le_1_4x_relay"] = _target(ratio, 1.4, unit="x", why=bad,
                                                         ratio_of="llmcache / relay miss overhead p50")
        cpu_ratio = None if bad else ours.cpu_us_per_request["miss"] / relay.cpu_us_per_request["miss"]
        targets["miss_cpu_le_1_3x_relay"] = _target(cpu_ratio, 1.3, unit="x", why=bad,
                                                    ratio_of="llmcache / relay CPU µs per miss")
        hit_bad = ours_why or _invalid(ours.hit)
        targets["hit_p50_le_0_3ms"] = _target(None if hit_bad else ours.hit.p50_ms, 0.30, unit="ms", why=hit_bad)
        c64_bad = ours_why or _invalid(ours.hit_c64)
        lite_bad = ("skipped" if lite is None else lite.error or _invalid(lite.hit_c64))
        bad = c64_bad or (f"LiteLLM {lite_bad}" if lite_bad else None)
        ratio = None if bad else ours.hit_c64.rps / max(lite.hit_c64.rps, 1e-9)
        targets["hit_throughput_ge_30x_litellm"] = _target(ratio, 30.0, unit="x_min", why=bad,
                                                           ratio_of="llmcache / LiteLLM hit req/s at c=64")
    lines.append("")
    for name, t in targets.items():
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        value = t["value"]
        shown = "—" if value is None else (f"{value:.3f} ms" if t["unit"] == "ms" else f"{value:.2f}×")
        lines.append(f"target {name}: {shown} → {verdict}" + (f" ({t['why']})" if t["pass"] is None else ""))
    for p in columns:
        if p.error:
            lines.append(f"{p.name} FAILED: {p.error}")
        for note in p.notes:
            lines.append(f"{p.name}: {note}")
    return "\n".join(lines), targets


def plot(direct: LoadResult, proxies: list[ProxyResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A side with errors is left out: its figures are invalid (see build_report).
    ok = [p for p in proxies if p.error is None and not any(_invalid(x) for x in (p.miss, p.hit, p.hit_c64))]
    if not ok:
        return
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
    ax.axhline(0.3, color="grey", ls="--", lw=1, label="target p50 ≤ 0.3 ms")
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
# for every moment the scheduler gave the CPU to Redis, wrk or the upstream). SIGUSR1 starts a
# fresh profile, SIGUSR2 stops it and writes it to OUT.<n>: one profile per measured phase, so
# the miss path is not drowned by the thousands of hits that follow it.
_PROFILED_MAIN = textwrap.dedent("""\
    import cProfile, signal, sys, time
    from llmcache import cli
    out = sys.argv.pop(1)
    state = {"prof": None, "n": 0}
    def start(*_):
        state["prof"] = cProfile.Profile(time.process_time)
        state["prof"].enable()
    def stop(*_):
        prof, state["prof"] = state["prof"], None
        if prof is not None:
            prof.disable()
            prof.dump_stats(f"{out}.{state['n']}")
            state["n"] += 1
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    cli.main(sys.argv[1:])
    """)

#: Phases profiled separately with --profile (the order measure_proxy runs them in).
PROFILED_PHASES = ("miss", "hit", "hit_c64")


def profile_report(path: Path, *, phase: str, num_requests: int) -> str:
    """Top functions of one phase's profile: by own time and by cumulative time on the request path."""
    import io
    import pstats

    buf = io.StringIO()
    buf.write(f"===== phase {phase}: {num_requests} requests (divide the seconds by it for per-request cost) =====\n")
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(
        r"(handlers|call|misses|exact|resp|breaker|keys|metrics|stats|streaming|upstream|web_protocol|"
        r"web_response|client\.py|client_reqrep|connection\.py|tasks\.py)", 45)
    return buf.getvalue()


def choose_loadgen(requested: str) -> tuple[str, str | None]:
    """``wrk`` (required by default), or the aiohttp client process when asked for by name."""
    if requested == "aiohttp":
        return "aiohttp", ("aiohttp client process as load generator (--loadgen aiohttp): its own CPU use "
                           "caps the hit throughput it can measure; the throughput ratio is not comparable")
    if shutil.which("wrk"):
        return "wrk", None
    raise SystemExit("proxy_bench: wrk is not installed; install it (Debian/Ubuntu: `apt-get install -y wrk`), or "
                     "run with --loadgen aiohttp, whose figures are capped by the generator's own CPU")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=6.0, help="length of each c=1 phase (default 6 s)")
    ap.add_argument("--hit-duration-s", type=float, default=10.0, help="length of the c=64 phase (default 10 s)")
    ap.add_argument("--upstream-latency-ms", type=float, default=20.0, help="stub's fixed answer time (default 20)")
    ap.add_argument("--loadgen", choices=("wrk", "aiohttp"), default="wrk",
                    help="wrk (default; required: `apt-get install -y wrk`) or the aiohttp client process")
    ap.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                    help="event loop of llmcache and of the bare relay (as `llmcache proxy --event-loop`)")
    ap.add_argument("--skip-litellm", action="store_true", help="measure llmcache and the direct upstream only")
    ap.add_argument("--litellm-spec", default=LITELLM_SPEC, help=f"pip spec for LiteLLM (default {LITELLM_SPEC})")
    ap.add_argument("--profile", action="store_true",
                    help="run llmcache under cProfile (CPU-time clock), one profile per phase (miss, hit, hit c=64), "
                         "and write the hot functions to benchmarks/results/proxy_bench_profile.txt; implies "
                         "--skip-litellm, and its "
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
    bench = Bench(loadgen=loadgen, duration_s=args.duration_s, hit_duration_s=args.hit_duration_s, workdir=work,
                  profile=args.profile)
    proxies: list[ProxyResult] = []
    started = time.time()
    load_at_start = os.getloadavg()[0]
    with EmbeddedRedis(with_search=False) as redis_server:
        stub_port, ours_port, lite_port = free_port(), free_port(), free_port()
        stub = f"http://127.0.0.1:{stub_port}"
        with _process([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{stub_port}",
                       "--latency-ms", f"{args.upstream_latency_ms:g}"],
                      log=work / "stub.log", env=env, cwd=work) as sp:
            _wait_http(stub + "/v1/models", timeout_s=60, proc=sp, log=work / "stub.log")
            for i in range(5):
                post_chat(stub, f"warm-direct-{i}")
            print(f"direct upstream: miss latency (c=1, {args.duration_s:g}s) …", flush=True)
            direct = bench.load(stub, mode="unique", nonce=f"direct-{uuid.uuid4().hex[:8]}", concurrency=1)

            relay_port = free_port()
            relay: ProxyResult | None = None
            if not args.profile:
                relay = ProxyResult("bare relay")
                print(f"bare aiohttp relay (floor): miss latency (c=1, {args.duration_s:g}s) …", flush=True)
                try:
                    with _process([sys.executable, str(Path(__file__).resolve()), "_relay", str(relay_port), stub,
                                   args.event_loop], log=work / "relay.log", env=env, cwd=work) as rp:
                        rbase = f"http://127.0.0.1:{relay_port}"
                        _wait_http(rbase + "/healthz", timeout_s=60, proc=rp, log=work / "relay.log")
                        for i in range(5):
                            post_chat(rbase, f"warm-relay-{i}")
                        cpu0 = cpu_s(rp.pid)
                        relay.miss = bench.load(rbase, mode="unique", nonce=f"relay-{uuid.uuid4().hex[:8]}",
                                                concurrency=1)
                        relay.cpu_us_per_request["miss"] = _per_req_us(cpu_s(rp.pid) - cpu0, relay.miss)
                except Exception as exc:  # noqa: BLE001 - reported in the table; no ratio is derived from it
                    relay.error = f"{type(exc).__name__}: {exc}"

            ours = ProxyResult("llmcache")
            proxies.append(ours)
            base = f"http://127.0.0.1:{ours_port}"
            prof_path = work / "llmcache.prof"
            launcher = ["-c", _PROFILED_MAIN, str(prof_path)] if args.profile else ["-m", "llmcache"]
            argv_ours = [sys.executable, *launcher, "proxy", "--listen", f"127.0.0.1:{ours_port}",
                         "--upstream", stub, "--redis-url", redis_server.url, "--mode", "exact",
                         "--event-loop", args.event_loop]
            try:
                with _process(argv_ours, log=work / "llmcache.log", env=env, cwd=work) as pp:
                    _wait_http(base + "/healthz", timeout_s=60, proc=pp, log=work / "llmcache.log")
                    _wait_near_cache(base, timeout_s=30)
                    bench.measure_proxy(ours, base, stub, pp.pid)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                ours.error = f"{type(exc).__name__}: {exc}"

            if args.profile and ours.error is None:
                loads = {"miss": ours.miss, "hit": ours.hit, "hit_c64": ours.hit_c64}
                report = "\n".join(
                    profile_report(Path(f"{prof_path}.{i}"), phase=phase, num_requests=loads[phase].requests)
                    for i, phase in enumerate(PROFILED_PHASES) if Path(f"{prof_path}.{i}").exists())
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
                    lenv.update({"LITELLM_MASTER_KEY": API_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                 "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"})
                    base = f"http://127.0.0.1:{lite_port}"
                    with _process([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(lite_port),
                                   "--num_workers", "1"], log=work / "litellm.log", env=lenv, cwd=work) as lp:
                        _wait_http(base + "/health/liveliness", timeout_s=240, proc=lp, log=work / "litellm.log")
                        bench.measure_proxy(lite, base, stub, lp.pid)
                except Exception as exc:  # noqa: BLE001 - reported in the table, ours still reported
                    lite.error = f"{type(exc).__name__}: {exc}"[:2000]

    table, targets = build_report(direct, proxies, relay=relay)
    header = (f"proxy_bench: upstream {args.upstream_latency_ms:g} ms fixed, loadgen {loadgen}, event loop "
              f"{args.event_loop} (llmcache and the bare relay), {os.cpu_count()} CPUs, load avg "
              f"{load_at_start:.1f} → {os.getloadavg()[0]:.1f}, {time.time() - started:.0f}s total")
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
                   "litellm_spec": None if args.skip_litellm else args.litellm_spec, "event_loop": args.event_loop},
        "direct_upstream": asdict(direct),
        "bare_aiohttp_relay": None if relay is None else asdict(relay),
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
        _relay_main(int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        _url, _mode, _nonce, _conc, _dur, _key = sys.argv[2:8]
        print(json.dumps(asyncio.run(_aiohttp_load(_url, _mode, _nonce, int(_conc), float(_dur), _key))))
        raise SystemExit(0)
    raise SystemExit(main())
