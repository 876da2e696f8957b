"""Token radix tree of immutable KV slices: the automatic prefix cache.

Why a radix tree and not hashed blocks (vLLM)? Blocks pay off when the running KV lives
in a paged block pool that the attention kernel reads directly. Here a running sequence
owns one contiguous buffer per layer (:mod:`llmcache.model_server.kv_buffer`: ragged, not
paged, because CPU torch has no paged-attention kernel), and the cache only has to hand
it a prefix once, at admission. Blocks would add a block-size granularity (a 1,000-token
prefix followed by a 15-token seam loses up to a block) for nothing; a radix tree
(SGLang's RadixAttention, TGI v3) matches to the exact token, shares any common prefix
automatically, and its leaves are the natural eviction unit.

Layout: one tree per *namespace* (``RadixKey.namespace``: model revision + dtype, plus a
hash of the request's ``cache_salt``), so two models, two dtypes or two salted tenants
never share KV. Each edge holds token ids and, for every layer, the key and value tensors
of exactly those tokens (``[1, kv_heads, len(edge), head_dim]``)::

    root ──[1 9690 198 …  (system prompt, 1000 tokens)]──┬──[4093 198 1780 … (question A)]
                                                          └──[4093 198 2683 … (question B)]

Interface (in SGLang's ``radix_cache.py`` manner; every call returns a named result):

- :meth:`RadixCache.match_prefix` → :class:`MatchResult` (tokens matched, their KV, the
  pinned node). Side effects: a match that ends inside an edge *splits* that node (so a
  later insert branches there); every node on the path counts one more use and gets a fresh
  eviction priority (GDSF, below);
  with ``lock=True`` the path is pinned until :meth:`RadixCache.release`. It matches at
  most ``len(tokens) - 1`` tokens, so the caller always has one token left to run and
  thus logits to sample from.
- :meth:`RadixCache.insert` → :class:`InsertResult` (already cached, newly stored, left
  out because the budget could not be met, and what eviction it caused).
- :meth:`RadixCache.evict` → :class:`EvictResult`; :meth:`RadixCache.stats` →
  :class:`~llmcache.model_server.stats.PrefixCacheStats`.

Block hashes (for routers, :mod:`llmcache.prefix_hash`): with ``block_tokens`` set, each
node also holds the hashes of the full blocks that *end* inside its edge; an insert
reports the blocks it completed (``InsertResult.stored_blocks``) and an eviction the
blocks that left (``EvictResult.removed_blocks``), so the set of published hashes is
exactly the set of cached full-block prefixes. A split hands each half the blocks ending
in it.

Contract:

- Stored tensors are never mutated. A split clones both halves into new tensors; a
  match copies into the caller's buffers (or returns freshly concatenated tensors); an
  insert clones its slice.
- Byte budget: ``total_bytes <= budget_bytes`` after every call. Eviction removes
  unreferenced leaves in GDSF order (below; a heap with lazy invalidation, never a full
  scan); pinned nodes and their ancestors are never evicted. When the budget
  cannot be met because everything is pinned, an insert stores only what fits
  (back-pressure as a return value, ``InsertResult.num_dropped_tokens``, not an exception).

Eviction order: Greedy-Dual-Size-Frequency (Cherkasova, 1998) rather than plain LRU.
Each node's priority is set when it is used: ``inflation + uses`` (``uses``: how many
requests contained it, at most :data:`MAX_USES`); the lowest priority goes first, ties in
the order they were used, and ``inflation`` rises to the priority of each node evicted.
Recomputing a prefix costs about as much per token as its KV takes per byte, so the size
term of GDSF cancels. Why not LRU: a request's own tail (its question, its answer) is
used once, while a shared system prompt is used by every request of its tenant, and in
LRU a system prompt is evicted as soon as its own tails are gone, before other tenants'
newer tails. With two replicas each holding half of 16 tenants' prompts (routing_bench),
the tails overflowed every cache and LRU evicted a prompt a round. Under GDSF tails go
first; a prefix used ``n`` times outlives a once-used one by about ``n - 1`` turns of the
inflation (each turn: the cache's content evicted about once), so a formerly hot prefix
that nobody asks for any more still leaves, and new prefixes are never starved.

A leaf larger than what must be freed loses only its tail (the leaf is split at a block
boundary, at least :data:`MIN_EVICT_TOKENS` from its end, and the lower part evicted): the
way a paged cache frees a sequence's last blocks first. A cache a little smaller than its
working set then keeps most of every prompt (the next request recomputes the cut tail)
instead of dropping whole 1,000-token prompts, which a router would see vanish and place
anew on another replica, overflowing that one in turn.

Thread safety: every public method takes the cache's lock (the server calls it from its
single inference worker; ``/metrics`` and tests read it from other threads).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llmcache import prefix_hash
from llmcache.model_server.stats import PrefixCacheStats

__all__ = [
    "EvictResult",
    "InsertResult",
    "KVLayers",
    "MatchResult",
    "RadixCache",
    "RadixKey",
    "RadixNode",
    "kv_bytes_per_token",
]

#: Per layer ``(key, value)``, each ``[1, kv_heads, tokens, head_dim]``.
KVLayers = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True, slots=True)
class RadixKey:
    """What the cache is keyed by: token ids within a namespace (SGLang's ``RadixKey`` with its extra key).

    ``namespace`` is model revision + dtype, plus a hash of the request's ``cache_salt``
    (:func:`llmcache.model_server.request.cache_namespace`): keys in different namespaces
    never share a node.
    """

    namespace: str
    token_ids: Sequence[int]

    def __len__(self) -> int:
        return len(self.token_ids)


MIN_EVICT_TOKENS = 64
"""The smallest tail cut off a leaf when only part of it must go (see the module doc)."""

MAX_USES = 8
"""Cap of a node's use count in its eviction priority: a prefix that was hot once leaves within about
eight turns of the cache once nobody asks for it."""


@dataclass(eq=False, slots=True)
class RadixNode:
    """One edge of the tree: ``key`` tokens and their KV; identity-compared."""

    namespace: str
    key: tuple[int, ...]
    kv: KVLayers
    parent: RadixNode | None
    children: dict[int, RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    uses: int = 1
    """Requests that contained this node (the insert, then each match), at most MAX_USES."""
    priority: float = 0.0
    """Eviction priority (GDSF, see the module doc): lowest goes first."""
    nbytes: int = 0
    blocks: list[tuple[int, int]] = field(default_factory=list)
    """``(end position, hash)`` of the published blocks that end inside this edge (see ``block_tokens``)."""

    @property
    def is_root(self) -> bool:
        return self.parent is None


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Result of :meth:`RadixCache.match_prefix`.

    ``kv`` holds new tensors (the caller may extend them) covering
    ``token_ids[:num_cached_tokens]``; ``None`` when nothing matched or when the KV was
    copied into the caller's buffers. Pass the result to :meth:`RadixCache.release` when
    the request ends (also when nothing matched).
    """

    num_cached_tokens: int
    kv: KVLayers | None
    last_node: RadixNode
    """Deepest matched node (the root when nothing matched): what ``lock=True`` pinned."""
    locked: bool


@dataclass(frozen=True, slots=True)
class EvictResult:
    """What one eviction removed."""

    num_evicted_nodes: int = 0
    num_freed_bytes: int = 0
    removed_blocks: tuple[int, ...] = ()
    """Hashes of the blocks that left with the evicted nodes (:mod:`llmcache.prefix_hash`)."""


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What one :meth:`RadixCache.insert` did with ``key``'s tokens.

    ``num_matched_tokens + num_new_tokens + num_dropped_tokens == len(key)``::

        key:  [ matched (already cached) | new (stored now) | dropped (no room) ]
    """

    num_matched_tokens: int
    num_new_tokens: int
    num_dropped_tokens: int
    """Tokens left out because the budget could not be met (everything else pinned)."""
    evicted: EvictResult = EvictResult()
    """What this insert evicted to make room."""
    stored_blocks: tuple[int, ...] = ()
    """Hashes of the full blocks this insert completed (:mod:`llmcache.prefix_hash`), in order."""


def kv_bytes_per_token(kv: KVLayers) -> int:
    """Bytes one token of ``kv`` occupies across all layers (keys and values)."""
    return sum(k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size()
               for k, v in kv)


def _slice(kv: KVLayers, start: int, stop: int) -> KVLayers:
    # clone(): a view would keep the whole source tensor alive and break byte accounting.
    return tuple((k[:, :, start:stop, :].clone(), v[:, :, start:stop, :].clone()) for k, v in kv)


def _nbytes(kv: KVLayers) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache:
    """Prefix KV cache: namespaced token radix tree with a byte budget and GDSF leaf eviction."""

    def __init__(self, budget_bytes: int, *, block_tokens: int | None = None) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        """Hash every full block of ``block_tokens`` tokens that enters or leaves the tree (reported in
        :class:`InsertResult` / :class:`EvictResult`, for routers); ``None``: no hashing."""
        self._roots: dict[str, RadixNode] = {}
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, RadixNode]] = []
        self._inflation = 0.0
        """GDSF's L: the priority of the last node evicted (never decreases)."""
        self.total_bytes = 0
        self.num_nodes = 0
        self.num_evictions = 0
        """Nodes evicted so far."""
        self.num_evicted_bytes = 0
        self.num_queried_tokens = 0
        """Prompt tokens looked up by :meth:`match_prefix` so far."""
        self.num_hit_tokens = 0
        """Prompt tokens served from the cache so far."""

    # ------------------------------------------------------------------ lookup

    def match_prefix(self, key: RadixKey, *, lock: bool = True,
                     into: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> MatchResult:
        """Longest cached prefix of ``key`` (at most ``len(key) - 1`` tokens).

        With ``into`` (per layer ``(K, V)`` buffers ``[1, kv_heads, >= len(key), head_dim]``
        owned by the caller) the matched KV is copied there, once, and ``kv`` is ``None``;
        otherwise ``kv`` holds freshly concatenated tensors.

        Side effects: splits the node where the match ends inside an edge; refreshes the
        access tick of every node on the path; with ``lock`` pins the path until
        :meth:`release`; adds to ``num_queried_tokens`` / ``num_hit_tokens``.
        """
        tokens = key.token_ids
        with self._lock:
            root = self._root(key.namespace)
            cap = len(tokens) - 1
            node, i = root, 0
            path: list[RadixNode] = []
            while i < cap:
                child = node.children.get(tokens[i])
                if child is None:
                    break
                n = common_prefix_len(child.key, tokens[i:cap])
                if n < len(child.key):
                    child = self._split(child, n, start=i)
                path.append(child)
                node, i = child, i + n
            tick = next(self._clock)
            for p in path:
                p.uses = min(MAX_USES, p.uses + 1)
                self._touch(p, tick)
            if lock:
                self._inc_lock(node)
            self.num_queried_tokens += len(tokens)
            self.num_hit_tokens += i
            kv: KVLayers | None = None
            if path and into is not None:
                pos = 0
                for p in path:
                    n = len(p.key)
                    for (kb, vb), (k, v) in zip(into, p.kv):
                        kb[:, :, pos:pos + n].copy_(k)
                        vb[:, :, pos:pos + n].copy_(v)
                    pos += n
            elif path:
                num_layers = len(path[0].kv)
                kv = tuple(
                    (torch.cat([p.kv[layer][0] for p in path], dim=2), torch.cat([p.kv[layer][1] for p in path], dim=2))
                    for layer in range(num_layers)
                )
            return MatchResult(num_cached_tokens=i, kv=kv, last_node=node, locked=lock)

    def cached_length(self, key: RadixKey) -> int:
        """How many tokens :meth:`match_prefix` would return for ``key`` now, without its side effects.

        No split, no access tick, no pin, no stats: the scheduler's estimate of a waiting
        prompt's cached prefix (which prompt has the least left to prefill).
        """
        tokens = key.token_ids
        cap = len(tokens) - 1
        with self._lock:
            node = self._roots.get(key.namespace)
            i = 0
            while node is not None and i < cap:
                child = node.children.get(tokens[i])
                if child is None:
                    break
                n = common_prefix_len(child.key, tokens[i:cap])
                i += n
                if n < len(child.key):
                    break
                node = child
            return i

    def release(self, match: MatchResult) -> None:
        """Unpin the path pinned by ``match_prefix(lock=True)``; a no-op for unlocked matches."""
        if not match.locked:
            return
        with self._lock:
            self._dec_lock(match.last_node)

    # ------------------------------------------------------------------ insert

    def insert(self, key: RadixKey, kv: KVLayers) -> InsertResult:
        """Store ``key``'s tokens with their KV (``kv`` covers at least ``len(key)`` positions).

        Only the part not already cached is copied in; when the budget cannot be met even
        after evicting every unpinned leaf, only what fits is stored (see
        :class:`InsertResult`). Side effects: splits the node where the cached part ends
        inside an edge; refreshes the access tick of the matched path.
        """
        tokens = key.token_ids
        if kv and kv[0][0].shape[2] < len(tokens):
            raise ValueError(f"kv covers {kv[0][0].shape[2]} tokens, fewer than the {len(tokens)} to insert")
        with self._lock:
            root = self._root(key.namespace)
            node, i = root, 0
            tick = next(self._clock)
            while i < len(tokens):
                child = node.children.get(tokens[i])
                if child is None:
                    break
                n = common_prefix_len(child.key, tokens[i:])
                if n < len(child.key):
                    child = self._split(child, n, start=i)
                self._touch(child, tick)
                node, i = child, i + n
            remaining = len(tokens) - i
            if remaining == 0 or not kv:
                return InsertResult(num_matched_tokens=i, num_new_tokens=0, num_dropped_tokens=remaining)
            per_token = kv_bytes_per_token(kv)
            need = remaining * per_token
            evicted = EvictResult()
            if self.total_bytes + need > self.budget_bytes:
                # Pin the attach point so eviction cannot pull the branch out from under us.
                self._inc_lock(node)
                try:
                    evicted = self._evict_locked(self.total_bytes + need - self.budget_bytes)
                finally:
                    self._dec_lock(node)
            room = max(0, (self.budget_bytes - self.total_bytes) // per_token) if per_token else remaining
            fit = min(remaining, room)
            stored: tuple[int, ...] = ()
            if fit:
                new_kv = _slice(kv, i, i + fit)
                leaf = RadixNode(namespace=key.namespace, key=tuple(tokens[i:i + fit]), kv=new_kv, parent=node,
                                 last_access=tick, priority=self._inflation + 1, nbytes=_nbytes(new_kv))
                leaf.blocks = self._blocks(key.namespace, tokens, start=i, stop=i + fit)
                stored = tuple(h for _end, h in leaf.blocks)
                node.children[leaf.key[0]] = leaf
                self.total_bytes += leaf.nbytes
                self.num_nodes += 1
                self._push(leaf)
            return InsertResult(num_matched_tokens=i, num_new_tokens=fit, num_dropped_tokens=remaining - fit,
                                evicted=evicted, stored_blocks=stored)

    # ---------------------------------------------------------------- eviction

    def evict(self, num_bytes: int) -> EvictResult:
        """Evict unpinned leaves, lowest GDSF priority first, until ``num_bytes`` are freed (or none is left)."""
        with self._lock:
            return self._evict_locked(num_bytes)

    def set_budget(self, budget_bytes: int) -> EvictResult:
        """Change the budget, evicting down to it if needed."""
        with self._lock:
            self.budget_bytes = budget_bytes
            if self.total_bytes > budget_bytes:
                return self._evict_locked(self.total_bytes - budget_bytes)
            return EvictResult()

    # --------------------------------------------------------------- inspection

    def stats(self) -> PrefixCacheStats:
        """Size and counters right now."""
        with self._lock:
            return PrefixCacheStats(total_bytes=self.total_bytes, budget_bytes=self.budget_bytes,
                                    num_nodes=self.num_nodes, num_evictions=self.num_evictions,
                                    num_queried_tokens=self.num_queried_tokens, num_hit_tokens=self.num_hit_tokens)

    def iter_nodes(self) -> Iterator[RadixNode]:
        """Every non-root node (for tests and stats; hold no reference across requests)."""
        with self._lock:
            stack = list(self._roots.values())
            out: list[RadixNode] = []
            while stack:
                n = stack.pop()
                if not n.is_root:
                    out.append(n)
                stack.extend(n.children.values())
        return iter(out)

    def cached_tokens(self, namespace: str) -> list[tuple[int, ...]]:
        """Every root-to-leaf token sequence stored in ``namespace`` (sorted; for tests)."""
        with self._lock:
            root = self._roots.get(namespace)
            if root is None:
                return []
            out: list[tuple[int, ...]] = []
            stack: list[tuple[RadixNode, tuple[int, ...]]] = [(root, ())]
            while stack:
                n, prefix = stack.pop()
                seq = prefix + n.key
                if not n.children and not n.is_root:
                    out.append(seq)
                stack.extend((c, seq) for c in n.children.values())
            return sorted(out)

    # ---------------------------------------------------------------- internals

    def _root(self, namespace: str) -> RadixNode:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = RadixNode(namespace=namespace, key=(), kv=(), parent=None)
        return root

    def _blocks(self, namespace: str, tokens: Sequence[int], *, start: int, stop: int) -> list[tuple[int, int]]:
        """``(end, hash)`` of the full blocks of ``tokens`` that end in ``(start, stop]``."""
        b = self.block_tokens
        if b is None:
            return []
        first, last = start // b, stop // b  # blocks j with start < (j + 1) * b <= stop
        if last <= first:
            return []
        hashes = prefix_hash.block_hashes(namespace, tokens, block_tokens=b, max_blocks=last)
        return [((j + 1) * b, hashes[j]) for j in range(first, last)]

    def _split(self, child: RadixNode, n: int, *, start: int) -> RadixNode:
        """Cut ``child``'s edge (starting at token position ``start``) after ``n`` tokens; returns the upper node."""
        assert child.parent is not None and 0 < n < len(child.key)
        upper_kv, lower_kv = _slice(child.kv, 0, n), _slice(child.kv, n, len(child.key))
        upper = RadixNode(namespace=child.namespace, key=child.key[:n], kv=upper_kv, parent=child.parent,
                          children={child.key[n]: child}, lock_ref=child.lock_ref,
                          last_access=child.last_access, uses=child.uses, priority=child.priority,
                          nbytes=_nbytes(upper_kv),
                          blocks=[b for b in child.blocks if b[0] <= start + n])
        child.blocks = [b for b in child.blocks if b[0] > start + n]
        child.parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[n:]
        child.kv = lower_kv
        child.nbytes = _nbytes(lower_kv)
        self.num_nodes += 1  # total_bytes is unchanged: the halves hold exactly the old tokens
        return upper

    def _touch(self, node: RadixNode, tick: int) -> None:
        node.last_access = tick
        node.priority = self._inflation + node.uses
        if not node.children and node.lock_ref == 0:
            self._push(node)

    def _push(self, node: RadixNode) -> None:
        heapq.heappush(self._heap, (node.priority, next(self._seq), node))
        if len(self._heap) > 4 * self.num_nodes + 64:
            # Lazy invalidation leaves stale entries behind; rebuild from live leaves now and then
            # (sorted by push order first, so that equal priorities keep their order of use).
            live = sorted(self._live_leaves(), key=lambda n: n.last_access)
            self._heap = [(n.priority, next(self._seq), n) for n in live]
            heapq.heapify(self._heap)

    def _live_leaves(self) -> Iterator[RadixNode]:
        stack = list(self._roots.values())
        while stack:
            n = stack.pop()
            if not n.is_root and not n.children and n.lock_ref == 0:
                yield n
            stack.extend(n.children.values())

    def _attached(self, node: RadixNode) -> bool:
        return node.parent is not None and node.parent.children.get(node.key[0]) is node

    def _evict_locked(self, num_bytes: int) -> EvictResult:
        freed = nodes = 0
        removed: list[int] = []
        while freed < num_bytes and self._heap:
            priority, _, node = heapq.heappop(self._heap)
            if (priority != node.priority or node.children or node.lock_ref > 0
                    or not self._attached(node)):
                continue  # stale entry
            self._inflation = max(self._inflation, priority)
            self._cut_tail(node, num_bytes - freed)  # the kept head is pushed below, as the parent
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[0]]
            node.parent = None
            freed += node.nbytes
            self.total_bytes -= node.nbytes
            self.num_nodes -= 1
            self.num_evictions += 1
            self.num_evicted_bytes += node.nbytes
            nodes += 1
            removed.extend(h for _end, h in node.blocks)
            node.kv = ()
            if not parent.is_root and not parent.children and parent.lock_ref == 0:
                self._push(parent)
        return EvictResult(num_evicted_nodes=nodes, num_freed_bytes=freed, removed_blocks=tuple(removed))

    def _cut_tail(self, leaf: RadixNode, num_bytes: int) -> None:
        """Split ``leaf`` so that its lower part (``leaf`` itself afterwards) holds about ``num_bytes``.

        The cut is at a block boundary (with ``block_tokens``) and leaves a tail of at least
        :data:`MIN_EVICT_TOKENS`; no split when the whole leaf should go.
        """
        length = len(leaf.key)
        if length <= MIN_EVICT_TOKENS or leaf.nbytes <= num_bytes:
            return
        tail = max(MIN_EVICT_TOKENS, -(-num_bytes * length // leaf.nbytes))
        start = 0
        p = leaf.parent
        while p is not None and not p.is_root:
            start += len(p.key)
            p = p.parent
        cut = start + length - tail
        if self.block_tokens:
            cut -= cut % self.block_tokens
        if cut > start:
            self._split(leaf, cut - start, start=start)

    def _inc_lock(self, node: RadixNode) -> None:
        while node.parent is not None:
            node.lock_ref += 1
            node = node.parent

    def _dec_lock(self, node: RadixNode) -> None:
        while node.parent is not None:
            node.lock_ref -= 1
            assert node.lock_ref >= 0, "radix lock released twice"
            if node.lock_ref == 0 and not node.children:
                self._push(node)
            node = node.parent
