"""Which CachePolicy applies to this sidecar, kept current from Redis without API credentials.

The operator publishes every namespace's policies to Redis (see
:mod:`llmcache.policy` and :mod:`llmcache.keyspace`); a sidecar knows its own pod
labels from the downward API and picks the matching policy itself::

    start()   labels file ──▶ labels
              HGETALL policies:{ns} ──▶ PolicyDocument.from_json (bad ones skipped)
                 │ Redis unreachable ──▶ policy file (ConfigMap copy), source="file"
              select_policy(docs, labels) ──▶ current ──▶ on_change(current)
              HSET acks:{ns}:{policy} pod → {"configHash", "generation", "appliedAt"}; EXPIRE
    running   SUBSCRIBE policies:events ── message for {ns} ─┐
              pub/sub (re)connect ────────────────────────────┼─▶ HGETALL again, re-select
              labels file changed (kubelet symlink swap) ─────┘   (label change re-selects at once)
              every ack_refresh_s: HSET/EXPIRE the ack again so dead pods drop out

Redis going away never drops the last good policy: the watcher keeps it,
reconnects with capped exponential backoff and re-reads when it is back. This
module imports neither kopf nor kubernetes: sidecars carry no API credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from llmcache import connection
from llmcache import keyspace as keyspace_mod
from llmcache import policy as policy_mod
from llmcache.errors import PolicyError

__all__ = [
    "PolicySource",
    "PolicyWatcher",
    "WatchSettings",
    "load_policy_file",
    "parse_labels",
    "parse_policy_documents",
    "read_labels_file",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
PolicySource = Literal["redis", "file", "none"]
OnChange = Callable[[policy_mod.PolicyDocument | None], Any]

# What "Redis is unreachable / misbehaving" looks like from redis-py and asyncio.
_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ResponseError,
    # A cluster mid-failover: CLUSTERDOWN, no node for a slot, a topology refresh that failed.
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
    asyncio.TimeoutError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Timings of the policy watcher (seconds)."""

    redis_timeout_s: float = 2.0
    """Deadline for one HGETALL/ack write. Default 2 s: policy reads are off the request path,
    and the proxy must still start quickly (falling back to the file) when Redis is away."""
    reconnect_min_s: float = 0.1
    """First reconnect delay after the pub/sub connection fails. Default 0.1 s: a restarted
    Redis is picked up almost at once."""
    reconnect_max_s: float = 5.0
    """Cap of the exponential reconnect backoff. Default 5 s keeps a dead Redis from being
    hammered by every pod while bounding how stale a policy can get after it returns."""
    ping_interval_s: float = 15.0
    """PING the pub/sub connection after this long without traffic, so a half-open TCP
    connection (Redis pod gone without a reset) is noticed. Default 15 s."""
    poll_interval_s: float = 1.0
    """How often the labels file (and, while Redis is away, the policy file) is checked for
    changes. Default 1 s: the kubelet itself refreshes downward-API volumes only every ~1 min."""
    ack_ttl_s: int = 600
    """EXPIRE of the ack hash. Default 10 min: acks of dead pods disappear by themselves."""
    ack_refresh_s: float = 60.0
    """How often the ack is rewritten and its EXPIRE refreshed. Default 60 s (well under ack_ttl_s)."""


# --------------------------------------------------------------------------------------------
# Downward-API labels file
# --------------------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    "a": 0x07, "b": 0x08, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B,
    "\\": 0x5C, '"': 0x22, "'": 0x27,
}


def _unquote_go(text: str) -> str:
    """Decode a Go ``strconv.Quote`` literal (what the kubelet writes with ``%q``), quotes included.

    Handles ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\"``, ``\\xNN`` (a raw byte), ``\\NNN``
    (octal byte), ``\\uNNNN`` and ``\\UNNNNNNNN``; raises ``ValueError`` on anything else.
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("not a double-quoted string")
    body = text[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            if ch == '"':
                raise ValueError("unescaped quote inside the value")
            out += ch.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("dangling backslash")
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == "x":
            digits = body[i + 2:i + 4]
            if len(digits) != 2:
                raise ValueError("short \\x escape")
            out.append(int(digits, 16))
            i += 4
        elif esc in "uU":
            n = 4 if esc == "u" else 8
            digits = body[i + 2:i + 2 + n]
            if len(digits) != n:
                raise ValueError(f"short \\{esc} escape")
            out += chr(int(digits, 16)).encode("utf-8")
            i += 2 + n
        elif esc in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or any(c not in "01234567" for c in digits):
                raise ValueError("bad octal escape")
            out.append(int(digits, 8) & 0xFF)
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return out.decode("utf-8", errors="replace")


def parse_labels(text: str) -> dict[str, str]:
    """Parse a downward-API labels file: one ``key="value"`` per line, values Go-quoted.

    Lines that do not parse are skipped with a warning (never the whole file); an
    unquoted value is taken literally, which tolerates hand-written files.
    """
    labels: dict[str, str] = {}
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            log.warning("labels file line %d has no key=value; skipped", lineno)
            continue
        value = value.strip()
        if value.startswith('"'):
            try:
                value = _unquote_go(value)
            except ValueError as exc:
                log.warning("labels file line %d (key %s): %s; skipped", lineno, key, exc)
                continue
        labels[key] = value
    return labels


def read_labels_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and parse the labels file; raises ``OSError`` if it cannot be read."""
    return parse_labels(Path(path).read_text(encoding="utf-8", errors="replace"))


def _file_identity(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """What changes when the kubelet swaps the ``..data`` symlink or anyone rewrites the file."""
    try:
        st = os.stat(path)  # follows symlinks: a swap gives another inode
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------
# Policy documents (Redis hash values, ConfigMap copy)
# --------------------------------------------------------------------------------------------

def parse_policy_documents(
    items: Iterable[tuple[str, str | bytes]], *, namespace: str, origin: str
) -> list[policy_mod.PolicyDocument]:
    """Parse ``(name, PolicyDocument JSON)`` pairs; invalid or foreign ones are logged by name and skipped."""
    docs: list[policy_mod.PolicyDocument] = []
    for name, blob in items:
        try:
            doc = policy_mod.PolicyDocument.from_json(blob)
        except PolicyError as exc:
            log.warning("ignoring invalid policy %s/%s from %s: %s", namespace, name, origin, exc)
            continue
        if doc.namespace != namespace:
            log.warning("ignoring policy %s from %s: it belongs to namespace %s, not %s",
                        name, origin, doc.namespace, namespace)
            continue
        if name and doc.name != name:
            log.warning("ignoring policy %s/%s from %s: the document names itself %s",
                        namespace, name, origin, doc.name)
            continue
        docs.append(doc)
    return docs


def _as_blob(obj: Any) -> str | bytes:
    return obj if isinstance(obj, (str, bytes)) else json.dumps(obj)


def load_policy_file(path: str | os.PathLike[str], *, namespace: str) -> list[policy_mod.PolicyDocument]:
    """Load the ConfigMap copy of the namespace's policies.

    Accepted shapes: ``{"policies": [doc, …]}`` (what the operator writes), a top-level
    list ``[doc, …]``, or a mapping ``{name: doc, …}``; each ``doc`` a PolicyDocument JSON
    object or a string holding one. Raises ``OSError`` if unreadable, :class:`PolicyError`
    if the file is not JSON of one of these shapes; bad documents inside are skipped.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy file {path} is not JSON ({exc}); expected {{\"policies\": [...]}}") from exc
    items: list[tuple[str, str | bytes]]
    wrapped = raw.get("policies") if isinstance(raw, Mapping) else None
    # {"policies": [...]} is the wrapper; a policy that is itself *named* "policies" is a document.
    if isinstance(wrapped, list) or (isinstance(wrapped, Mapping) and "schema" not in wrapped):
        raw = wrapped
    if isinstance(raw, list):
        items = [("", _as_blob(d)) for d in raw]
    elif isinstance(raw, Mapping):
        items = [(str(k), _as_blob(v)) for k, v in raw.items()]
    else:
        raise PolicyError(f"policy file {path}: expected {{\"policies\": [...]}}, a list or a mapping")
    return parse_policy_documents(items, namespace=namespace, origin=f"file {path}")


async def _bounded(awaitable: Awaitable[_T], timeout_s: float) -> _T:
    """``await`` with a deadline; unlike ``asyncio.wait_for`` on 3.11 it never swallows a cancel."""
    async with asyncio.timeout(timeout_s):
        return await awaitable




def _same(a: policy_mod.PolicyDocument | None, b: policy_mod.PolicyDocument | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.generation, a.config_hash, a.created_s) == (b.name, b.generation, b.config_hash, b.created_s)


# --------------------------------------------------------------------------------------------
# The watcher
# --------------------------------------------------------------------------------------------

class PolicyWatcher:
    """Keeps :attr:`current` equal to the CachePolicy that selects this pod.

    Contract:

    - :meth:`start` returns once a first selection is made (from Redis, else from
      ``policy_file``, else none) and the background watch is running; it never
      raises because Redis is away or a document is bad.
    - A ``PUBLISH`` on the namespace's ``policy_channel`` is applied within
      milliseconds (HGETALL + selection); a pub/sub reconnect always re-reads.
    - When Redis is unreachable the last good policy stays in force. When it answers, its
      hash is authoritative: an empty hash means "no policy" (the file is only for start-up
      while Redis is away), and a document that fails validation is skipped by name, so the
      next matching policy (or none) applies rather than a half-written one.
    - ``on_change`` is called (sync or async) each time :attr:`current` changes,
      including the first selection when it is not ``None``; its errors are logged.
    - After each apply from Redis the watcher acks ``pod_name`` →
      ``{"configHash", "generation", "appliedAt"}`` in ``acks(namespace, policy)``
      with an EXPIRE of ``ack_ttl_s``, refreshed every ``ack_refresh_s``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        keyspace: keyspace_mod.Keyspace,
        namespace: str,
        pod_name: str,
        labels_file: str | None,
        policy_file: str | None = None,
        on_change: OnChange | None = None,
        settings: WatchSettings | None = None,
    ) -> None:
        self._redis = redis
        self._ks = keyspace
        self._namespace = namespace
        self._pod_name = pod_name
        self._labels_file = labels_file
        self._policy_file = policy_file
        self._on_change = on_change
        self._settings = settings if settings is not None else WatchSettings()

        self._labels: dict[str, str] = {}
        self._docs: list[policy_mod.PolicyDocument] = []
        self._current: policy_mod.PolicyDocument | None = None
        self._applied_at_s: float | None = None
        self._source: PolicySource = "none"
        self._acked: tuple[str, str] | None = None  # (policy name, config hash) last acked

        self._labels_identity: tuple[int, int, int, int] | None = None
        self._policy_file_identity: tuple[int, int, int, int] | None = None
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._num_refreshes = 0
        self._num_reconnects = 0
        self._subscribed = False
        self._stopping = False

    # ---- public surface ---------------------------------------------------------------------

    @property
    def current(self) -> policy_mod.PolicyDocument | None:
        """The policy in force for this pod, or ``None`` (proxy defaults apply)."""
        return self._current

    @property
    def applied_at_s(self) -> float | None:
        """Epoch seconds when :attr:`current` was applied; ``None`` before the first policy."""
        return self._applied_at_s

    @property
    def source(self) -> PolicySource:
        """Where the documents behind :attr:`current` came from: ``redis``, ``file`` or ``none``."""
        return self._source

    @property
    def labels(self) -> dict[str, str]:
        """This pod's labels as last read from the labels file (a copy)."""
        return dict(self._labels)

    @property
    def subscribed(self) -> bool:
        """Whether the pub/sub subscription is currently up (for ``/readyz`` and tests)."""
        return self._subscribed

    @property
    def num_refreshes(self) -> int:
        """Successful reads of the policy hash from Redis since start."""
        return self._num_refreshes

    async def start(self) -> None:
        """Make the first selection and start watching (idempotent)."""
        if self._tasks:
            return
        self._stopping = False
        self._reload_labels(force=True)
        try:
            await self._refresh_from_redis()
        except _REDIS_DOWN as exc:
            log.warning("redis unreachable at start (%s): using the policy file %s",
                        type(exc).__name__, self._policy_file or "(none configured)")
            await self._load_from_file()
        self._tasks = [
            asyncio.create_task(self._subscribe_loop(), name="llmcache-policy-subscribe"),
            asyncio.create_task(self._refresh_loop(), name="llmcache-policy-refresh"),
            asyncio.create_task(self._poll_loop(), name="llmcache-policy-poll"),
        ]

    async def stop(self) -> None:
        """Stop watching; :attr:`current` keeps its last value. The ack is left to expire."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        pending = set(tasks)
        while pending:
            # Re-cancel until done: a library that swallows one cancellation must not hang stop().
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                log.warning("policy watcher task %s ended with %r", t.get_name(), t.exception())
        self._subscribed = False

    async def __aenter__(self) -> PolicyWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- reading ----------------------------------------------------------------------------

    async def _refresh_from_redis(self) -> None:
        """HGETALL the namespace's policies and re-select; raises a ``_REDIS_DOWN`` error."""
        key = self._ks.policies(self._namespace)
        raw = await _bounded(self._redis.hgetall(key), self._settings.redis_timeout_s)
        docs = parse_policy_documents(((connection.as_text(k), v) for k, v in (raw or {}).items()),
                                      namespace=self._namespace, origin=f"redis {key}")
        self._num_refreshes += 1
        await self._apply(docs, "redis")
        await self._write_ack()

    async def _load_from_file(self) -> None:
        if not self._policy_file:
            return
        self._policy_file_identity = _file_identity(self._policy_file)
        try:
            docs = load_policy_file(self._policy_file, namespace=self._namespace)
        except (OSError, PolicyError) as exc:
            log.warning("cannot use the policy file: %s", exc)
            return
        await self._apply(docs, "file")

    async def _apply(self, docs: list[policy_mod.PolicyDocument], source: PolicySource) -> None:
        self._docs = docs
        self._source = source
        await self._reselect()

    async def _reselect(self) -> None:
        chosen = policy_mod.select_policy(self._docs, self._labels)
        previous = self._current
        if _same(previous, chosen):
            return
        self._current = chosen
        self._applied_at_s = time.time() if chosen is not None else None
        if chosen is None:
            log.info("no CachePolicy selects pod %s in %s (source %s): proxy defaults apply",
                     self._pod_name, self._namespace, self._source)
        else:
            log.info("applied CachePolicy %s generation %d hash %s (source %s)",
                     chosen.id, chosen.generation, chosen.config_hash, self._source)
        # The callback runs before any await so a cancelled watcher never skips it.
        if self._on_change is not None:
            try:
                result = self._on_change(chosen)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("policy on_change callback failed")
        if previous is not None and (chosen is None or previous.name != chosen.name):
            await self._drop_ack(previous.name)

    # ---- acks -------------------------------------------------------------------------------

    async def _write_ack(self, *, force: bool = False) -> None:
        doc = self._current
        if doc is None or self._source != "redis":
            return
        if not force and self._acked == (doc.name, doc.config_hash):
            return
        key = self._ks.acks(self._namespace, doc.name)
        value = json.dumps({"configHash": doc.config_hash, "generation": doc.generation,
                            "appliedAt": self._applied_at_s})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, self._pod_name, value)
        pipe.expire(key, self._settings.ack_ttl_s)
        try:
            await _bounded(pipe.execute(), self._settings.redis_timeout_s)
        except _REDIS_DOWN as exc:
            log.warning("could not write policy ack for %s: %s", doc.id, type(exc).__name__)
            self._acked = None
            return
        self._acked = (doc.name, doc.config_hash)

    async def _drop_ack(self, policy_name: str) -> None:
        self._acked = None
        with contextlib.suppress(*_REDIS_DOWN):  # the ack expires by itself within ack_ttl_s
            await _bounded(self._redis.hdel(self._ks.acks(self._namespace, policy_name), self._pod_name),
                           self._settings.redis_timeout_s)

    # ---- background loops -------------------------------------------------------------------

    def _on_pubsub_connect(self, _connection: object) -> None:
        """redis-py reconnected the pub/sub connection by itself (and resubscribed): re-read."""
        self._num_reconnects += 1
        log.info("policy pub/sub connection re-established; re-reading policies")
        self._acked = None  # Redis may have restarted empty: write the ack again
        self._dirty.set()

    def _is_for_us(self, data: Any) -> bool:
        try:
            msg = json.loads(connection.as_text(data))
        except ValueError:
            return True  # unreadable message: re-reading is cheap and always safe
        if not isinstance(msg, Mapping):
            return True
        ns = msg.get("namespace")
        return ns is None or ns == self._namespace

    async def _subscribe_loop(self) -> None:
        backoff_s = self._settings.reconnect_min_s
        channel = self._ks.policy_channel(self._namespace)
        while not self._stopping:
            # On a cluster: a plain connection to one node, picked again after every failure
            # (PUBLISH reaches every node; see llmcache.connection.pubsub_client).
            try:
                node_client = connection.pubsub_client(self._redis)
            except Exception as exc:  # noqa: BLE001 - the cluster client knows no node yet
                node_client = None
                log.debug("no cluster node to subscribe on yet (%s)", exc)
            if node_client is None:
                with contextlib.suppress(*_REDIS_DOWN):
                    await _bounded(self._redis.ping(), self._settings.redis_timeout_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)
                continue
            pubsub = node_client.pubsub()
            try:
                await _bounded(pubsub.subscribe(channel), self._settings.redis_timeout_s)
                conn = pubsub.connection
                if conn is not None:
                    conn.register_connect_callback(self._on_pubsub_connect)
                self._subscribed = True
                self._acked = None  # Redis may have restarted empty: write the ack again
                # Read after subscribing so no change between read and subscribe is missed.
                self._dirty.set()
                backoff_s = self._settings.reconnect_min_s
                idle_s = 0.0
                while not self._stopping:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        idle_s += 1.0
                        if idle_s >= self._settings.ping_interval_s:
                            idle_s = 0.0
                            await _bounded(pubsub.ping(), self._settings.redis_timeout_s)
                        continue
                    idle_s = 0.0
                    if msg.get("type") == "message" and self._is_for_us(msg.get("data")):
                        self._dirty.set()
            except asyncio.CancelledError:
                raise
            except _REDIS_DOWN as exc:
                self._subscribed = False
                delay_s = backoff_s * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret
                log.warning("policy subscription lost (%s); retrying in %.2fs, keeping %s",
                            type(exc).__name__, delay_s, self._current.id if self._current else "no policy")
                await asyncio.sleep(delay_s)
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)
            finally:
                self._subscribed = False
                conn = pubsub.connection
                if conn is not None:
                    conn.deregister_connect_callback(self._on_pubsub_connect)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                if node_client is not self._redis:
                    with contextlib.suppress(Exception):
                        await node_client.aclose()

    async def _refresh_loop(self) -> None:
        """Coalesce triggers (events, reconnects, label changes) into one HGETALL at a time."""
        backoff_s = self._settings.reconnect_min_s
        while not self._stopping:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._refresh_from_redis()
                backoff_s = self._settings.reconnect_min_s
            except asyncio.CancelledError:
                raise
            except _REDIS_DOWN as exc:
                log.warning("re-reading policies failed (%s); keeping %s, retrying in %.2fs",
                            type(exc).__name__, self._current.id if self._current else "no policy", backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)
                self._dirty.set()
            except Exception:
                log.exception("unexpected error while re-reading policies")

    def _reload_labels(self, *, force: bool = False) -> bool:
        """Re-read the labels file if it changed; return whether the labels changed."""
        if self._labels_file is None:
            return False
        identity = _file_identity(self._labels_file)
        if not force and identity == self._labels_identity:
            return False
        self._labels_identity = identity
        try:
            labels = read_labels_file(self._labels_file)
        except OSError as exc:
            if force:
                log.warning("cannot read pod labels from %s (%s): only policies with an empty "
                            "selector can match until it appears", self._labels_file, exc)
            return False
        if labels == self._labels:
            return False
        self._labels = labels
        log.info("pod labels now %s", ",".join(sorted(self._labels)) or "(none)")
        return True

    async def _poll_loop(self) -> None:
        last_ack_s = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(self._settings.poll_interval_s)
            try:
                if self._reload_labels():
                    await self._reselect()  # at once, from the documents we have
                    self._dirty.set()  # and confirm against Redis (acks too)
                if (self._source != "redis" and self._policy_file
                        and _file_identity(self._policy_file) != self._policy_file_identity):
                    await self._load_from_file()
                if time.monotonic() - last_ack_s >= self._settings.ack_refresh_s:
                    last_ack_s = time.monotonic()
                    await self._write_ack(force=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher poll failed")
