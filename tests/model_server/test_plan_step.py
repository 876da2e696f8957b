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


def seq_of(ids: list[int], *, ns: str = "ns", prefix_cache: bool = True) -> Sequence:
    handle = rq.RequestHandle(rq.GenerationRequest(prompt_ids=ids, sampling=rq.SamplingParams(max_tokens=4),
                                                   enable_prefix_cache=prefix_cache))
    return Sequence(handle=handle, key=RadixKey(ns, ids), generator=torch.Generator(), text=None)  # type: ignore[arg-type]


def test_a_second_request_for_an_uncached_prompt_waits_for_the_first_ones_prefill() -> None:
    system = list(range(1000, 1300))
    first, second = seq_of(system + [1, 2, 3]), seq_of(system + [4, 5])
    # Neither is cached: only the first starts, the second would prefill the same 300 tokens again.
    got = plan([first, second], 64, cached={})
    assert got == {0: 64}
    # Started and still prefilling: the second keeps waiting, even when the first is nearly done.
    first.kv = type("KV", (), {"length": 290})()  # type: ignore[assignment]
    assert plan([first, second], 64, cached={}) == {0: 13}
    # Once the first's prompt is in the cache (its prefill done, it decodes), the second starts.
    first.generated.append(9)
    got = plan([first, second], 64, cached={1: 300})
    assert got[0] == 1 and got[1] > 0


def test_prompts_that_share_little_or_live_in_other_namespaces_do_not_wait() -> None:
    system = list(range(1000, 1300))
    other_tenant = seq_of(system + [4, 5], ns="salted")
    short_shared = seq_of(system[:20] + list(range(5000, 5300)))
    no_cache = seq_of(system + [7], prefix_cache=False)
    first = seq_of(system + [1, 2, 3])
    got = plan([first, other_tenant, short_shared, no_cache], 2048, cached={})
    assert set(got) == {0, 1, 2, 3}
