"""Which model-server replica a request goes to: its longest cached prefix against load (``--routing prefix``).

For each request with a prompt (chat/completions with the body in hand)::

    prompt ─▶ token ids (prompt_ids) ─▶ block hashes in the tenant's namespace (llmcache.prefix_hash,
              the cache_salt is part of the root) ─▶ per replica: leading blocks it holds
    candidates = routable replicas with load ≤ min load + max(4, min load)      ◀─ the bound: a hot prefix
    best       = argmax  cached_tokens − 256 · load   over the candidates           cannot pile up on one
                 ├ it holds a prefix ──────────────────────────────▶ chosen by "prefix"
                 ├ their state is known and nobody holds it ─▶ the one given the fewest blocks of
                 │   distinct prefixes in the last 2 minutes, then least loaded (ties: ring order) ─▶ "load"
                 └ no state yet ─▶ consistent hash of the prefix over the ring, walking past replicas
                   over (1.25 × mean load + 1) ─▶ "fallback" (the first on the ring) or "load"
    no prompt (GET /v1/models, embeddings, streamed bodies) ─▶ least loaded ─▶ "load"

Placing a new prefix by how much prefix each replica serves (not by hashing alone) keeps
tenants spread evenly: hashing 16 tenants onto 2 replicas puts 10 or more on one a fifth of
the time. Each distinct prefix counts its blocks (what it takes of a prefix cache), so a
burst of one-line prompts does not weigh like as many long system prompts. The count comes
before load (which the bound above already limits): a replica whose
cache holds 8 system prompts and is given 10 tenants taking turns evicts each prompt just
before it is asked again (LRU under a cycle longer than the cache), so every one of its
requests prefills from scratch; placing by load first did that whenever the replicas' queues
differed by one as a new tenant arrived.

The replica a request goes to is remembered as filling those blocks from the moment it is sent,
for 30 s (until it reports them), so a burst for one new prefix follows the first request instead
of spreading.
``--routing hash`` uses only the hashing step (approximate: every sidecar agrees, no state),
``--routing round-robin`` none of it (what a Service's spread gives).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from llmcache import prefix_hash
from llmcache.proxy.prompt_ids import prompt_ids
from llmcache.proxy.replicas import Replica, ReplicaSet

__all__ = ["ROUTING_MODES", "Choice", "RouteKey", "Router", "RoutingMetrics"]

ROUTING_MODES = ("prefix", "hash", "round-robin")

_PROMPT_ROUTES = ("/v1/chat/completions", "/v1/completions")
_VIRTUAL_NODES = 64
"""Points per replica on the hash ring (even spread of keys)."""
_KEY_BLOCKS = 8
"""The hash-ring key is the prompt's 8th block (128 tokens): deep enough to name a system prompt,
not only the chat template's first line."""
_LOAD_COST_TOKENS = 256
"""A request already queued on a replica costs as much as recomputing this many prompt tokens."""
_BOUND_ABS = 4
"""A replica may have this many more requests than the least loaded one before it stops being a candidate…"""
_BOUND_REL = 1.0
"""…or this many times the least loaded one's, whichever is larger."""
_HASH_LOAD_FACTOR = 1.25
"""Consistent hashing with bounded loads: skip a replica above 1.25 × the mean load (+1)."""
_MAX_HASHED_BLOCKS = 4096
_RECENT_S = 120.0
"""How long a prefix sent to a replica counts toward that replica's share of prefixes."""
_MAX_RECENT = 10_000


@dataclass(frozen=True, slots=True)
class RouteKey:
    """What routing knows about one request's prompt."""

    token_ids: tuple[int, ...] | None
    """The prompt as the model server's token ids (``None``: unknown here)."""
    salt: str | None
    """Its ``cache_salt`` (part of every block hash's root)."""
    text_key: int | None
    """A hash of the prompt's start, for hashing when no token ids are known."""


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request goes and why."""

    replica: Replica
    chosen_by: str
    """``prefix``, ``fallback`` (consistent hashing) or ``load``."""
    predicted_cached_tokens: int
    blocks: tuple[int, ...] = ()
    """The prompt's block hashes in the chosen replica's namespace (remembered as filling there)."""
    key_point: int | None = None
    """The prompt's place on the hash ring (counts toward the replica's share of prefixes)."""


class _ReplicaStates:
    """``llmcache_route_replicas{state}``, read from the replica set when ``/metrics`` is scraped."""

    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        up = sum(1 for r in self._replicas.replicas.values() if r.is_routable(now))
        family = GaugeMetricFamily("llmcache_route_replicas", "Known model-server replicas by state (routable, down)",
                                   labels=["state"])
        family.add_metric(["routable"], up)
        family.add_metric(["down"], len(self._replicas.replicas) - up)
        yield family


class RoutingMetrics:
    """``/metrics`` families of the router (on the proxy's registry)."""

    def __init__(self, registry: CollectorRegistry, replicas: ReplicaSet) -> None:
        self.requests = Counter("llmcache_route_requests", "Requests sent upstream, by replica and why it was chosen",
                                ["replica", "chosen_by"], registry=registry)
        self.predicted_cached_tokens = Counter(
            "llmcache_route_predicted_cached_tokens", "Prompt tokens the router expected the replica to have cached",
            ["replica"], registry=registry)
        self.reported_cached_tokens = Counter(
            "llmcache_route_reported_cached_tokens",
            "Prompt tokens the replica reported from its cache (X-LLMCache-Cached-Tokens)", ["replica"],
            registry=registry)
        self.retries = Counter("llmcache_route_retries", "Requests sent to another replica after a connect failure",
                               ["replica"], registry=registry)
        registry.register(_ReplicaStates(replicas))


def route_key(route: str, body: Mapping[str, Any] | None, tokenizer_for: Any) -> RouteKey | None:
    """The routing view of a request body; ``None`` for requests without a prompt."""
    if body is None or route not in _PROMPT_ROUTES:
        return None
    salt = body.get("cache_salt")
    salt = salt if isinstance(salt, str) else None
    ids = prompt_ids(route, body, tokenizer_for)
    text = body.get("messages") if route == "/v1/chat/completions" else body.get("prompt")
    try:
        start = json.dumps(text, ensure_ascii=False, separators=(",", ":"))[:2048]
    except (TypeError, ValueError):
        start = ""
    text_key = int.from_bytes(hashlib.blake2b(f"{salt}\x00{start}".encode(), digest_size=8).digest(), "little")
    return RouteKey(token_ids=tuple(ids) if ids is not None else None, salt=salt, text_key=text_key)


def _point(value: str | int) -> int:
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")


class Router:
    """Chooses a replica per request (see the module doc); one per proxy process."""

    def __init__(self, replicas: ReplicaSet, *, mode: str = "prefix", metrics: RoutingMetrics | None = None) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing mode must be one of {ROUTING_MODES}")
        self.replicas = replicas
        self.mode = mode
        self.metrics = metrics
        self._ring: list[tuple[int, str]] = []
        self._ring_version = -1
        self._rr = itertools.count()
        self._recent: dict[str, dict[int, tuple[float, int]]] = {}
        """Per replica URL: prefixes (ring points) sent there, with when they were last sent and their blocks."""

    def key_for(self, route: str, body: Mapping[str, Any] | None) -> RouteKey | None:
        """The request's routing key, tokenized with the model's tokenizer when one is known."""
        if self.mode == "round-robin":
            return None
        tokenizers = [t for t in self.replicas.tokenizers.values() if t is not None]
        return route_key(route, body, tokenizers[0] if len(tokenizers) == 1 else self._tokenizer_of_majority())

    def _tokenizer_of_majority(self) -> Any:
        counts: dict[str, int] = {}
        for r in self.replicas.replicas.values():
            if r.namespace is not None:
                counts[r.namespace] = counts.get(r.namespace, 0) + 1
        for ns, _n in sorted(counts.items(), key=lambda kv: -kv[1]):
            tok = self.replicas.tokenizers.get(ns)
            if tok is not None:
                return tok
        return None

    def choose(self, key: RouteKey | None, *, exclude: Sequence[Replica] = ()) -> Choice | None:
        """The replica for a request with ``key``; ``None`` when none is routable."""
        now = time.monotonic()
        candidates = [r for r in self.replicas.replicas.values() if r.is_routable(now) and r not in exclude]
        if not candidates:
            # Everything looks down: try the ones not excluded anyway (a connect failure says more than a guess).
            candidates = [r for r in self.replicas.replicas.values() if r not in exclude]
            if not candidates:
                return None
        if len(candidates) == 1:
            return Choice(candidates[0], "load", 0)
        if self.mode == "round-robin":
            return Choice(candidates[next(self._rr) % len(candidates)], "round-robin", 0)
        if key is None:
            return Choice(min(candidates, key=lambda r: (r.load, r.url)), "load", 0)
        least = min(r.load for r in candidates)
        bounded = [r for r in candidates if r.load <= least + max(_BOUND_ABS, _BOUND_REL * least)]
        point, ring_blocks = self._ring_point(key, candidates)
        if self.mode == "prefix" and key.token_ids is not None:
            best: tuple[float, Replica, int, tuple[int, ...]] | None = None
            hashes: dict[tuple[str, int], list[int]] = {}
            for r in bounded:
                if not r.has_state or r.namespace is None:
                    continue
                hk = (r.namespace, r.block_tokens)
                if hk not in hashes:
                    hashes[hk] = prefix_hash.block_hashes(
                        prefix_hash.salted_namespace(r.namespace, key.salt), key.token_ids,
                        block_tokens=r.block_tokens, max_blocks=_MAX_HASHED_BLOCKS)
                blocks = hashes[hk]
                held = 0
                while held < len(blocks) and r.holds(blocks[held], now):
                    held += 1
                cached = min(held * r.block_tokens, len(key.token_ids) - 1)
                score = cached - _LOAD_COST_TOKENS * r.load
                if cached > 0 and (best is None or score > best[0]):
                    best = (score, r, cached, tuple(blocks))
            if best is not None:
                return Choice(best[1], "prefix", best[2], best[3], point)
            if any(r.has_state for r in bounded):
                # Nobody holds it: the replica serving the least prefix, then the least loaded.
                rank = {url: i for i, url in enumerate(self._ring_order(point))}
                now_recent = {r.url: self._recent_blocks(r.url, now) for r in bounded}
                r = min(bounded, key=lambda r: (now_recent[r.url], r.load, rank.get(r.url, 0)))
                return Choice(r, "load", 0, ring_blocks, point)
        return self._hashed(point, ring_blocks, candidates, bounded)

    def _recent_blocks(self, url: str, now: float) -> int:
        """Blocks of the distinct prefixes sent to ``url`` in the last _RECENT_S (one at least per prefix)."""
        recent = self._recent.get(url)
        if not recent:
            return 0
        stale = [p for p, (t, _) in recent.items() if t < now - _RECENT_S]
        for p in stale:
            del recent[p]
        return sum(n for _, n in recent.values())

    def _ring_order(self, point: int) -> list[str]:
        """Replica URLs in ring order from ``point``, each once."""
        ring = self._current_ring()
        start = bisect.bisect_left(ring, (point, ""))
        order: dict[str, None] = {}
        for i in range(len(ring)):
            order.setdefault(ring[(start + i) % len(ring)][1])
        return list(order)

    def _hashed(self, point: int, blocks: tuple[int, ...], candidates: list[Replica],
                bounded: list[Replica]) -> Choice:
        """Consistent hashing with bounded loads over the ring of every replica."""
        ring = self._current_ring()
        allowed = {r.url for r in bounded}
        mean = sum(r.load for r in candidates) / len(candidates)
        cap = _HASH_LOAD_FACTOR * mean + 1
        by_url = {r.url: r for r in candidates}
        start = bisect.bisect_left(ring, (point, ""))
        first: Replica | None = None
        seen: set[str] = set()
        for i in range(len(ring)):
            url = ring[(start + i) % len(ring)][1]
            r = by_url.get(url)
            if r is None or url in seen:
                continue
            seen.add(url)
            if first is None:
                first = r
            if url in allowed and r.load <= cap:
                return Choice(r, "fallback" if r is first else "load", 0, blocks, point)
        return Choice(min(candidates, key=lambda r: (r.load, r.url)), "load", 0, blocks, point)

    def _ring_point(self, key: RouteKey, candidates: list[Replica]) -> tuple[int, tuple[int, ...]]:
        """Where ``key`` sits on the ring, and its block hashes when they can be computed."""
        if key.token_ids is not None:
            ns = next((r.namespace for r in candidates if r.namespace is not None), None)
            block_tokens = next((r.block_tokens for r in candidates if r.namespace is not None),
                                prefix_hash.DEFAULT_BLOCK_TOKENS)
            blocks = prefix_hash.block_hashes(prefix_hash.salted_namespace(ns or "", key.salt), key.token_ids,
                                              block_tokens=block_tokens, max_blocks=_MAX_HASHED_BLOCKS)
            if blocks:
                return blocks[min(len(blocks), _KEY_BLOCKS) - 1], tuple(blocks) if ns is not None else ()
        return key.text_key or 0, ()

    def _current_ring(self) -> list[tuple[int, str]]:
        if self._ring_version != self.replicas.version:
            self._ring = sorted((_point(f"{url}#{i}"), url) for url in self.replicas.replicas
                                for i in range(_VIRTUAL_NODES))
            self._ring_version = self.replicas.version
        return self._ring

    def sending(self, choice: Choice) -> None:
        """``choice`` is about to be sent: remember its blocks as filling on that replica from now on.

        Called before the request leaves, not when its answer comes back: a second request for the same
        new prefix that arrives while the first one is still prefilling must follow it (and find its KV
        there, or wait for it), not be placed anew on another replica that then computes it again."""
        now = time.monotonic()
        if choice.blocks and self.mode == "prefix":
            choice.replica.expect(choice.blocks, now)
        if choice.key_point is not None:
            recent = self._recent.setdefault(choice.replica.url, {})
            recent[choice.key_point] = (now, max(1, len(choice.blocks)))
            if len(recent) > 4 * _MAX_RECENT:
                self._recent_blocks(choice.replica.url, now)
                while len(recent) > _MAX_RECENT:
                    del recent[next(iter(recent))]

    def not_sent(self, choice: Choice) -> None:
        """``choice``'s replica refused the connection: it will not cache those blocks after all."""
        choice.replica.forget(choice.blocks)
        if choice.key_point is not None:
            self._recent.get(choice.replica.url, {}).pop(choice.key_point, None)

    def sent(self, choice: Choice) -> None:
        """``choice`` reached its replica (it answered): count it."""
        if self.metrics is not None:
            self.metrics.requests.labels(choice.replica.url, choice.chosen_by).inc()
            if choice.predicted_cached_tokens:
                self.metrics.predicted_cached_tokens.labels(choice.replica.url).inc(choice.predicted_cached_tokens)
