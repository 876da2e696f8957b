"""Flag ↔ env-var plumbing shared by every ``llmcache`` subcommand.

Every command-line flag ``--some-flag`` also reads ``LLMCACHE_SOME_FLAG`` from
the environment (the flag wins). The same names are used by the Helm chart
(``someFlag``) and the CRD, so one setting has one name everywhere.

Per-concern settings dataclasses live next to the code they configure
(``llmcache.proxy.settings``, ``llmcache.model_server.settings``, …); this module
holds only what they share.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from llmcache.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "DEFAULT_REDIS_URL",
    "env_name",
    "add_flag",
    "parse_listen",
    "parse_bool",
    "parse_bytes",
]

ENV_PREFIX = "LLMCACHE_"

#: Where a local ``llmcache redis`` listens by default.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def env_name(flag: str) -> str:
    """``--redis-url`` → ``LLMCACHE_REDIS_URL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(value: str | bool) -> bool:
    """Parse ``1/0, true/false, yes/no, on/off`` (case-insensitive)."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"expected a boolean (true/false), got {value!r}")


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
          "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3}


def parse_bytes(value: str | int) -> int:
    """Parse a byte size: ``1048576``, ``16Mi``, ``2GiB``, ``500MB`` (Kubernetes-style suffixes)."""
    if isinstance(value, int):
        return value
    s = value.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    if unit not in _UNITS or not num:
        raise ConfigError(f"invalid byte size {value!r}: use a number with an optional suffix like 16Mi or 2Gi")
    try:
        n = float(num)
    except ValueError as exc:
        raise ConfigError(f"invalid byte size {value!r}") from exc
    if n < 0:
        raise ConfigError(f"byte size must be >= 0, got {value!r}")
    return int(n * _UNITS[unit])


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6) into ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen expects HOST:PORT (for example 127.0.0.1:8080), got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(f"port out of range in {value!r}")
    return host, p


def add_flag(
    parser: argparse.ArgumentParser | Any,
    flag: str,
    *,
    default: Any = None,
    type: Callable[[str], Any] | None = None,  # noqa: A002 - mirrors argparse
    help: str = "",  # noqa: A002
    choices: Any = None,
    action: str | None = None,
) -> None:
    """Add ``flag`` to ``parser`` with its default read from ``LLMCACHE_<FLAG>``.

    The env var is parsed with ``type`` (or as a boolean for ``store_true`` flags);
    a bad env value fails at start-up with the variable's name in the message.
    """
    env = env_name(flag)
    raw = os.environ.get(env)
    if raw is not None:
        try:
            if action == "store_true":
                default = parse_bool(raw)
            else:
                default = type(raw) if type is not None else raw
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"invalid value {raw!r} in ${env}: {exc}") from exc
        if choices is not None and default not in choices:
            raise ConfigError(f"invalid value {raw!r} in ${env}: choose from {', '.join(map(str, choices))}")
    shown = f" (env {env}; default: {default})" if action != "store_true" else f" (env {env})"
    kwargs: dict[str, Any] = {"default": default, "help": help + shown}
    if action is not None:
        kwargs["action"] = action
    else:
        if type is not None:
            kwargs["type"] = type
        if choices is not None:
            kwargs["choices"] = choices
    parser.add_argument(flag, **kwargs)
