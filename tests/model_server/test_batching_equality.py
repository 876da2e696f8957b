"""Batched greedy outputs equal one-at-a-time outputs on the real SmolLM2 (fp32, CPU).

The workload is the prefix benchmark's: a ~1k-token shared system prompt and 30
questions (``benchmarks/prefix_bench.py``), greedy, 16 tokens each. Reference: the
engine with batching off (the transformers forward, one request at a time). Candidate:
the packed forward with all 30 submitted at once (16 running, the rest queued). Batched
matrix products sum in a different order, so a near-tie between the two best logits may
flip; the issue allows one such flip in 30, and every mismatch is printed with the
position and the gap between the top two logits there (run with ``-s`` to see it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmcache.model_server import generate as gen
from llmcache.model_server import loader
from llmcache.model_server import request as rq
from llmcache.model_server.radix import RadixCache
from llmcache.model_server.settings import BatchingSettings

# Two engines decode 30 x 16 tokens after a ~1k-token prompt on a shared 2-core CPU: give it time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

MAX_TOKENS = 16


def _prefix_bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "prefix_bench.py"
    spec = importlib.util.spec_from_file_location("prefix_bench_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def top2_gap(model: loader.LoadedModel, ids: list[int]) -> float:
    """Top-1 minus top-2 logit of the next token after ``ids`` (a full forward, no cache)."""
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def test_batched_greedy_equals_one_at_a_time(default_model: loader.LoadedModel) -> None:
    bench = _prefix_bench()
    tok = default_model.tokenizer
    system = bench.system_prompt(tok, 1000)
    prompts = []
    for q in bench.questions(30):
        text = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=False)
        prompts.append(list(tok(text, add_special_tokens=False)["input_ids"]))
    greedy = rq.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)

    sequential = gen.Engine(default_model, prefix_cache=RadixCache(1 << 30),
                            batching=BatchingSettings(enable_batching=False))
    sequential.start()
    try:
        assert not sequential.batched
        one_by_one = [sequential.generate(rq.GenerationRequest(prompt_ids=p, sampling=greedy), timeout_s=600)
                      for p in prompts]
    finally:
        sequential.stop()

    # 30 requests for 16 slots: the other 14 queue for as long as the first finish, which on a loaded
    # 2-core machine exceeded the 60 s admission deadline (429) — this test is about equality, not admission.
    batched = gen.Engine(default_model, prefix_cache=RadixCache(1 << 30),
                         batching=BatchingSettings(max_num_seqs=16, max_queue_time_s=900))
    batched.start()
    try:
        assert batched.batched
        handles = batched.submit_many([rq.GenerationRequest(prompt_ids=p, sampling=greedy) for p in prompts])
        together = [h.result(900) for h in handles]
    finally:
        batched.stop()

    mismatches = []
    for i, (a, b) in enumerate(zip(one_by_one, together)):
        if a.token_ids != b.token_ids:
            pos = next(k for k, (x, y) in enumerate(zip(a.token_ids + (-1,), b.token_ids + (-2,))) if x != y)
            gap = top2_gap(default_model, prompts[i] + list(a.token_ids[:pos]))
            mismatches.append((i, pos, gap))
            print(f"question {i}: first differing token at position {pos}; top-2 logit gap there {gap:.2e}")
    equal = len(prompts) - len(mismatches)
    print(f"batched (16 concurrent) vs one at a time: {equal}/{len(prompts)} identical greedy outputs")
    assert equal >= 29, mismatches
    # A flip is acceptable only at a genuine near-tie of the two best logits.
    assert all(gap < 1e-3 for _, _, gap in mismatches), mismatches
    assert sum(r.cached_tokens for r in together) > 0  # the batch reused the shared system prompt
