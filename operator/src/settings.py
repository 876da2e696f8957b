"""Settings of the operator: one slotted dataclass per concern, combined in :class:`OperatorSettings`.

Every field maps to one CLI flag of ``llmcache operator`` and one env var
(``--eviction-interval-seconds`` ↔ ``LLMCACHE_EVICTION_INTERVAL_SECONDS``) and to
the chart value of the same name (``evictionIntervalSeconds``). A test pins the
documented defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmcache.settings import DEFAULT_REDIS_URL

__all__ = [
    "INJECT_LABEL",
    "INJECT_STATUS_ANNOTATION",
    "PURGE_ANNOTATION",
    "REDIS_USER_MODES",
    "SIDECAR_CONTAINER_NAME",
    "EvictionSettings",
    "NamespaceUserSettings",
    "OperatorSettings",
    "SidecarSettings",
    "WebhookSettings",
]

#: Pods carrying this label with value ``enabled`` get the proxy sidecar.
INJECT_LABEL = "llmcache.io/inject"
#: Marker the webhook writes; a pod that has it is never patched again.
INJECT_STATUS_ANNOTATION = "llmcache.io/inject-status"
#: ``"true"`` on a CachePolicy: deleting it also deletes every cache entry of its group.
PURGE_ANNOTATION = "llmcache.io/purge-on-delete"
#: Name of the injected container (also what idempotency checks look for).
SIDECAR_CONTAINER_NAME = "llmcache-proxy"


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """What the webhook injects. Read from ``LLMCACHE_SIDECAR_*`` env vars (the chart sets them)."""

    #: Proxy image. Default ``ghcr.io/llmcache/proxy:0.1.0``: the chart always overrides it with its own tag.
    image: str = "ghcr.io/llmcache/proxy:0.1.0"
    #: Upstream the injected proxy forwards misses to. Default: the chart's model-server Service name.
    upstream: str = "http://llmcache-model-server:8000"
    #: Redis URL handed to the sidecar. Default: the chart's bundled Redis Service.
    redis_url: str = "redis://llmcache-redis:6379/0"
    #: HMAC salt for tenant ids, the same for every injected pod so they share entries. Default ``""``:
    #: each proxy makes its own (entries are then never shared across pods). Lands in the pod spec as a
    #: literal; prefer :attr:`tenant_salt_secret` where pod specs are widely readable.
    tenant_salt: str = ""
    #: Name of a Secret in the *pod's* namespace whose key ``tenant-salt`` holds the salt (``optional``,
    #: so a namespace without it still starts pods, with isolated entries). Wins over :attr:`tenant_salt`.
    tenant_salt_secret: str = ""
    #: OpenAI-compatible base URL of the embedder the sidecar's semantic cache calls (``--embedder remote
    #: --embedder-url``). The proxy image carries no torch, so without it a sidecar runs exact-only even
    #: under ``mode: Both``. Default ``""`` (no remote embedder); the chart sets its model server, whose
    #: ``/v1/embeddings`` serves the bundled all-MiniLM-L6-v2.
    embedder_url: str = ""
    #: The sidecar's ``--write-timeout-seconds`` (``LLMCACHE_WRITE_TIMEOUT_SECONDS``): how long a client may
    #: leave a write of an answer untaken before the proxy closes the connection. ``None`` (default): the
    #: proxy's own default (30 s); the chart always sets ``sidecar.writeTimeoutSeconds``.
    write_timeout_s: float | None = None
    #: Port the sidecar listens on inside the pod, on 127.0.0.1 only (apps in the pod point their OpenAI
    #: base URL at it; nothing outside the pod can). Default 8080.
    port: int = 8080
    #: Port of the sidecar's ``/healthz``, ``/readyz`` and ``/metrics`` on the pod IP (``--health-listen``),
    #: for kubelet probes. Default 18081: away from the ports apps usually take.
    health_port: int = 18081
    #: Names of image pull secrets added to injected pods (they must exist in the pod's namespace).
    image_pull_secrets: tuple[str, ...] = ()
    #: Secret the operator keeps in each namespace with injected pods (keys ``redis-url``, ``tenant-salt``,
    #: ``redis-ca.crt``); the sidecar reads them through ``secretKeyRef``, so no credential lands in a pod
    #: spec. ``""`` (default, local use and tests): :attr:`redis_url` and :attr:`tenant_salt` are literals.
    credentials_secret: str = ""
    #: CA bundle (PEM file on the operator) of a TLS Redis, copied into the credentials Secret and mounted
    #: for the sidecar at ``/etc/llmcache/redis-tls/ca.crt``. ``""`` (default): no TLS CA to hand out.
    redis_ca_file: str = ""
    #: Where the downward-API labels file is mounted; the proxy selects its policy from it.
    podinfo_dir: str = "/etc/podinfo"
    #: Where the policies ConfigMap copy is mounted (start-up while Redis is away).
    policies_dir: str = "/etc/llmcache/policies"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SidecarSettings:
        """Build from ``LLMCACHE_SIDECAR_IMAGE``/``_UPSTREAM``/``_REDIS_URL``/``_PORT``/``_HEALTH_PORT``/
        ``_TENANT_SALT``/``_TENANT_SALT_SECRET``/``_IMAGE_PULL_SECRETS`` (comma-separated)/
        ``_CREDENTIALS_SECRET``/``_REDIS_CA_FILE``/``_EMBEDDER_URL``/``_WRITE_TIMEOUT_SECONDS``; unset keeps
        the default."""
        env = os.environ if environ is None else environ
        base = cls()
        port = env.get("LLMCACHE_SIDECAR_PORT")
        health_port = env.get("LLMCACHE_SIDECAR_HEALTH_PORT")
        write_timeout = env.get("LLMCACHE_SIDECAR_WRITE_TIMEOUT_SECONDS")
        pull = tuple(n.strip() for n in env.get("LLMCACHE_SIDECAR_IMAGE_PULL_SECRETS", "").split(",") if n.strip())
        return cls(
            image=env.get("LLMCACHE_SIDECAR_IMAGE") or base.image,
            upstream=env.get("LLMCACHE_SIDECAR_UPSTREAM") or base.upstream,
            redis_url=env.get("LLMCACHE_SIDECAR_REDIS_URL") or base.redis_url,
            port=int(port) if port else base.port,
            tenant_salt=env.get("LLMCACHE_SIDECAR_TENANT_SALT") or base.tenant_salt,
            tenant_salt_secret=env.get("LLMCACHE_SIDECAR_TENANT_SALT_SECRET") or base.tenant_salt_secret,
            health_port=int(health_port) if health_port else base.health_port,
            image_pull_secrets=pull,
            credentials_secret=env.get("LLMCACHE_SIDECAR_CREDENTIALS_SECRET") or base.credentials_secret,
            redis_ca_file=env.get("LLMCACHE_SIDECAR_REDIS_CA_FILE") or base.redis_ca_file,
            embedder_url=env.get("LLMCACHE_SIDECAR_EMBEDDER_URL") or base.embedder_url,
            write_timeout_s=float(write_timeout) if write_timeout else base.write_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The sidecar-injection admission webhook server."""

    #: ``HOST:PORT`` of the HTTPS server; ``""`` disables it. Default ``0.0.0.0:9443`` (the chart's Service targets it).
    listen: str = "0.0.0.0:9443"
    #: Directory holding ``tls.crt`` and ``tls.key`` (a mounted kubernetes.io/tls Secret). Default: where
    #: controller-runtime webhooks look (only read, never written).
    cert_dir: str = "/tmp/k8s-webhook-server/serving-certs"  # noqa: S108 - a mount point we read
    #: The ``failurePolicy`` of the chart's webhook configuration, which the webhook follows itself when it
    #: cannot build a patch (an internal error): ``Fail`` (default) refuses such a pod, so a pod that asked
    #: for the sidecar never runs without it (its Deployment retries); ``Ignore`` admits it unchanged.
    failure_policy: str = "Fail"
    #: Inject a native sidecar (init container, ``restartPolicy: Always``) when the API server is at least this.
    #: 1.29: native sidecars are beta and on by default from that release.
    native_sidecar_min_version: tuple[int, int] = (1, 29)
    sidecar: SidecarSettings = field(default_factory=SidecarSettings)


@dataclass(frozen=True, slots=True)
class EvictionSettings:
    """The eviction timer that keeps each policy's group inside ``maxEntries``/``maxMemory``."""

    #: Seconds between enforcement passes per policy. Default 10: the cache overshoots its limits by at most
    #: what all pods write in 10 s, and an idle pass costs a few Redis round trips.
    interval_s: float = 10.0
    #: Members deleted per Redis round trip. Default 256: bounded pipelines keep Redis latency flat.
    batch_size: int = 256
    #: Bookkeeping members checked for an expired entry per pass. Default 1000: a full sweep of a
    #: 100k-entry group takes 100 passes, without ever scanning the whole set at once.
    prune_scan_count: int = 1000
    #: Most entries kept in a group no CachePolicy owns (``_default``: pods without a policy; or the group
    #: of a policy deleted while the operator was down). Default 100 000: a few hundred MiB of typical
    #: answers, and a bound, so pods without a policy cannot grow Redis until it is OOM-killed.
    default_max_entries: int | None = 100_000
    #: Byte budget of each such group (sum of entry sizes); ``None`` (default): only ``default_max_entries``.
    default_max_memory_bytes: int | None = None
    #: Most stats hashes kept in Redis (one per ``X-LLMCache-Namespace`` value and policy, which clients
    #: choose); the least recently written go first. Default 10 000, as the proxy's in-memory bound.
    max_stats_keys: int = 10_000


#: Ways sidecars get their Redis user (:attr:`NamespaceUserSettings.mode`).
REDIS_USER_MODES = ("namespace", "manual", "shared")


@dataclass(frozen=True, slots=True)
class NamespaceUserSettings:
    """How sidecars authenticate to Redis: one ACL user per namespace (:mod:`llmcache.operator.partitions`)."""

    #: ``namespace`` (what the chart sets): the operator gives each namespace with injected pods its own Redis
    #: user, which reaches only that namespace's keys, and writes its URL into the namespace's credentials
    #: Secret. ``manual``: you create a user ``<prefix>-ns-<namespace>`` per namespace with the same rules and
    #: put its URL under ``redis-url`` in each namespace's credentials Secret; the operator writes no URL.
    #: ``shared`` (default, local use and tests): every sidecar gets :attr:`SidecarSettings.redis_url`, one
    #: user for every namespace, so namespaces are not isolated from each other in Redis.
    mode: str = "shared"
    #: Secret the namespace users' passwords are derived from (HMAC-SHA256): nothing is stored, so a restarted
    #: Redis gets the same users back. From ``LLMCACHE_NAMESPACE_USERS_KEY`` (the chart: a generated Secret).
    key: str = field(default="", repr=False)
    #: The key before a rotation: its passwords stay valid too until the app pods restarted. Default ``""``.
    previous_key: str = field(default="", repr=False)
    #: Seconds between passes that re-apply every namespace's user on every Redis node (a restarted Redis
    #: lost them) and create the vector indexes sidecars asked for. Default 10: a restarted Redis is
    #: usable by sidecars again within about that long.
    interval_s: float = 10.0
    #: Seconds a namespace keeps its user after its last injected pod is gone. Default 300: a Deployment
    #: scaled to zero and back, or a pod being admitted while a pass runs, keeps working.
    grace_s: float = 300.0

    def __post_init__(self) -> None:
        if self.mode not in REDIS_USER_MODES:
            raise ValueError(f"sidecar Redis users must be one of {', '.join(REDIS_USER_MODES)}, not {self.mode!r}")


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Root settings of ``llmcache operator``."""

    #: Redis holding the policies and cache entries. Default: a local ``llmcache redis``.
    redis_url: str = DEFAULT_REDIS_URL
    #: Key prefix shared with the sidecars (:class:`llmcache.keyspace.Keyspace`). Default ``llmcache``.
    key_prefix: str = "llmcache"
    #: Kubernetes namespace to watch; ``""`` watches all (cluster-wide). Default ``""``.
    namespace: str = ""
    #: ``HOST:PORT`` of the liveness endpoint (``GET /healthz``); ``""`` disables it. Default ``0.0.0.0:8081``.
    health_listen: str = "0.0.0.0:8081"
    #: Name of the per-namespace ConfigMap holding ``policies.json``. Default ``llmcache-policies``.
    configmap_name: str = "llmcache-policies"
    #: Seconds between status refreshes per policy (selected/synced pods, entries, hit rate). Default 5:
    #: about twice the 2 s propagation budget, so a fresh status reflects the last change.
    status_interval_s: float = 5.0
    #: Seconds to wait before retrying when Redis is unreachable. Default 5.
    redis_retry_delay_s: float = 5.0
    #: kopf peering object for more than one replica; ``""`` uses kopf's default. Default ``llmcache``.
    peering_name: str = "llmcache"
    #: Run without peering (single replica, or tests). Default False.
    standalone: bool = False
    #: kopf peering priority: among live replicas only the highest reconciles, the others pause (and
    #: keep serving the webhook). ``None`` (default) draws a random one per process, so replicas of
    #: one Deployment order themselves instead of all pausing on equal priorities.
    peering_priority: int | None = None
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    eviction: EvictionSettings = field(default_factory=EvictionSettings)
    namespace_users: NamespaceUserSettings = field(default_factory=NamespaceUserSettings)
