"""Pytest plugin: a real etcd + kube-apiserver on loopback ports.

Fixtures:

- ``kube`` (session) — a :class:`ControlPlane`: etcd (``--unsafe-no-fsync``, temp
  data dir) and kube-apiserver (static admin token in ``system:masters``, RBAC,
  service-account signing keys, a self-signed serving cert from ``--cert-dir``,
  the mutating/validating admission webhooks), started once, ready at
  ``/readyz``, with a kubeconfig written next to them.
- ``kube_namespace`` (function) — a fresh namespace (with its ``default``
  ServiceAccount) for one test.

There is no kubelet, scheduler or controller-manager: Pods stay Pending,
Deployments never get ReplicaSets, namespaces stay Terminating after delete,
and ServiceAccounts are not created for new namespaces (``create_namespace``
does that, since the ServiceAccount admission plugin rejects Pods without one).

The binaries come from ``make controlplane`` (tests/controlplane/build.sh),
which lists them in ``$LLMCACHE_CACHE_DIR/bin/controlplane.env``. When they are
missing the fixture fails, naming that command: a test that needs the API
server is never silently skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from llmcache.redis_server import free_port

__all__ = ["ControlPlane", "ControlPlaneBinaries", "find_binaries", "start_control_plane"]

logger = logging.getLogger(__name__)

#: How long etcd and kube-apiserver may take to become ready. A cold start
#: (RBAC bootstrap, CRD/aggregator controllers) is ~5-15 s on two busy cores.
READY_TIMEOUT_S = 180.0
#: The admin identity of the static token file.
ADMIN_USER = "llmcache-test-admin"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "llmcache"
    return Path(os.environ.get("LLMCACHE_CACHE_DIR") or default)


@dataclass(frozen=True, slots=True)
class ControlPlaneBinaries:
    """Paths of the Go binaries built by ``make controlplane``."""

    etcd: Path
    kube_apiserver: Path
    helm: Path


class ControlPlaneMissing(RuntimeError):
    """The binaries are not built; the message says to run ``make controlplane``."""


def find_binaries() -> ControlPlaneBinaries:
    """Read ``$LLMCACHE_CACHE_DIR/bin/controlplane.env`` and check every binary exists.

    Raises :class:`ControlPlaneMissing` with the command to run when anything is absent.
    """
    manifest = _cache_dir() / "bin" / "controlplane.env"
    hint = (
        f"run `make controlplane` (bash tests/controlplane/build.sh) from {_REPO_ROOT} to build "
        "etcd, kube-apiserver and helm from Go modules (a cold build takes ~10-20 min)"
    )
    if not manifest.is_file():
        raise ControlPlaneMissing(f"test control plane not built: {manifest} is missing; {hint}")
    entries: dict[str, Path] = {}
    for line in manifest.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            entries[key.strip()] = Path(value.strip())
    try:
        binaries = ControlPlaneBinaries(
            etcd=entries["ETCD"], kube_apiserver=entries["KUBE_APISERVER"], helm=entries["HELM"]
        )
    except KeyError as exc:
        raise ControlPlaneMissing(f"{manifest} lacks {exc.args[0]}; {hint}") from None
    for path in (binaries.etcd, binaries.kube_apiserver, binaries.helm):
        if not os.access(path, os.X_OK):
            raise ControlPlaneMissing(f"test control plane binary {path} is missing; {hint}")
    return binaries


@dataclass(slots=True)
class ControlPlane:
    """A running etcd + kube-apiserver and the credentials to talk to it.

    ``server`` is the https URL, ``token`` the bearer token of a
    ``system:masters`` user, ``ca`` the PEM bundle that verifies the server,
    ``kubeconfig`` a kubeconfig file naming all three (context ``llmcache-test``).
    """

    server: str
    token: str
    ca: Path
    kubeconfig: Path
    workdir: Path
    binaries: ControlPlaneBinaries
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _api_client: Any = field(default=None, repr=False)
    _dynamic: Any = field(default=None, repr=False)

    # -- clients -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` and helm's dirs, for child processes."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        helm_home = self.workdir / "helm"
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
        return env

    @property
    def api_client(self) -> Any:
        """A shared ``kubernetes.client.ApiClient`` logged in as the admin."""
        if self._api_client is None:
            import kubernetes.client

            configuration = kubernetes.client.Configuration()
            configuration.host = self.server
            configuration.ssl_ca_cert = str(self.ca)
            configuration.api_key = {"authorization": f"Bearer {self.token}"}
            self._api_client = kubernetes.client.ApiClient(configuration)
        return self._api_client

    @property
    def dynamic(self) -> Any:
        """A shared ``kubernetes.dynamic.DynamicClient`` (discovery is re-read on a miss)."""
        if self._dynamic is None:
            import kubernetes.dynamic

            self._dynamic = kubernetes.dynamic.DynamicClient(self.api_client)
        return self._dynamic

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A raw HTTPS request to the API server as the admin (``path`` starts with ``/``)."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.server + path, headers=headers, verify=str(self.ca), **kwargs)

    # -- objects -------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            # A CRD installed after discovery was cached: re-read discovery once.
            self.dynamic.resources.invalidate_cache()
            return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(
        self,
        manifests: str | Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        field_manager: str = "llmcache-tests",
    ) -> list[dict[str, Any]]:
        """Server-side apply one object, a list of them, or a multi-document YAML string.

        Namespaced objects without ``metadata.namespace`` go to ``namespace``.
        Returns the objects as the server stored them. Validation errors from the
        API server propagate as ``kubernetes.client.exceptions.ApiException``.
        """
        if isinstance(manifests, str):
            docs = [d for d in yaml.safe_load_all(manifests) if d]
        elif isinstance(manifests, Mapping):
            docs = [dict(manifests)]
        else:
            docs = [dict(d) for d in manifests]
        applied: list[dict[str, Any]] = []
        for doc in docs:
            resource = self._resource(doc["apiVersion"], doc["kind"])
            meta = doc.setdefault("metadata", {})
            ns = meta.get("namespace") or (namespace if resource.namespaced else None)
            if resource.namespaced and ns is None:
                raise ValueError(f"{doc['kind']}/{meta.get('name')} is namespaced: pass namespace=")
            obj = resource.server_side_apply(
                body=doc, name=meta["name"], namespace=ns, field_manager=field_manager, force_conflicts=True
            )
            applied.append(obj.to_dict())
        return applied

    def get(self, api_version: str, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a dict, or ``None`` when it does not exist."""
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def list_objects(self, api_version: str, kind: str, *, namespace: str | None = None,
                     **kwargs: Any) -> list[dict[str, Any]]:
        """Objects of one kind (in ``namespace``, or cluster-wide), e.g. ``label_selector=``."""
        result = self._resource(api_version, kind).get(namespace=namespace, **kwargs).to_dict()
        return list(result.get("items") or [])

    def delete(self, api_version: str, kind: str, name: str, *, namespace: str | None = None) -> None:
        """Delete an object; a missing one is fine."""
        from kubernetes.dynamic.exceptions import NotFoundError

        with contextlib.suppress(NotFoundError):
            self._resource(api_version, kind).delete(name=name, namespace=namespace)

    def create_namespace(self, name: str | None = None, *, labels: Mapping[str, str] | None = None) -> str:
        """Create a namespace and its ``default`` ServiceAccount (no controller-manager does it here)."""
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, namespace=name)
        return name

    def delete_namespace(self, name: str) -> None:
        """Ask for the namespace's deletion (it stays Terminating: no namespace controller runs)."""
        self.delete("v1", "Namespace", name)

    def service_account_kubeconfig(self, namespace: str, name: str, *, expiration_s: int = 3600) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (a TokenRequest token).

        Run a component with it to exercise exactly the RBAC a chart grants that
        ServiceAccount. The ServiceAccount must exist.
        """
        response = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": expiration_s}},
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"TokenRequest for {namespace}/{name} failed: HTTP {response.status_code} {response.text}")
        token = response.json()["status"]["token"]
        path = self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        _write_kubeconfig(path, server=self.server, ca=self.ca, user=f"{namespace}-{name}", token=token,
                          namespace=namespace)
        return path

    # -- helm ----------------------------------------------------------------

    def helm(self, *args: str, check: bool = True, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this API server; raises with helm's output when ``check`` and it fails."""
        cmd = [str(self.binaries.helm), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    # -- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; idempotent."""
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None
            self._dynamic = None
        for proc in reversed(self._processes):
            _terminate(proc)
        self._processes.clear()


def _terminate(proc: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def _tail(path: Path, num_lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def _write_kubeconfig(path: Path, *, server: str, ca: Path, user: str, token: str,
                      namespace: str | None = None) -> None:
    context: dict[str, str] = {"cluster": "llmcache-test", "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "llmcache-test",
                              "cluster": {"server": server, "certificate-authority": str(ca)}}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "llmcache-test", "context": context}],
                "current-context": "llmcache-test",
            }
        )
    )
    path.chmod(0o600)


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair for signing and verifying service-account tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private.chmod(0o600)
    return private, public


def _wait_ready(
    name: str, url: str, proc: subprocess.Popen[bytes], log: Path, *, deadline: float, **kwargs: Any
) -> None:
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready; log tail:\n{_tail(log)}")
        try:
            response = requests.get(url, timeout=5, **kwargs)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[-500:]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready at {url} within {READY_TIMEOUT_S:.0f} s ({last}); log tail:\n{_tail(log)}")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when pytest dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A new session, so a Ctrl-C on pytest reaches us first and we stop it in
        # order; the death signal covers a pytest that is killed outright.
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)


def start_control_plane(workdir: Path, binaries: ControlPlaneBinaries | None = None) -> ControlPlane:
    """Start etcd and kube-apiserver under ``workdir`` and wait until both are ready.

    The caller owns the result and must call :meth:`ControlPlane.stop`.
    """
    binaries = binaries or find_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # -- etcd ---------------------------------------------------------------
        client_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd_log = workdir / "etcd.log"
        processes.append(
            _spawn(
                [
                    str(binaries.etcd),
                    "--name=llmcache-test",
                    f"--data-dir={workdir / 'etcd-data'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=llmcache-test={peer_url}",
                    # Test data is thrown away: skip fsync, the slowest part of etcd.
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                etcd_log,
            )
        )
        _wait_ready("etcd", f"{etcd_url}/health", processes[-1], etcd_log, deadline=deadline)

        # -- kube-apiserver -----------------------------------------------------
        token = secrets.token_urlsafe(32)
        tokens = workdir / "tokens.csv"
        tokens.write_text(f'{token},{ADMIN_USER},{uuid.uuid4()},"system:masters"\n')
        tokens.chmod(0o600)
        sa_key, sa_pub = _write_service_account_keys(workdir)
        cert_dir = workdir / "certs"
        port = free_port()
        apiserver_log = workdir / "kube-apiserver.log"
        processes.append(
            _spawn(
                [
                    str(binaries.kube_apiserver),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={cert_dir}",
                    f"--token-auth-file={tokens}",
                    "--authorization-mode=RBAC",
                    "--anonymous-auth=false",
                    f"--service-account-key-file={sa_pub}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--service-cluster-ip-range=10.96.0.0/16",
                    "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
                    "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
                    "--allow-privileged=true",
                    # No kubelet answers on 127.0.0.1, so the "kubernetes" Service
                    # endpoints would only produce reconcile noise.
                    "--endpoint-reconciler-type=none",
                    # Priority-and-fairness bootstraps dozens of objects; tests do not need it.
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "--v=1",
                ],
                apiserver_log,
            )
        )
        server = f"https://127.0.0.1:{port}"
        ca = cert_dir / "apiserver.crt"  # the self-signed cert and its CA, written at start
        headers = {"Authorization": f"Bearer {token}"}
        while not ca.exists() and time.monotonic() < deadline and processes[-1].poll() is None:
            time.sleep(0.1)
        _wait_ready("kube-apiserver", f"{server}/readyz", processes[-1], apiserver_log, deadline=deadline,
                    verify=str(ca), headers=headers)

        kubeconfig = workdir / "kubeconfig"
        _write_kubeconfig(kubeconfig, server=server, ca=ca, user=ADMIN_USER, token=token)
    except BaseException:
        for proc in reversed(processes):
            _terminate(proc)
        raise
    logger.info("control plane ready at %s (etcd %s, workdir %s)", server, etcd_url, workdir)
    return ControlPlane(server=server, token=token, ca=ca, kubeconfig=kubeconfig, workdir=workdir,
                        binaries=binaries, _processes=processes)


@pytest.fixture(scope="session")
def kube() -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver for the whole session (see the module docstring)."""
    missing: str | None = None
    try:
        binaries = find_binaries()
    except ControlPlaneMissing as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    # A short path: unix socket paths of tests that put sockets in here stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="llmcache-kube-"))
    plane = start_control_plane(workdir, binaries)
    try:
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)


_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


@pytest.fixture
def kube_namespace(kube: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test (DNS-1123, <= 63 chars), deleted afterwards."""
    stem = _NAME_CHARS.sub("-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = kube.create_namespace(f"{stem}-{uuid.uuid4().hex[:8]}")
    try:
        yield name
    finally:
        kube.delete_namespace(name)

