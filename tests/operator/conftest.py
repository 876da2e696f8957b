"""Fixtures for the operator tests: the CRDs on the real API server, operator processes, helpers.

The operator always runs as a real ``python -m llmcache operator`` process
watching one test namespace, so tests can stop and restart it like a pod.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from opkit import API_VERSION, CRD_DIR, KIND, wait_for

from llmcache.redis_server import free_port


@pytest.fixture(scope="session")
def crds(kube: Any) -> Any:
    """The chart's CRDs installed and Established; returns the control plane."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        kube.apply(path.read_text())

    def established() -> bool:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "cachepolicies.llmcache.io")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in ((crd or {}).get("status") or {}).get("conditions") or [])

    wait_for(established, what="the CachePolicy CRD to be Established")
    # Discovery caches resources: make sure the new kind is visible to the dynamic client,
    # and that its storage answers (right after Established it may still say 429).
    wait_for(lambda: _kind_served(kube), what="CachePolicy in API discovery")
    wait_for(lambda: kube.request("GET", "/apis/llmcache.io/v1alpha1/cachepolicies").status_code == 200,
             what="CachePolicy storage to be ready")
    return kube


def _kind_served(kube: Any) -> bool:
    try:
        kube.dynamic.resources.invalidate_cache()
        kube.dynamic.resources.get(api_version=API_VERSION, kind=KIND)
        return True
    except (ResourceNotFoundError, ApiException):
        return False


@dataclass
class OperatorProcess:
    """One ``llmcache operator`` process and where its log goes."""

    args: list[str]
    env: dict[str, str]
    log: Path
    health_url: str
    proc: subprocess.Popen[bytes] | None = None
    _log_fh: Any = field(default=None, repr=False)

    def start(self) -> OperatorProcess:
        self._log_fh = self.log.open("ab")
        self._log_fh.write(f"\n===== start {dt.datetime.now().isoformat()}\n".encode())
        self._log_fh.flush()
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                return requests.get(self.health_url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, what="the operator's /healthz", logs=[self.log])
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None


@pytest.fixture
def start_operator(crds: Any, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``start_operator(namespace, redis_url, webhook_listen="", cert_dir=None, env={})``."""
    started: list[OperatorProcess] = []

    def start(namespace: str, redis_url: str, *, webhook_listen: str = "", cert_dir: Path | None = None,
              eviction_interval_s: float = 0.5, status_interval_s: float = 1.0,
              peering_priority: int | None = None, env: Mapping[str, str] | None = None) -> OperatorProcess:
        port = free_port()
        args = [sys.executable, "-m", "llmcache", "operator",
                "--redis-url", redis_url, "--namespace", namespace,
                "--health-listen", f"127.0.0.1:{port}", "--webhook-listen", webhook_listen,
                "--eviction-interval-seconds", str(eviction_interval_s),
                "--status-interval-seconds", str(status_interval_s)]
        # Standalone unless a test is about peering (replicas).
        args += ["--standalone"] if peering_priority is None else ["--peering-priority", str(peering_priority)]
        if cert_dir is not None:
            args += ["--webhook-cert-dir", str(cert_dir)]
        full_env = {k: v for k, v in crds.env().items() if not k.startswith("LLMCACHE_")}
        full_env.update(env or {})
        op = OperatorProcess(args=args, env=full_env, log=tmp_path / f"operator-{len(started)}.log",
                             health_url=f"http://127.0.0.1:{port}/healthz")
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def ns(kube_namespace: str) -> str:
    return kube_namespace
