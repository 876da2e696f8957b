"""Forward passes over a step's segments: packed (one pass for the whole batch) or one per sequence.

A *segment* is the tokens one sequence feeds in this step: one token while decoding, a
chunk of its prompt while prefilling. The packed forward lays every segment's tokens
side by side in one row and runs the model once::

    input row:  [ a9 | b2 | c0 c1 c2 … c127 ]     (a, b decode; c prefills a 128-token chunk)
    positions:  [ 9  | 2  | 0  1  2  … 127  ]     (each sequence's own positions, for RoPE)
    per layer:  q/k/v projections, RoPE ……………… one matmul over all N tokens
                K/V written into each sequence's buffer at its positions (kv_buffer.SeqKV)
                attention ……………………………………………… per segment, over its own buffer only
                o_proj, MLP, norms ……………………………… one matmul over all N tokens
    LM head:    only on the last token of segments that sample

Attention per segment: a decode token attends to all ``start + 1`` positions (no mask);
a chunk with no past is plain causal; a chunk after cached/earlier positions gets the
causal mask shifted by ``start`` (``j <= start + i``).

The packed pass re-implements the Llama decoder layer (``input_layernorm`` → attention →
residual → ``post_attention_layernorm`` → MLP → residual) from the model's own modules, so
it works for any Llama-architecture checkpoint (SmolLM2, Llama 2/3, TinyLlama, the random
test models). Other architectures use :func:`sequential_forward`, the transformers forward
one sequence at a time (what the server did before batching), with the same buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from llmcache.model_server.kv_buffer import SeqKV

__all__ = ["Segment", "cache_from", "packed_forward", "packed_unsupported_reason", "sequential_forward"]

# transformers 5.2x renamed the forward argument and output field ``past_key_values`` → ``cache``;
# earlier 5.x releases (e.g. the 5.17 on our CUDA image) only know the old name.
_CACHE_FIELD = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


@dataclass(slots=True)
class Segment:
    """Tokens one sequence feeds this step, written at positions ``kv.length …``."""

    kv: SeqKV
    ids: list[int]
    want_logits: bool
    """Sample after this segment (a decode step, or the last chunk of a prompt)."""


def packed_unsupported_reason(model: Any) -> str | None:
    """Why :func:`packed_forward` cannot run ``model`` (``None``: it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not a Llama architecture"
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in needed) or not hasattr(model, "lm_head"):
        return "the model does not have the Llama module layout (model.embed_tokens/layers/norm/rotary_emb, lm_head)"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def packed_forward(model: Any, segments: Sequence[Segment]) -> torch.Tensor:
    """One forward pass over all ``segments``; returns logits ``[num wanting logits, vocab]``.

    Advances every segment's ``kv.length`` by its token count. Caller holds ``inference_mode``.
    """
    inner = model.model
    cfg = model.config
    device = inner.embed_tokens.weight.device
    flat: list[int] = []
    positions: list[int] = []
    for seg in segments:
        start = seg.kv.length
        seg.kv.ensure(start + len(seg.ids))
        flat.extend(seg.ids)
        positions.extend(range(start, start + len(seg.ids)))
    n = len(flat)
    ids = torch.tensor([flat], dtype=torch.long, device=device)
    pos = torch.tensor([positions], dtype=torch.long, device=device)
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, pos)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    masks = [_chunk_mask(seg.kv.length, len(seg.ids), device) for seg in segments]
    for li, layer in enumerate(inner.layers[:cfg.num_hidden_layers]):
        attn = layer.self_attn
        hd = attn.head_dim
        residual = x
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, n, -1, hd).transpose(1, 2)
        k = attn.k_proj(h).view(1, n, -1, hd).transpose(1, 2)
        v = attn.v_proj(h).view(1, n, -1, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        outs = []
        offset = 0
        for seg, mask in zip(segments, masks):
            t, start = len(seg.ids), seg.kv.length
            seg.kv.write(li, start, k[:, :, offset:offset + t], v[:, :, offset:offset + t])
            kb, vb = seg.kv.layers[li]
            out = torch.nn.functional.scaled_dot_product_attention(
                q[:, :, offset:offset + t], kb[:, :, :start + t], vb[:, :, :start + t], attn_mask=mask,
                is_causal=t > 1 and mask is None, scale=attn.scaling, enable_gqa=True)
            outs.append(out)
            offset += t
        a = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        x = residual + attn.o_proj(a.transpose(1, 2).reshape(1, n, -1))
        residual = x
        x = residual + layer.mlp(layer.post_attention_layernorm(x))
    x = inner.norm(x)
    rows: list[int] = []
    end = 0
    for seg in segments:
        end += len(seg.ids)
        seg.kv.length += len(seg.ids)
        if seg.want_logits:
            rows.append(end - 1)
    if not rows:
        return x.new_empty((0, int(cfg.vocab_size)))
    return model.lm_head(x[0, rows])


def _chunk_mask(start: int, t: int, device: torch.device) -> torch.Tensor | None:
    """Causal mask of a ``t``-token chunk after ``start`` earlier positions (``None`` where SDPA needs none)."""
    if t == 1 or start == 0:
        return None
    return torch.ones(t, start + t, dtype=torch.bool, device=device).tril(diagonal=start)


def cache_from(kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> DynamicCache:
    """A DynamicCache that starts from ``kv`` (tensors the caller owns; they are adopted, not copied).

    transformers 5 builds one ``DynamicLayer`` per ``ddp_cache_data`` entry but copies the
    data in (``cat`` onto an empty tensor). We initialise the layers with empty slices and
    then adopt the tensors as the layers' documented ``keys``/``values``. Safe because
    ``DynamicLayer.update`` only ever concatenates into new tensors; nothing writes into
    the adopted ones.
    """
    if not kv:
        return DynamicCache()
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in kv])
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys, layer.values = k, v
    return cache


def sequential_forward(model: Any, segments: Sequence[Segment]) -> torch.Tensor:
    """The transformers forward, one pass per segment (no batching); same contract as :func:`packed_forward`."""
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    for seg in segments:
        start, t = seg.kv.length, len(seg.ids)
        seg.kv.ensure(start + t)
        cache = cache_from(seg.kv.view() if start else None)
        ids = torch.tensor([seg.ids], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_CACHE_FIELD: cache})
        new = getattr(out, _CACHE_FIELD)
        for li, layer in enumerate(new.layers):
            seg.kv.write(li, start, layer.keys[:, :, start:start + t], layer.values[:, :, start:start + t])
        seg.kv.length = start + t
        if seg.want_logits:
            rows.append(out.logits[0, -1])
    if not rows:
        return torch.empty((0, int(model.config.vocab_size)), device=device)
    return torch.stack(rows)
