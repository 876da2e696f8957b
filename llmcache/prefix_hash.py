"""Prefix block hashes: how the model server names what its prefix cache holds, and how the proxy matches it.

Torch-free and shared by both sides (the model server publishes hashes of the prompt
blocks its radix tree holds; the proxy hashes a request's prompt the same way and routes
the miss to the replica holding its longest prefix). A prompt's token ids are cut into
blocks of ``block_tokens``; each block's hash chains the one before, rooted in the
prefix-cache namespace (model revision + dtype, plus a hash of the request's
``cache_salt``)::

    namespace "3f…:float32:9c…"   root = H("llmcache-prefix-v1" ‖ namespace)
    token ids [t0 … t15 | t16 … t31 | t32 … t40]
    hashes    h0 = H(root ‖ t0…t15)   h1 = H(h0 ‖ t16…t31)   (t32…t40: no full block, never hashed)

A block hash thus names the whole prefix up to the block's end, in one namespace: two
tenants (two salts) never share a hash, and a router that does not know a tenant's salt
cannot compute that tenant's hashes. ``H`` is BLAKE2b with an 8-byte digest read as an
unsigned 64-bit integer: a collision costs one request routed to the wrong replica, never
a wrong answer.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

__all__ = ["DEFAULT_BLOCK_TOKENS", "block_hashes", "namespace_root", "salted_namespace"]

DEFAULT_BLOCK_TOKENS = 16
"""Tokens per hashed block. Small enough that a prompt differing late still shares most of its
blocks; large enough that a 1,000-token prompt is 62 hashes."""

_DOMAIN = b"llmcache-prefix-v1\x00"


def salted_namespace(base: str, cache_salt: str | None) -> str:
    """The prefix-cache namespace of a request: ``base`` (model revision + dtype) plus a hash of its salt.

    The salt itself never appears (only 16 hex digits of its SHA-256), so the namespace can be
    logged and published.
    """
    if not cache_salt:
        return base
    return f"{base}:{hashlib.sha256(cache_salt.encode()).hexdigest()[:16]}"


def namespace_root(namespace: str) -> int:
    """The chain's starting value for ``namespace``."""
    return int.from_bytes(hashlib.blake2b(_DOMAIN + namespace.encode(), digest_size=8).digest(), "little")


def block_hashes(namespace: str, token_ids: Sequence[int], *, block_tokens: int = DEFAULT_BLOCK_TOKENS,
                 max_blocks: int | None = None) -> list[int]:
    """Hashes of the full blocks of ``token_ids`` (at most ``max_blocks``), in order.

    ``block_hashes(ns, ids)[j]`` names ``ids[:(j + 1) * block_tokens]`` in ``ns``.
    """
    if block_tokens < 1:
        raise ValueError("block_tokens must be >= 1")
    num = len(token_ids) // block_tokens
    if max_blocks is not None:
        num = min(num, max_blocks)
    pack = struct.Struct(f"<Q{block_tokens}I").pack
    h = namespace_root(namespace)
    out: list[int] = []
    for j in range(num):
        digest = hashlib.blake2b(pack(h, *token_ids[j * block_tokens:(j + 1) * block_tokens]), digest_size=8)
        h = int.from_bytes(digest.digest(), "little")
        out.append(h)
    return out
