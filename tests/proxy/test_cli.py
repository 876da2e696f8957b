"""``llmcache proxy`` and the stub upstream as real processes, configured by flags and env vars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from llmcache.proxy import cli
from llmcache.redis_server import free_port


def wait_http(url: str, *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_proxy_process_with_env_and_flags(processes, redis_plain_url: str, tmp_path) -> None:
    stub_port, proxy_port = free_port(), free_port()
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{stub_port}",
         "--latency-ms", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    log_path = tmp_path / "proxy.log"
    env = {**os.environ, "LLMCACHE_REDIS_URL": redis_plain_url, "LLMCACHE_TENANT_SALT": "s3cret",
           "LLMCACHE_ADMIN_TOKEN": "tok", "LLMCACHE_MODE": "exact",
           # A CLI process on a shared 2-core box: not the 50 ms sidecar deadline, since this test
           # asserts an exact miss/hit sequence (the deadline itself: tests/proxy/test_failopen.py).
           "LLMCACHE_REDIS_TIMEOUT_MS": "2000"}
    with open(log_path, "wb") as log:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "llmcache", "--log-level=debug", "proxy", "--listen",
             f"127.0.0.1:{proxy_port}", "--upstream", f"http://127.0.0.1:{stub_port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    wait_http(f"http://127.0.0.1:{stub_port}/v1/models")
    wait_http(f"http://127.0.0.1:{proxy_port}/readyz")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="sk-cli-secret", max_retries=0)
    body = {"model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": "cli-prompt-text"}]}
    first = client.chat.completions.with_raw_response.create(**body)
    second = client.chat.completions.with_raw_response.create(**body)
    assert first.headers["x-llmcache-status"] == "miss" and second.headers["x-llmcache-status"] == "hit"
    assert first.parse().model_dump() == second.parse().model_dump()
    req = urllib.request.Request(f"http://127.0.0.1:{proxy_port}/llmcache/v1/invalidate", method="POST",
                                 data=json.dumps({"all": True}).encode(),
                                 headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert json.load(r)["deleted"] == 1  # the admin token came from LLMCACHE_ADMIN_TOKEN
    # `llmcache stats` reads the counters the proxy flushed (once a second).
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--redis-url", redis_plain_url, "--json"],
                             capture_output=True, text=True, check=True).stdout
        rows = json.loads(out)
        if rows and rows[0]["hit"] == 1:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert rows[0]["namespace"] == "default" and rows[0]["miss"] == 1 and rows[0]["hit_rate"] == 0.5
    table = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--redis-url", redis_plain_url],
                           capture_output=True, text=True, check=True).stdout
    assert "namespace" in table.splitlines()[0] and "default" in table
    # Through the proxy's stats endpoint, which needs the admin token (sent by `llmcache stats`).
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    via_proxy = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--proxy-url", proxy_url, "--json"],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "LLMCACHE_ADMIN_TOKEN": "tok"})
    assert json.loads(via_proxy.stdout)[0]["hit"] == 1
    refused = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--proxy-url", proxy_url, "--admin-token",
                              "wrong"], capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "--admin-token" in refused.stderr
    processes[1].terminate()
    processes[1].wait(timeout=10)
    logged = log_path.read_text()
    assert "llmcache proxy on" in logged
    assert "event loop: uvloop" in logged  # --event-loop auto, with uvloop installed by llmcache[proxy]
    assert "cli-prompt-text" not in logged and "sk-cli-secret" not in logged and "s3cret" not in logged


def test_settings_from_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("LLMCACHE_TTL_SECONDS", "120")
    monkeypatch.setenv("LLMCACHE_MAX_BODY_BYTES", "1Mi")
    monkeypatch.setenv("LLMCACHE_NON_DETERMINISTIC", "cache-if-seeded")
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    s = cli.settings_from_args(parser.parse_args(["--mode", "exact", "--redis-timeout-ms", "20"]))
    assert s.cache.ttl_s == 120 and s.cache.max_body_bytes == 1024**2
    assert s.cache.non_deterministic == "cache-if-seeded" and s.redis.timeout_ms == 20
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    from llmcache.errors import ConfigError
    with pytest.raises(ConfigError):
        cli.settings_from_args(parser.parse_args(["--ttl-seconds", "0"]))
    with pytest.raises(SystemExit):  # now refused while parsing, naming the flag (tests/docs/test_mistakes.py)
        parser.parse_args(["--upstream", "ftp://x"])
    monkeypatch.setenv("LLMCACHE_MODE", "fuzzy")
    with pytest.raises(ConfigError, match="LLMCACHE_MODE"):
        cli.configure(argparse.ArgumentParser())


def test_documented_defaults() -> None:
    from llmcache.proxy import settings as ps

    s = ps.ProxySettings()
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    assert s.cache.ttl_s == 3600 and s.cache.max_body_bytes == 2 * 1024**2  # 2 MiB since issue 14 (was 16)
    assert s.cache.anonymous == "bypass" and s.upstream.enable_cache_salt
    assert s.redis.timeout_ms == 50 and s.cache.non_deterministic == "bypass"
    assert s.cache.tenant_header == "Authorization" and s.observability.otlp_endpoint is None


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import uvloop

    from llmcache.errors import ConfigError

    for kind, expected in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = cli.new_event_loop(kind)
        try:
            assert isinstance(loop, expected)
            assert loop.run_until_complete(asyncio.sleep(0, result=kind)) == kind
        finally:
            loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a platform without it
    loop = cli.new_event_loop("auto")
    assert not isinstance(loop, uvloop.Loop)
    loop.close()
    with pytest.raises(ConfigError, match="--event-loop asyncio"):
        cli.new_event_loop("uvloop")


def test_error_bound_flags_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """--semantic-max-error-rate ↔ LLMCACHE_SEMANTIC_MAX_ERROR_RATE ↔ spec.semantic.maxErrorRate; judge flags."""
    import argparse

    from llmcache.errors import ConfigError

    monkeypatch.setenv("LLMCACHE_SEMANTIC_MAX_ERROR_RATE", "0.01")
    monkeypatch.setenv("LLMCACHE_JUDGE_BUDGET", "0.02")
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    s = cli.settings_from_args(parser.parse_args(["--mode", "both", "--judge-url", "http://judge:8000/v1",
                                                  "--judge-model", "qwen-0.5b", "--judge-explore-rate", "0.1"]))
    assert s.semantic.max_error_rate == 0.01
    assert (s.judge.url, s.judge.model, s.judge.budget, s.judge.explore_rate) == (
        "http://judge:8000/v1", "qwen-0.5b", 0.02, 0.1)
    for bad in ("0", "0.9", "-0.01"):
        with pytest.raises(ConfigError, match="--semantic-max-error-rate"):
            cli.settings_from_args(parser.parse_args(["--semantic-max-error-rate", bad]))
    with pytest.raises(ConfigError, match="--judge-url"):
        cli.settings_from_args(parser.parse_args(["--judge-url", "judge:8000"]))
    with pytest.raises(ConfigError, match="--judge-budget"):
        cli.settings_from_args(parser.parse_args(["--judge-budget", "1.5"]))


def test_error_bound_defaults() -> None:
    from llmcache.proxy import settings as ps

    s = ps.ProxySettings()
    assert s.semantic.max_error_rate is None and s.judge.url is None  # off; the answer judge when on
    assert s.judge.budget == 0.05 and s.judge.explore_rate == 0.05 and s.judge.votes == 3
    assert s.judge.queue_size == 256 and s.judge.refresh_s == 1.0


def test_stats_cli_prints_each_policys_error_bound(redis_plain_url: str) -> None:
    """`llmcache stats` reads each partition's model and fits it at the bound its sidecars last applied."""
    import redis

    from llmcache import errorbound as eb
    from llmcache import stats
    from llmcache.keyspace import DEFAULT_GROUP, Keyspace

    team, other = Keyspace().for_partition("team"), Keyspace().for_partition("other")
    client = redis.Redis.from_url(redis_plain_url)
    try:
        client.hset(team.stats(stats.ns_hash("docs", policy="team/p")),
                    mapping={"namespace": "docs", "policy": "team/p", "miss": 5, "semantic_hit": 2})
        b = eb.similarity_bin(0.97)
        client.hset(team.bound("team/p"), mapping={
            "current": "v1", eb.total_field("v1", "delta"): "0.05", eb.cell_field("v1", "s", b, "n"): 90,
            eb.cell_field("v1", "s", b, "j"): 70, eb.total_field("v1", "gained"): 12})
        # Another namespace's pods without a policy learn their own _default model, not team's.
        client.hset(other.stats(stats.ns_hash("docs")), mapping={"namespace": "docs", "miss": 1})
        client.hset(other.bound(DEFAULT_GROUP), mapping={
            "current": "v1", eb.total_field("v1", "delta"): "0.05", eb.cell_field("v1", "s", b, "n"): 3,
            eb.cell_field("v1", "s", b, "j"): 3})
    finally:
        client.close()
    out = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--redis-url", redis_plain_url, "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {row["partition"]: row for row in json.loads(out)}
    bound = rows["team"]["error_bound"]["team/p"]
    assert bound["bounded"] and bound["judged"] == 70 and bound["gained"] == 12 and bound["max_error_rate"] == 0.05
    assert rows["other"]["error_bound"][DEFAULT_GROUP]["judged"] == 3
    table = subprocess.run([sys.executable, "-m", "llmcache", "stats", "--redis-url", redis_plain_url],
                           capture_output=True, text=True, check=True).stdout
    line = next(x for x in table.splitlines() if x.split()[:2] == ["team", "team/p"])
    assert "bounded (error ≤" in line and " 70 " in line
    line = next(x for x in table.splitlines() if x.split()[:2] == ["other", DEFAULT_GROUP])
    assert "learning (3 judged" in line
