"""benchmarks/proxy_bench.py cannot report a false win (issue 23, item 5)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llmcache.testing.threaded import serve_in_thread

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "proxy_bench.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("proxy_bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load(bench: Any, *, p50_ms: float, errors: int = 0, requests: int = 1000, rps: float = 0.0) -> Any:
    return bench.LoadResult(requests=requests, duration_s=5.0, p50_ms=p50_ms, p90_ms=p50_ms, p99_ms=p50_ms,
                            max_ms=p50_ms, errors=errors, rps=rps)


def test_a_side_with_errors_is_invalid_and_yields_no_target(bench: Any) -> None:
    direct = load(bench, p50_ms=20.0)
    ours = bench.ProxyResult("llmcache", miss=load(bench, p50_ms=20.5), hit=load(bench, p50_ms=0.2),
                             hit_c64=load(bench, p50_ms=5, rps=4000.0),
                             cpu_us_per_request={"miss": 700.0, "hit": 150.0, "hit_c64": 120.0})
    # Every LiteLLM request failed fast: its figures look great and must count for nothing.
    lite = bench.ProxyResult("litellm", miss=load(bench, p50_ms=1.0, errors=7276, requests=7276),
                             hit=load(bench, p50_ms=0.1, errors=500, requests=500),
                             hit_c64=load(bench, p50_ms=1, errors=9000, requests=9000, rps=9000.0))
    relay = bench.ProxyResult("bare relay", miss=load(bench, p50_ms=20.4), cpu_us_per_request={"miss": 600.0})
    table, targets = bench.build_report(direct, [ours, lite], relay=relay)
    t = targets["hit_throughput_ge_30x_litellm"]
    assert t["pass"] is None and t["value"] is None and "LiteLLM invalid" in t["why"]
    assert "invalid (7276 errors)" in table and "9,000" not in table
    assert "target hit_throughput_ge_30x_litellm: — → n/a" in table
    # Our own valid figures still give their targets, as ratios of the same run.
    assert targets["miss_overhead_p50_le_1ms"]["pass"] is True
    assert targets["miss_cpu_le_1_3x_relay"]["value"] == pytest.approx(700 / 600)
    assert targets["miss_overhead_le_1_4x_relay"]["value"] == pytest.approx(0.5 / 0.4)
    assert targets["hit_p50_le_0_3ms"]["pass"] is True
    # And errors on our side void ours the same way.
    ours.miss = load(bench, p50_ms=20.1, errors=3)
    _, targets = bench.build_report(direct, [ours], relay=relay)
    assert all(targets[k]["pass"] is None for k in ("miss_overhead_p50_le_1ms", "miss_cpu_le_1_3x_relay",
                                                     "miss_overhead_le_1_4x_relay"))


def test_the_aiohttp_load_generator_sends_the_key_the_proxies_were_given(bench: Any) -> None:
    """It runs in a child process that imports the module anew: the key must travel with it."""
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {bench.API_KEY}":
            return web.json_response({"error": "No connected db"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    with serve_in_thread(app) as base:
        result = bench.run_aiohttp(base, mode="fixed", nonce="n", concurrency=2, duration_s=0.5)
    assert result.requests > 0 and result.errors == 0
    assert set(seen) == {f"Bearer {bench.API_KEY}"}


def test_cpu_counts_a_process_trees_threads_to_the_millisecond(bench: Any) -> None:
    """cpu_s reads the scheduler's nanoseconds for every live thread of the tree: a child that burns
    ~0.3 s in two threads (its own, and one it starts, which lives on as a server's threads do) is
    counted whole, and an idle parent adds next to nothing."""
    import subprocess
    import textwrap
    import time

    burn = textwrap.dedent("""
        import threading, time
        def spin(s):
            end = time.thread_time() + s
            while time.thread_time() < end:
                pass
        burnt = threading.Event()
        def worker():
            spin(0.15); burnt.set(); time.sleep(30)
        threading.Thread(target=worker, daemon=True).start()
        spin(0.15); burnt.wait()
        print("done", flush=True)
        time.sleep(30)
    """)
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"],
                              stdout=subprocess.PIPE, text=True)
    try:
        before = bench.cpu_s(parent.pid)
        assert parent.stdout is not None and parent.stdout.readline().strip() == "done"
        time.sleep(0.05)
        used = bench.cpu_s(parent.pid) - before
        assert 0.25 <= used <= 1.5, used
    finally:
        parent.kill()
        parent.wait()
