"""The README is true: its console, bash and Python blocks run, and its flag tables match ``--help``.

Every ``console``/``bash``/``python`` block in README.md is preceded by a marker::

    <!-- docs-test: run -->                       run by test_readme_blocks_run, in README order
    <!-- docs-test: not run here (why) -->        cannot run on one machine; the reason is shown

``test_every_block_is_run_or_marked`` fails on a block without a marker, so none is skipped
silently. The runnable blocks run against one ``llmcache up`` (the README's own command, on
free ports instead of 8080/8000/6379): each ``$ command`` runs in bash from the repository
root and its output must contain the lines shown, in order, where ``…`` matches anything (a
line that is only ``…`` matches any number of lines). A Python block's output must match
the lines after its ``# prints:`` comment.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmcache import cli
from llmcache.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
RUNNABLE = ("console", "bash", "python")
MARKER = re.compile(r"<!-- docs-test: (run|not run here)(?: \((.+)\))? -->")
#: The README's addresses (the documented defaults) → the test's free ports.
DEFAULT_ADDRESSES = {"proxy": "127.0.0.1:8080", "model": "127.0.0.1:8000", "redis": "127.0.0.1:6379"}


@dataclass
class Block:
    lang: str
    text: str
    line: int
    marker: str | None
    reason: str | None

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def blocks() -> list[Block]:
    """Every fenced block of the README with the marker on the line just before it."""
    lines = README.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        prev = lines[start - 1] if start else ""
        mark = MARKER.fullmatch(prev.strip())
        out.append(Block(lang=lang, text="\n".join(lines[start + 1:j]), line=start + 1,
                         marker=mark.group(1) if mark else None, reason=mark.group(2) if mark else None))
        i = j + 1
    return out


@dataclass
class Command:
    command: str
    expected: list[str] = field(default_factory=list)


def console_commands(text: str) -> list[Command]:
    """``$ cmd`` lines (with ``\\`` continuations) and the output lines shown after each."""
    commands: list[Command] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            commands[-1].command += "\n" + line
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
            continuing = line.endswith("\\")
        elif commands:
            commands[-1].expected.append(line)
    return commands


def _pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(" ".join(p.split())) for p in expected.split("…")]
    return re.compile(".*".join(parts))


def assert_shown(expected: list[str], actual: str, *, where: str) -> None:
    """Every non-blank expected line matches an actual line, in order (``…`` = anything)."""
    lines = [" ".join(line.split()) for line in actual.splitlines()]
    pos = 0
    for want in expected:
        if not want.strip() or want.strip() == "…":
            continue
        pattern = _pattern(want.strip())
        while pos < len(lines) and not pattern.fullmatch(lines[pos]):
            pos += 1
        assert pos < len(lines), f"{where}: the README shows {want!r}, the output has no such line " \
                                 f"(in order):\n{actual}"
        pos += 1


# -- fast checks --------------------------------------------------------------------------------
def test_every_block_is_run_or_marked() -> None:
    found = [b for b in blocks() if b.lang in RUNNABLE]
    assert len(found) >= 8
    for block in found:
        assert block.marker is not None, f"{block.where}: a {block.lang} block without a docs-test marker"
        if block.marker == "not run here":
            assert block.reason, f"{block.where}: say why the block cannot run here"


def test_first_two_setup_commands_are_make_demo_and_make_test() -> None:
    first = blocks()[0]
    commands = [line.split("#")[0].strip() for line in first.text.splitlines()]
    assert commands[:2] == ["make demo", "make test"]


def _table_row(command: str) -> str:
    for line in README.read_text().splitlines():
        if line.startswith(f"| `{command}` |"):
            return line
    raise AssertionError(f"README's per-component table has no row for `{command}`")


def _flags(command: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(cli.SUBCOMMANDS[command][0]).configure(parser)
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_flags_table_lists_every_flag_of_every_command(command: str) -> None:
    row = _table_row(command)
    if "the flags of `up`" in row:
        row += _table_row("up")
    missing = sorted(f for f in _flags(command) if f"`{f}`" not in row)
    assert not missing, f"README's row for `{command}` lacks {missing}"


# -- the blocks themselves, against a real `llmcache up` ---------------------------------------
class Up:
    """The README's ``llmcache up`` in the background, its output collected line by line."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, last_line: str, *, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line.strip() == last_line for line in self.lines):
                return "".join(self.lines)
            assert self.proc.poll() is None or self._reader.is_alive(), "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"no {last_line!r} within {timeout_s}s:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _localise(text: str, ports: dict[str, str]) -> str:
    text = text.replace(".venv/bin/", f"{BIN}/")
    for part, address in DEFAULT_ADDRESSES.items():
        text = text.replace(address, ports[part])
    return text


def _python_expected(code: str) -> list[str]:
    lines = code.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# prints:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.strip().startswith("# ")]


@pytest.mark.slow
def test_readme_blocks_run(tmp_path: Path) -> None:
    # The README's examples use curl, as a user would; say so instead of failing obscurely without it.
    assert shutil.which("curl") and shutil.which("bash"), "tests/docs needs curl and bash (apt-get install curl)"
    ports = {part: f"127.0.0.1:{free_port()}" for part in DEFAULT_ADDRESSES}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMCACHE_")},
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "TMPDIR": str(tmp_path),
           # Free ports instead of the documented defaults (other tests and engineers share this machine).
           "LLMCACHE_LISTEN": ports["proxy"], "LLMCACHE_MODEL_LISTEN": ports["model"],
           "LLMCACHE_REDIS_LISTEN": ports["redis"],
           # The invalidation example's token (the README says to start `up` with one for it).
           "LLMCACHE_ADMIN_TOKEN": "change-me",
           # A busy shared CPU must not turn the README's semantic hit into an exact-only miss.
           "LLMCACHE_SEMANTIC_TIMEOUT_MS": "20000"}
    ran = 0
    up: Up | None = None
    try:
        for block in blocks():
            if block.lang not in RUNNABLE or block.marker != "run":
                continue
            if block.lang == "python":
                result = subprocess.run([sys.executable, "-c", _localise(block.text, ports)], cwd=ROOT, env=env,
                                        capture_output=True, text=True, timeout=600)
                assert result.returncode == 0, f"{block.where}:\n{result.stderr}"
                assert_shown(_python_expected(block.text), result.stdout, where=block.where)
                assert len(result.stdout.splitlines()) == len(_python_expected(block.text)), result.stdout
                ran += 1
                continue
            for cmd in console_commands(block.text):
                command = _localise(cmd.command, ports)
                if re.search(r"\bllmcache up\b", cmd.command):
                    assert up is None, "one `llmcache up` per README"
                    up = Up(command, env)
                    output = up.wait_for(cmd.expected[-1].strip(), timeout_s=600)
                    assert_shown([_localise(e, ports) for e in cmd.expected], output, where=block.where)
                else:
                    assert up is not None, f"{block.where}: runs before `llmcache up`"
                    result = _run_until_shown(command, cmd.expected, env=env, where=block.where)
                    assert_shown(cmd.expected, result, where=block.where)
                ran += 1
    finally:
        if up is not None:
            up.stop()
    assert up is not None and up.proc.returncode == 0, "".join(up.lines) if up else "no `llmcache up` block"
    assert ran >= 6


def _run_until_shown(command: str, expected: list[str], *, env: dict[str, str], where: str) -> str:
    """Run ``command``; rerun it (bounded) while its output lacks lines that appear asynchronously.

    Only ``llmcache stats`` needs this: proxies flush counters to Redis once a second.
    """
    deadline = time.monotonic() + (30 if "llmcache stats" in command and "redis://" in command else 0)
    while True:
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        output = result.stdout + result.stderr
        try:
            assert_shown(expected, output, where=where)
            return output
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _shape(line: str) -> str:
    """A report line with its figures replaced by ``N`` (the README shows one run's numbers)."""
    line = re.sub(r"\d[\d,]*(\.\d+)?", "N", line)
    return " ".join("N" if word == "-" else word for word in line.split())


def test_demo_report_has_the_shape_the_readme_shows() -> None:
    """`llmcache demo` prints the lines the README shows, in that order (figures aside)."""
    from llmcache import demo

    shown = next(b for b in blocks() if b.lang == "" and "cache status" in b.text)
    workload = demo.load_workload()
    results = [demo.RequestResult(
        index=i, id=r.id, tenant=r.tenant, kind=r.kind, expect=r.expect, stream=False,
        status="miss" if r.expect == "no-hit" else r.expect, latency_ms=10.0 + i, ttft_ms=None, similarity=None,
        prompt_tokens=100, completion_tokens=10, cached_tokens=50, finish_reason="stop", false_hit=False,
        t_s=float(i)) for i, r in enumerate(workload.requests)]
    summary = demo.summarize(results)
    summary["prefix_cache"]["metrics"] = {"hit_tokens": 1.0, "queried_tokens": 2.0}
    printed = demo.format_report(summary)
    assert [_shape(x) for x in shown.text.splitlines() if x.strip()] == \
           [_shape(x) for x in printed.splitlines() if x.strip()]


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_takes_out(script: Path) -> None:
    """A benchmark run must be able to write elsewhere than the committed benchmarks/results/."""
    assert re.search(r"add_argument\(\s*\"--out\"", script.read_text()), \
        f"{script.name}: add --out (where the JSON and PNG go; default benchmarks/results/)"
