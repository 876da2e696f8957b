"""The mistakes a newcomer makes get one clear line and the right exit code (issue 12).

Every command runs as a real ``python -m llmcache`` process against real Redis servers and a
real HTTP upstream (the stub), the way a user would type it. Exit codes: 2 for a usage
mistake (bad flag or env value, taken port, unknown flag), 1 when a part it needs is not
there. No test waits on wall-clock time except bounded waits for a real condition.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcache import cli, stack
from llmcache.redis_server import free_port
from llmcache.settings import UPSTREAM_HELP

LLMCACHE = [sys.executable, "-m", "llmcache"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMCACHE_")},
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLMCACHE, *argv], capture_output=True, text=True, env={**ENV, **(env or {})},
                          timeout=timeout_s, cwd="/")


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def wait_until(predicate, *, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def stub_upstream() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The OpenAI-speaking stub as a process on a free port: (root URL, process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: stack.upstream_problem(url, timeout_s=1) is None, timeout_s=30, what="the stub upstream")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Lines:
    """Collects a process's merged output lines in a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, needle: str, *, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {needle!r}; output:\n{''.join(self.lines)}")


# -- 1. `up` checks --redis-url and --upstream before it says it is up, and keeps watching -----
def test_up_refuses_an_unreachable_redis_url(unused_port: int) -> None:
    result = run("up", "--listen", f"127.0.0.1:{free_port()}", "--redis-url", f"redis://127.0.0.1:{unused_port}/0",
                 "--upstream", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"llmcache: error: Redis at redis://127.0.0.1:{unused_port}/0 (--redis-url, env "
                           "LLMCACHE_REDIS_URL) is unreachable: "), line
    assert "`llmcache redis`" in line and "leave --redis-url out" in line
    assert "llmcache is up" not in result.stdout and "starting" not in result.stdout


def test_up_refuses_an_unreachable_upstream(redis_plain_url: str, unused_port: int) -> None:
    result = run("up", "--listen", f"127.0.0.1:{free_port()}", "--redis-url", redis_plain_url,
                 "--upstream", f"http://127.0.0.1:{unused_port}/v1")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line == (f"llmcache: error: the upstream at http://127.0.0.1:{unused_port} (--upstream, env "
                    "LLMCACHE_UPSTREAM) is unreachable: Connection refused. Start it, fix the URL, or leave "
                    "--upstream out and `up` starts the bundled model server."), line
    assert "llmcache is up" not in result.stdout


def test_up_keeps_reporting_parts_that_go_away_and_come_back(redis_factory, stub_upstream, tmp_path: Path) -> None:
    redis_server = redis_factory(with_search=False)
    upstream, stub = stub_upstream
    proc = subprocess.Popen(
        [*LLMCACHE, "up", "--listen", f"127.0.0.1:{free_port()}", "--redis-url", redis_server.url,
         "--upstream", upstream, "--mode", "exact", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    out = Lines(proc)
    try:
        out.wait_for("llmcache is up:", timeout_s=180)
        port = redis_server.port
        redis_server.stop()
        line = out.wait_for("llmcache: warning: redis at", timeout_s=60)
        assert f"redis at {redis_server.url} is unreachable" in line
        assert "requests bypass the cache until it is back" in line
        redis_factory(with_search=False, port=port)
        out.wait_for(f"llmcache: redis at {redis_server.url} is reachable again", timeout_s=90)
        stub.terminate()
        stub.wait(timeout=10)
        line = out.wait_for("llmcache: warning: upstream at", timeout_s=60)
        assert f"upstream at {upstream} is unreachable: connection refused" in line
        assert proc.poll() is None  # still serving hits; it reports, it does not die
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


# -- 2. --upstream takes the root URL or the OpenAI base URL, described alike everywhere -------
def test_proxy_accepts_an_openai_base_url_as_upstream(stub_upstream, redis_plain_url: str) -> None:
    upstream, _ = stub_upstream
    port = free_port()
    proc = subprocess.Popen([*LLMCACHE, "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", upstream + "/v1/",
                             "--redis-url", redis_plain_url, "--mode", "exact"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    out = Lines(proc)
    try:
        banner = out.wait_for("point OpenAI clients at", timeout_s=60)
        assert f"→ {upstream} " in banner  # the /v1 was understood as the base URL
        body = {"model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer k"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and r.headers["X-LLMCache-Status"] == "miss"
            assert json.load(r)["object"] == "chat.completion"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("command", ["up", "demo", "proxy"])
def test_upstream_help_says_the_same_in_every_command(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert UPSTREAM_HELP in " ".join(result.stdout.split()), result.stdout


# -- 3. arguments and ports are checked first, in one line naming the flag and env var ---------
@pytest.mark.parametrize("command", ["stats", "proxy", "up", "operator"])
def test_redis_url_without_a_scheme_is_one_line_exit_2(command: str) -> None:
    result = run(command, "--redis-url", "localhost:6379")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"llmcache {command}: error: argument --redis-url: expects a Redis URL"), line
    assert "write redis://localhost:6379 (env LLMCACHE_REDIS_URL)" in line
    assert result.stdout == ""


def test_redis_url_without_a_scheme_in_the_env_var_names_it() -> None:
    result = run("stats", env={"LLMCACHE_REDIS_URL": "localhost:6379"})
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        "llmcache: error: invalid value 'localhost:6379' in $LLMCACHE_REDIS_URL (--redis-url): expects a Redis URL")


def test_proxy_on_a_taken_port_fails_first_in_one_line(redis_plain_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # No --mode: the default would load the embedder first if the port were checked late.
        result = run("proxy", "--listen", f"127.0.0.1:{taken}", "--redis-url", redis_plain_url, timeout_s=60)
    assert result.returncode == 2
    assert result.stdout == ""  # no "point OpenAI clients at …" for a proxy that never listened
    line = one_line(result.stderr)
    assert line.startswith(f"llmcache: error: port {taken} on 127.0.0.1 is already in use"), line
    assert line.endswith("choose another port with --listen HOST:PORT (env LLMCACHE_LISTEN)")


@pytest.mark.parametrize("command", ["redis", "model-server"])
def test_other_servers_on_a_taken_port_fail_in_one_line_naming_flag_and_env_var(command: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # model-server binds before it loads anything; random-tiny keeps this fast if it ever did not.
        extra = ["--model", "random-tiny"] if command == "model-server" else []
        result = run(command, "--listen", f"127.0.0.1:{taken}", *extra, timeout_s=120)
    assert result.returncode == 2, result.stderr
    line = [x for x in result.stderr.splitlines() if x.startswith("llmcache: error:")]
    assert len(line) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{taken}" in line[0] and "--listen HOST:PORT (env LLMCACHE_LISTEN)" in line[0], line[0]


@pytest.mark.parametrize(("argv", "says"), [
    (["proxy", "--listen", "8080"], "argument --listen: expects HOST:PORT"),
    (["up", "--model-listen", "localhost"], "argument --model-listen: expects HOST:PORT"),
    (["proxy", "--upstream", "127.0.0.1:8000"], "argument --upstream: expects an http(s) URL"),
    (["proxy", "--ttl-seconds", "soon"], "argument --ttl-seconds: invalid value 'soon'"),
])
def test_bad_flag_values_name_flag_and_env_var(argv: list[str], says: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    line = one_line(result.stderr)
    env = "LLMCACHE_" + argv[1].lstrip("-").replace("-", "_").upper()
    assert says in line and f"(env {env})" in line, line


def test_unknown_flag_is_one_line_pointing_at_the_command_help() -> None:
    result = run("proxy", "--cache-size", "5")
    assert result.returncode == 2
    assert result.stderr == ("llmcache proxy: error: unrecognized arguments: --cache-size 5; "
                             "see 'llmcache proxy --help'\n")


# -- README/--help list: --log-level, help text, switches, a killed part ----------------------
def test_log_level_reads_its_env_var_and_works_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["kv-estimate", "--log-level", "debug"]
    args, _ = cli._build_parser(argv).parse_known_args(argv)
    assert args.log_level == "DEBUG"
    monkeypatch.setenv("LLMCACHE_LOG_LEVEL", "warning")
    args, _ = cli._build_parser(["kv-estimate"]).parse_known_args(["kv-estimate"])
    assert args.log_level == "WARNING"
    result = run("--log-level", "loud", "kv-estimate")
    assert result.returncode == 2 and "argument --log-level: expects one of DEBUG" in one_line(result.stderr)


def test_top_level_help_is_plain_text() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert not re.search(r"``|:mod:|:class:|:func:", result.stdout), result.stdout
    assert "LLMCACHE_<FLAG>" in result.stdout


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_no_command_help_shows_default_none(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "default: None" not in " ".join(result.stdout.split())
    assert not re.search(r"``|:mod:|:class:|:func:", result.stdout), result.stdout
    assert "--log-level" in result.stdout


def test_model_server_switches_take_no_value() -> None:
    import argparse

    from llmcache.model_server import settings as ms

    parser = argparse.ArgumentParser()
    ms.add_flags(parser)
    assert parser.parse_args(["--no-enable-prefix-cache"]).enable_prefix_cache is False
    assert parser.parse_args(["--enable-prefix-cache"]).enable_prefix_cache is True
    assert parser.parse_args([]).enable_prefix_cache is True
    assert parser.parse_args(["--no-enable-embeddings"]).enable_embeddings is False
    assert parser.parse_args(["--enable-prefix-cache", "false"]).enable_prefix_cache is False  # the old form
    assert parser.parse_args(["--no-enable-batching"]).enable_batching is False


def test_a_part_killed_by_a_signal_is_reported_with_its_meaningful_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "part.log"
    script = ("import sys, time\n"
              "print('loaded the model from /models/x', flush=True)\n"
              "for i in range(5):\n"
              "    sys.stdout.write(f'\\rLoading weights: {i*20:3d}%|' + '█' * i + ' ' * (5 - i)"
              " + f'| {i}/5 [00:0{i}<00:00, 3.2it/s]')\n"
              "sys.stdout.write('\\n'); print('ready', flush=True)\n"
              "time.sleep(60)\n")
    child = stack._Child(name="part", argv=[sys.executable, "-c", script], ready_probe="-", is_ready=lambda: False,
                         logfile=log)
    child.start(verbose=False)
    try:
        wait_until(lambda: "ready" in log.read_text() if log.exists() else False, timeout_s=30, what="the child")
        os.kill(child.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        child.proc.wait(timeout=10)  # type: ignore[union-attr]
    finally:
        child.stop()
    assert child.exit_description() == "was killed by SIGKILL"
    assert child.tail().splitlines() == ["loaded the model from /models/x", "ready"]
