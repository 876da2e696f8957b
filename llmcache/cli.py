"""The ``llmcache`` command: one subcommand per component, each in its own package.

Each component module exposes ``configure(parser)`` (add its flags with
:func:`llmcache.settings.add_flag`) and ``run(args) -> int``. They are imported
lazily so ``llmcache proxy`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from llmcache import __version__
from llmcache.errors import LLMCacheError

__all__ = ["main", "SUBCOMMANDS"]

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


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"llmcache {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only import the module of the chosen subcommand; list the others by name.
    # The first word that names a subcommand (option values like `--log-level DEBUG` are skipped).
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser(argv)
        args = parser.parse_args(argv)
    except LLMCacheError as exc:
        print(f"llmcache: error: {exc}", file=sys.stderr)
        return 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except LLMCacheError as exc:
        print(f"llmcache: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
