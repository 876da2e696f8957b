"""The embedded Redis really serves vector search (and the plain one really does not)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from llmcache.redis_server import EmbeddedRedis


def _ft_create(url: str) -> None:
    r = redis.Redis.from_url(url)
    r.execute_command("FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA",
                      "tag", "TAG", "vec", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", "4",
                      "DISTANCE_METRIC", "COSINE")


def test_search_server_answers_knn(redis_search_url: str) -> None:
    _ft_create(redis_search_url)
    r = redis.Redis.from_url(redis_search_url)
    for i, v in enumerate([[1, 0, 0, 0], [0, 1, 0, 0], [0.9, 0.1, 0, 0]]):
        r.hset(f"doc:{i}", mapping={"tag": "a", "vec": np.asarray(v, dtype=np.float32).tobytes()})
    q = np.asarray([1, 0, 0, 0], dtype=np.float32).tobytes()
    res = r.execute_command("FT.SEARCH", "idx", "(@tag:{a})=>[KNN 2 @vec $q AS d]", "PARAMS", "2", "q", q,
                            "SORTBY", "d", "RETURN", "1", "d", "DIALECT", "2")
    # redis-py 8 speaks RESP3 by default: FT.SEARCH answers a map.
    assert res[b"total_results"] == 2
    assert [hit[b"id"] for hit in res[b"results"]] == [b"doc:0", b"doc:2"]


def test_plain_server_has_no_search(redis_plain_url: str) -> None:
    with pytest.raises(redis.ResponseError):
        _ft_create(redis_plain_url)


def test_kill_and_restart_same_port(redis_factory) -> None:
    server: EmbeddedRedis = redis_factory(with_search=False)
    port = server.port
    redis.Redis.from_url(server.url).set("k", "v")
    server.kill()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.2).ping()
    server.restart()
    assert server.port == port
    assert redis.Redis.from_url(server.url).ping()


def test_port_in_use_is_a_clear_error(redis_search: EmbeddedRedis) -> None:
    from llmcache.errors import DependencyError

    with pytest.raises(DependencyError, match="already in use"):
        EmbeddedRedis(port=redis_search.port).start()


def test_server_dies_with_the_process_that_started_it(tmp_path) -> None:
    import subprocess
    import sys
    import time

    script = (
        "from llmcache.redis_server import EmbeddedRedis\n"
        "s = EmbeddedRedis(with_search=False).start()\n"
        "print(s.pid, s.port, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, _port = map(int, parent.stdout.readline().split())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"valkey-server {pid} outlived its parent")
