"""The Redis breaker: deadlines, opening, half-open probing, recovery (clock injected, no sleeps)."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from llmcache.proxy.breaker import Breaker, CacheUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def ok() -> str:
    return "ok"


async def broken() -> str:
    raise redis.exceptions.ConnectionError("refused")


async def hang() -> str:
    await asyncio.Event().wait()
    return "never"


async def test_deadline_turns_a_hang_into_cache_unavailable() -> None:
    b = Breaker(timeout_s=0.01)
    with pytest.raises(CacheUnavailable):
        await b.call(hang)
    assert b.num_failures_total == 1 and b.state == "closed"


async def test_opens_after_consecutive_failures_and_recovers_by_probe() -> None:
    clock = Clock()
    b = Breaker(timeout_s=1, failure_threshold=3, cooldown_s=1.0, clock=clock)
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        raise OSError("down")

    for _ in range(3):
        with pytest.raises(CacheUnavailable):
            await b.call(counted)
    assert b.state == "open" and b.settled and b.num_opened_total == 1
    with pytest.raises(CacheUnavailable):  # refused without touching Redis
        await b.call(counted)
    assert calls == 3
    clock.now = 1.5  # half-open: one probe goes through and fails → cooldown doubles
    with pytest.raises(CacheUnavailable):
        await b.call(counted)
    assert calls == 4 and b.state == "open"
    clock.now = 2.5
    with pytest.raises(CacheUnavailable):
        await b.call(ok)  # still inside the doubled cooldown (until 3.5)
    clock.now = 3.6
    assert await b.call(ok) == "ok"
    assert b.state == "closed" and not b.is_open


async def test_success_resets_the_failure_count() -> None:
    b = Breaker(timeout_s=1, failure_threshold=2)
    with pytest.raises(CacheUnavailable):
        await b.call(broken)
    await b.call(ok)
    with pytest.raises(CacheUnavailable):
        await b.call(broken)
    assert b.state == "closed"


async def test_only_one_probe_at_a_time() -> None:
    clock = Clock()
    b = Breaker(timeout_s=1, failure_threshold=1, cooldown_s=1.0, clock=clock)
    with pytest.raises(CacheUnavailable):
        await b.call(broken)
    clock.now = 2
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    probe = asyncio.ensure_future(b.call(slow_ok))
    await asyncio.sleep(0)
    with pytest.raises(CacheUnavailable):
        await b.call(ok)  # a second request while the probe is out is refused
    gate.set()
    assert await probe == "ok" and b.state == "closed"


async def test_a_full_redis_does_not_open_the_breaker() -> None:
    b = Breaker(timeout_s=1, failure_threshold=2)

    async def full() -> str:
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")

    for _ in range(5):
        with pytest.raises(CacheUnavailable, match="full"):
            await b.call(full)
    assert b.state == "closed" and b.num_failures_total == 5
    assert await b.call(ok) == "ok"


async def test_loop_lag_stretches_the_deadline_within_a_cap() -> None:
    from llmcache.proxy.breaker import LoopLag

    lag = LoopLag()
    b = Breaker(timeout_s=0.05, lag=lag)
    assert b.deadline_s() == 0.05
    lag.lag_s = 0.2  # the loop runs timers 200 ms late: CPU starvation, not a slow Redis

    async def slow() -> str:
        await asyncio.sleep(0.1)
        return "late but fine"

    assert b.deadline_s() == pytest.approx(0.45)
    assert await b.call(slow) == "late but fine"
    lag.lag_s = 10.0
    assert b.deadline_s() == 1.0  # capped: a hung Redis is still detected
    lag.lag_s = 0.0
    with pytest.raises(CacheUnavailable):
        await b.call(slow)


async def test_loop_lag_measures_a_blocked_loop() -> None:
    import time as _time

    from llmcache.proxy.breaker import LoopLag

    lag = LoopLag(interval_s=0.01)
    task = asyncio.ensure_future(lag.run())
    await asyncio.sleep(0.02)
    _time.sleep(0.2)  # block the loop, as a CPU-bound burst would
    for _ in range(100):  # let the monitor wake (late) once; bounded by iterations, not time
        if lag.lag_s >= 0.1:
            break
        await asyncio.sleep(0)
    task.cancel()
    assert lag.lag_s >= 0.1


async def test_op_runs_in_the_callers_task_and_cancellation_is_not_a_redis_failure() -> None:
    """No task per operation (asyncio.timeout, not wait_for); a cancelled caller (client hung up)
    propagates CancelledError, counts no failure, and frees the half-open probe slot."""
    async def whose_task() -> asyncio.Task | None:
        return asyncio.current_task()

    b = Breaker(timeout_s=1)
    assert await b.call(whose_task) is asyncio.current_task()

    clock = Clock()
    b = Breaker(timeout_s=5, failure_threshold=1, cooldown_s=1.0, clock=clock)
    with pytest.raises(CacheUnavailable):
        await b.call(broken)
    clock.now = 2  # half-open: the next call is the probe
    probe = asyncio.ensure_future(b.call(hang))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert b.num_failures_total == 1  # only the real failure
    assert await b.call(ok) == "ok" and b.state == "closed"  # the slot was freed: a new probe ran


async def test_an_unexpected_client_exception_fails_open_and_counts() -> None:
    # redis-py's cluster client raised AttributeError ('NoneType' has no 'writelines') on a connection a
    # failover tore down mid-command; that must become a bypass, not a 500.
    async def torn() -> str:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    b = Breaker(timeout_s=1, failure_threshold=2)
    for _ in range(2):
        with pytest.raises(CacheUnavailable):
            await b.call(torn)
    assert b.num_failures_total == 2 and b.state == "open"
