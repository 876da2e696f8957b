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
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from llmcache.errors import ConfigError

__all__ = [
    "DEFAULT_REDIS_URL",
    "ENV_PREFIX",
    "UPSTREAM_HELP",
    "add_flag",
    "env_name",
    "listen_address",
    "log_level",
    "parse_bool",
    "parse_bytes",
    "parse_listen",
    "redis_url",
    "upstream_url",
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


def parse_listen(value: str, *, flag: str = "--listen") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6) into ``(host, port)``; ``flag`` names it in errors."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{flag} expects HOST:PORT (for example 127.0.0.1:8080), got {value!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means every interface, as the user wrote
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(f"{flag}: port out of range (0-65535) in {value!r}")
    return host, p


def bind_listen_socket(host: str, port: int, *, flag: str = "--listen") -> socket.socket:
    """Bind ``host:port`` now (not listening yet), or raise :class:`ConfigError` naming ``flag``.

    Binding before anything slow (loading the embedder) makes a taken port fail at once and
    in one line; serving on this same socket later leaves no window for another process.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        env = "LLMCACHE_" + flag.lstrip("-").replace("-", "_").upper()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use: stop what runs there "
                              f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with "
                              f"{flag} HOST:PORT (env {env})") from exc
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another address with "
                          f"{flag} HOST:PORT (env {env})") from exc
    return sock


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on (or holds) ``host:port``: try to bind it like a server would."""
    try:
        bind_listen_socket(host, port).close()
    except ConfigError:
        return True
    return False


def listen_address(value: str) -> str:
    """Flag type of every ``--*listen``: a valid ``HOST:PORT``, returned unchanged.

    ``''`` passes too: optional addresses (``--health-listen``, ``--webhook-listen``) use it for "off".
    """
    if value == "":
        return value
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expects HOST:PORT with a port in 0-65535 (for example 127.0.0.1:8080), got {value!r}")
    return value


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def redis_url(value: str) -> str:
    """Flag type of ``--redis-url``: ``redis://``, ``rediss://`` (TLS), ``unix://`` or a cluster URL
    (``redis+cluster://``, see :mod:`llmcache.connection`), returned unchanged.

    A bare ``localhost:6379`` is refused with the corrected URL, not left to a traceback inside
    the Redis client.
    """
    v = value.strip()
    if not v.startswith(_REDIS_SCHEMES):
        fix = f"redis://{v}" if v and "://" not in v else "redis://HOST:PORT/0"
        raise ConfigError(f"expects a Redis URL such as redis://127.0.0.1:6379/0 (rediss:// for TLS, "
                          f"redis+cluster:// for a cluster), got {value!r}; write {fix}")
    if v.startswith(("redis://", "rediss://")):
        hostport = v.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        _host, sep, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
        if not hostport or (sep and not port.isdigit()):
            raise ConfigError(f"expects a Redis URL such as redis://127.0.0.1:6379/0, got {value!r}: "
                              "the host or port is not valid")
    return v


#: How every command describes ``--upstream`` (the same words in each ``--help``).
UPSTREAM_HELP = ("URL of the OpenAI-compatible upstream: its root (http://127.0.0.1:8000) or its OpenAI "
                 "base URL (http://127.0.0.1:8000/v1); both mean the same server")


def upstream_url(value: str) -> str:
    """Flag type of ``--upstream``: an http(s) URL, normalised to the server's root URL.

    OpenAI clients write a *base URL* ending in ``/v1``; the proxy forwards each request's
    own path (``/v1/chat/completions``), so a trailing ``/v1`` (and ``/``) is dropped:
    ``http://h:8000/v1`` and ``http://h:8000`` name the same upstream, and so do
    ``https://api.openai.com/v1`` and ``https://api.openai.com``.
    """
    v = value.strip()
    if not v.startswith(("http://", "https://")):
        fix = f"http://{v}" if v and "://" not in v else "http://HOST:PORT"
        raise ConfigError(f"expects an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}; write {fix}")
    if not v.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(f"expects an http(s) URL with a host, got {value!r}")
    v = v.rstrip("/")
    if v.endswith("/v1"):
        v = v[: -len("/v1")]
    return v


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> str:
    """Flag type of ``--log-level``: a logging level name, any case."""
    v = value.strip().upper()
    if v not in _LOG_LEVELS:
        raise ConfigError(f"expects one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return v


def _type_for(flag: str) -> Callable[[str], Any] | None:
    """The checked type of a flag that means the same in every command (see :func:`add_flag`)."""
    if flag == "--redis-url":
        return redis_url
    if flag == "--upstream":
        return upstream_url
    if flag == "--log-level":
        return log_level
    if flag.endswith("-listen") or flag == "--listen":
        return listen_address
    return None


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

    The env var is parsed with ``type`` (or as a boolean for ``store_true`` and ``switch``
    flags); a bad env value fails at start-up with the variable's name in the message.
    A bad value on the command line fails in one line that names the flag and its env var.
    Flags that mean the same in every command get their checked type from the name when
    ``type`` is not given: ``--redis-url``, ``--upstream``, ``--log-level`` and ``--*listen``.
    ``action="switch"`` makes ``--flag`` / ``--no-flag`` (a boolean without a value; ``--flag false``
    still works, so scripts written for the older value form keep running).
    ``action="repeat"`` makes a repeatable flag whose value is a list: the env var holds a
    comma-separated list, ``type`` checks each item, and values given on the command line
    replace the env var's (they do not add to them).
    ``default=None`` is shown as nothing rather than ``default: None``.
    """
    env = env_name(flag)
    if type is None and action is None:
        type = _type_for(flag)  # noqa: A001
    raw = os.environ.get(env)
    if raw is not None:
        try:
            if action in ("store_true", "switch"):
                default = parse_bool(raw)
            elif action == "repeat":
                default = [type(v.strip()) if type is not None else v.strip() for v in raw.split(",") if v.strip()]
            else:
                default = type(raw) if type is not None else raw
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"invalid value {raw!r} in ${env} ({flag}): {exc}") from exc
        if choices is not None and default not in choices:
            raise ConfigError(f"invalid value {raw!r} in ${env} ({flag}): choose from "
                              f"{', '.join(map(str, choices))}")
    if action in ("store_true", "switch") or default is None:
        shown = f" (env {env})"
    else:
        shown = f" (env {env}; default: {default})"
    if action == "switch":
        shown = f" (env {env}=true|false; default: {'on' if default else 'off'})"
    kwargs: dict[str, Any] = {"default": default, "help": help + shown}
    if action == "switch":
        parser.add_argument(flag, "--no-" + flag[2:], action=_Switch, **kwargs)
        return
    if action == "repeat":
        if default is not None and not isinstance(default, list):
            kwargs["default"] = [default]
        kwargs["action"] = _Repeat
        if type is not None:
            kwargs["type"] = _with_env_hint(type, env)
    elif action is not None:
        kwargs["action"] = action
    else:
        if type is not None:
            kwargs["type"] = _with_env_hint(type, env)
        if choices is not None:
            kwargs["choices"] = choices
    parser.add_argument(flag, **kwargs)


class _Repeat(argparse.Action):
    """A repeatable flag: the command line's values replace the default (the env var's), in order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = getattr(namespace, self.dest, None)
        if items is None or items is self.default:
            items = []
        setattr(namespace, self.dest, [*items, values])


class _Switch(argparse.Action):
    """``--enable-x`` → True, ``--no-enable-x`` → False, ``--enable-x false`` → False (the old form)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        try:
            setattr(namespace, self.dest, True if values is None else parse_bool(values))
        except ConfigError as exc:
            parser.error(f"argument {option_string}: {exc}")

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _with_env_hint(convert: Callable[[str], Any], env: str) -> Callable[[str], Any]:
    """Wrap a flag type so argparse reports its :class:`ConfigError` as ``argument --flag: … (env …)``."""

    def checked(value: str) -> Any:
        try:
            return convert(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (env {env})") from exc
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: {exc} (env {env})") from exc

    checked.__name__ = getattr(convert, "__name__", "value")
    return checked
