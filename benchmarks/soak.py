#!/usr/bin/env python3
"""Soak: many mixed requests at high concurrency through `llmcache up`, with faults on a schedule.

Everything runs on loopback, each part in its own process::

    this client (aiohttp, --concurrency) ──▶ `llmcache up` (the proxy) ──miss──▶ stub upstream
                                                 │                          (deterministic answers,
                                           Redis (Valkey, killed and          faults per request)
                                            restarted by this script)

`llmcache up --upstream STUB --redis-url REDIS` starts only the proxy: the bundled model
answers in seconds on a CPU, which would bound the run to a few hundred requests, and the
stub can inject upstream faults per request (``X-Stub-Fault``). Redis is this script's own
process so it can be killed and restarted while `up` keeps running.

The run is cut into ten segments by request count; faults follow this schedule:

====  ==========================================================================
seg   fault
====  ==========================================================================
0     none (warm-up: the cache fills)
1     Redis SIGKILLed at the start, restarted (empty) at the start of segment 2
2     none (recovery)
3     upstream answers 500 for 10 % of the requests
4     upstream times out (proxy 504 after 2 s) for 1 %, resets the connection for 5 %
5     slowloris clients, bodies just under 2 MiB, deeply nested JSON
6     streaming clients that hang up after the first event (5 %)
7     Redis SIGKILLed again, restarted at the start of segment 8
8–9   none
====  ==========================================================================

Every answer is checked: the stub's answer is a function of the request body and the
``cache_salt`` the proxy adds for the tenant, so the expected text of each request, and of the
same request from every other tenant, is known. It prints:

- client errors caused by cache faults: requests without an injected upstream fault that did
  not get a 200 (must be 0);
- wrong answers served (must be 0) and cross-tenant hits (another tenant's answer; must be 0);
- the proxy's RSS maximum (bounded by its body budget, flight caps and queues: ``--rss-bound-mib``);
- the hit rate of the segment before and after each fault;
- what Redis holds before the load, at its end, and once the last entry's TTL has passed: entries,
  bookkeeping keys and their rows (rows beyond ``len(BOOKKEEPING_KINDS)`` per live entry are rows of
  expired entries), vector docs, keys without a TTL. Entries live ``--ttl-seconds`` (20 s), so
  many expire during the run; afterwards nothing of the cache may be left (must be 0 rows beyond
  live entries and no key without a TTL), with no operator running.

Run (from the repository root)::

    .venv/bin/python benchmarks/soak.py                        # 20,000 requests at 100 concurrent
    .venv/bin/python benchmarks/soak.py --requests 2000        # a smoke run

Writes ``benchmarks/results/soak.json`` and ``soak.png`` (``--out`` names the JSON). Exits 1
when a must-be-zero count is not zero or the RSS bound is exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from llmcache import keys
from llmcache.keyspace import BOOKKEEPING_KINDS, Keyspace
from llmcache.redis_server import EmbeddedRedis, free_port
from llmcache.testing.stub_upstream import answer_text

ROUTE = "/v1/chat/completions"
SALT = "soak-tenant-salt"
ADMIN = "soak-admin-token"
TENANTS = [f"sk-soak-tenant-{i}" for i in range(5)]
NUM_SEGMENTS = 10
FAULTS = {1: "redis killed", 3: "upstream 500s", 4: "upstream timeouts + resets",
          5: "slowloris + 2 MiB bodies + nested JSON", 6: "streaming clients hang up", 7: "redis killed again"}


@dataclass
class Outcome:
    segment: int
    kind: str
    """``normal`` (must succeed and be right), ``fault`` (upstream fault injected), ``abuse``."""
    http: int | None = None
    status: str | None = None
    verdict: str = "ok"
    """``ok``, ``wrong``, ``cross-tenant``, ``client-error``, ``expected-error``, ``shed``."""
    anonymous: bool = False
    """Sent without a credential (never cached by default: always ``bypass``)."""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)


# --- the parts -----------------------------------------------------------------------------------


def start_stub() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the stub upstream did not start within 60 s")


def start_up(stub_url: str, redis_url: str, log_dir: Path, *, ttl_s: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LLMCACHE_TENANT_SALT": SALT, "LLMCACHE_ADMIN_TOKEN": ADMIN, "LLMCACHE_MODE": "exact",
           "LLMCACHE_UPSTREAM_TIMEOUT_SECONDS": "2", "LLMCACHE_BODY_TIMEOUT_SECONDS": "2",
           "LLMCACHE_TTL_SECONDS": str(ttl_s)}
    log = (log_dir / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmcache", "up", "--upstream", stub_url, "--redis-url", redis_url,
                             "--listen", f"127.0.0.1:{port}", "--log-dir", str(log_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def proxy_pid(up_pid: int) -> int | None:
    """The `llmcache proxy` child of the `up` process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == up_pid and b"proxy" in cmd:
            return int(entry.name)
    return None


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def wait_ready(session: aiohttp.ClientSession, url: str, *, timeout_s: float,
                     proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`llmcache up` exited with {proc.returncode} before it was ready (see its log)")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit(f"{url} was not ready within {timeout_s:.0f} s")


# --- what Redis holds ----------------------------------------------------------------------------


def redis_census(url: str) -> dict[str, int]:
    """Keys and rows in Redis by kind, and the keys without a TTL (a full SCAN: a measurement, not a hot path)."""
    ks = Keyspace()
    kinds = {"e": "entries", "g": "bookkeeping_keys", "v": "vector_docs", "stats": "stats_keys"}
    out = dict.fromkeys((*kinds.values(), "bookkeeping_rows", "other_keys", "keys_without_ttl"), 0)
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        for key in client.scan_iter(count=1000):
            text = key.decode(errors="replace")
            # {p}:n:{partition}:{kind}:…: every key a sidecar writes lives in its namespace's partition
            partition = ks.partition_of(text)
            own = ks.for_partition(partition).partition_prefix if partition is not None else None
            head = text[len(own):].split(":", 1)[0] if own is not None else ""
            out[kinds.get(head, "other_keys")] += 1
            if head == "g":
                out["bookkeeping_rows"] += client.hlen(key) if text.endswith(":size") else client.zcard(key)
            if client.ttl(key) == -1:
                out["keys_without_ttl"] += 1
    finally:
        client.close()
    out["rows_beyond_live_entries"] = out["bookkeeping_rows"] - len(BOOKKEEPING_KINDS) * out["entries"]
    return out


def settle(url: str, *, timeout_s: float) -> tuple[dict[str, int], float]:
    """Wait until no entry and no bookkeeping is left (every TTL has passed); the census and the wait (s)."""
    started = time.monotonic()
    while True:
        census = redis_census(url)
        if (census["entries"] == 0 and census["bookkeeping_keys"] == 0) or time.monotonic() - started > timeout_s:
            return census, time.monotonic() - started
        time.sleep(1.0)


# --- requests and their checks -------------------------------------------------------------------


def expected_text(body: dict[str, Any], credential: str | None) -> str:
    """What the stub answers for ``body`` sent by ``credential`` (the proxy adds its cache_salt)."""
    tenant = keys.tenant_id(credential, SALT.encode())
    salted = {**body, "cache_salt": keys.cache_salt(tenant, SALT.encode(), partition="")}
    return answer_text(salted)


def content_of(payload: bytes, *, stream: bool) -> str | None:
    try:
        if not stream:
            return json.loads(payload)["choices"][0]["message"]["content"]
        text = []
        for line in payload.decode().splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                for choice in event.get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or "")
        return "".join(text)
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def normal_body(rng: random.Random, num_prompts: int) -> dict[str, Any]:
    prompt = int(num_prompts * rng.random() ** 3)  # a few hot prompts, a long tail
    return {"model": "stub-model", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "system", "content": "You answer support questions."},
                         {"role": "user", "content": f"Question number {prompt}: how do I do thing {prompt}?"}]}


async def normal(session: aiohttp.ClientSession, url: str, rng: random.Random, seg: int, *, num_prompts: int,
                 fault: str | None = None) -> Outcome:
    body = normal_body(rng, num_prompts)
    stream = rng.random() < 0.3
    credential = None if rng.random() < 0.02 else f"Bearer {rng.choice(TENANTS)}"
    headers = {"Authorization": credential} if credential else {}
    if fault:
        headers["X-Stub-Fault"] = fault
    out = Outcome(seg, "fault" if fault else "normal", anonymous=credential is None)
    try:
        async with session.post(url + ROUTE, json={**body, "stream": stream}, headers=headers) as r:
            out.http, out.status = r.status, r.headers.get("X-LLMCache-Status")
            payload = await r.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.verdict = "expected-error" if fault else "client-error"
        out.status = type(exc).__name__
        return out
    if out.http != 200:
        out.verdict = "expected-error" if fault else ("shed" if out.http == 429 else "client-error")
        return out
    got = content_of(payload, stream=stream)
    if got == expected_text(body, credential):
        return out
    others = {expected_text(body, f"Bearer {t}") for t in TENANTS} | {expected_text(body, None)}
    out.verdict = "cross-tenant" if got in others else "wrong"
    return out


async def abuse(session: aiohttp.ClientSession, url: str, rng: random.Random, seg: int) -> Outcome:
    """One hostile client: a slowloris body, a body just under 2 MiB, nested JSON, or a stream hang-up."""
    out = Outcome(seg, "abuse", verdict="expected-error")
    what = rng.choice(("slowloris", "big", "nested")) if seg == 5 else "hangup"
    auth = {"Authorization": f"Bearer {rng.choice(TENANTS)}"}
    try:
        if what == "slowloris":
            host, port = url.rsplit("/", 1)[1].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 5000\r\n\r\n{{".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
            out.http = int(line.split()[1]) if line else None
            writer.close()
        elif what == "big":
            body = {**normal_body(rng, 10), "pad": "x" * (2 * 1024**2 - 4096)}
            async with session.post(url + ROUTE, json=body, headers=auth) as r:
                out.http = r.status
                await r.read()
        elif what == "nested":
            raw = b'{"model":"stub-model","temperature":0,"messages":[],"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
            async with session.post(url + ROUTE, data=raw, headers={**auth, "Content-Type": "application/json"}) as r:
                out.http = r.status
                await r.read()
        else:
            body = {**normal_body(rng, 50), "stream": True, "max_tokens": 32}
            async with session.post(url + ROUTE, json=body, headers=auth) as r:
                out.http = r.status
                await r.content.readline()  # first event, then hang up
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        out.status = type(exc).__name__
    return out


# --- the run -------------------------------------------------------------------------------------


async def drive(url: str, redis: EmbeddedRedis, run: Run, *, num_requests: int, concurrency: int, num_prompts: int,
                max_seconds: float, min_segment_s: float, seed: int) -> float:
    rng = random.Random(seed)
    per_segment = max(1, num_requests // NUM_SEGMENTS)
    next_index = 0
    started = time.monotonic()
    segment_started = [-1]
    lock = asyncio.Lock()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency + 16)

    entered_at = [time.monotonic()]

    async def enter_segment(seg: int) -> None:
        async with lock:
            if seg <= segment_started[0]:
                return
            # A segment lasts at least min_segment_s, so a fault and its recovery (the breaker's
            # probe after its cool-down) play out in time, not only in request counts.
            if segment_started[0] >= 0:
                await asyncio.sleep(max(0.0, entered_at[0] + min_segment_s - time.monotonic()))
            entered_at[0] = time.monotonic()
            segment_started[0] = seg
            if seg in (1, 7):
                print(f"  segment {seg}: killing Redis", flush=True)
                await asyncio.to_thread(redis.kill)
            if seg in (2, 8):
                print(f"  segment {seg}: restarting Redis (empty)", flush=True)
                await asyncio.to_thread(redis.restart)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def worker() -> None:
            nonlocal next_index
            while next_index < num_requests and time.monotonic() - started < max_seconds:
                i = next_index
                next_index += 1
                seg = min(i // per_segment, NUM_SEGMENTS - 1)
                if seg > segment_started[0]:
                    await enter_segment(seg)
                roll = rng.random()
                fault = None
                if seg == 3 and roll < 0.10:
                    fault = "500"
                elif seg == 4 and roll < 0.01:
                    fault = "timeout"
                elif seg == 4 and roll < 0.06:
                    fault = "reset"
                if (seg == 5 and roll < 0.03) or (seg == 6 and roll < 0.05):
                    run.outcomes.append(await abuse(session, url, rng, seg))
                else:
                    run.outcomes.append(await normal(session, url, rng, seg, num_prompts=num_prompts, fault=fault))
                if len(run.outcomes) % 1000 == 0:
                    print(f"  {len(run.outcomes)} requests, {time.monotonic() - started:.0f} s", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - started


def sample_rss(pid: int, run: Run, stop: threading.Event) -> None:
    t0 = time.monotonic()
    while not stop.wait(0.25):
        rss = rss_bytes(pid)
        if rss is not None:
            run.rss_samples.append((time.monotonic() - t0, rss))


def hit_rate(outcomes: list[Outcome], seg: int) -> float | None:
    """Hits over the answered cacheable requests of segment ``seg`` (a bypass during an outage is no hit)."""
    looked = [o for o in outcomes if o.segment == seg and o.kind == "normal" and not o.anonymous
              and o.status in ("hit", "miss", "bypass")]
    return round(sum(o.status == "hit" for o in looked) / len(looked), 4) if looked else None


def report(run: Run, *, elapsed_s: float, rss_bound_mib: float, args: argparse.Namespace,
           redis_counts: dict[str, Any]) -> dict[str, Any]:
    verdicts = Counter(o.verdict for o in run.outcomes if o.kind == "normal")
    statuses = Counter(o.status for o in run.outcomes if o.kind == "normal")
    rss_max = max((r for _, r in run.rss_samples), default=0)
    faults = []
    for seg, name in FAULTS.items():
        end = seg + 1 if seg in (1, 7) else seg  # a Redis outage spans one segment; recovery after it
        faults.append({"segment": seg, "fault": name, "hit_rate_before": hit_rate(run.outcomes, seg - 1),
                       "hit_rate_during": hit_rate(run.outcomes, seg),
                       "hit_rate_after": hit_rate(run.outcomes, end + 1) if end + 1 < NUM_SEGMENTS else None})
    doc = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "requests": len(run.outcomes), "concurrency": args.concurrency, "elapsed_s": round(elapsed_s, 1),
        "requests_per_s": round(len(run.outcomes) / elapsed_s, 1) if elapsed_s else None,
        "normal_requests": sum(verdicts.values()),
        "client_errors_from_cache_faults": verdicts["client-error"],
        "wrong_answers": verdicts["wrong"], "cross_tenant_hits": verdicts["cross-tenant"],
        "shed_429": verdicts["shed"], "statuses": dict(statuses),
        "upstream_fault_requests": sum(o.kind == "fault" for o in run.outcomes),
        "abusive_requests": Counter(str(o.http) for o in run.outcomes if o.kind == "abuse"),
        "proxy_rss_max_mib": round(rss_max / 2**20, 1), "proxy_rss_bound_mib": rss_bound_mib,
        "faults": faults, "ttl_s": args.ttl_seconds, "redis": redis_counts,
    }
    print()
    print(f"soak: {doc['requests']} requests at {args.concurrency} concurrent in {doc['elapsed_s']} s "
          f"({doc['requests_per_s']} req/s) through `llmcache up`")
    rows = [("client errors caused by cache faults", doc["client_errors_from_cache_faults"], "0"),
            ("wrong answers served", doc["wrong_answers"], "0"),
            ("cross-tenant hits", doc["cross_tenant_hits"], "0"),
            ("requests shed with 429", doc["shed_429"], "-"),
            ("proxy RSS max (MiB)", doc["proxy_rss_max_mib"], f"<= {rss_bound_mib:g}")]
    print(f"{'check':<40} {'value':>10}  {'must be':>8}")
    for name, value, bound in rows:
        print(f"{name:<40} {value!s:>10}  {bound:>8}")
    print()
    print(f"{'seg':<4} {'fault':<42} {'hit rate before':>15} {'during':>8} {'after':>8}")
    for f in faults:
        cells = [("-" if f[k] is None else f"{f[k]:.1%}") for k in ("hit_rate_before", "hit_rate_during",
                                                                     "hit_rate_after")]
        print(f"{f['segment']:<4} {f['fault']:<42} {cells[0]:>15} {cells[1]:>8} {cells[2]:>8}")
    print(f"\nstatuses of checked requests: {dict(statuses)}; abusive requests by HTTP status: "
          f"{dict(doc['abusive_requests'])}")
    stages = [k for k in ("before", "end_of_load", "after_ttl") if redis_counts.get(k)]
    if stages:
        print(f"\nRedis (entries live {args.ttl_seconds} s; no operator running); after_ttl waited "
              f"{redis_counts.get('settle_s', 0):.0f} s")
        print(f"{'':<28}" + "".join(f"{k:>14}" for k in stages))
        for row in ("entries", "bookkeeping_keys", "bookkeeping_rows", "rows_beyond_live_entries", "vector_docs",
                    "stats_keys", "other_keys", "keys_without_ttl"):
            print(f"{row:<28}" + "".join(f"{redis_counts[k][row]:>14}" for k in stages))
    return doc


def plot(run: Run, doc: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'llmcache[demo]')")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    segs = list(range(NUM_SEGMENTS))
    rates = [hit_rate(run.outcomes, s) or 0 for s in segs]
    ax1.bar(segs, rates, color=["#c44" if s in FAULTS else "#48a" for s in segs])
    ax1.set_xlabel("segment (red: fault injected)")
    ax1.set_ylabel("hit rate of checked requests")
    ax1.set_title("hit rate per segment")
    if run.rss_samples:
        ax2.plot([t for t, _ in run.rss_samples], [r / 2**20 for _, r in run.rss_samples])
    ax2.axhline(doc["proxy_rss_bound_mib"], color="#c44", linestyle="--", label="bound")
    ax2.set_xlabel("s")
    ax2.set_ylabel("proxy RSS (MiB)")
    ax2.set_title("proxy memory")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000, help="requests in all (default 20000)")
    ap.add_argument("--concurrency", type=int, default=100, help="requests in flight (default 100)")
    ap.add_argument("--prompts", type=int, default=500, help="distinct prompts per tenant (default 500)")
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop issuing requests after this (default 1800)")
    ap.add_argument("--min-segment-seconds", type=float, default=5.0,
                    help="shortest segment, so outages and recoveries take real time (default 5)")
    ap.add_argument("--rss-bound-mib", type=float, default=512, help="the sidecar's memory limit (default 512)")
    ap.add_argument("--ttl-seconds", type=int, default=20,
                    help="entry TTL of the proxy (default 20: entries expire during the run, so the Redis "
                         "census shows whether their bookkeeping goes too)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"), help="result JSON")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="llmcache-soak-"))
    print(f"logs of `llmcache up` and its proxy: {log_dir}")
    redis = EmbeddedRedis(with_search=False).start()
    stub, stub_url = start_stub()
    up = None
    run = Run()
    stop = threading.Event()
    elapsed = 0.0
    redis_counts: dict[str, Any] = {"before": redis_census(redis.url)}
    try:
        up, url = start_up(stub_url, redis.url, log_dir, ttl_s=args.ttl_seconds)

        async def ready() -> None:
            async with aiohttp.ClientSession() as s:
                await wait_ready(s, url + "/readyz", timeout_s=120, proc=up)
        asyncio.run(ready())
        pid = proxy_pid(up.pid)
        if pid is None:
            raise SystemExit("could not find the proxy process of `llmcache up`")
        sampler = threading.Thread(target=sample_rss, args=(pid, run, stop), daemon=True)
        sampler.start()
        print(f"llmcache up at {url} (proxy pid {pid}), stub {stub_url}, Redis {redis.url}: "
              f"{args.requests} requests at {args.concurrency} concurrent", flush=True)
        elapsed = asyncio.run(drive(url, redis, run, num_requests=args.requests, concurrency=args.concurrency,
                                    num_prompts=args.prompts, max_seconds=args.max_seconds,
                                    min_segment_s=args.min_segment_seconds, seed=args.seed))
        stop.set()
        sampler.join()
        if up.poll() is not None:
            print(f"`llmcache up` exited with {up.returncode} during the run (see {log_dir})")
        redis_counts["end_of_load"] = redis_census(redis.url)
        print(f"  load done; waiting up to {args.ttl_seconds + 30} s for every TTL to pass", flush=True)
        redis_counts["after_ttl"], redis_counts["settle_s"] = settle(redis.url, timeout_s=args.ttl_seconds + 30)
    finally:
        stop.set()
        if up is not None and up.poll() is None:
            up.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(timeout=20)
            if up.poll() is None:
                up.kill()
        stub.terminate()
        try:
            stub.wait(timeout=10)
        except subprocess.TimeoutExpired:  # answers held by the timeout fault keep it busy
            stub.kill()
            stub.wait()
        redis.stop()
    doc = report(run, elapsed_s=elapsed, rss_bound_mib=args.rss_bound_mib, args=args, redis_counts=redis_counts)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(run, doc, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    after = redis_counts.get("after_ttl") or {}
    leaked = bool(after) and (after["rows_beyond_live_entries"] > 0 or after["keys_without_ttl"] > 0)
    bad = doc["client_errors_from_cache_faults"] or doc["wrong_answers"] or doc["cross_tenant_hits"] \
        or doc["proxy_rss_max_mib"] > args.rss_bound_mib or leaked
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
