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
    with pytest.raises(ConfigError, match="--listen"):
        parse(["--listen", "nonsense"])
