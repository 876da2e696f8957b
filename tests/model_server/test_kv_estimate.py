"""kv-estimate equals the bytes transformers actually allocates (GQA-aware)."""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import DynamicCache

from llmcache.model_server import kv_estimate, loader


def _real_kv_bytes(model: loader.LoadedModel, *, batch: int, seq: int) -> int:
    cache = DynamicCache()
    ids = torch.randint(3, 500, (batch, seq))
    with torch.inference_mode():
        model.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def test_estimate_matches_real_tensors_tiny(tiny_model: loader.LoadedModel) -> None:
    shape = kv_estimate.kv_shape(tiny_model.model.config)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (2, 2, 16)
    est = kv_estimate.kv_cache_bytes(shape, batch=3, seq=17, dtype_bytes=4)
    assert est == _real_kv_bytes(tiny_model, batch=3, seq=17)
    # The hidden-size formula overstates GQA caches by heads / kv_heads.
    assert shape.naive_bytes_per_token(4) == 2 * shape.bytes_per_token(4)


@pytest.mark.slow
def test_estimate_matches_real_tensors_default(default_model: loader.LoadedModel) -> None:
    shape = kv_estimate.kv_shape(default_model.model.config)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (30, 3, 64)
    assert kv_estimate.kv_cache_bytes(shape, batch=2, seq=9, dtype_bytes=4) == _real_kv_bytes(
        default_model, batch=2, seq=9)


def test_cli_prints_per_token_and_total(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    kv_estimate.configure(parser)
    args = parser.parse_args(["--model", "random-1b", "--batch", "2", "--seq", "1000", "--dtype", "bfloat16"])
    assert kv_estimate.run(args) == 0
    out = capsys.readouterr().out
    per_token = 2 * 16 * 8 * 64 * 2  # layers, kv heads, head_dim, bf16
    assert f"per token:  {per_token} bytes" in out
    assert f"total:      {per_token * 2 * 1000} bytes" in out
    assert "4.00x too much" in out  # 32 query heads / 8 KV heads
