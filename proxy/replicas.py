"""The model-server replicas behind this proxy: who they are, whether they answer, what their caches hold.

Discovery (``--upstream``, repeatable; comma-separated in ``LLMCACHE_UPSTREAM``)::

    http://host:8000        one replica
    dns+http://host:8000    one replica per address ``host`` resolves to, re-resolved every
                            --upstream-refresh-seconds: a Kubernetes headless Service lists its
                            ready pods, so scale-up/down and readiness are followed with no API
                            credentials at all (the least privilege there is)
    file:/etc/x/upstreams   the URLs in the file (one per line, ``#`` comments), re-read when it
                            changes (a mounted ConfigMap, or a script that adds a replica)

With two or more replicas each one is followed (:meth:`ReplicaSet._follow`)::

    GET {replica}/llmcache/v1/cache-state?epoch&since&wait_s   (long poll, ≥ 0.1 s apart)
        → block hashes its prefix cache holds (events, or a reset with all of them)
        → load: running, waiting, KV use
    failure (refused, timeout, 5xx) → not routable until a poll succeeds again (backoff ≤ 5 s)

A single static replica is never followed: the proxy then behaves exactly as with one upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from llmcache.errors import ConfigError
from llmcache.proxy.prompt_ids import PromptTokenizer
from llmcache.settings import upstream_url

__all__ = ["Replica", "ReplicaSet", "parse_sources"]

log = logging.getLogger(__name__)

_POLL_WAIT_S = 2.0
"""How long one cache-state long poll may wait for news (the load is at most this stale)."""
_MIN_POLL_INTERVAL_S = 0.1
"""At most ten polls a second per replica, however busy its cache is."""
_MAX_BACKOFF_S = 5.0
_CONNECT_FAILURE_PAUSE_S = 2.0
"""A replica that refused a connection is skipped this long (then tried again)."""
_SPECULATIVE_TTL_S = 30.0
"""How long a routing decision counts as "this replica is filling that prefix" without confirmation."""
_MAX_SPECULATIVE = 100_000


@dataclass(frozen=True, slots=True)
class Source:
    """One ``--upstream`` value: a replica, a DNS name to expand, or a file to read."""

    kind: str
    """``static``, ``dns`` or ``file``."""
    value: str
    """The URL (``dns``: with the ``dns+`` prefix removed) or the file path."""


def parse_sources(values: Iterable[str]) -> tuple[Source, ...]:
    """``--upstream`` values → sources; ConfigError naming the flag on a bad one."""
    out: list[Source] = []
    for raw in values:
        v = raw.strip()
        if not v:
            continue
        if v.startswith("file:"):
            path = v.removeprefix("file:").removeprefix("//")
            if not path:
                raise ConfigError(f"--upstream {raw!r}: file: needs a path, e.g. file:/etc/llmcache/upstreams")
            out.append(Source("file", path))
        elif v.startswith("dns+"):
            out.append(Source("dns", upstream_url(v.removeprefix("dns+"))))
        else:
            out.append(Source("static", upstream_url(v)))
    if not out:
        raise ConfigError("--upstream needs at least one URL")
    return tuple(out)


@dataclass(slots=True, eq=False)
class Replica:
    """One model-server replica as this proxy knows it."""

    url: str
    routable: bool = True
    """False after a failed state poll, until a poll succeeds again."""
    down_until: float = 0.0
    """After a failed connect: not chosen before this time (``time.monotonic``)."""
    followed: bool = False
    """A state follower runs for it (only while there are two replicas or more)."""
    has_state: bool = False
    """Its cache state arrived at least once (else routing falls back to consistent hashing)."""
    namespace: str | None = None
    """The model's prefix-cache namespace (revision + dtype): the root of its block hashes."""
    block_tokens: int = 16
    blocks: set[int] = field(default_factory=set)
    speculative: dict[int, float] = field(default_factory=dict)
    """Blocks this proxy sent it recently (hash → until when they count), before it reported them."""
    num_running: int = 0
    num_waiting: int = 0
    max_num_seqs: int = 16
    num_inflight: int = 0
    """Requests this proxy has open to it right now."""
    epoch: str | None = None
    seq: int | None = None
    task: asyncio.Task[None] | None = None

    def is_routable(self, now: float) -> bool:
        return self.routable and now >= self.down_until

    @property
    def load(self) -> int:
        """Queue depth as best known: the replica's own count, or this proxy's open requests if more."""
        return max(self.num_running + self.num_waiting, self.num_inflight)

    def holds(self, block: int, now: float) -> bool:
        if block in self.blocks:
            return True
        until = self.speculative.get(block)
        return until is not None and until > now

    def expect(self, blocks: Iterable[int], now: float) -> None:
        """This replica is about to cache ``blocks`` (a request was just sent there)."""
        if len(self.speculative) > _MAX_SPECULATIVE:
            self.speculative = {h: t for h, t in self.speculative.items() if t > now}
            if len(self.speculative) > _MAX_SPECULATIVE:
                self.speculative.clear()
        until = now + _SPECULATIVE_TTL_S
        for h in blocks:
            self.speculative[h] = until

    def forget(self, blocks: Iterable[int]) -> None:
        """``blocks`` will not be cached here after all (evicted, or the request never reached it)."""
        for h in blocks:
            self.speculative.pop(h, None)

    def apply(self, state: dict[str, Any]) -> None:
        """Take one cache-state answer (see :mod:`llmcache.model_server.prefix_events`)."""
        if state.get("reset"):
            self.blocks = set()
        for op, hashes in state.get("events", ()):
            if op == "+":
                self.blocks.update(hashes)
            elif op == "-":
                self.blocks.difference_update(hashes)
                self.forget(hashes)
        load = state.get("load") or {}
        self.num_running = int(load.get("num_running", 0))
        self.num_waiting = int(load.get("num_waiting", 0))
        self.max_num_seqs = max(1, int(load.get("max_num_seqs", self.max_num_seqs)))
        self.namespace = str(state["namespace"])
        self.block_tokens = int(state.get("block_tokens", self.block_tokens))
        self.epoch, self.seq = state.get("epoch"), state.get("seq")
        self.has_state = True


class ReplicaSet:
    """The replicas (by URL), kept current by discovery and followed for their cache state."""

    def __init__(self, sources: tuple[Source, ...], session: aiohttp.ClientSession, *, refresh_s: float = 2.0
                 ) -> None:
        self.sources = sources
        self.session = session
        self.refresh_s = refresh_s
        self.replicas: dict[str, Replica] = {}
        self.version = 0
        """Bumped whenever membership changes (the router rebuilds its hash ring then)."""
        self.tokenizers: dict[str, PromptTokenizer | None] = {}
        """Per model namespace: its tokenizer (``None``: the server has none to share)."""
        self._tokenizer_tasks: dict[str, asyncio.Task[None]] = {}
        self._file_mtimes: dict[str, float] = {}
        self._file_urls: dict[str, list[str]] = {}
        self._dns_urls: dict[str, list[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.static = all(s.kind == "static" for s in sources)
        self._set_members(self._static_urls())

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Resolve the sources once, then keep them current (and follow the replicas) in the background."""
        self._started = True
        if not self.static:
            await self.refresh()
            self._task = asyncio.get_running_loop().create_task(self._discover())
        self._update_followers()

    async def close(self) -> None:
        tasks = [t for t in (self._task, *(r.task for r in self.replicas.values()),
                             *self._tokenizer_tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ----------------------------------------------------------------- discovery

    def _static_urls(self) -> list[str]:
        return [s.value for s in self.sources if s.kind == "static"]

    async def refresh(self) -> None:
        """Re-read every dynamic source now (DNS names, files) and update the membership."""
        urls = self._static_urls()
        for s in self.sources:
            if s.kind == "dns":
                urls.extend(await self._resolve(s.value))
            elif s.kind == "file":
                urls.extend(self._read_file(s.value))
        self._set_members(urls)

    async def _resolve(self, url: str) -> list[str]:
        u = URL(url)
        host, port = u.host or "", u.port or (443 if u.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            # Keep what we had: a DNS hiccup must not empty the replica set.
            log.warning("cannot resolve upstream %s (%s); keeping %d known replicas", host, exc,
                        len(self._dns_urls.get(url, ())))
            return self._dns_urls.get(url, [])
        addrs = sorted({str(info[4][0]) for info in infos})
        out = [f"{u.scheme}://{f'[{a}]' if ':' in a else a}:{port}" for a in addrs]
        self._dns_urls[url] = out
        return out

    def _read_file(self, path: str) -> list[str]:
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            log.warning("cannot read upstream file %s (%s); keeping %d known replicas", path, exc,
                        len(self._file_urls.get(path, ())))
            return self._file_urls.get(path, [])
        if self._file_mtimes.get(path) == mtime:
            return self._file_urls[path]
        urls: list[str] = []
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()  # noqa: PLW2901 - the comment-free line
                    if line:
                        urls.append(upstream_url(line))
        except (OSError, ConfigError) as exc:
            log.warning("upstream file %s: %s; keeping %d known replicas", path, exc,
                        len(self._file_urls.get(path, ())))
            return self._file_urls.get(path, [])
        self._file_mtimes[path], self._file_urls[path] = mtime, urls
        return urls

    async def _discover(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("upstream discovery failed; retrying in %.1f s", self.refresh_s)

    def _set_members(self, urls: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(urls))
        changed = False
        for url in [u for u in self.replicas if u not in wanted]:
            r = self.replicas.pop(url)
            if r.task is not None:
                r.task.cancel()
            changed = True
            log.info("upstream replica %s left", url)
        for url in wanted:
            if url not in self.replicas:
                self.replicas[url] = Replica(url=url)
                changed = True
                if self.version:
                    log.info("upstream replica %s joined", url)
        if changed:
            self.version += 1
        self._update_followers()

    def _update_followers(self) -> None:
        if not self._started or len(self.replicas) < 2:
            return
        for r in self.replicas.values():
            if r.task is None:
                # Not chosen before it answers a state poll: a listed replica may still be loading its model.
                r.routable = r.has_state
                r.task = asyncio.get_running_loop().create_task(self._follow(r))
                r.followed = True

    # ----------------------------------------------------------------- following

    async def _follow(self, r: Replica) -> None:
        backoff = 0.25
        timeout = aiohttp.ClientTimeout(total=_POLL_WAIT_S + 10, sock_connect=2.0)
        while self.replicas.get(r.url) is r:
            started = time.monotonic()
            params = {"wait_s": str(_POLL_WAIT_S if r.has_state else 0)}
            if r.epoch is not None and r.seq is not None:
                params |= {"epoch": r.epoch, "since": str(r.seq)}
            try:
                async with self.session.get(r.url + "/llmcache/v1/cache-state", params=params, timeout=timeout) as resp:
                    if resp.status == 404:
                        # Not an llmcache model server: route to it by load and hashing, and stop asking.
                        log.info("upstream %s has no cache state (404): prefix routing skips it", r.url)
                        r.routable, r.has_state = True, False
                        return
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status)
                    state = await resp.json()
                r.apply(state)
                if not r.routable:
                    log.info("upstream replica %s answers again", r.url)
                r.routable = True
                backoff = 0.25
                ns = r.namespace
                if ns is not None and ns not in self.tokenizers and ns not in self._tokenizer_tasks:
                    self._tokenizer_tasks[ns] = asyncio.get_running_loop().create_task(self._fetch_tokenizer(r, ns))
                await asyncio.sleep(max(0.0, _MIN_POLL_INTERVAL_S - (time.monotonic() - started)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: not routable, try again later
                if r.routable:
                    log.warning("upstream replica %s is not answering (%s); routing around it", r.url,
                                type(exc).__name__)
                r.routable = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _fetch_tokenizer(self, r: Replica, namespace: str) -> None:
        """Load the model's tokenizer from ``r`` once per namespace (off the event loop: it is megabytes)."""
        try:
            async with self.session.get(r.url + "/llmcache/v1/tokenizer",
                                        timeout=aiohttp.ClientTimeout(total=60)) as resp:
                if resp.status == 404:
                    self.tokenizers[namespace] = None
                    return
                resp.raise_for_status()
                data = await resp.json()
            tok = await asyncio.to_thread(PromptTokenizer, tokenizer_json=data["tokenizer"],
                                          chat_template=data.get("chat_template"),
                                          special_tokens=data.get("special_tokens") or {})
            self.tokenizers[namespace] = tok
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - without a tokenizer, routing falls back to hashing
            log.warning("cannot load the tokenizer of %s from %s (%s); will retry", namespace, r.url, exc)
        finally:
            self._tokenizer_tasks.pop(namespace, None)

    def mark_failed(self, replica: Replica, now: float) -> None:
        """A connect to ``replica`` failed: route around it for a while (its follower also stops it)."""
        replica.down_until = now + _CONNECT_FAILURE_PAUSE_S
