"""``llmcache up``: the embedded stack (Redis + model server + proxy) in the foreground.

::

    client ──▶ proxy (--listen, default 127.0.0.1:8080)
                 │ miss                     │ exact keys, vectors
                 ▼                          ▼
    model server (--model-listen 8000)    Redis (--redis-listen 6379)

Each part runs as its own process: Redis (the Valkey + RediSearch command line
of :class:`llmcache.redis_server.EmbeddedRedis`), the model server and the
proxy (``python -m llmcache …``), each in its own process group so a
terminal Ctrl-C reaches only ``up``, which then stops them in order (proxy,
model server, Redis): SIGTERM to the group, SIGKILL after a grace period.
On Linux the children also get ``PR_SET_PDEATHSIG`` (SIGKILL) so they die
with ``up`` even if it is killed without a chance to clean up. If any child dies, ``up`` stops the rest and
exits non-zero with the tail of that child's log.

``--redis-url`` uses an existing Redis, ``--upstream`` an existing
OpenAI-compatible server; the corresponding part is then not started.

:class:`Stack` is the reusable form (``llmcache demo`` and the e2e tests)::

    with Stack(StackConfig(listen="127.0.0.1:0")) as stack:
        print(stack.base_url)   # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmcache import connection
from llmcache.errors import ConfigError, LLMCacheError
from llmcache.redis_server import EmbeddedRedis, free_port
from llmcache.settings import UPSTREAM_HELP, add_flag, parse_listen, port_in_use

__all__ = ["Cancellation", "Stack", "StackConfig", "StackError", "StackInterrupted", "configure",
           "default_cpu_threads", "run"]

log = logging.getLogger(__name__)

#: Grace period between SIGTERM and SIGKILL when stopping a child (seconds).
#: Five seconds lets aiohttp drain in-flight requests; more only delays Ctrl-C.
STOP_GRACE_S = 5.0


#: Semantic lookup deadline given to the proxy of the local stack (ms), unless
#: ``LLMCACHE_SEMANTIC_TIMEOUT_MS`` says otherwise. The sidecar default (100 ms) assumes the
#: embedder has its CPU to itself; here it shares the cores with the model server, and on a
#: busy 2-core machine 2 of 31 demo lookups overran 100 ms and fell back to exact-only.
LOCAL_SEMANTIC_TIMEOUT_MS = 1000


class StackError(LLMCacheError):
    """A part of the stack failed to start or died; the message carries its log tail."""


class StackInterrupted(LLMCacheError):
    """:meth:`Stack.start` stopped because its :class:`Cancellation` was requested (Ctrl-C, SIGTERM)."""


class Cancellation:
    """A stop request that a signal handler may make: one attribute write, nothing else.

    A handler that raised, or that took a lock, would run wherever the main thread happened to
    be: an exception raised inside ``subprocess.Popen``'s after-fork hooks is printed as
    ``Exception ignored in: <function _releaseLock …>`` and dropped (the Ctrl-C is lost and
    ``up`` goes on starting), and a lock the interrupted code holds would deadlock. So the
    handler only sets :attr:`requested`, and the start-up loops look at it between steps.
    """

    __slots__ = ("requested",)

    #: How often :meth:`wait` looks at the flag (s): the most a request waits to be noticed.
    POLL_S = 0.05

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True as soon as a stop is requested (False: time is up)."""
        deadline = time.monotonic() + timeout_s
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.POLL_S))
        return True


@dataclass(slots=True)
class StackConfig:
    """What ``llmcache up`` starts and where. Port 0 picks a free port."""

    listen: str = "127.0.0.1:8080"
    """Proxy address (``--listen``); what clients use. Default matches ``llmcache proxy``."""
    model_listen: str = "127.0.0.1:8000"
    """Model server address (``--model-listen``); default matches ``llmcache model-server``."""
    redis_listen: str = "127.0.0.1:6379"
    """Embedded Redis address (``--redis-listen``); the standard Redis port."""
    redis_url: str | None = None
    """Use this Redis instead of starting one (``--redis-url``)."""
    upstream: str | None = None
    """Use this OpenAI-compatible server instead of starting the model server (``--upstream``)."""
    model: str = "default"
    """``--model`` of the model server: ``default`` is the bundled SmolLM2-135M-Instruct."""
    device: str = "auto"
    """``--device`` of the model server (auto|cpu|cuda)."""
    mode: str | None = None
    """Proxy ``--mode`` (exact|semantic|both); ``None`` leaves the proxy's default."""
    model_args: list[str] = field(default_factory=list)
    """Extra arguments for ``llmcache model-server``."""
    proxy_args: list[str] = field(default_factory=list)
    """Extra arguments for ``llmcache proxy``."""
    log_dir: Path | None = None
    """Where each child's log goes; a temporary directory (kept, path printed) when ``None``."""
    ready_timeout_s: float = 300.0
    """How long to wait for each part to become ready. Model loading takes 15–30 s on a
    laptop CPU; five minutes covers a busy shared machine and a first import of torch."""
    verbose: bool = False
    """Echo the children's logs to stderr as well as to their log files."""
    cpu_threads: int | None = None
    """torch/OpenMP threads of each child (``OMP_NUM_THREADS``); ``None`` = half the cores, at
    least 1. The model server and the proxy's embedder share this machine's CPU: with one
    thread per core each, their spinning OpenMP threads oversubscribe the cores and decoding
    gets ~8x slower (measured on 2 cores: 40 s vs 5 s for 32 tokens). Ignored when the
    environment already sets ``OMP_NUM_THREADS``."""


def default_cpu_threads() -> int:
    """Half the usable cores, at least 1 (see :attr:`StackConfig.cpu_threads`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


#: libc, loaded once in the parent: dlopen after fork (in a threaded parent) may deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child die with ``up`` even when ``up`` is SIGKILLed.

    SIGKILL, not SIGTERM: this path only runs when ``up`` could not stop the child in
    order, and a child busy in a long inference call may not honour SIGTERM promptly.
    """

    def preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # `up` died before prctl took effect
            os._exit(1)

    return preexec


def _http_status(url: str, *, timeout_s: float = 2.0) -> int | None:
    """HTTP status of ``GET url`` or ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URL we built
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _url_host(host: str) -> str:
    """Host as it goes into a URL a client on this machine can reach."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(slots=True)
class _Child:
    """One subprocess of the stack and how to tell it is ready."""

    name: str
    argv: list[str]
    ready_probe: str
    """What "ready" means, for messages: a URL answering 200, or ``redis PING``."""
    is_ready: Callable[[], bool]
    logfile: Path
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to this process's environment for the child."""
    proc: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = None

    def start(self, *, verbose: bool) -> None:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        log.debug("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.logfile)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=self.cwd,
            # Own session = own process group: a terminal Ctrl-C reaches only `up`, which
            # then stops the parts in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - one prctl call, no locks taken
        )
        self._pump = threading.Thread(target=self._copy_output, args=(verbose,), daemon=True,
                                      name=f"log-{self.name}")
        self._pump.start()

    def _copy_output(self, verbose: bool) -> None:
        # A pipe drained by a thread instead of a file handle: lets --verbose tee it
        # with a prefix, and the child never blocks on a full pipe.
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.logfile, "ab") as out:
            for line in iter(self.proc.stdout.readline, b""):
                out.write(line)
                out.flush()
                if verbose:
                    sys.stderr.write(f"[{self.name}] {line.decode(errors='replace')}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, *, num_lines: int = 25) -> str:
        """The last ``num_lines`` meaningful lines of the child's log (progress bars left out)."""
        if self._pump is not None:
            self._pump.join(timeout=1.0)
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(meaningful_lines(text)[-num_lines:])

    def exit_description(self) -> str:
        """``exited with code 3`` or ``was killed by SIGKILL`` (``None`` while running: ``is running``)."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return "is running"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def last_line(self, *, max_chars: int = 90) -> str:
        """The child's latest log line (progress bars reduced to their last state), shortened."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
        if not parts:
            return ""
        line = parts[-1]
        return line if len(line) <= max_chars else line[: max_chars - 1] + "…"

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, grace_s)
        # Also reap anything the child left in its group (it may have exited first).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        if self._pump is not None:
            self._pump.join(timeout=2.0)


class Stack:
    """The running stack: :meth:`start`, then :attr:`base_url`; :meth:`stop` always cleans up.

    ``progress`` receives one human-readable line per step (``print`` for the CLI);
    it is also called every few seconds while a part is loading.
    """

    def __init__(self, config: StackConfig | None = None, *,
                 progress: Callable[[str], None] | None = None, cancel: Cancellation | None = None) -> None:
        self.config = config or StackConfig()
        self._progress = progress or (lambda line: log.info("%s", line))
        self._cancel = cancel or Cancellation()
        self._children: list[_Child] = []
        self._tmp_log_dir: Path | None = None
        self.redis_url: str = ""
        self.upstream_url: str = ""
        self.proxy_url: str = ""

    # -- addresses ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What an OpenAI client uses as ``base_url``: ``http://HOST:PORT/v1``."""
        return f"{self.proxy_url}/v1"

    @property
    def model_server_url(self) -> str | None:
        """The model server's root URL when this stack started it (``None`` with ``--upstream``)."""
        return None if self.config.upstream else self.upstream_url

    @property
    def log_dir(self) -> Path:
        assert self.config.log_dir is not None or self._tmp_log_dir is not None
        return self.config.log_dir or self._tmp_log_dir  # type: ignore[return-value]

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the parts this stack started (for tests and ``up``'s banner)."""
        return {c.name: c.proc.pid for c in self._children if c.proc is not None}

    # -- lifecycle ---------------------------------------------------------------------------
    def _resolve_ports(self) -> tuple[tuple[str, int], tuple[str, int] | None, tuple[str, int] | None]:
        """Parse the three addresses, pick free ports for 0, and fail early if one is taken."""
        cfg = self.config
        wanted: list[tuple[str, str, str]] = [("--listen", cfg.listen, "proxy")]
        if cfg.upstream is None:
            wanted.append(("--model-listen", cfg.model_listen, "model server"))
        if cfg.redis_url is None:
            wanted.append(("--redis-listen", cfg.redis_listen, "redis"))
        resolved: dict[str, tuple[str, int]] = {}
        taken: set[tuple[str, int]] = set()
        for flag, value, what in wanted:
            host, port = parse_listen(value)
            if port == 0:
                port = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")  # noqa: S104 - not a bind
                while (host, port) in taken:
                    port = free_port("127.0.0.1")
            elif (host, port) in taken:
                raise ConfigError(f"{flag} {value} is the same address as another part of the stack; "
                                  "give the proxy, model server and Redis different ports")
            elif port_in_use(host, port):
                raise ConfigError(
                    f"port {port} on {host} is already in use, so the {what} cannot listen there: stop what "
                    f"runs there (`ss -ltnp 'sport = :{port}'` shows it) or choose another port with "
                    f"{flag} HOST:PORT (env LLMCACHE_{flag.lstrip('-').replace('-', '_').upper()})"
                )
            taken.add((host, port))
            resolved[flag] = (host, port)
        return resolved["--listen"], resolved.get("--model-listen"), resolved.get("--redis-listen")

    def start(self) -> Stack:
        """Start every part and wait until each is ready; on any failure stop what started and raise.

        Raises :class:`StackInterrupted` (after stopping what started) when the ``cancel`` given
        to the constructor is requested meanwhile; it is checked before each part and while each
        part loads.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_existing(self) -> None:
        """Refuse to start when ``--redis-url`` or ``--upstream`` names something that does not answer."""
        cfg = self.config
        if cfg.redis_url is not None:
            reason = redis_problem(cfg.redis_url)
            if reason is not None:
                raise StackError(
                    f"Redis at {connection.redact(cfg.redis_url)} (--redis-url, env LLMCACHE_REDIS_URL) "
                    f"is unreachable: {reason}. Start it (`llmcache redis` runs one with vector search), "
                    "fix the URL, or leave --redis-url out and `up` starts its own.")
        if cfg.upstream is not None:
            reason = upstream_problem(cfg.upstream)
            if reason is not None:
                raise StackError(
                    f"the upstream at {cfg.upstream} (--upstream, env LLMCACHE_UPSTREAM) is unreachable: "
                    f"{reason}. Start it, fix the URL, or leave --upstream out and `up` starts the bundled "
                    "model server.")

    def _start(self) -> None:
        cfg = self.config
        proxy_addr, model_addr, redis_addr = self._resolve_ports()
        self._check_existing()
        if cfg.log_dir is None:
            self._tmp_log_dir = Path(tempfile.mkdtemp(prefix="llmcache-up-"))
        else:
            # Absolute: Redis runs with its data directory as cwd and gets `--dir` from it.
            cfg.log_dir = cfg.log_dir.resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        py = [sys.executable, "-m", "llmcache"]
        threads_env: dict[str, str] = {}
        if "OMP_NUM_THREADS" not in os.environ:
            threads = str(cfg.cpu_threads if cfg.cpu_threads is not None else default_cpu_threads())
            threads_env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

        # Redis first: the proxy connects at start-up. The Valkey binary runs as our own
        # child (not through EmbeddedRedis.start) so it gets the same process-group and
        # parent-death handling as the other parts.
        if cfg.redis_url is not None:
            self.redis_url = cfg.redis_url
            self._progress(f"redis: using {connection.redact(cfg.redis_url)}")
        else:
            assert redis_addr is not None
            host, port = redis_addr
            data_dir = self.log_dir / "redis"
            data_dir.mkdir(exist_ok=True)
            server = EmbeddedRedis(host=host, port=port, with_search=True, dir=data_dir)
            self.redis_url = f"redis://{_url_host(host)}:{port}/0"
            redis_child = _Child(
                name="redis", argv=server.command(), ready_probe=f"PING to {self.redis_url}",
                is_ready=lambda: _redis_ping(_url_host(host).strip("[]"), port),
                logfile=self.log_dir / "redis.log", cwd=data_dir,
            )
            self._launch(redis_child, f"redis: starting on {host}:{port} (Valkey + RediSearch)")

        if cfg.upstream is not None:
            self.upstream_url = cfg.upstream.rstrip("/")
            self._progress(f"model server: using {self.upstream_url}")
        else:
            assert model_addr is not None
            host, port = model_addr
            self.upstream_url = f"http://{_url_host(host)}:{port}"
            healthz = f"{self.upstream_url}/healthz"
            model = _Child(
                name="model-server",
                # `up` is one user's local stack and `demo` reports prefix reuse from usage.cached_tokens:
                # report it for unsalted requests too (a multi-tenant server keeps the `salted` default).
                argv=[*py, "model-server", "--model", cfg.model, "--device", cfg.device,
                      "--listen", f"{host}:{port}", "--report-cached-tokens", "always", *cfg.model_args],
                ready_probe=f"GET {healthz}", is_ready=lambda: _http_status(healthz) == 200,
                logfile=self.log_dir / "model-server.log", env=threads_env,
            )
            self._launch(model, f"model server: loading model {cfg.model!r} on {host}:{port} "
                                "(about 15-70 s on a CPU)")

        host, port = proxy_addr
        self.proxy_url = f"http://{_url_host(host)}:{port}"
        readyz = f"{self.proxy_url}/readyz"
        mode = ["--mode", cfg.mode] if cfg.mode else []
        if "LLMCACHE_SEMANTIC_TIMEOUT_MS" not in os.environ and "--semantic-timeout-ms" not in cfg.proxy_args:
            mode += ["--semantic-timeout-ms", str(LOCAL_SEMANTIC_TIMEOUT_MS)]
        proxy = _Child(
            name="proxy",
            argv=[*py, "proxy", "--listen", f"{host}:{port}", "--upstream", self.upstream_url,
                  "--redis-url", self.redis_url, *mode, *cfg.proxy_args],
            ready_probe=f"GET {readyz}", is_ready=lambda: _http_status(readyz) == 200,
            logfile=self.log_dir / "proxy.log", env=threads_env,
        )
        self._launch(proxy, f"proxy: starting on {host}:{port}")

    def _check_cancelled(self) -> None:
        if self._cancel.requested:
            raise StackInterrupted("start-up interrupted")

    def _launch(self, child: _Child, what: str) -> None:
        self._check_cancelled()
        self._progress(f"{what} … (log: {child.logfile})")
        child.start(verbose=self.config.verbose)
        self._children.append(child)
        started = time.monotonic()
        next_note = started + 5.0
        while True:
            if not child.alive():
                raise StackError(f"{child.name} {child.exit_description()} before it was ready; "
                                 f"last lines of {child.logfile}:\n{child.tail()}")
            if child.is_ready():
                self._progress(f"{child.name}: ready after {time.monotonic() - started:.1f}s")
                return
            now = time.monotonic()
            if now - started > self.config.ready_timeout_s:
                raise StackError(f"{child.name} was not ready within {self.config.ready_timeout_s:.0f}s "
                                 f"({child.ready_probe} never succeeded); last lines of {child.logfile}:\n"
                                 f"{child.tail()}")
            if now >= next_note:
                latest = child.last_line()
                self._progress(f"{child.name}: starting ({now - started:.0f}s)" + (f": {latest}" if latest else " …"))
                next_note = now + 5.0
            if self._cancel.wait(0.25):
                self._check_cancelled()

    def dead_child(self) -> str | None:
        """Name of a part that has exited (``None`` while all are alive)."""
        for child in self._children:
            if not child.alive():
                return child.name
        return None

    def describe_death(self, name: str) -> str:
        """Exit code and log tail of the child called ``name``."""
        for child in self._children:
            if child.name == name and child.proc is not None:
                return f"{name} {child.exit_description()}; last lines of {child.logfile}:\n{child.tail()}"
        return f"{name} exited"

    def stop(self) -> None:
        """Stop the parts in reverse order of start (proxy, model server, Redis); idempotent."""
        for child in reversed(self._children):
            child.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- CLI ------------------------------------------------------------------------------------
def add_stack_flags(parser: argparse.ArgumentParser, *, any_port: bool = False) -> None:
    """The flags of ``up``; ``demo`` reuses them with ``any_port`` (free ports by default,
    because nothing outside the demo needs to find its stack)."""
    ports = ("127.0.0.1:0",) * 3 if any_port else ("127.0.0.1:8080", "127.0.0.1:8000", "127.0.0.1:6379")
    add_flag(parser, "--listen", default=ports[0],
             help="HOST:PORT of the proxy, the address clients use (port 0 = any free port)")
    add_flag(parser, "--model-listen", default=ports[1], help="HOST:PORT of the model server")
    add_flag(parser, "--redis-listen", default=ports[2], help="HOST:PORT of the embedded Redis")
    add_flag(parser, "--redis-url", default=None,
             help="use this Redis (redis://HOST:PORT/0, with the search module for vector KNN) instead of "
                  "starting one; checked before start")
    add_flag(parser, "--upstream", default=None,
             help="use this server instead of starting the model server; checked before start. " + UPSTREAM_HELP)
    add_flag(parser, "--model", default="default",
             help="model for the model server: 'default' (bundled SmolLM2-135M-Instruct) or a local directory")
    add_flag(parser, "--device", default="auto", help="model server device: auto | cpu | cuda | cuda:N")
    add_flag(parser, "--mode", default=None, choices=("exact", "semantic", "both"),
             help="proxy cache mode (proxy default when unset)")
    add_flag(parser, "--log-dir", default=None, type=Path,
             help="directory for the parts' logs (unset: " + ("OUTPUT_DIR/logs)" if any_port else
                                                              "a temporary directory, printed)"))
    add_flag(parser, "--ready-timeout-seconds", default=300.0, type=float,
             help="seconds to wait for each part to become ready")
    add_flag(parser, "--cpu-threads", default=None, type=int,
             help="torch CPU threads of the model server and of the proxy's embedder "
                  "(default: half the cores, at least 1, so the two do not oversubscribe the CPU)")
    add_flag(parser, "--verbose", action="store_true", help="echo the parts' logs to stderr")


def config_from_args(args: argparse.Namespace) -> StackConfig:
    """Build a :class:`StackConfig` from the flags added by :func:`add_stack_flags`."""
    return StackConfig(
        listen=args.listen, model_listen=args.model_listen, redis_listen=args.redis_listen,
        redis_url=args.redis_url, upstream=args.upstream, model=args.model, device=args.device,
        mode=args.mode, log_dir=args.log_dir, ready_timeout_s=args.ready_timeout_seconds, verbose=args.verbose,
        cpu_threads=args.cpu_threads,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_stack_flags(parser)


def _banner(stack: Stack) -> str:
    return (
        f"\nllmcache is up: {stack.base_url}\n"
        f"  redis        {connection.redact(stack.redis_url)}\n"
        f"  model server {stack.upstream_url}\n"
        f"  logs         {stack.log_dir}\n\n"
        "Point any OpenAI client at it:\n"
        "    from openai import OpenAI\n"
        f"    client = OpenAI(base_url=\"{stack.base_url}\", api_key=\"any-key-per-tenant\")\n\n"
        "Ctrl-C stops everything.\n"
    )


class HealthReporter:
    """Watches the proxy's ``/readyz`` while ``up`` runs and prints each change in one line.

    ``up`` checks Redis and the upstream before it says it is up; this keeps saying so when
    one of them goes away later (or comes back), instead of leaving it to ``proxy.log``.
    """

    def __init__(self, stack: Stack, *, interval_s: float = 2.0) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self._next_s = time.monotonic() + interval_s
        self.last: dict[str, str] = {"redis": "ok", "upstream": "ok"}

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next_s:
            return
        self._next_s = now + self.interval_s
        report = _readyz(f"{self.stack.proxy_url}/readyz")
        if report is None:
            return  # the proxy itself not answering is the dead-child check's business
        for part, where in (("redis", connection.redact(self.stack.redis_url)), ("upstream", self.stack.upstream_url)):
            state = str(report.get(part, "ok"))
            was_ok, is_ok = self.last.get(part) == "ok", state == "ok"
            if was_ok and not is_ok:
                effect = ("requests bypass the cache until it is back" if part == "redis" else
                          "only cache hits can be answered until it is back")
                print(f"llmcache: warning: {part} at {where} is {state}; {effect}", file=sys.stderr, flush=True)
            elif is_ok and not was_ok:
                print(f"llmcache: {part} at {where} is reachable again", flush=True)
            self.last[part] = state


def _readyz(url: str, *, timeout_s: float = 3.0) -> dict[str, object] | None:
    """The proxy's ``/readyz`` JSON (whatever its HTTP status), or ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - our own proxy
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def run(args: argparse.Namespace) -> int:
    # Start in the main thread: PR_SET_PDEATHSIG fires when the *thread* that forked a
    # child exits, so a helper thread would take the children down with it.
    # Ctrl-C and SIGTERM only request the stop (see Cancellation): start-up notices it between
    # steps and while a part loads, the running loop within half a second.
    stop = Cancellation()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(config_from_args(args), progress=lambda line: print(line, flush=True), cancel=stop)
    try:
        try:
            stack.start()
            if stop.requested:  # the request came after start-up's last check, during its last step
                raise StackInterrupted
        except StackInterrupted:
            print("\ninterrupted during start-up; stopped everything that had started.", flush=True)
            return 130
        print(_banner(stack), flush=True)
        health = HealthReporter(stack)
        while not stop.wait(0.5):
            dead = stack.dead_child()
            if dead is not None:
                print(f"llmcache: error: {stack.describe_death(dead)}", file=sys.stderr, flush=True)
                print("stopping the rest of the stack …", flush=True)
                return 1
            health.poll()
        print("\nstopping …", flush=True)
        return 0
    finally:
        # Ignore further signals while stopping so a second Ctrl-C cannot leave orphans.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stack.pids:
            print("stopped: every part has exited and its port is free.", flush=True)


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def meaningful_lines(text: str) -> list[str]:
    """Log lines worth showing: blank lines and progress bars dropped.

    tqdm-style bars (``Loading weights:  40%|████      | 2/5``) redraw with carriage returns
    (``splitlines`` splits on those too) and say nothing about why a part died; the lines
    before them do.
    """
    return [line.rstrip() for line in text.splitlines() if line.strip() and not _PROGRESS.search(line)]


#: A progress bar: ``40%|████  |``, a run of block characters, or a rate like ``3.2it/s]``.
_PROGRESS = re.compile(r"\d+%\|[^|]*\||[█▉▊▋▌▍▎▏]{2,}|\d+(\.\d+)?\s*(it|s|B|kB|MB)/s\]")


def redis_problem(url: str, *, timeout_s: float = 3.0) -> str | None:
    """``None`` when the Redis at ``url`` answers PING; otherwise why not, in a few words."""
    import asyncio

    import redis.exceptions

    from llmcache import connection

    async def ping() -> str | None:
        try:
            client = connection.connect(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        except (ValueError, LLMCacheError) as exc:
            return f"not a usable Redis URL ({exc})"
        try:
            async with asyncio.timeout(timeout_s * 2):
                await client.ping()
            return None
        except redis.exceptions.AuthenticationError as exc:
            return (f"it refused the credentials ({exc}); put user and password in the URL: "
                    "redis://USER:PASSWORD@HOST:PORT/0")
        except TimeoutError:
            return f"no answer within {timeout_s * 2:.0f} s"
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            await client.aclose()

    return asyncio.run(ping())


def upstream_problem(root_url: str, *, timeout_s: float = 5.0) -> str | None:
    """``None`` when ``GET {root_url}/v1/models`` gets any HTTP answer (401 from a hosted provider
    without a key counts: the server is there); otherwise why not."""
    url = f"{root_url.rstrip('/')}/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - the user's own upstream
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        reason = exc.reason
        return getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
