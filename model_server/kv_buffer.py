"""Per-sequence KV buffers: one contiguous, growable ``[1, kv_heads, capacity, head_dim]`` pair per layer.

Layout choice (ragged, neither padded nor paged)::

    seq A  K/V: [ a a a a a a a a a a . . . . ]   length 10, capacity 14
    seq B  K/V: [ b b b . . ]                      length 3,  capacity 5
    step: new tokens of A and B are written in place at A[10], B[3]; nothing else moves

- *Padded + masks* (one ``[batch, heads, max_len, dim]`` tensor) makes every sequence pay for
  the longest one, and a sequence joining or leaving forces a re-pad (a copy of every
  sequence's KV) or a fixed ``max_num_seqs × context`` allocation (6 GB for 16 × 8k tokens
  of SmolLM2 in fp32).
- *Paged blocks* (vLLM) avoid both, but only pay off with an attention kernel that reads
  the block table directly; on CPU torch has none, and gathering blocks into a contiguous
  tensor every step is the same copy again.
- *Ragged contiguous buffers* give each sequence exactly its own KV: joining allocates one
  buffer (and copies the matched prefix once from the radix tree), leaving frees it, a step
  writes one slot per new token. Attention runs per sequence over its own buffer (SDPA on a
  contiguous prefix, the same call the unbatched path makes); everything else in the
  forward pass (projections, MLP, norms, the LM head) runs once over all tokens of the
  step, which is where the weights are read and where batching pays. Capacity grows by
  1.5× (amortised O(1) per token) up to the reservation made at admission.

The radix tree's tensors are never referenced by a buffer: a match is copied in, an insert
clones out (see :mod:`llmcache.model_server.radix`).
"""

from __future__ import annotations

import torch

from llmcache.model_server.kv_estimate import KVShape
from llmcache.model_server.radix import KVLayers

__all__ = ["SeqKV"]

_ROUND = 64


class SeqKV:
    """The KV of one running sequence; ``length`` positions are valid, ``capacity`` allocated."""

    __slots__ = ("bytes_per_token", "capacity", "device", "dtype", "layers", "length", "max_capacity", "shape")

    def __init__(self, shape: KVShape, *, dtype: torch.dtype, device: torch.device, capacity: int,
                 max_capacity: int) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.bytes_per_token = shape.bytes_per_token(dtype.itemsize)
        self.max_capacity = max_capacity
        self.capacity = 0
        self.length = 0
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ensure(capacity)

    @property
    def nbytes(self) -> int:
        """Bytes allocated (capacity, not length)."""
        return self.capacity * self.bytes_per_token

    def ensure(self, needed: int) -> None:
        """Make room for ``needed`` positions (grows by 1.5×, rounded, capped at ``max_capacity``)."""
        if needed <= self.capacity:
            return
        if needed > self.max_capacity:
            raise ValueError(f"sequence needs {needed} KV positions, more than its reservation of {self.max_capacity}")
        grown = max(needed, self.capacity * 3 // 2)
        new_cap = min(self.max_capacity, -(-grown // _ROUND) * _ROUND)
        s = self.shape
        size = (1, s.num_kv_heads, new_cap, s.head_dim)
        layers = []
        for i in range(s.num_layers):
            k = torch.empty(size, dtype=self.dtype, device=self.device)
            v = torch.empty(size, dtype=self.dtype, device=self.device)
            if self.length:
                k[:, :, :self.length].copy_(self.layers[i][0][:, :, :self.length])
                v[:, :, :self.length].copy_(self.layers[i][1][:, :, :self.length])
            layers.append((k, v))
        self.layers, self.capacity = layers, new_cap

    def view(self, end: int | None = None) -> KVLayers:
        """Per layer ``(K, V)`` views of positions ``[0, end)`` (default: ``length``); views, not copies."""
        n = self.length if end is None else end
        return tuple((k[:, :, :n], v[:, :, :n]) for k, v in self.layers)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v`` (``[1, kv_heads, t, head_dim]``) at positions ``[start, start + t)``."""
        t = k.shape[2]
        kb, vb = self.layers[layer]
        kb[:, :, start:start + t].copy_(k)
        vb[:, :, start:start + t].copy_(v)

    def replace(self, kv: KVLayers | list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Overwrite the contents with ``kv`` (new tensors, e.g. after the sink window trimmed it)."""
        n = kv[0][0].shape[2]
        self.ensure(n)
        for i, (k, v) in enumerate(kv):
            self.write(i, 0, k, v)
        self.length = n

    def free(self) -> None:
        """Drop the buffers now (the sequence left the batch)."""
        self.layers, self.capacity, self.length = [], 0, 0
