"""The step planner's order of prompt chunks: fewest tokens left first, the oldest prefill never starved.

Pure planning over real ``Sequence`` objects (no model): what :func:`plan_step` grants each
sequence in one step.
"""

from __future__ import annotations

import torch

from llmcache.model_server import request as rq
from llmcache.model_server.radix import RadixKey
from llmcache.model_server.scheduler import Sequence, plan_step


def seq(n: int, *, decoding: bool = False) -> Sequence:
    ids = list(range(1, n + 1))
    handle = rq.RequestHandle(rq.GenerationRequest(prompt_ids=ids, sampling=rq.SamplingParams(max_tokens=4)))
    s = Sequence(handle=handle, key=RadixKey("ns", ids), generator=torch.Generator(), text=None)  # type: ignore[arg-type]
    if decoding:
        s.generated.append(7)
    return s


def plan(running: list[Sequence], budget: int, cached: dict[int, int] | None = None) -> dict[int, int]:
    """``{index in running: tokens granted}``."""
    peek = (lambda s: cached.get(running.index(s), 0)) if cached is not None else None
    return {running.index(s): n for s, n in plan_step(running, max_num_batched_tokens=budget, cached_length=peek)}


def test_a_cached_prompt_goes_before_a_cold_prefill_that_came_first() -> None:
    cold, warm = seq(300), seq(205)
    got = plan([cold, warm], 16, cached={1: 200})
    # The oldest keeps a quarter of the budget; the warm one's 5 tokens left all fit now.
    assert got == {0: 11, 1: 5}


def test_without_a_cache_estimate_the_shorter_prompt_still_goes_first() -> None:
    long, short = seq(300), seq(6)
    assert plan([long, short], 16) == {0: 10, 1: 6}


def test_the_oldest_prefill_keeps_a_quarter_under_a_stream_of_short_prompts() -> None:
    running = [seq(300)] + [seq(205) for _ in range(5)]
    got = plan(running, 16, cached=dict.fromkeys(range(1, 6), 200))
    assert got[0] == 4  # a quarter of the budget, however many short ones wait
    assert sum(got.values()) == 16
    assert got == {0: 4, 1: 5, 2: 5, 3: 2}  # ties between the short ones: oldest first


def test_decodes_run_first_and_prefills_share_what_is_left() -> None:
    running = [seq(10, decoding=True), seq(10, decoding=True), seq(50), seq(8)]
    got = plan(running, 16)
    assert got[0] == got[1] == 1
    assert got[3] == 8 and got[2] == 6  # 14 left: the oldest prefill's quarter (4), the short one, the rest
    assert sum(got.values()) == 16


def test_a_single_prefill_takes_the_whole_budget_without_asking_the_cache() -> None:
    asked: list[Sequence] = []
    only = seq(300)

    def peek(s: Sequence) -> int:
        asked.append(s)
        return 0

    assert list(plan_step([only], max_num_batched_tokens=16, cached_length=peek)) == [(only, 16)]
    assert asked == []
