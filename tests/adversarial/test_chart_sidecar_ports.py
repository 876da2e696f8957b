"""Issue 14, item 2 (chart side): the injected sidecar serves LLM traffic on 127.0.0.1 only.

A real ``llmcache proxy`` process runs with exactly the env the webhook injects (the
``0.0.0.0`` health address replaced by 127.0.0.2, standing in for the pod IP, so the
test stays on loopback). From the "pod IP" the kubelet's probes get their answers and
nothing else: no LLM route, no admin route, and the LLM port does not accept at all.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from llmcache.operator import webhook
from llmcache.operator.settings import SidecarSettings
from llmcache.redis_server import free_port

POD_IP = "127.0.0.2"


def _sidecar_env(*, port: int, health_port: int, redis_url: str) -> dict[str, str]:
    container = webhook.sidecar_container(SidecarSettings(port=port, health_port=health_port, redis_url=redis_url,
                                                          upstream="http://127.0.0.1:9"), native=True)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e and not e["name"].endswith("_FILE")}
    assert env["LLMCACHE_HEALTH_LISTEN"] == f"0.0.0.0:{health_port}"
    env["LLMCACHE_HEALTH_LISTEN"] = f"{POD_IP}:{health_port}"
    return env


@pytest.fixture
def sidecar(redis_plain_url: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    port, health_port = free_port(), free_port(POD_IP)
    env = {**os.environ, **_sidecar_env(port=port, health_port=health_port, redis_url=redis_plain_url),
           "LLMCACHE_MODE": "exact"}
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmcache", "proxy"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()
            try:
                if requests.get(f"http://{POD_IP}:{health_port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
            time.sleep(0.1)
        yield port, health_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_pod_ip_gets_probes_only_and_llm_traffic_stays_on_loopback(sidecar: tuple[int, int]) -> None:
    port, health_port = sidecar
    health = f"http://{POD_IP}:{health_port}"
    assert requests.get(health + "/healthz", timeout=5).status_code == 200
    assert requests.get(health + "/readyz", timeout=5).status_code in (200, 503)
    assert "llmcache_requests_total" in requests.get(health + "/metrics", timeout=5).text
    # Nothing but the probes on the pod IP: no LLM route, no pass-through, no admin endpoint.
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
                         ("GET", "/llmcache/v1/stats"), ("POST", "/llmcache/v1/invalidate")):
        resp = requests.request(method, health + path, json={}, timeout=5)
        assert resp.status_code == 404, (method, path, resp.status_code)
    # The LLM port is not bound on the pod IP at all.
    with pytest.raises(OSError), socket.create_connection((POD_IP, port), timeout=2):
        pass
    # Inside the pod (loopback) the proxy serves LLM routes: here the upstream is down, so a 5xx
    # from the proxy itself, not a refused connection.
    resp = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code in (502, 503, 504) and resp.headers.get("X-LLMCache-Status")
