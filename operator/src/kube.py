"""A small async Kubernetes API client for what kopf does not do for us.

kopf watches CachePolicy objects and patches them; the operator additionally
lists pods (selected-pod counts), writes the policies ConfigMap and the sidecars'
credentials Secret, and reads the server version (native sidecar support). That needs a handful of REST calls,
so this module speaks to the API with the process's one ``aiohttp`` session
instead of pulling in the ``kubernetes`` client.

Credentials come from ``$KUBECONFIG`` (first file, current context: token,
client certificate or CA as files or inline data) or, inside a pod, from the
service-account token and CA.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from llmcache.errors import ConfigError, DependencyError
from llmcache.policy import LabelSelector

__all__ = ["ApiError", "KubeClient", "KubeConfig", "parse_version", "selector_string"]

log = logging.getLogger(__name__)

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")



def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

class ApiError(DependencyError):
    """The API server answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to authenticate (a resolved kubeconfig context)."""

    server: str
    token: str | None = None
    #: Where the token lives when it is a file (the in-cluster service-account token, a kubeconfig
    #: ``tokenFile``). Projected tokens expire and the kubelet rewrites the file: every request
    #: reads the current one (:meth:`current_token`), so a long-running operator never holds a stale one.
    token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @classmethod
    def load(cls) -> KubeConfig:
        """From ``$KUBECONFIG`` (or ``~/.kube/config``) when present, else the in-cluster service account."""
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
        if Path(path).is_file():
            return cls.from_kubeconfig(path)
        if (_SA_DIR / "token").is_file() and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        raise ConfigError("no Kubernetes credentials: set KUBECONFIG to a kubeconfig file or run inside a pod")

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", token=(_SA_DIR / "token").read_text().strip(),
                   token_file=str(_SA_DIR / "token"), ca_file=str(_SA_DIR / "ca.crt"))

    @classmethod
    def from_kubeconfig(cls, path: str) -> KubeConfig:
        """Resolve the current context of the kubeconfig at ``path``; inline ``*-data`` goes to temp files."""
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        base = Path(path).parent

        def pick(kind: str, name: str | None) -> dict[str, Any]:
            items = raw.get(kind + "s") or []
            for item in items:
                if name is None or item.get("name") == name:
                    return dict(item.get(kind) or {})
            raise ConfigError(f"kubeconfig {path}: no {kind} named {name!r}")

        ctx = pick("context", raw.get("current-context"))
        cluster = pick("cluster", ctx.get("cluster"))
        user = pick("user", ctx.get("user")) if ctx.get("user") else {}

        def file_or_data(section: Mapping[str, Any], key: str) -> str | None:
            if section.get(f"{key}-data"):
                # ssl needs a path; mkstemp makes it 0600, and it is removed at exit so key
                # material does not outlive the process in /tmp.
                fd, name = tempfile.mkstemp(prefix="llmcache-kube-")
                atexit.register(_remove_quietly, name)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(base64.b64decode(section[f"{key}-data"]))
                return name
            if section.get(key):
                return str(base / section[key])
            return None

        token = user.get("token")
        token_file = None
        if not token and user.get("tokenFile"):
            token_file = str(base / user["tokenFile"])
            token = Path(token_file).read_text().strip()
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            token=token,
            token_file=token_file,
            ca_file=file_or_data(cluster, "certificate-authority"),
            cert_file=file_or_data(user, "client-certificate"),
            key_file=file_or_data(user, "client-key"),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
        )

    def current_token(self) -> str | None:
        """The token to send now: the file's current content when there is a file, else :attr:`token`."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip() or self.token
            except OSError as exc:
                log.warning("cannot re-read the token file %s (%s); using the last token", self.token_file, exc)
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def selector_string(selector: LabelSelector) -> str:
    """The ``labelSelector`` query string of a label selector (``a=b,c in (d,e),!f``)."""
    parts = [f"{k}={v}" for k, v in selector.match_labels]
    for key, op, values in selector.match_expressions:
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        else:
            parts.append(f"!{key}")
    return ",".join(parts)


def parse_version(info: Mapping[str, Any]) -> tuple[int, int]:
    """``(major, minor)`` of a ``/version`` answer; tolerates ``"29+"`` style minors."""
    def num(v: Any) -> int:
        m = re.match(r"\d+", str(v))
        return int(m.group()) if m else 0
    return num(info.get("major")), num(info.get("minor"))


class KubeClient:
    """Async REST calls against one API server. Use as ``async with KubeClient(cfg) as kube:``."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 15.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._token_value = config.token
        self._token_stamp: tuple[int, int] | None = None

    def _token(self) -> str | None:
        """The current bearer token, re-read from its file whenever the file changed."""
        path = self.config.token_file
        if not path:
            return self._token_value
        try:
            st = os.stat(path)  # follows the kubelet's ..data symlink swap
        except OSError:
            return self._token_value
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._token_stamp:
            self._token_value = self.config.current_token()
            self._token_stamp = stamp
        return self._token_value

    async def __aenter__(self) -> KubeClient:
        # No Authorization here: request() sends the current token each time (tokens rotate).
        headers = {"Accept": "application/json"}
        self._session = aiohttp.ClientSession(
            base_url=self.config.server, headers=headers, timeout=self._timeout,
            connector=aiohttp.TCPConnector(ssl=self.config.ssl_context()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        """One API call; returns the decoded JSON body, raises :class:`ApiError` on a non-2xx status."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside `async with`")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self._session.request(method, path, data=data, params=params, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise ApiError(resp.status, message)
            return json.loads(text) if text else {}

    async def version(self) -> tuple[int, int]:
        return parse_version(await self.request("GET", "/version"))

    async def pod_names(self, namespace: str, selector: LabelSelector) -> set[str]:
        """Names of the pods in ``namespace`` matching ``selector`` (terminated pods left out)."""
        query = selector_string(selector)
        params = {"labelSelector": query} if query else {}
        items = (await self.request("GET", f"/api/v1/namespaces/{namespace}/pods", params=params)).get("items", [])
        return {p["metadata"]["name"] for p in items
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")}

    async def put_configmap_data(self, namespace: str, name: str, data: Mapping[str, str], *,
                                 labels: Mapping[str, str] | None = None) -> None:
        """Create the ConfigMap, or merge ``data`` into the existing one."""
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                "data": dict(data)}
        try:
            await self.request("PATCH", f"{path}/{name}", body={"data": dict(data)},
                               content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status != 404:
                raise
            try:
                await self.request("POST", path, body=body)
            except ApiError as exc2:
                if exc2.status != 409:  # created concurrently: merge again
                    raise
                await self.request("PATCH", f"{path}/{name}", body={"data": dict(data)},
                                   content_type="application/merge-patch+json")

    async def put_secret_data(self, namespace: str, name: str, string_data: Mapping[str, str], *,
                              labels: Mapping[str, str] | None = None,
                              annotations: Mapping[str, str] | None = None) -> None:
        """Create the Opaque Secret, or merge ``string_data`` into it; never reads it.

        Create first (RBAC cannot restrict ``create`` by name; an admission policy can), then on
        409 a merge patch of this one name (``patch`` with ``resourceNames``).
        """
        path = f"/api/v1/namespaces/{namespace}/secrets"
        meta = {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                "annotations": dict(annotations or {})}
        try:
            await self.request("POST", path, body={"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                                   "metadata": meta, "stringData": dict(string_data)})
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.request("PATCH", f"{path}/{name}", content_type="application/merge-patch+json",
                               body={"metadata": {"annotations": dict(annotations or {})},
                                     "stringData": dict(string_data)})
