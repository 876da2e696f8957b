"""A small async Kubernetes API client for what kopf does not do for us.

kopf watches CachePolicy objects and patches them; the operator additionally
lists pods (selected-pod counts), writes the policies ConfigMap and the sidecars'
credentials Secret, and reads the server version (native sidecar support). That
needs a handful of REST calls, so this module speaks to the API with the
process's one ``aiohttp`` session instead of pulling in the ``kubernetes`` client.

Credentials come from kopf's own login handlers, so kopf's watches and our calls
always authenticate the same way (:meth:`KubeConfig.load`, also what the
operator's ``@kopf.on.login`` handler returns): ``kopf.login_with_kubeconfig``
when ``$KUBECONFIG`` (or ``~/.kube/config``) names a file, else
``kopf.login_with_service_account`` inside a pod. kopf's handlers are minimal
on purpose; three things a kubeconfig or a pod may rely on are added here:

- a ``tokenFile`` (kopf reads ``token`` only), re-read whenever the file changes,
  as is the service-account token (projected tokens expire and the kubelet
  rewrites them);
- file paths relative to the kubeconfig, resolved as kubectl does;
- in a pod, the API server's address from ``KUBERNETES_SERVICE_HOST``/``_PORT``
  (what the kubelet sets; kopf's ``kubernetes.default.svc`` needs cluster DNS,
  which may not answer yet while the cluster starts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml

from llmcache.errors import ConfigError, DependencyError
from llmcache.policy import LabelSelector

__all__ = ["TOKEN_RELOGIN", "ApiError", "KubeClient", "KubeConfig", "parse_version", "selector_string"]

log = logging.getLogger(__name__)

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How long kopf may use a token read from a file before logging in again (re-reading it); kopf
#: also logs in again on any 401.
TOKEN_RELOGIN = timedelta(seconds=60)


class ApiError(DependencyError):
    """The API server answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status


def _kubeconfig_path() -> Path | None:
    """The first ``$KUBECONFIG`` file, else ``~/.kube/config``, when it is a file."""
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    path = Path(first).expanduser() if first else Path.home() / ".kube" / "config"
    return path if path.is_file() else None


def _kubeconfig_extras(path: Path, info: kopf.ConnectionInfo) -> tuple[kopf.ConnectionInfo, str | None]:
    """``info`` with its file paths made relative to ``path``'s folder, and the current user's ``tokenFile``."""
    base = path.parent

    def absolute(value: Any) -> Any:
        return str(base / os.fsdecode(value)) if value and not Path(os.fsdecode(value)).is_absolute() else value

    info = dataclasses.replace(info, ca_path=absolute(info.ca_path),
                               certificate_path=absolute(info.certificate_path),
                               private_key_path=absolute(info.private_key_path))
    if info.token or info.certificate_path or info.certificate_data:
        return info, None
    raw = yaml.safe_load(path.read_text()) or {}
    contexts = {c.get("name"): c.get("context") or {} for c in raw.get("contexts") or []}
    users = {u.get("name"): u.get("user") or {} for u in raw.get("users") or []}
    token_file = users.get(contexts.get(raw.get("current-context"), {}).get("user"), {}).get("tokenFile")
    return info, absolute(token_file) if token_file else None


@dataclasses.dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to authenticate: what kopf's login handlers found."""

    info: kopf.ConnectionInfo
    #: Where the bearer token lives when it is a file (the in-cluster service-account token, a kubeconfig
    #: ``tokenFile``). Every request reads the current one (:meth:`current_token`), so a long-running
    #: operator never holds a stale one.
    token_file: str | None = None

    @property
    def server(self) -> str:
        return self.info.server.rstrip("/")

    @classmethod
    def load(cls, settings: kopf.OperatorSettings | None = None) -> KubeConfig:
        """From ``$KUBECONFIG`` (or ``~/.kube/config``) when present, else the in-cluster service account."""
        settings = settings if settings is not None else kopf.OperatorSettings()
        path = _kubeconfig_path()
        if path is not None:
            try:
                info = kopf.login_with_kubeconfig(settings=settings)
                if info is None:
                    raise kopf.LoginError("no kubeconfig found")
                info, token_file = _kubeconfig_extras(path, info)
            except KeyError as exc:
                raise ConfigError(f"kubeconfig {path}: {exc} not found (check current-context and its context's "
                                  "cluster and user)") from exc
            except (OSError, ValueError, yaml.YAMLError, kopf.LoginError) as exc:
                raise ConfigError(f"cannot use kubeconfig {path}: {exc}") from exc
            if token_file:
                info = dataclasses.replace(info, token=Path(token_file).read_text().strip())
            return cls(info=info, token_file=token_file)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if host and (_SA_DIR / "token").is_file():
            info = kopf.login_with_service_account(settings=settings)
            if info is not None:
                host = f"[{host}]" if ":" in host else host
                port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
                return cls(info=dataclasses.replace(info, server=f"https://{host}:{port}"),
                           token_file=str(_SA_DIR / "token"))
        raise ConfigError("no Kubernetes credentials: set KUBECONFIG to a kubeconfig file or run inside a pod")

    def current_token(self) -> str | None:
        """The token to send now: the file's current content when there is a file, else the login's."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip() or self.info.token
            except OSError as exc:
                log.warning("cannot re-read the token file %s (%s); using the last token", self.token_file, exc)
        return self.info.token

    def connection_info(self) -> kopf.ConnectionInfo:
        """What kopf's login handler returns: the current token, and a short expiration when it comes
        from a file, so kopf logs in again (re-reading it) well before the old one stops working."""
        if not self.token_file:
            return self.info
        return dataclasses.replace(self.info, token=self.current_token(),
                                   expiration=datetime.now(UTC) + TOKEN_RELOGIN)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """kopf's own SSL context for these credentials (CA, client certificate, insecure flag)."""
        if not self.server.startswith("https"):
            return False
        return self.info.as_ssl_context()


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
        self._token_value = config.info.token
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
        else:
            headers.update(self.config.info.as_http_headers())  # basic auth, or nothing (client certificate)
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

    async def labelled_pod_namespaces(self, selector: str, *, page_size: int = 500) -> set[str]:
        """Namespaces of the pods (any namespace, terminated ones left out) that match the label ``selector``."""
        out: set[str] = set()
        params = {"labelSelector": selector, "limit": str(page_size)}
        while True:
            page = await self.request("GET", "/api/v1/pods", params=params)
            out.update(p["metadata"]["namespace"] for p in page.get("items", [])
                       if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out
            params = {**params, "continue": token}

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
