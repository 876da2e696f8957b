"""Start-up contract used by `llmcache up`: /healthz is 503 while loading, 200 after, a ready line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from llmcache.model_server import handlers, loader
from llmcache.model_server.settings import ModelServerSettings, ModelSettings, PrefixCacheSettings
from llmcache.redis_server import free_port

from .helpers import serve_in_thread


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_healthz_is_503_until_the_model_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_load = loader.load_model

    def slow_load(*args: object, **kwargs: object) -> loader.LoadedModel:  # fault injection: a slow disk
        assert release.wait(60)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "load_model", slow_load)
    settings = ModelServerSettings(model=ModelSettings(model="random-tiny"), enable_embeddings=False,
                                   prefix_cache=PrefixCacheSettings(budget_bytes=1 << 20))
    with serve_in_thread(handlers.create_app(settings)) as server:
        assert _status(server.url + "/healthz") == 503
        req = urllib.request.Request(server.url + "/v1/completions", data=b'{"prompt": [5, 6, 7]}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 503 and b"model_not_ready" in exc.value.read()
        release.set()
        assert server.state.ready.wait(60)
        assert _status(server.url + "/healthz") == 200


def test_cli_serves_and_prints_ready_line() -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMCACHE_ENABLE_EMBEDDINGS": "false", "LLMCACHE_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcache", "model-server", "--model", "random-tiny", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the ready line (or exit)
        assert line.startswith(f"llmcache model-server ready: http://127.0.0.1:{port}/v1"), line
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        proc.terminate()
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    assert rc == 0
    assert proc.stderr is not None and "building random-weight model random-tiny" in proc.stderr.read()


def test_cli_rejects_a_missing_model_directory() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmcache", "model-server", "--model", "/nonexistent/model", "--listen",
         f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LLMCACHE_ENABLE_EMBEDDINGS": "false", "LLMCACHE_NUM_THREADS": "1"},
    )
    assert out.returncode == 1
    assert "neither default" in out.stdout + out.stderr
