"""Documented defaults of the operator and the flag ↔ env-var mapping of ``llmcache operator``."""

from __future__ import annotations

import argparse

import pytest

from llmcache.operator import cli
from llmcache.operator.settings import EvictionSettings, OperatorSettings, SidecarSettings, WebhookSettings


def test_documented_defaults_are_pinned() -> None:
    s = OperatorSettings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.namespace == "" and s.configmap_name == "llmcache-policies"
    assert s.health_listen == "0.0.0.0:8081" and s.status_interval_s == 5.0
    assert s.peering_name == "llmcache" and s.standalone is False and s.peering_priority is None
    assert s.webhook == WebhookSettings()
    assert s.webhook.listen == "0.0.0.0:9443" and s.webhook.native_sidecar_min_version == (1, 29)
    assert s.webhook.failure_policy == "Fail"  # pods that asked for the sidecar never run without it
    assert s.eviction == EvictionSettings(interval_s=10.0, batch_size=256, prune_scan_count=1000,
                                          default_max_entries=100_000, default_max_memory_bytes=None,
                                          max_stats_keys=10_000)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(argv)


def test_flags_read_env_vars_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCACHE_EVICTION_INTERVAL_SECONDS", "2.5")
    monkeypatch.setenv("LLMCACHE_NAMESPACE", "team-a")
    monkeypatch.setenv("LLMCACHE_STANDALONE", "true")
    monkeypatch.setenv("LLMCACHE_WEBHOOK_LISTEN", "")
    monkeypatch.setenv("LLMCACHE_WEBHOOK_FAILURE_POLICY", "Ignore")
    monkeypatch.setenv("LLMCACHE_SIDECAR_IMAGE", "registry.example/proxy:9")
    monkeypatch.setenv("LLMCACHE_SIDECAR_REDIS_URL", "redis://shared:6379/1")
    s = cli.settings_from_args(parse(["--namespace", "team-b"]))
    assert s.namespace == "team-b"  # the flag wins
    assert s.eviction.interval_s == 2.5 and s.standalone is True and s.webhook.listen == ""
    assert s.webhook.failure_policy == "Ignore"
    assert s.webhook.sidecar.image == "registry.example/proxy:9"
    assert s.webhook.sidecar.redis_url == "redis://shared:6379/1"
    assert s.webhook.sidecar.upstream == SidecarSettings().upstream


def test_bad_listen_address_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused while parsing (every --*listen is checked by llmcache.settings.add_flag), naming flag and env var.
    with pytest.raises(SystemExit):
        parse(["--health-listen", "nowhere"])
    err = capsys.readouterr().err
    assert "--health-listen" in err and "HOST:PORT" in err and "LLMCACHE_HEALTH_LISTEN" in err
