"""The sidecars' credentials Secret, kept by the operator in every namespace with injected pods.

Sidecars run in app namespaces, and a ``secretKeyRef`` can only name a Secret of the
pod's own namespace. So the operator copies what a sidecar needs into one Secret per
namespace (name: :attr:`SidecarSettings.credentials_secret`)::

    redis-url      the sidecars' Redis URL (ACL user ``sidecar`` and its password)
    tenant-salt    the HMAC salt of tenant ids (when the chart generated it)
    redis-ca.crt   the CA of a TLS Redis (when configured)

The webhook calls :meth:`CredentialsMirror.ensure` for the pod's namespace before it
answers (never on a dry run), so the Secret exists when the kubelet starts the sidecar;
the injected env only *references* it (``optional``: a missing Secret never blocks a pod,
that sidecar then runs without Redis and passes traffic through).

Least privilege: the operator may *create* Secrets (Kubernetes RBAC cannot limit create by
name; the chart's ValidatingAdmissionPolicy allows only this name) and *patch* only this
name. It never reads a Secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from llmcache.operator.kube import KubeClient
from llmcache.operator.settings import SidecarSettings

__all__ = ["CA_KEY", "REDIS_URL_KEY", "TENANT_SALT_KEY", "CredentialsMirror", "secret_data"]

log = logging.getLogger(__name__)

REDIS_URL_KEY = "redis-url"
TENANT_SALT_KEY = "tenant-salt"
CA_KEY = "redis-ca.crt"


def secret_data(sidecar: SidecarSettings) -> dict[str, str]:
    """What the credentials Secret holds for ``sidecar`` (string values)."""
    data = {REDIS_URL_KEY: sidecar.redis_url}
    if sidecar.tenant_salt and not sidecar.tenant_salt_secret:
        data[TENANT_SALT_KEY] = sidecar.tenant_salt
    if sidecar.redis_ca_file:
        data[CA_KEY] = Path(sidecar.redis_ca_file).read_text()
    return data


class CredentialsMirror:
    """Creates or updates the credentials Secret per namespace; remembers success for ``refresh_s``."""

    def __init__(self, kube: KubeClient, sidecar: SidecarSettings, *, refresh_s: float = 300.0) -> None:
        self._kube = kube
        self._name = sidecar.credentials_secret
        self._data = secret_data(sidecar)
        self._digest = hashlib.sha256(json.dumps(self._data, sort_keys=True).encode()).hexdigest()
        self._refresh_s = refresh_s
        self._done: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def name(self) -> str:
        return self._name

    async def ensure(self, namespace: str) -> None:
        """Make the Secret in ``namespace`` hold the current data (at most one write per ``refresh_s``)."""
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            if time.monotonic() - self._done.get(namespace, float("-inf")) < self._refresh_s:
                return
            await self._kube.put_secret_data(namespace, self._name, self._data, labels={
                "app.kubernetes.io/managed-by": "llmcache-operator"}, annotations={
                "llmcache.io/content-sha256": self._digest})
            self._done[namespace] = time.monotonic()
            log.info("credentials Secret %s/%s is current (sha256 %s)", namespace, self._name, self._digest[:12])

    def forget(self, namespace: str) -> None:
        """Write again on the next :meth:`ensure` (e.g. after an error)."""
        self._done.pop(namespace, None)

    def data(self) -> Mapping[str, str]:
        return dict(self._data)
