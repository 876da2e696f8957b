"""Documented defaults and flag/env plumbing of the model server."""

from __future__ import annotations

import argparse

import pytest

from llmcache.errors import ConfigError
from llmcache.model_server import settings


def parse(argv: list[str]) -> settings.ModelServerSettings:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser)
    return settings.from_args(parser.parse_args(argv))


def test_documented_defaults() -> None:
    s = parse([])
    assert s.listen == "127.0.0.1:8000" == settings.DEFAULT_LISTEN
    assert s.model.model == "default" and s.model.device == "auto" and s.model.dtype == "auto"
    assert s.model.num_threads == 0 and s.model.default_max_tokens == 512
    assert s.prefix_cache.enable_prefix_cache is True
    assert s.prefix_cache.budget_bytes is None and s.prefix_cache.budget_fraction == 0.2
    assert (s.sink.sink_tokens, s.sink.window_tokens) == (4, 0)
    assert s.enable_embeddings is True
    assert s == settings.ModelServerSettings()


def test_env_vars_and_byte_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCACHE_PREFIX_CACHE_BYTES", "64Mi")
    monkeypatch.setenv("LLMCACHE_ENABLE_PREFIX_CACHE", "false")
    s = parse(["--sink-window-tokens", "256"])
    assert s.prefix_cache.budget_bytes == 64 * 2**20
    assert s.prefix_cache.enable_prefix_cache is False
    assert s.sink.window_tokens == 256


def test_bad_values_say_which_flag() -> None:
    with pytest.raises(ConfigError, match="--prefix-cache-fraction"):
        parse(["--prefix-cache-fraction", "1.5"])
    with pytest.raises(SystemExit):  # argparse refuses it, naming --listen and LLMCACHE_LISTEN (tests/docs)
        parse(["--listen", "nonsense"])


def test_batching_and_privacy_defaults() -> None:
    s = parse([])
    b = s.batching
    assert (b.enable_batching, b.max_num_seqs, b.max_num_batched_tokens) == (True, 16, 256)
    assert (b.max_queue_len, b.max_queue_time_s, b.kv_budget_bytes, b.kv_fraction) == (64, 60.0, None, 0.2)
    assert s.prefix_cache.report_cached_tokens == "salted"
    assert s.model.served_model_name == ()
    with pytest.raises(ConfigError, match="--max-num-seqs"):
        parse(["--max-num-seqs", "0"])
    with pytest.raises(ConfigError, match="--max-queue-time-s"):
        parse(["--max-queue-time-s", "0"])


def test_served_model_name_repeats_and_reads_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse(["--served-model-name", "a", "--served-model-name", "b,c"]).model.served_model_name == ("a", "b", "c")
    monkeypatch.setenv("LLMCACHE_SERVED_MODEL_NAME", "x, y")
    assert parse([]).model.served_model_name == ("x", "y")
    assert parse(["--served-model-name", "z"]).model.served_model_name == ("x", "y", "z")


def test_request_size_limits_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse([])
    assert s.model.max_tokens_limit is None and settings.MAX_TOKENS_CONTEXT_MULTIPLE == 4  # auto: 4 x context
    assert (s.embeddings.max_inputs, s.embeddings.max_tokens) == (2048, 300_000)
    monkeypatch.setenv("LLMCACHE_MAX_TOKENS_LIMIT", "4096")
    monkeypatch.setenv("LLMCACHE_EMBEDDINGS_MAX_INPUTS", "16")
    s = parse(["--embeddings-max-tokens", "1000"])
    assert (s.model.max_tokens_limit, s.embeddings.max_inputs, s.embeddings.max_tokens) == (4096, 16, 1000)
    assert parse(["--max-tokens-limit", "auto"]).model.max_tokens_limit is None
    with pytest.raises(ConfigError, match="--max-tokens-limit"):
        parse(["--max-tokens-limit", "100"])  # below --default-max-tokens 512
    with pytest.raises(ConfigError, match="--embeddings-max-inputs"):
        parse(["--embeddings-max-inputs", "0"])
