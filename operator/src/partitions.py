"""What the operator keeps in Redis for each app namespace: its sidecars' ACL user and its vector index.

A namespace is a security boundary inside Redis too. Everything its sidecars own
lives under its partition ``{p}:n:{ns}:`` (:mod:`llmcache.keyspace`), and its
sidecars reach Redis as their namespace's own ACL user, which can touch nothing
else::

    namespace ns has pods labelled llmcache.io/inject: enabled
      └─▶ ACL SETUSER {p}-ns-{ns} reset on #<sha256 of its password>
              ~{p}:n:{ns}:*                 its entries, vectors, bookkeeping, stats, leases, acks
              %R~{p}:policies:{ns}          its namespace's policies, read only
              &{p}:policies:events:{ns}     their change channel
              -@all +<what a sidecar runs>  no SCAN, KEYS, FT.CREATE, FT._LIST, INFO, CONFIG, ACL, …
      └─▶ its credentials Secret's ``redis-url`` names that user (never another namespace's)
      └─▶ FT.CREATE {p}:n:{ns}:vidx[:{tag}] over {p}:n:{ns}:v: when its sidecars asked for it

Why each denied command matters: ``SCAN`` and ``KEYS`` return every key name
whatever the key patterns say; ``FT.CREATE`` takes any key prefix, so an index
named into the user's own partition could still index another namespace's
documents (tried on RediSearch 2.10: it does); ``FT._LIST`` lists every index.
Index names count as keys for ACL (``FT.SEARCH``/``FT.INFO`` of another
namespace's index are refused), so the operator creates each namespace's index
from the spec its sidecars leave in ``{p}:n:{ns}:vspec``.

Passwords are derived, never stored: ``HMAC-SHA256(key, prefix, namespace)``
with the operator's ``--namespace-users-key``. So a Redis that restarted without
its runtime users gets them back on the next pass (every
``--namespace-users-interval-seconds``), on every node of a cluster (ACL users
are per node, replicas included). Rotation: a new key, with the old one as
``--namespace-users-previous-key``; both passwords work until the app pods have
restarted with the new Secret, then drop the previous key.

A namespace's user is created when the webhook injects its first pod (before the
pod starts) and kept while it has injected pods; one without any for
``--namespace-users-grace-seconds`` (a Deployment scaled to zero and back, a
webhook call racing a pass) loses its user: its old Secret then opens nothing.
The time a namespace was last seen with pods is kept in Redis, so replicas agree.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from llmcache import connection, search_index
from llmcache.keyspace import Keyspace, check_partition
from llmcache.operator.settings import NamespaceUserSettings

__all__ = ["SIDECAR_COMMANDS", "NamespaceUsers", "acl_rules", "derive_password", "run_reconciler"]

log = logging.getLogger(__name__)

#: Every command a sidecar runs (exact and semantic cache, leases, bookkeeping, stats, policy watch,
#: admin endpoints), on one Redis or a cluster (``CLUSTER SLOTS`` and ``COMMAND`` are what a cluster
#: client asks at start). Commands inside a Lua script run under the caller's ACL too, so this holds
#: what the proxy's get/put scripts call (:mod:`llmcache.proxy.exact`: ``GET SET ZADD ZINCRBY HSET HDEL
#: ZREM ZRANGEBYSCORE PTTL PEXPIRE TIME``; a put that gives up its lease ``GET DEL``), the lease
#: release's (``GET DEL``) and the error bound's (:mod:`llmcache.proxy.semantic.bound`: ``HGET HINCRBY
#: HSET EXPIRE`` on an entry's judged outcomes, ``HGET HLEN HRANDFIELD HDEL`` to cap a group's judged
#: pairs; its veto and pair reads are ``HGET``).
#: Nothing that lists or reaches keys beyond the key patterns.
SIDECAR_COMMANDS = (
    "get", "set", "mget", "exists", "del", "unlink", "expire", "pexpire", "pttl", "time",
    "hset", "hget", "hgetall", "hmget", "hkeys", "hlen", "hrandfield", "hincrby", "hdel",
    "zadd", "zincrby", "zrem", "zrangebyscore", "zremrangebyscore", "zscan",
    "xadd", "xread", "xrange", "xrevrange",
    "eval", "evalsha", "script|load", "multi", "exec", "discard",
    "subscribe", "unsubscribe", "ping", "hello", "client|setinfo", "client|setname",
    "ft.search", "ft.info", "cluster|slots", "command",
)


def derive_password(key: str, prefix: str, namespace: str) -> str:
    """The namespace user's password: HMAC-SHA256 of the prefix and namespace under ``key`` (hex)."""
    return hmac.new(key.encode(), f"llmcache namespace user\0{prefix}\0{namespace}".encode(),
                    hashlib.sha256).hexdigest()


def acl_rules(keyspace: Keyspace, namespace: str, passwords: Iterable[str], *, search: bool = True) -> list[str]:
    """The ``ACL SETUSER`` arguments (after the user name) of ``namespace``'s user, from scratch (``reset``).
    ``search=False`` leaves out the ``FT.*`` commands (a Redis without the search module refuses rules
    naming commands it does not know)."""
    part = keyspace.for_partition(namespace)
    rules = ["reset", "on"]
    rules += [f"#{hashlib.sha256(pw.encode()).hexdigest()}" for pw in passwords]
    rules += ["resetkeys", "resetchannels", f"~{part.partition_pattern}", f"%R~{keyspace.policies(namespace)}",
              f"&{keyspace.policy_channel(namespace)}", "-@all"]
    rules += [f"+{c}" for c in SIDECAR_COMMANDS if search or not c.startswith("ft.")]
    return rules


def with_user(url: str, user: str, password: str) -> str:
    """``url`` (one Redis or ``redis+cluster://`` seeds) with its credentials replaced by ``user``/``password``."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{hosts}"))


async def _on_every_node(r: Any, *commands: list[Any]) -> None:
    """Run ACL commands on the Redis, or on every node of a cluster (replicas too: ACLs are per node)."""
    await connection.execute_on_every_node(r, commands)


class NamespaceUsers:
    """Creates, refreshes and deletes the namespace users, and says what URL each namespace's sidecars get."""

    def __init__(self, r: aioredis.Redis, keyspace: Keyspace, settings: NamespaceUserSettings, *,
                 base_url: str, on_forget: Callable[[str], None] | None = None) -> None:
        if not settings.key:
            raise ValueError("namespace users need a key: set LLMCACHE_NAMESPACE_USERS_KEY")
        self._redis = r
        self._ks = keyspace
        self._settings = settings
        self._base_url = base_url
        self._on_forget = on_forget
        self._locks: dict[str, asyncio.Lock] = {}
        #: Whether the server knows the FT.* commands (learnt from the first SETUSER that names them).
        self._search = True

    def user(self, namespace: str) -> str:
        return self._ks.namespace_user(namespace)

    def password(self, namespace: str) -> str:
        return derive_password(self._settings.key, self._ks.prefix, namespace)

    def url(self, namespace: str) -> str:
        """The Redis URL of ``namespace``'s sidecars: where the operator connects, as the namespace's user."""
        return with_user(self._base_url, self.user(namespace), self.password(namespace))

    def _passwords(self, namespace: str) -> list[str]:
        pws = [self.password(namespace)]
        if self._settings.previous_key:
            pws.append(derive_password(self._settings.previous_key, self._ks.prefix, namespace))
        return pws

    async def ensure(self, namespace: str) -> None:
        """Create or refresh ``namespace``'s user on every node and note that the namespace is in use."""
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            await self._setusers([namespace])
            await self._redis.hset(self._ks.operator_namespaces, namespace, time.time())

    async def _setusers(self, namespaces: list[str]) -> None:
        """``ACL SETUSER`` of ``namespaces`` on every node, one pipeline per node."""
        def commands() -> list[list[Any]]:
            return [["ACL", "SETUSER", self.user(ns),
                     *acl_rules(self._ks, ns, self._passwords(ns), search=self._search)] for ns in namespaces]
        try:
            await _on_every_node(self._redis, *commands())
        except redis.exceptions.ResponseError as exc:
            if not self._search or "unknown command" not in str(exc).lower():
                raise
            log.info("Redis has no search module: namespace users get no FT.* commands")
            self._search = False
            await _on_every_node(self._redis, *commands())

    async def delete(self, namespace: str) -> None:
        """Remove ``namespace``'s user from every node (its connections are closed by Redis)."""
        await _on_every_node(self._redis, ["ACL", "DELUSER", self.user(namespace)])
        await self._redis.hdel(self._ks.operator_namespaces, namespace)
        if self._on_forget is not None:
            self._on_forget(namespace)
        log.info("deleted Redis user %s: namespace %s has no injected pods", self.user(namespace), namespace)

    async def existing(self) -> set[str]:
        """Namespaces that have a user on the node answering (or that the operator noted as in use)."""
        raw = await self._redis.execute_command("ACL", "USERS", **(
            {"target_nodes": RedisCluster.RANDOM} if connection.is_cluster(self._redis) else {}))
        head = self._ks.namespace_user_prefix
        users = {connection.as_text(u) for u in raw or []}
        noted = {connection.as_text(n) for n in await self._redis.hkeys(self._ks.operator_namespaces)}
        out = set()
        for name in {u[len(head):] for u in users if u.startswith(head)} | noted:
            try:
                out.add(check_partition(name))
            except ValueError:
                continue  # not a namespace: not one of ours
        return out

    async def reconcile(self, in_use: set[str]) -> tuple[int, int]:
        """Refresh the users of ``in_use`` namespaces (a restarted Redis gets them back); delete the users of
        namespaces without injected pods for longer than the grace period. Returns (refreshed, deleted)."""
        if in_use:
            await self._setusers(sorted(in_use))
            await self._redis.hset(self._ks.operator_namespaces, mapping=dict.fromkeys(in_use, time.time()))
        seen = {connection.as_text(k): float(connection.as_text(v))
                for k, v in (await self._redis.hgetall(self._ks.operator_namespaces)).items()}
        deleted = 0
        now = time.time()
        for namespace in sorted(await self.existing() - in_use):
            if now - seen.get(namespace, 0.0) >= self._settings.grace_s:
                await self.delete(namespace)
                deleted += 1
        return len(in_use), deleted


async def ensure_vector_indexes(r: Any, keyspace: Keyspace, namespace: str) -> int:
    """Create the vector index(es) ``namespace``'s sidecars asked for (none asked: nothing). Returns how many
    were created. A spec out of range is logged and ignored: it only concerns that namespace."""
    part = keyspace.for_partition(namespace)
    try:
        spec = await search_index.read_spec(r, part)
    except ValueError as exc:
        log.warning("namespace %s asked for an invalid vector index (%s); not creating it", namespace, exc)
        return 0
    if spec is None:
        return 0
    if connection.is_cluster(r):
        names = await search_index.master_index_names(r, part)
    else:
        names = [(part.vector_index, None)]
    created = 0
    for name, node in names:
        if await search_index.existing_dim(r, name, target=node) is not None:
            continue
        if await search_index.create_index(r, part, name, spec, target=node):
            created += 1
            log.info("created vector index %s (%d dims) for namespace %s", name, spec.dim, namespace)
    return created


async def run_reconciler(r: aioredis.Redis, keyspace: Keyspace, users: NamespaceUsers | None, *,
                         namespaces_in_use: Callable[[], Any], interval_s: float,
                         search: bool = True) -> None:
    """Every ``interval_s``: the namespaces with injected pods (``await namespaces_in_use()``) get their user
    (:meth:`NamespaceUsers.reconcile`, when users are managed) and the vector index their sidecars asked
    for. Redis or API outages are logged and retried; runs until cancelled."""
    while True:
        try:
            in_use = set(await namespaces_in_use())
            if users is not None:
                await users.reconcile(in_use)
            if search:
                for namespace in sorted(in_use):
                    await ensure_vector_indexes(r, keyspace, namespace)
        except asyncio.CancelledError:
            raise
        except redis.exceptions.ResponseError as exc:
            if "unknown command" in str(exc).lower():
                search = False  # no search module: sidecars use their client-side index
            log.warning("namespace users / indexes: %s; retrying in %ss", exc, interval_s)
        except Exception as exc:  # noqa: BLE001 - Redis or API outages alike: logged, retried
            log.warning("namespace users / indexes not reconciled (%s: %s); retrying in %ss",
                        type(exc).__name__, exc, interval_s)
        await asyncio.sleep(interval_s)
