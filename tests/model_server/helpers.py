"""Test helpers: run a model-server app on a real 127.0.0.1 port in a thread; engine factory type."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from llmcache.model_server import loader
from llmcache.model_server.generate import Engine
from llmcache.model_server.handlers import STATE_KEY, ServerState
from llmcache.testing import threaded

#: ``make_engine(model, *, budget_bytes=…, enable_prefix_cache=…)`` (fixture in conftest.py).
EngineFactory = Callable[..., Engine]


@dataclass
class RunningServer:
    url: str
    state: ServerState


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[RunningServer]:
    with threaded.serve_in_thread(app) as url:
        yield RunningServer(url=url, state=app[STATE_KEY])


def never_stops(model: loader.LoadedModel) -> loader.LoadedModel:
    """The same model with no EOS token: a request runs to ``max_tokens`` whatever it samples.

    A request meant to hold the running set (a "hog") must not end early because the random
    tiny model happened to sample its EOS token.
    """
    return dataclasses.replace(model, eos_token_ids=frozenset())
