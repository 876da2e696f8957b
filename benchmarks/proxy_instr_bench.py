#!/usr/bin/env python3
"""CPU work per request, noise-free: instructions (callgrind ``Ir``) of llmcache and a bare aiohttp relay.

On a shared 2-core machine CPU time per request moves with whatever else runs (caches,
sibling hyper-threads, frequency); the number of instructions a process executes for the
same requests does not. This runs each server under ``valgrind --tool=callgrind`` (needs
``valgrind``: ``apt-get install -y valgrind``), sends the same keep-alive requests through
it, and reads the instructions executed per request from callgrind dumps taken before and
after each phase (each phase ends with a short pause, so background stores are counted)::

    bare relay (proxy_bench's, same event loop)  miss, streamed miss
    llmcache --mode exact                         miss, hit, streamed miss (recorded into an entry)
    llmcache --mode exact --single-flight-lease   miss (with --lease: the cross-pod lease's cost)

A streamed miss asks for ``"stream": true``: the stub answers it one SSE event per word, and
llmcache relays each one and folds it into the entry it stores (``proxy/streaming.py``).

Instructions count user space only (system calls are not in them) and are no latency
claim; ``proxy_bench.py`` gives the latencies and CPU time beside its peers.

    .venv/bin/python benchmarks/proxy_instr_bench.py [--requests 40] [--event-loop auto] [--lease]

Writes ``benchmarks/results/proxy_instr_bench.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proxy_bench as pb  # noqa: E402

from llmcache.redis_server import EmbeddedRedis, free_port  # noqa: E402


def _total_ir(path: str) -> int:
    text = Path(path).read_text()
    m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(m.group(1))


def _dump(pid: int, workdir: Path) -> str:
    """Dump (and zero) the counters of process ``pid``; the path of the new dump."""
    before = set(glob.glob(str(workdir / f"cg.out.{pid}.*")))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=300, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(glob.glob(str(workdir / f"cg.out.{pid}.*"))) - before
        if new:
            time.sleep(0.3)  # written completely
            return max(new, key=os.path.getmtime)
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def _requests(port: int, tags: list[str], *, stream: bool = False) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for tag in tags:
            body = pb._body(tag)  # noqa: SLF001 - the same bodies
            if stream:
                body = json.dumps({**json.loads(body), "stream": True}).encode()
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {pb.API_KEY}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"request answered HTTP {resp.status}: no figure from a failing side")
    finally:
        conn.close()


def measure(name: str, argv: list[str], *, port: int, phases: list[str], n: int, workdir: Path,
            env: dict[str, str]) -> dict[str, float]:
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/cg.out.%p", "--dump-instr=no"]
    out: dict[str, float] = {}
    with pb._process(vg + argv, log=workdir / f"{name}.log", env=env, cwd=workdir) as proc:  # noqa: SLF001
        pb._wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=900, proc=proc,  # noqa: SLF001
                      log=workdir / f"{name}.log")
        if name.startswith("llmcache"):
            pb._wait_near_cache(f"http://127.0.0.1:{port}", timeout_s=300)  # noqa: SLF001 - slow under valgrind
        run = uuid.uuid4().hex[:8]
        _requests(port, [f"warm-{run}-{i}" for i in range(10)])
        for phase in phases:
            if phase == "hit":
                _requests(port, [f"hit-{run}"] * 5)  # stored, then hits
                time.sleep(0.5)
            _dump(proc.pid, workdir)
            if phase == "hit":
                _requests(port, [f"hit-{run}"] * n)
            else:
                _requests(port, [f"{phase}-{run}-{i}" for i in range(n)], stream=phase == "stream")
            time.sleep(0.3)  # background stores (after the answers) belong to the phase
            out[phase] = _total_ir(_dump(proc.pid, workdir)) / n
            print(f"  {name} {phase}: {out[phase] / 1e6:.3f} M instructions per request", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40, help="requests per phase (default 40)")
    ap.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--lease", action="store_true",
                    help="also measure llmcache's miss with --single-flight-lease (the cross-pod lease)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "proxy_instr_bench.json")
    args = ap.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("proxy_instr_bench: needs valgrind (Debian/Ubuntu: `apt-get install -y valgrind`)")
    workdir = Path(tempfile.mkdtemp(prefix="llmcache-instr-"))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}
    result: dict[str, Any] = {"benchmark": "proxy_instr_bench",
                              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "command": " ".join(["python", "benchmarks/proxy_instr_bench.py",
                                                   *(argv or sys.argv[1:])]),
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "load_avg_1m": os.getloadavg()[0]},
                              "event_loop": args.event_loop, "requests_per_phase": args.requests}
    with EmbeddedRedis(with_search=False) as redis_server:
        stub_port = free_port()
        stub = f"http://127.0.0.1:{stub_port}"
        with pb._process([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen",  # noqa: SLF001
                          f"127.0.0.1:{stub_port}", "--latency-ms", "1"], log=workdir / "stub.log", env=env,
                         cwd=workdir) as sp:
            pb._wait_http(stub + "/v1/models", timeout_s=60, proc=sp)  # noqa: SLF001
            port = free_port()
            result["bare relay"] = measure("bare relay", [sys.executable, str(HERE / "proxy_bench.py"), "_relay",
                                                          str(port), stub, args.event_loop],
                                           port=port, phases=["miss", "stream"], n=args.requests, workdir=workdir,
                                           env=env)
            port = free_port()
            result["llmcache"] = measure("llmcache", [sys.executable, "-m", "llmcache", "proxy", "--listen",
                                                      f"127.0.0.1:{port}", "--upstream", stub, "--redis-url",
                                                      redis_server.url, "--mode", "exact", "--event-loop",
                                                      args.event_loop, "--redis-timeout-ms", "5000"],
                                         port=port, phases=["miss", "hit", "stream"], n=args.requests,
                                         workdir=workdir, env=env)
            if args.lease:
                port = free_port()
                result["llmcache lease"] = measure(
                    "llmcache lease", [sys.executable, "-m", "llmcache", "proxy", "--listen", f"127.0.0.1:{port}",
                                       "--upstream", stub, "--redis-url", redis_server.url, "--mode", "exact",
                                       "--event-loop", args.event_loop, "--redis-timeout-ms", "5000",
                                       "--single-flight-lease"],
                    port=port, phases=["miss"], n=args.requests, workdir=workdir, env=env)
    ratio = result["llmcache"]["miss"] / result["bare relay"]["miss"]
    result["miss_ratio_to_relay"] = ratio
    print(f"\nM instructions per request (callgrind, user space; event loop {args.event_loop}):")
    print(f"  bare relay  miss {result['bare relay']['miss'] / 1e6:.3f}")
    print(f"  llmcache    miss {result['llmcache']['miss'] / 1e6:.3f} ({ratio:.2f}× the relay), "
          f"hit {result['llmcache']['hit'] / 1e6:.3f}")
    stream_ratio = result["llmcache"]["stream"] / result["bare relay"]["stream"]
    result["stream_ratio_to_relay"] = stream_ratio
    print(f"  streamed miss: relay {result['bare relay']['stream'] / 1e6:.3f}, llmcache "
          f"{result['llmcache']['stream'] / 1e6:.3f} ({stream_ratio:.2f}× the relay)")
    if args.lease:
        leased = result["llmcache lease"]["miss"]
        print(f"  llmcache    miss with --single-flight-lease {leased / 1e6:.3f} "
              f"({leased / result['bare relay']['miss']:.2f}× the relay)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["relay miss", "llmcache miss", "llmcache hit"]
    values = [result["bare relay"]["miss"] / 1e6, result["llmcache"]["miss"] / 1e6, result["llmcache"]["hit"] / 1e6]
    colors = ["tab:gray", "tab:green", "tab:blue"]
    if args.lease:
        labels.append("leased miss")
        values.append(result["llmcache lease"]["miss"] / 1e6)
        colors.append("tab:olive")
    labels += ["relay stream", "llmcache stream"]
    values += [result["bare relay"]["stream"] / 1e6, result["llmcache"]["stream"] / 1e6]
    colors += ["tab:gray", "tab:green"]
    ax.bar(labels, values, color=colors)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylabel("M instructions per request")
    ax.set_title(f"CPU work per request (callgrind), event loop {args.event_loop}")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
