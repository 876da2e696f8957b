"""``llmcache kv-estimate``: KV-cache bytes for a model, GQA-aware.

    bytes = 2 (K and V) · layers · kv_heads · head_dim · seq · batch · dtype size

The common shortcut ``2 · layers · hidden_size · …`` assumes one KV head per query head;
with grouped-query attention (SmolLM2-135M: 9 query heads, 3 KV heads) it overstates
the cache by ``num_attention_heads / num_key_value_heads``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from llmcache.errors import ConfigError
from llmcache.settings import add_flag

__all__ = ["DTYPE_BYTES", "KVShape", "configure", "kv_cache_bytes", "kv_shape", "run"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1}


@dataclass(frozen=True, slots=True)
class KVShape:
    """What determines KV size, read from a model config: the one KV spec of the model server.

    The KV buffers of running sequences (:class:`~llmcache.model_server.kv_buffer.SeqKV`)
    are allocated from it, and the scheduler's reservations and ``llmcache kv-estimate``
    count bytes with :meth:`bytes_per_token`.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_attention_heads: int
    hidden_size: int

    def bytes_per_token(self, dtype_bytes: int) -> int:
        """KV bytes of one token of one sequence across all layers (``dtype_bytes``: 4 for float32)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def naive_bytes_per_token(self, dtype_bytes: int) -> int:
        """The hidden-size formula that ignores GQA (for comparison only)."""
        return 2 * self.num_layers * self.hidden_size * dtype_bytes


def kv_shape(config: Any) -> KVShape:
    """Read layers, KV heads and head dim from a transformers config (text part of multimodal configs)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return KVShape(num_layers=int(cfg.num_hidden_layers), num_kv_heads=kv_heads, head_dim=int(head_dim),
                   num_attention_heads=heads, hidden_size=int(cfg.hidden_size))


def kv_cache_bytes(shape: KVShape, *, batch: int, seq: int, dtype_bytes: int) -> int:
    """Total KV bytes for ``batch`` sequences of ``seq`` tokens."""
    return shape.bytes_per_token(dtype_bytes) * seq * batch


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmcache kv-estimate``."""
    add_flag(parser, "--model", default="default",
             help="default | random-tiny | random-1b | PATH to a Hugging Face model directory")
    add_flag(parser, "--batch", default=1, type=int, help="concurrent sequences")
    add_flag(parser, "--seq", default=4096, type=int, help="tokens per sequence")
    add_flag(parser, "--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="KV dtype")


def run(args: argparse.Namespace) -> int:
    """Print per-token and total KV bytes."""
    if args.batch < 1 or args.seq < 1:
        raise ConfigError("--batch and --seq must be >= 1")
    from llmcache.model_server.loader import load_config

    shape = kv_shape(load_config(args.model))
    size = DTYPE_BYTES[args.dtype]
    per_token = shape.bytes_per_token(size)
    total = kv_cache_bytes(shape, batch=args.batch, seq=args.seq, dtype_bytes=size)
    naive = shape.naive_bytes_per_token(size) * args.seq * args.batch
    print(f"model {args.model}: {shape.num_layers} layers, {shape.num_attention_heads} query heads, "
          f"{shape.num_kv_heads} KV heads, head_dim {shape.head_dim}, {args.dtype} ({size} B)")
    print(f"per token:  {per_token} bytes ({_human(per_token)})")
    print(f"total:      {total} bytes ({_human(total)}) for batch {args.batch} x seq {args.seq}")
    print(f"naive hidden-size formula would say {naive} bytes ({_human(naive)}), "
          f"{naive / total:.2f}x too much" if naive != total else "naive formula agrees (no GQA)")
    return 0
