"""Attention-sink window: exact RoPE re-rotation, bounded KV, never inserted into the prefix cache."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from llmcache.errors import ConfigError
from llmcache.model_server import loader, sink
from llmcache.model_server import request as rq

from .helpers import EngineFactory


def _keys_at(model: loader.LoadedModel, ids: list[int], start_pos: int) -> list[torch.Tensor]:
    cache = DynamicCache()
    pos = torch.arange(start_pos, start_pos + len(ids)).unsqueeze(0)
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([ids]), position_ids=pos, cache=cache, use_cache=True)
    return [layer.keys for layer in cache.layers]


def test_shift_keys_is_an_exact_rope_move(tiny_model: loader.LoadedModel) -> None:
    # Keys are rotated by absolute position before caching; moving them by -e must give
    # the keys the same tokens would have had e positions earlier.
    ids = [random.Random(0).randrange(3, 512) for _ in range(10)]
    inv_freq = sink.rope_inv_freq(tiny_model.model)
    at_0 = _keys_at(tiny_model, ids, 0)
    at_37 = _keys_at(tiny_model, ids, 37)
    for k0, k37 in zip(at_0, at_37):
        assert not torch.allclose(k0, k37, atol=1e-3)
        assert torch.allclose(sink.shift_keys(k37, -37, inv_freq), k0, atol=1e-4)


def test_trim_keeps_sinks_and_recent_tokens() -> None:
    window = sink.SinkWindow(sink_tokens=2, window_tokens=8, evict_tokens=4)
    inv_freq = torch.ones(2)
    v = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1).expand(1, 1, 10, 4).contiguous()
    kv = [(v.clone(), v.clone())]
    trimmed, evicted = sink.trim_kv(kv, window, inv_freq)
    assert evicted == 4  # 10 + 1 incoming > 10: drop a chunk of 4 after the 2 sinks
    assert trimmed[0][1][0, 0, :, 0].tolist() == [0, 1, 6, 7, 8, 9]
    assert torch.equal(kv[0][1], v)  # inputs untouched
    same, none = sink.trim_kv(trimmed, window, inv_freq)
    assert none == 0 and same is trimmed


def test_window_needs_a_positive_size() -> None:
    with pytest.raises(ConfigError):
        sink.SinkWindow(sink_tokens=4, window_tokens=0)


def test_kv_stays_bounded_past_four_windows_and_is_not_cached(tiny_model: loader.LoadedModel,
                                                             make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    cache = engine.prefix_cache
    assert cache is not None
    window = sink.SinkWindow(sink_tokens=4, window_tokens=32)
    prompt = [random.Random(1).randrange(3, 512) for _ in range(20)]
    # The tiny model has no EOS in its random argmax path only by chance; sample away from it.
    params = rq.SamplingParams(max_tokens=5 * 32, temperature=0.7, seed=3)
    res = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=params, sink=window), timeout_s=300)
    if res.finish_reason == "stop":  # hit EOS early: pick another seed deterministically
        params = rq.SamplingParams(max_tokens=5 * 32, temperature=0.7, seed=4)
        res = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=params, sink=window), timeout_s=300)
    assert len(res.token_ids) == 5 * 32 > 4 * window.window_tokens
    assert res.max_kv_tokens <= window.max_tokens
    assert res.sink_evicted_tokens > 0
    assert res.inserted_tokens == 0 and cache.total_bytes == 0  # sink states never enter the prefix cache
    # Without a window the same request would have grown far past k + W.
    plain = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=params, enable_prefix_cache=False))
    assert plain.max_kv_tokens > 4 * window.window_tokens


def test_sink_requests_still_read_the_prefix_cache(tiny_model: loader.LoadedModel,
                                                   make_engine: EngineFactory) -> None:
    engine = make_engine(tiny_model)
    prompt = [random.Random(2).randrange(3, 512) for _ in range(30)]
    greedy = rq.SamplingParams(max_tokens=4, temperature=0.0)
    engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=greedy))
    res = engine.generate(rq.GenerationRequest(prompt_ids=prompt, sampling=greedy,
                                                sink=sink.SinkWindow(sink_tokens=4, window_tokens=64)))
    assert res.cached_tokens == len(prompt) - 1
