"""Continuous batching on the tiny random GQA Llama: join/leave, chunked prefill beside decodes, cancellation.

Outputs are checked against a cacheless full-forward reference; progress is checked by the
order of worker events (never by wall-clock time).
"""

from __future__ import annotations

import random
import threading

import pytest

from llmcache.model_server import generate as gen
from llmcache.model_server import loader
from llmcache.model_server import request as rq
from llmcache.model_server.metrics import ModelServerMetrics
from llmcache.model_server.radix import RadixCache
from llmcache.model_server.settings import BatchingSettings

from .helpers import never_stops
from .test_generate import rand_tokens, reference


class Recorder:
    """Collects worker events of several requests in one global order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)

    def on(self, name: str):
        def cb(event: object) -> None:
            with self.cond:
                self.log.append((name, event))
                self.cond.notify_all()
        return cb

    def count(self, name: str) -> int:
        return sum(1 for n, e in self.log if n == name and isinstance(e, rq.TokenDelta))

    def wait(self, pred, timeout_s: float = 120) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout_s), "condition not reached in time"


@pytest.fixture
def engine_with(tiny_model: loader.LoadedModel):
    engines: list[gen.Engine] = []

    def make(*, model: loader.LoadedModel | None = None, **batching: object) -> gen.Engine:
        e = gen.Engine(model or tiny_model, prefix_cache=RadixCache(1 << 26), metrics=ModelServerMetrics(),
                       batching=BatchingSettings(**batching))  # type: ignore[arg-type]
        e.start()
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.stop()


def req(prompt: list[int], max_tokens: int, rec: Recorder, name: str, **kw: object) -> rq.GenerationRequest:
    return rq.GenerationRequest(prompt_ids=prompt, sampling=rq.SamplingParams(max_tokens=max_tokens, temperature=0.0),
                                 on_event=rec.on(name), **kw)  # type: ignore[arg-type]


def test_the_tiny_model_runs_the_packed_forward(engine_with) -> None:
    assert engine_with().batched
    assert not engine_with(enable_batching=False).batched


def test_join_and_leave_between_steps(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with()
    rng = random.Random(11)
    pa, pb = rand_tokens(rng, 30), rand_tokens(rng, 12)
    rec = Recorder()
    a = engine.submit(req(pa, 40, rec, "a"))
    rec.wait(lambda: rec.count("a") >= 3)
    b = engine.submit(req(pb, 5, rec, "b"))  # joins a running batch
    rb = b.result(120)
    ra_count_when_b_done = rec.count("a")
    ra = a.result(120)
    assert ra_count_when_b_done < 40  # b left while a kept decoding
    assert list(rb.token_ids) == reference(tiny_model, pb, 5)
    assert list(ra.token_ids) == reference(tiny_model, pa, 40)
    names = [n for n, e in rec.log if isinstance(e, rq.TokenDelta)]
    first_b, last_b = names.index("b"), len(names) - 1 - names[::-1].index("b")
    assert "a" in names[first_b:last_b]  # interleaved: both advanced in the same steps
    sizes = engine.metrics.step_batch_size  # type: ignore[union-attr]
    assert sizes._buckets[1].get() > 0  # some steps ran 2 sequences at once (bucket le=2 minus le=1)


def test_long_prefill_is_chunked_while_others_decode(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with(max_num_batched_tokens=16)
    rng = random.Random(12)
    pa, long_prompt = rand_tokens(rng, 10), rand_tokens(rng, 300)
    rec = Recorder()
    a = engine.submit(req(pa, 60, rec, "a"))
    rec.wait(lambda: rec.count("a") >= 2)
    at_submit = rec.count("a")
    b = engine.submit(req(long_prompt, 4, rec, "b"))
    rec.wait(lambda: rec.count("b") >= 1)
    a_during_prefill = rec.count("a") - at_submit
    # 300 prompt tokens at <= 15 per step take >= 20 steps, each also decoding a.
    assert a_during_prefill >= 15
    assert list(b.result(120).token_ids) == reference(tiny_model, long_prompt, 4)
    assert list(a.result(120).token_ids) == reference(tiny_model, pa, 60)


def test_a_cached_prompt_is_not_queued_behind_a_cold_prefill(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with(max_num_batched_tokens=16)
    rng = random.Random(13)
    system, cold = rand_tokens(rng, 200), rand_tokens(rng, 300)
    warm = system + rand_tokens(rng, 5)
    rec = Recorder()
    engine.submit(req(system + rand_tokens(rng, 3), 1, rec, "first")).result(120)  # caches the system prompt
    a, b = engine.submit_many([req(cold, 2, rec, "cold"), req(warm, 2, rec, "warm")])  # the cold one is older
    assert list(b.result(120).token_ids) == reference(tiny_model, warm, 2)
    assert list(a.result(120).token_ids) == reference(tiny_model, cold, 2)
    assert b.cached_tokens == 200
    names = [n for n, e in rec.log if isinstance(e, rq.TokenDelta) and n != "first"]
    # 300 cold tokens at <= 16 per step take >= 19 steps; the warm one's 5 tokens went in the first.
    assert names.index("warm") < names.index("cold")


def test_a_burst_sharing_an_uncached_prompt_prefills_it_once(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with(max_num_batched_tokens=16)
    rng = random.Random(14)
    system = rand_tokens(rng, 300)
    prompts = [system + rand_tokens(rng, 3 + i) for i in range(3)]
    rec = Recorder()
    handles = engine.submit_many([req(p, 2, rec, f"r{i}") for i, p in enumerate(prompts)])
    for h, p in zip(handles, prompts):
        assert list(h.result(120).token_ids) == reference(tiny_model, p, 2)
    # The first prefilled the shared 300 tokens; the others waited for it and found them cached.
    assert [h.cached_tokens for h in handles] == [0, 300, 300]


def test_cancel_mid_batch_frees_the_sequence(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with()
    rng = random.Random(13)
    pa, pb = rand_tokens(rng, 20), rand_tokens(rng, 20)
    rec = Recorder()
    a = engine.submit(req(pa, 200, rec, "a"))
    b = engine.submit(req(pb, 30, rec, "b"))
    rec.wait(lambda: rec.count("a") >= 3)
    a.cancel()
    ra = a.result(120)
    assert ra.finish_reason == "cancelled" and 3 <= len(ra.token_ids) < 200
    assert list(ra.token_ids) == reference(tiny_model, pa, 200)[:len(ra.token_ids)]
    assert list(b.result(120).token_ids) == reference(tiny_model, pb, 30)
    assert engine.metrics.finished.labels(reason="cancelled")._value.get() == 1  # type: ignore[union-attr]
    assert engine.stats().kv_reserved_bytes == 0 and engine.stats().num_running == 0


def test_full_queue_is_refused_with_retry_after(engine_with) -> None:
    engine = engine_with(max_num_seqs=1, max_queue_len=2)
    rng = random.Random(14)
    rec = Recorder()
    running = engine.submit(req(rand_tokens(rng, 10), 300, rec, "run"))
    rec.wait(lambda: rec.count("run") >= 1)
    queued = engine.submit_many([req(rand_tokens(rng, 10), 2, rec, f"q{i}") for i in range(2)])
    with pytest.raises(rq.OverloadedError) as exc:
        engine.submit(req(rand_tokens(rng, 10), 2, rec, "over"))
    assert exc.value.code == "queue_full" and exc.value.retry_after_s >= 1
    with pytest.raises(rq.OverloadedError):  # all or nothing: two do not fit either
        engine.submit_many([req(rand_tokens(rng, 5), 2, rec, "x"), req(rand_tokens(rng, 5), 2, rec, "y")])
    running.cancel()
    assert all(h.result(120).finish_reason == "length" for h in queued)


def test_queue_time_is_bounded(engine_with, tiny_model: loader.LoadedModel) -> None:
    engine = engine_with(model=never_stops(tiny_model), max_num_seqs=1, max_queue_time_s=0.2)
    rng = random.Random(15)
    rec = Recorder()
    running = engine.submit(req(rand_tokens(rng, 10), 900, rec, "run"))
    rec.wait(lambda: rec.count("run") >= 1)
    waiting = engine.submit(req(rand_tokens(rng, 10), 2, rec, "wait"))
    with pytest.raises(rq.OverloadedError) as exc:
        waiting.result(120)
    assert exc.value.code == "queue_timeout"
    running.cancel()
    assert running.result(120).finish_reason == "cancelled"


def test_kv_budget_bounds_the_running_set(tiny_model: loader.LoadedModel) -> None:
    probe = gen.Engine(tiny_model, prefix_cache=None, kv_budget_bytes=1 << 30)
    per_req = 30 * probe.kv_bytes_per_token  # 20 prompt + 10 max_tokens
    engine = gen.Engine(tiny_model, prefix_cache=None, batching=BatchingSettings(max_num_seqs=8),
                        kv_budget_bytes=2 * per_req)
    engine.start()
    try:
        rng = random.Random(16)
        peak = 0
        seen = threading.Event()

        def watch(_event: object) -> None:
            nonlocal peak
            peak = max(peak, engine.stats().num_running)
            seen.set()

        handles = engine.submit_many([rq.GenerationRequest(
            prompt_ids=rand_tokens(rng, 20), sampling=rq.SamplingParams(max_tokens=10, temperature=0.0),
            on_event=watch) for _ in range(6)])
        assert all(h.result(120).finish_reason == "length" for h in handles)
        assert seen.is_set() and peak == 2
        with pytest.raises(rq.InvalidRequestError, match="KV budget"):
            engine.submit(rq.GenerationRequest(prompt_ids=rand_tokens(rng, 50),
                                                sampling=rq.SamplingParams(max_tokens=20)))
    finally:
        engine.stop()


def test_worker_fault_fails_every_pending_request(tiny_model: loader.LoadedModel, engine_with) -> None:
    engine = engine_with(max_num_seqs=2)
    rng = random.Random(17)
    rec = Recorder()
    real = engine.forward
    calls = 0

    def faulty(model: object, segments: object) -> object:  # fault injection: the forward pass blows up
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("injected: device lost")
        return real(model, segments)  # type: ignore[arg-type]

    engine.forward = faulty
    handles = engine.submit_many([req(rand_tokens(rng, 10), 50, rec, f"r{i}") for i in range(5)])
    for h in handles:
        with pytest.raises(rq.WorkerFailedError, match="device lost"):
            h.result(120)
    assert engine.failed is not None and "device lost" in engine.failed
    with pytest.raises(rq.WorkerFailedError):
        engine.submit(req(rand_tokens(rng, 10), 2, rec, "late"))
