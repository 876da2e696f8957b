"""The embeddings' admission gate: slots pass in FIFO order, a full queue and a long wait are 429s."""

from __future__ import annotations

import asyncio

import pytest

from llmcache.model_server.admission import Admission, retry_after_s
from llmcache.model_server.request import OverloadedError


async def test_slots_pass_to_the_oldest_waiter_and_a_full_queue_is_refused() -> None:
    gate = Admission(num_slots=1, max_waiting=2, max_wait_s=60, what="embeddings")
    order: list[str] = []
    release_first = asyncio.Event()

    async def job(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.slot():
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(job("first", release_first))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(job(n)) for n in ("second", "third")]
    while gate.num_waiting < 2:
        await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as exc:
        await job("refused")
    assert exc.value.code == "queue_full" and exc.value.retry_after_s >= 1
    release_first.set()
    await asyncio.gather(first, *waiting)
    assert order == ["first", "second", "third"]
    assert gate.num_running == 0 and gate.num_waiting == 0


async def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    gate = Admission(num_slots=1, max_waiting=4, max_wait_s=0.01, what="embeddings")
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            await hold.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as exc:
        async with gate.slot():
            pass
    assert exc.value.code == "queue_timeout"
    assert gate.num_waiting == 0
    hold.set()
    await task
    async with gate.slot():  # the slot is free again
        assert gate.num_running == 1
    assert gate.num_running == 0


def test_retry_after_is_between_one_second_and_the_wait_bound() -> None:
    assert retry_after_s(num_waiting=0, num_slots=1, service_s=0.0, max_wait_s=60) == 1
    assert retry_after_s(num_waiting=9, num_slots=2, service_s=2.0, max_wait_s=60) == 10
    assert retry_after_s(num_waiting=1000, num_slots=1, service_s=5.0, max_wait_s=60) == 60
