"""The ``llmcache`` command: one subcommand per component, each in its own package.

Each component module exposes ``configure(parser)`` (add its flags with
:func:`llmcache.settings.add_flag`) and ``run(args) -> int``. They are imported
lazily so ``llmcache proxy`` never imports torch.

Exit codes: 0 done, 1 a part failed while running, 2 bad usage (an unknown flag, a
bad flag or env value, a port that is taken: :class:`~llmcache.errors.ConfigError`),
130 interrupted. Every usage error is one line that names the flag and its env var.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from llmcache import __version__
from llmcache.errors import ConfigError, LLMCacheError
from llmcache.settings import add_flag, log_level

__all__ = ["SUBCOMMANDS", "main"]

#: subcommand → (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("llmcache.stack", "run the embedded stack (Redis + model server + proxy) in the foreground"),
    "demo": ("llmcache.demo", "run the stack, replay a built-in workload, print a report and write a plot"),
    "proxy": ("llmcache.proxy.cli", "run the caching sidecar in front of an OpenAI-compatible upstream"),
    "model-server": ("llmcache.model_server.cli", "run the OpenAI-compatible model server with a prefix KV cache"),
    "operator": ("llmcache.operator.cli", "run the CachePolicy operator and sidecar-injection webhook"),
    "redis": ("llmcache.redis_cli", "run an embedded Redis (Valkey) with vector search for local use"),
    "stats": ("llmcache.stats", "print cache hit/miss counters per namespace from Redis"),
    "kv-estimate": ("llmcache.model_server.kv_estimate", "estimate KV-cache bytes for a model (GQA-aware)"),
}

_DESCRIPTION = ("llmcache: a caching layer for OpenAI-compatible LLM traffic. "
                "Run 'llmcache COMMAND --help' for the flags of a command.")
_EPILOG = ("Every flag also reads LLMCACHE_<FLAG> from the environment (--redis-url: LLMCACHE_REDIS_URL); "
           "the flag wins. --log-level may come before or after the command.")
_LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR"


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line with a pointer to ``--help``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="llmcache", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"llmcache {__version__}")
    add_flag(parser, "--log-level", default="INFO", help=_LOG_LEVEL_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # Only import the module of the chosen subcommand; list the others by name.
    # The first word that names a subcommand (option values like `--log-level DEBUG` are skipped).
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run, _parser=p)
            # After the command too (`llmcache proxy --log-level DEBUG`); unset keeps the global value.
            p.add_argument("--log-level", default=argparse.SUPPRESS, type=_checked_level,
                           help=f"{_LOG_LEVEL_HELP} (env LLMCACHE_LOG_LEVEL; default: INFO)")
    return parser


def _checked_level(value: str) -> str:
    try:
        return log_level(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (env LLMCACHE_LOG_LEVEL)") from exc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the command's own parser, so the pointer names `llmcache CMD --help`
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except ConfigError as exc:  # a bad LLMCACHE_* value, found while adding the flags
        print(f"llmcache: error: {exc}", file=sys.stderr)
        return 2
    run = getattr(args, "_run", None)
    if not run:
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(run(args) or 0)
    except ConfigError as exc:
        print(f"llmcache: error: {exc}", file=sys.stderr)
        return 2
    except LLMCacheError as exc:
        print(f"llmcache: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
