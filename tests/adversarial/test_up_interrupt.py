"""Issue 18 item 10: Ctrl-C while ``llmcache up`` starts a part stops everything, even when the
signal lands while the part is being forked.

What failed under load: ``up``'s SIGINT handler raised an exception from wherever the main thread
was. A signal that arrived while ``subprocess.Popen`` forked a child was handled inside the
parent's at-fork hook (logging's ``_releaseLock``), where Python prints ``Exception ignored in …``
and drops the exception: the Ctrl-C was lost, ``up`` went on starting and never exited.

On an idle machine that window lasts microseconds; a busy one stretches it. The fault injected
here stretches it on purpose: a ``sitecustomize`` (on ``PYTHONPATH`` of ``up`` only) registers an
after-fork hook that notes each fork in a file and then pauses, as a loaded machine would. The
test sends one SIGINT inside the pause of the proxy's fork and waits, with a deadline, for what a
user needs: ``up`` exits 130, every part it started is gone and every port is free again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcache.redis_server import free_port
from llmcache.stack import STOP_GRACE_S

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

#: How long each fork of ``up`` pauses in the parent (the injected "loaded machine"), s.
FORK_PAUSE_S = 3.0

SITECUSTOMIZE = """
import os, time
if os.environ.get("FORK_PAUSE_FILE") and os.getppid() == int(os.environ["FORK_PAUSE_PARENT"]):
    def _pause_after_fork() -> None:
        with open(os.environ["FORK_PAUSE_FILE"], "a") as f:
            f.write("fork\\n")
        time.sleep(float(os.environ["FORK_PAUSE_S"]))
    os.register_at_fork(after_in_parent=_pause_after_fork)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _children(pid: int) -> set[int]:
    """Live direct children of ``pid`` (each part of the stack is one)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and _alive(int(entry)):
                out.add(int(entry))
    return out


def _listening(port: int) -> bool:
    """Does any socket listen on ``port`` (``/proc/net/tcp*``, state 0A)?

    Not "can I bind it": on a shared machine another process's outgoing connection may hold the
    same port number, which says nothing about what ``up`` left behind.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _wait(predicate, *, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def stub_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmcache.testing.stub_upstream", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait(lambda: _listening(port), timeout_s=60, what="the stub upstream")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ctrl_c_while_the_proxy_is_forked_stops_everything(tmp_path: Path, stub_upstream: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    forks = tmp_path / "forks"
    ports = {"proxy": free_port(), "redis": free_port()}
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [ENV.get("PYTHONPATH")])]),
           "FORK_PAUSE_FILE": str(forks), "FORK_PAUSE_PARENT": str(os.getpid()), "FORK_PAUSE_S": str(FORK_PAUSE_S)}
    up = subprocess.Popen(
        [sys.executable, "-m", "llmcache", "up", "--upstream", stub_upstream, "--listen", f"127.0.0.1:{ports['proxy']}",
         "--redis-listen", f"127.0.0.1:{ports['redis']}", "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if line.startswith("proxy: starting"):
                break
        # Redis was forked first; the proxy's fork is the second one, paused right now.
        _wait(lambda: forks.exists() and forks.read_text().count("fork") >= 2, timeout_s=30,
              what="the proxy's fork")
        parts = _children(up.pid)
        assert len(parts) == 2, parts  # Redis and the proxy being forked
        up.send_signal(signal.SIGINT)
        # What stopping costs at most: the rest of the pause, then per part SIGTERM, SIGKILL after the
        # grace period, a second grace period and the log pump's join, twice over for a loaded machine.
        deadline_s = FORK_PAUSE_S + 2 * len(parts) * (2 * STOP_GRACE_S + 2.0)
        try:
            out, _ = up.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            up.kill()
            out, _ = up.communicate()
            pytest.fail(f"llmcache up had not exited {deadline_s:.0f} s after Ctrl-C during start-up:\n"
                        + "".join(lines) + out)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    output = "".join(lines) + out
    assert up.returncode == 130, output
    assert "interrupted during start-up" in output
    assert "Exception ignored" not in output, output
    _wait(lambda: not any(_alive(p) for p in parts), timeout_s=2 * STOP_GRACE_S, what=f"parts {parts} to exit")
    assert not any(_listening(p) for p in ports.values()), ports
