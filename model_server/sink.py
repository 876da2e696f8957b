"""Attention-sink sliding window (StreamingLLM) for generations longer than the window.

Keep the first ``sink_tokens`` positions (the "attention sinks" that soak up attention
mass) plus the most recent ``window_tokens``; drop the middle. KV length stays
``<= sink_tokens + window_tokens`` however long the generation runs::

    before:  [s s s s | o o o o o o | r r r r r r r r]   (s sink, o oldest, r recent)
    after:   [s s s s | r r r r r r r r]                 positions 0 … k+W-1 again

RoPE: a Hugging Face Llama caches keys *after* rotating them by their absolute
position, so dropping the middle leaves a positional gap. We follow the paper and use
positions *within the cache*: the kept recent keys are rotated back by the number of
evicted tokens (a RoPE rotation by ``-e`` composes exactly with the rotation by ``p``),
and the next token is fed at position ``len(cache)`` (transformers' default when no
``position_ids`` are passed). Query–key distances thus never exceed the window, which
the paper found essential; continuing absolute positions instead lets them grow past
what the model was trained on.

Each re-rotation rounds once, so we evict ``evict_tokens`` (default ``window_tokens //
4``) at a time: every kept key is re-rotated at most ``window_tokens / evict_tokens``
times, which keeps the accumulated error negligible even in bfloat16.

Sink-window KV no longer corresponds to any token prefix, so the server never inserts
a request whose window evicted something into the prefix cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmcache.errors import ConfigError

__all__ = ["SinkWindow", "rope_inv_freq", "shift_keys", "trim_kv"]

KVList = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, slots=True)
class SinkWindow:
    """Window shape: ``sink_tokens`` kept forever, ``window_tokens`` most recent kept."""

    sink_tokens: int
    window_tokens: int
    evict_tokens: int | None = None
    """Tokens dropped per eviction; ``None`` = ``max(1, window_tokens // 4)``."""

    def __post_init__(self) -> None:
        if self.sink_tokens < 0 or self.window_tokens < 1:
            raise ConfigError(
                f"sink window needs sink_tokens >= 0 and window_tokens >= 1, "
                f"got {self.sink_tokens} and {self.window_tokens}"
            )

    @property
    def max_tokens(self) -> int:
        """Largest KV length the window ever holds."""
        return self.sink_tokens + self.window_tokens

    @property
    def chunk(self) -> int:
        if self.evict_tokens is not None:
            return max(1, min(self.evict_tokens, self.window_tokens))
        return max(1, self.window_tokens // 4)


def rope_inv_freq(model: Any) -> torch.Tensor:
    """The RoPE inverse frequencies of a Llama-style model; ConfigError when re-rotation is not exact."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None:
        raise ConfigError("the attention-sink window needs a RoPE model with model.model.rotary_emb (Llama-style)")
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ConfigError("the attention-sink window supports RoPE without attention scaling (default/llama3/linear)")
    return inv_freq.detach().float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def shift_keys(keys: torch.Tensor, shift: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys rotated by ``shift`` positions (negative = earlier); a new tensor, computed in float32."""
    angle = shift * inv_freq.to(keys.device)
    emb = torch.cat((angle, angle), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    k = keys.float()
    return (k * cos + _rotate_half(k) * sin).to(keys.dtype)


def trim_kv(kv: KVList, window: SinkWindow, inv_freq: torch.Tensor, *, incoming_tokens: int = 1) -> tuple[KVList, int]:
    """Make room for ``incoming_tokens`` within the window; returns ``(new kv, tokens evicted)``.

    Input tensors are not modified. With nothing to evict the same list is returned.
    """
    length = kv[0][0].shape[2]
    over = length + incoming_tokens - window.max_tokens
    if over <= 0:
        return kv, 0
    evict = min(max(over, window.chunk), length - window.sink_tokens)
    start, stop = window.sink_tokens, window.sink_tokens + evict
    out: KVList = []
    for k, v in kv:
        k_new = torch.cat((k[:, :, :start], shift_keys(k[:, :, stop:], -evict, inv_freq)), dim=2)
        v_new = torch.cat((v[:, :, :start], v[:, :, stop:]), dim=2)
        out.append((k_new, v_new))
    return out, evict
