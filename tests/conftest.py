"""Shared fixtures: real Redis servers on free ports.

- ``redis_search`` — Valkey + RediSearch (vector KNN), session-scoped.
- ``redis_plain``  — Valkey without the module (client-side index path), session-scoped.
- ``redis_search_url`` / ``redis_plain_url`` — their URLs, each test starting from an empty db.
- ``redis_factory`` — a fresh server a test owns (to kill and restart it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import redis

from llmcache.redis_server import EmbeddedRedis, free_port

# The `kube` / `kube_namespace` fixtures (etcd + kube-apiserver): tests/controlplane/fixtures.py.
pytest_plugins = ["controlplane.fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_search() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(with_search=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_plain() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(with_search=False) as server:
        yield server


def _flushed(server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return server.url


@pytest.fixture
def redis_search_url(redis_search: EmbeddedRedis) -> str:
    return _flushed(redis_search)


@pytest.fixture
def redis_plain_url(redis_plain: EmbeddedRedis) -> str:
    return _flushed(redis_plain)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., EmbeddedRedis]]:
    started: list[EmbeddedRedis] = []

    def make(**kwargs: object) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def unused_port() -> int:
    return free_port()
