"""The llmcache command dispatches to the right subcommand, wherever global options sit."""

from __future__ import annotations

import pytest

from llmcache import cli


def test_global_option_value_is_not_taken_for_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--log-level", "WARNING", "redis", "--help"])
    assert exc.value.code == 0
    assert "--no-search" in capsys.readouterr().out


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "model-server" in capsys.readouterr().out


def test_bad_env_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMCACHE_LISTEN", "nonsense")
    assert cli.main(["redis"]) == 2  # a usage error, found before anything starts
    err = capsys.readouterr().err
    assert "$LLMCACHE_LISTEN (--listen): expects HOST:PORT" in err and len(err.strip().splitlines()) == 1
