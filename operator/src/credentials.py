"""The sidecars' credentials Secret, kept by the operator in every namespace with injected pods.

Sidecars run in app namespaces, and a ``secretKeyRef`` can only name a Secret of the
pod's own namespace. So the operator writes what a sidecar needs into one Secret per
namespace (name: :attr:`SidecarSettings.credentials_secret`)::

    redis-url      the Redis URL of *this namespace's* ACL user (:mod:`llmcache.operator.partitions`),
                   which reaches only this namespace's keys; with ``--sidecar-redis-users manual`` you
                   write it yourself, with ``shared`` it is ``--sidecar-redis-url`` (local use)
    tenant-salt    the HMAC salt of tenant ids (when the chart generated it)
    redis-ca.crt   the CA of a TLS Redis (when configured)

The webhook calls :meth:`CredentialsMirror.ensure` for the pod's namespace before it
answers (never on a dry run): that creates the namespace's Redis user and the Secret,
so both exist when the kubelet starts the sidecar; the injected env only *references*
the Secret (``optional``: a missing Secret never blocks a pod, that sidecar then runs
without Redis and passes traffic through).

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
from pathlib import Path

from llmcache.operator import partitions
from llmcache.operator.kube import KubeClient
from llmcache.operator.settings import SidecarSettings

__all__ = ["CA_KEY", "REDIS_URL_KEY", "TENANT_SALT_KEY", "CredentialsMirror", "secret_data"]

log = logging.getLogger(__name__)

REDIS_URL_KEY = "redis-url"
TENANT_SALT_KEY = "tenant-salt"
CA_KEY = "redis-ca.crt"


def secret_data(sidecar: SidecarSettings, *, redis_url: str | None) -> dict[str, str]:
    """What the credentials Secret holds (string values): ``redis_url`` (none: the key is left alone),
    the tenant salt and the Redis CA when configured."""
    data = {} if redis_url is None else {REDIS_URL_KEY: redis_url}
    if sidecar.tenant_salt and not sidecar.tenant_salt_secret:
        data[TENANT_SALT_KEY] = sidecar.tenant_salt
    if sidecar.redis_ca_file:
        data[CA_KEY] = Path(sidecar.redis_ca_file).read_text()
    return data


class CredentialsMirror:
    """Creates or updates the credentials Secret (and the Redis user) per namespace; remembers success for
    ``refresh_s``."""

    def __init__(self, kube: KubeClient, sidecar: SidecarSettings, *, users: partitions.NamespaceUsers | None,
                 mode: str, refresh_s: float = 300.0) -> None:
        if mode == "namespace" and users is None:
            raise ValueError("per-namespace Redis users need a NamespaceUsers")
        self._kube = kube
        self._sidecar = sidecar
        self._name = sidecar.credentials_secret
        self._users = users
        self._mode = mode
        self._refresh_s = refresh_s
        self._done: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def name(self) -> str:
        return self._name

    def data(self, namespace: str) -> dict[str, str]:
        """What ``namespace``'s Secret holds."""
        if self._users is not None:
            url: str | None = self._users.url(namespace)
        else:
            url = self._sidecar.redis_url if self._mode == "shared" else None
        return secret_data(self._sidecar, redis_url=url)

    async def ensure(self, namespace: str) -> None:
        """Make ``namespace``'s Redis user exist and its Secret hold the current data (at most once per
        ``refresh_s``)."""
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            if time.monotonic() - self._done.get(namespace, float("-inf")) < self._refresh_s:
                return
            data = self.data(namespace)
            digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
            # The Secret first (its URL is derived, Redis need not answer): a pod admitted while Redis is
            # away starts with it, and its user follows on this call or the operator's next pass.
            await self._kube.put_secret_data(namespace, self._name, data, labels={
                "app.kubernetes.io/managed-by": "llmcache-operator"}, annotations={
                "llmcache.io/content-sha256": digest})
            if self._users is not None:
                await self._users.ensure(namespace)
            self._done[namespace] = time.monotonic()
            log.info("credentials Secret %s/%s is current (sha256 %s)", namespace, self._name, digest[:12])

    def forget(self, namespace: str) -> None:
        """Write again on the next :meth:`ensure` (e.g. after an error, or once its user was deleted)."""
        self._done.pop(namespace, None)
