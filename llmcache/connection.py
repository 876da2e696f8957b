"""Redis connections: one Redis or a Redis Cluster, chosen by the URL's scheme.

::

    redis://[user:pass@]host:port/0            one Redis (or Valkey)
    rediss://…                                 the same over TLS
    redis+cluster://[user:pass@]h1:p1[,h2:p2]  Redis Cluster / managed cluster mode (ElastiCache,
    rediss+cluster://…                         Memorystore, Azure Cache); any node(s) as seed, TLS with ``ss``

The proxy, the operator and ``llmcache stats`` all connect through :func:`connect`,
so a cluster URL works everywhere a ``--redis-url`` is taken. What differs on a
cluster is kept here, behind small helpers the rest of the code calls on
either kind of client:

- :func:`primaries` / :func:`slot_owners` — the masters and their slots, for per-master
  work: the vector index fan-out.
- :func:`mget` — ``MGET`` split by slot on a cluster.
- :func:`pubsub_client` — a plain connection to one node for classic pub/sub
  (``PUBLISH`` is broadcast to every node of a cluster, so any node serves).

MOVED/ASK redirects and topology refreshes after a failover are redis-py's
``RedisCluster`` job; callers keep failing open through their breaker.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url

from llmcache.errors import ConfigError

__all__ = [
    "CLUSTER_SCHEMES",
    "AnyRedis",
    "as_text",
    "connect",
    "execute_on_every_node",
    "is_cluster",
    "is_cluster_url",
    "mget",
    "primaries",
    "pubsub_client",
    "redact",
    "slot_owners",
]

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
AnyRedis = redis.asyncio.Redis | RedisCluster

# Keyword arguments only a single-node client understands.
_SINGLE_ONLY = ("health_check_interval", "db")
#: What a plain client takes from a cluster node's connection settings (the node carries more).
_PLAIN_ARGS = frozenset(inspect.signature(redis.asyncio.Redis.__init__).parameters) - {"self", "connection_pool"}


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://``."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def as_text(value: object) -> str:
    """A Redis reply item as text: replies are bytes unless the client decodes them (ours mostly don't)."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def redact(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``), for logs, messages and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def _seeds(netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            out.append((host.strip("[]"), int(port)))
        except ValueError as exc:
            raise ConfigError(f"cluster seed {item!r} is not HOST:PORT: write "
                              "redis+cluster://host:port[,host:port]") from exc
    return out


def connect(url: str, **kwargs: Any) -> AnyRedis:
    """A client for ``url``: ``redis.asyncio.Redis``, or ``RedisCluster`` for the ``+cluster`` schemes.

    ``kwargs`` are client options (timeouts, ``retry``, …); options only a single node
    understands are dropped for a cluster. The cluster client discovers the topology
    on its first command (any seed that answers will do).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in CLUSTER_SCHEMES:
        return redis.asyncio.Redis.from_url(url, **kwargs)
    seeds = _seeds(parts.netloc)
    if not seeds:
        raise ConfigError(f"{redact(url)} names no node: write redis+cluster://host:port")
    if parts.path not in ("", "/", "/0"):
        raise ConfigError(f"{redact(url)}: a Redis Cluster has only database 0; drop the /{parts.path.strip('/')}")
    for key in _SINGLE_ONLY:
        kwargs.pop(key, None)
    # The rest of the URL (credentials, ?ssl_ca_certs=… and other query options) means what it
    # means in a redis:// URL: let redis-py parse it for the first seed.
    first = f"{CLUSTER_SCHEMES[scheme]}://{parts.netloc.rsplit('@', 1)[0] + '@' if '@' in parts.netloc else ''}" \
            f"{seeds[0][0]}:{seeds[0][1]}/0" + (f"?{parts.query}" if parts.query else "")
    options = parse_url(first)
    for key in ("host", "port", "db"):
        options.pop(key, None)
    if issubclass(options.pop("connection_class", redis.asyncio.Connection), redis.asyncio.SSLConnection):
        options["ssl"] = True
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **{**options, **kwargs})


async def primaries(client: AnyRedis) -> list[tuple[str, Any]]:
    """``(name, target)`` per master; ``target`` is passed as ``target_nodes=`` (``None`` on one Redis)."""
    if not is_cluster(client):
        return [("", None)]
    if not client.get_nodes():
        await client.initialize()
    return [(node.name, node) for node in client.get_primaries()]


async def slot_owners(client: AnyRedis) -> dict[str, list[tuple[int, int]]]:
    """Master name → its slot ranges, from ``CLUSTER SLOTS`` (empty on one Redis)."""
    if not is_cluster(client):
        return {}
    reply = await client.execute_command("CLUSTER SLOTS", target_nodes=RedisCluster.RANDOM)
    out: dict[str, list[tuple[int, int]]] = {}
    for entry in reply if isinstance(reply, list) else _flatten_slots(reply):
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        out.setdefault(f"{host}:{int(master[1])}", []).append((start, end))
    return out


def _flatten_slots(reply: Any) -> list[Any]:
    # redis-py parses CLUSTER SLOTS into {(start, end): {"primary": (host, port), …}}.
    return [(s, e, v["primary"]) for (s, e), v in reply.items()]


async def mget(client: AnyRedis, keys: Sequence[str | bytes]) -> list[Any]:
    """``MGET`` of ``keys`` in their order; split by slot on a cluster (not atomic there)."""
    if not keys:
        return []
    if is_cluster(client):
        return list(await client.mget_nonatomic(list(keys)))
    return list(await client.mget(list(keys)))


def pubsub_client(client: AnyRedis, **kwargs: Any) -> redis.asyncio.Redis:
    """A single-node client for classic pub/sub: the client itself, or one random cluster node.

    ``PUBLISH`` on a cluster reaches subscribers on every node (the cluster bus
    broadcasts it), so a subscriber may connect anywhere; after a failure the
    caller asks again and lands on a live node. Policy changes are rare, so the
    broadcast costs nothing worth sharded pub/sub's per-slot subscriptions.
    """
    if not is_cluster(client):
        return client  # type: ignore[return-value]
    nodes = client.get_nodes()
    if not nodes:
        raise ConfigError("the cluster client knows no node yet: run a command first")
    node = random.choice(nodes)  # noqa: S311 - spreading subscribers, not a secret
    return _plain_client(node, node.host, node.port, **kwargs)


def _plain_client(node: Any, host: str, port: int, **kwargs: Any) -> redis.asyncio.Redis:
    """A single-node client for ``host:port`` with ``node``'s connection settings (credentials, TLS)."""
    conn_kwargs = {k: v for k, v in node.connection_kwargs.items() if k in _PLAIN_ARGS}
    if issubclass(getattr(node, "connection_class", redis.asyncio.Connection), redis.asyncio.SSLConnection):
        conn_kwargs["ssl"] = True
    return redis.asyncio.Redis(**{**conn_kwargs, "host": host, "port": port, **kwargs})


async def execute_on_every_node(client: AnyRedis, commands: Sequence[Sequence[Any]]) -> None:
    """Run ``commands`` (one pipeline) on the Redis, or on every node of a cluster, replicas included.

    For what each node keeps for itself, such as ACL users: a replica that is promoted later must
    already have them. (The cluster client itself knows only the masters.) A node that cannot be
    reached is skipped and its error raised once the others are done.
    """
    if not is_cluster(client):
        await _pipelined(client, commands)
        return
    reply = await client.execute_command("CLUSTER NODES", target_nodes=RedisCluster.RANDOM)
    if not isinstance(reply, dict):  # unparsed: one line per node, "<id> <host:port@cport> <flags> …"
        reply = {line.split()[1].split("@")[0]: {"flags": line.split()[2]}
                 for line in as_text(reply).splitlines() if line.strip()}
    addresses: set[tuple[str, int]] = set()
    for address, info in reply.items():
        if "fail" in str(info.get("flags", "")) or "noaddr" in str(info.get("flags", "")):
            continue  # down: it gets the commands when it is back (callers repeat them)
        host, _, port = as_text(address).split("@")[0].rpartition(":")
        addresses.add((host.strip("[]"), int(port)))
    template = client.get_nodes()[0]
    failed: list[BaseException] = []
    for host, port in sorted(addresses):
        node = _plain_client(template, host, port)
        try:
            await _pipelined(node, commands)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            failed.append(exc)  # the other nodes still get them
        finally:
            await node.aclose()
    if failed:
        raise failed[0]


async def _pipelined(client: redis.asyncio.Redis, commands: Sequence[Sequence[Any]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        await pipe.execute()
