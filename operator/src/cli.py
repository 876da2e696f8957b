"""``llmcache operator``: the CachePolicy operator (kopf) and the sidecar-injection webhook in one process.

Credentials come from kopf's login handlers: ``$KUBECONFIG`` or the pod's service account. The webhook
keeps serving while this replica waits for peering leadership, so several
replicas can back the webhook Service while one reconciles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from typing import Any

import aiohttp

from llmcache import connection
from llmcache.errors import ConfigError, DependencyError

try:
    import kopf
except ImportError as _exc:  # the operator extra is optional: say how to get it
    raise DependencyError("`llmcache operator` needs kopf: pip install 'llmcache[operator]'") from _exc

from llmcache.keyspace import Keyspace
from llmcache.operator import credentials, handlers, partitions, webhook
from llmcache.operator.kube import ApiError, KubeClient, KubeConfig
from llmcache.operator.settings import (
    REDIS_USER_MODES,
    EvictionSettings,
    NamespaceUserSettings,
    OperatorSettings,
    SidecarSettings,
    WebhookSettings,
)
from llmcache.settings import add_flag, parse_bytes, parse_listen

__all__ = ["configure", "run", "settings_from_args"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the operator's flags (each also read from ``LLMCACHE_<FLAG>``)."""
    d = OperatorSettings()
    add_flag(parser, "--redis-url", default=d.redis_url, help="Redis holding policies and cache entries")
    add_flag(parser, "--key-prefix", default=d.key_prefix, help="Redis key prefix shared with the sidecars")
    add_flag(parser, "--namespace", default=d.namespace, help="namespace to watch; '' watches all namespaces")
    add_flag(parser, "--webhook-listen", default=d.webhook.listen,
             help="HOST:PORT of the HTTPS injection webhook; '' disables it")
    add_flag(parser, "--webhook-cert-dir", default=d.webhook.cert_dir,
             help="directory with the webhook's tls.crt and tls.key")
    add_flag(parser, "--webhook-failure-policy", default=d.webhook.failure_policy, choices=("Fail", "Ignore"),
             help="the webhook configuration's failurePolicy, also followed when injection fails inside the "
                  "webhook: Fail refuses the labelled pod (it is retried), Ignore admits it without the sidecar")
    add_flag(parser, "--health-listen", default=d.health_listen,
             help="HOST:PORT of GET /healthz (liveness); '' disables it")
    add_flag(parser, "--configmap-name", default=d.configmap_name,
             help="per-namespace ConfigMap receiving policies.json")
    add_flag(parser, "--eviction-interval-seconds", default=d.eviction.interval_s, type=float,
             help="seconds between eviction passes per policy")
    add_flag(parser, "--default-max-entries", default=d.eviction.default_max_entries, type=int,
             help="most entries kept in groups no CachePolicy owns (_default, deleted policies); 0 = unlimited")
    add_flag(parser, "--default-max-memory", default="",
             help="byte budget (e.g. 512Mi) of each group no CachePolicy owns; '' = only --default-max-entries")
    add_flag(parser, "--status-interval-seconds", default=d.status_interval_s, type=float,
             help="seconds between status refreshes per policy")
    add_flag(parser, "--peering-name", default=d.peering_name,
             help="kopf peering object shared by the replicas (its CRD ships in the chart)")
    add_flag(parser, "--peering-priority", default=None, type=int,
             help="kopf peering priority; the highest live replica reconciles (random when unset)")
    add_flag(parser, "--standalone", action="store_true", help="run without peering (one replica, or tests)")
    n = d.namespace_users
    add_flag(parser, "--sidecar-redis-users", default=n.mode, choices=REDIS_USER_MODES,
             help="namespace: one Redis ACL user per app namespace, made by the operator, reaching only that "
                  "namespace's keys (what the chart sets); manual: you make them and write their URL into each "
                  "namespace's credentials Secret; shared: --sidecar-redis-url for all (no isolation, local use)")
    add_flag(parser, "--namespace-users-key", default=n.key,
             help="secret the namespace users' passwords are derived from; set it through the env var")
    add_flag(parser, "--namespace-users-previous-key", default=n.previous_key,
             help="the key before a rotation: its passwords keep working until app pods restarted (env var)")
    add_flag(parser, "--namespace-users-interval-seconds", default=n.interval_s, type=float,
             help="seconds between re-applying every namespace's Redis user (on every node) and vector index")
    add_flag(parser, "--namespace-users-grace-seconds", default=n.grace_s, type=float,
             help="seconds a namespace keeps its Redis user after its last injected pod is gone")


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    """Parsed flags + ``LLMCACHE_SIDECAR_*`` env → :class:`OperatorSettings` (validates listen addresses)."""
    for flag in ("webhook_listen", "health_listen"):
        if getattr(args, flag):
            parse_listen(getattr(args, flag))
    base = OperatorSettings()
    if args.sidecar_redis_users == "namespace" and not args.namespace_users_key:
        raise ConfigError("--sidecar-redis-users namespace derives each namespace's Redis password from a key: "
                          "set LLMCACHE_NAMESPACE_USERS_KEY (the chart makes one)")
    return OperatorSettings(
        redis_url=args.redis_url, key_prefix=args.key_prefix, namespace=args.namespace,
        health_listen=args.health_listen, configmap_name=args.configmap_name,
        status_interval_s=args.status_interval_seconds, peering_name=args.peering_name,
        standalone=bool(args.standalone), peering_priority=args.peering_priority,
        redis_retry_delay_s=base.redis_retry_delay_s,
        webhook=WebhookSettings(listen=args.webhook_listen, cert_dir=args.webhook_cert_dir,
                                failure_policy=args.webhook_failure_policy, sidecar=SidecarSettings.from_env()),
        namespace_users=NamespaceUserSettings(
            mode=args.sidecar_redis_users, key=args.namespace_users_key,
            previous_key=args.namespace_users_previous_key, interval_s=args.namespace_users_interval_seconds,
            grace_s=args.namespace_users_grace_seconds),
        eviction=EvictionSettings(interval_s=args.eviction_interval_seconds,
                                  default_max_entries=args.default_max_entries or None,
                                  default_max_memory_bytes=(parse_bytes(args.default_max_memory) or None
                                                            if args.default_max_memory else None)),
    )


async def _native_sidecar_supported(kube: KubeClient, minimum: tuple[int, int]) -> bool:
    try:
        version = await kube.version()
    except (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        log.warning("cannot read the API server version (%s); injecting classic sidecars", exc)
        return False
    return version >= minimum


class _QuietTimers(logging.Filter):
    """Drop kopf's per-tick "Timer '…' succeeded." lines; failures and handler results still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Timer ") and msg.endswith(" succeeded."))


async def _ensure_peering(kube: KubeClient, settings: OperatorSettings) -> None:
    """Create the kopf peering object the replicas meet in (kopf only reads it)."""
    if settings.namespace:
        kind, path = "KopfPeering", f"/apis/kopf.dev/v1/namespaces/{settings.namespace}/kopfpeerings"
    else:
        kind, path = "ClusterKopfPeering", "/apis/kopf.dev/v1/clusterkopfpeerings"
    body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": settings.peering_name}}
    try:
        await kube.request("POST", path, body=body)
        log.info("created %s %s", kind, settings.peering_name)
        return
    except ApiError as exc:
        if exc.status == 409:
            return
        if exc.status == 404:
            raise ConfigError(f"the kopf peering CRDs are not installed ({kind}): apply "
                              "charts/llmcache/crds/kopf-peering.yaml, or pass --standalone for one replica") from exc
        if exc.status != 403:
            raise
    # Not allowed to create it: fine if it exists, fatal otherwise (kopf would pause forever).
    try:
        await kube.request("GET", f"{path}/{settings.peering_name}")
    except ApiError as exc:
        raise ConfigError(
            f"{kind} {settings.peering_name!r} does not exist and this service account may not create it: "
            f"grant 'create' on {kind.lower()}s.kopf.dev, create the object, or run one replica with "
            "--standalone") from exc


async def run_operator(settings: OperatorSettings, *, stop_flag: asyncio.Event | None = None,
                       ready_flag: asyncio.Event | None = None) -> None:
    """Run until ``stop_flag`` is set (or SIGINT/SIGTERM, handled by kopf)."""
    logging.getLogger("kopf.objects").addFilter(_QuietTimers())
    redis_client = connection.connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=3,
                                     health_check_interval=30)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(redis_client.aclose)
        kube = await stack.enter_async_context(KubeClient(KubeConfig.load()))
        keyspace = Keyspace(settings.key_prefix)
        users_mode = settings.namespace_users.mode
        if users_mode == "namespace" and settings.webhook.listen and not settings.webhook.sidecar.credentials_secret:
            raise ConfigError("--sidecar-redis-users namespace hands each namespace its own password through its "
                              "credentials Secret: set LLMCACHE_SIDECAR_CREDENTIALS_SECRET (a literal would put it "
                              "in every pod spec)")
        mirror: credentials.CredentialsMirror | None = None
        users = None
        if users_mode == "namespace":
            # Sidecars reach Redis where the operator does, as their namespace's user.
            users = partitions.NamespaceUsers(
                redis_client, keyspace, settings.namespace_users, base_url=settings.redis_url,
                on_forget=lambda ns: mirror.forget(ns) if mirror is not None else None)
        if settings.webhook.listen:
            native = await _native_sidecar_supported(kube, settings.webhook.native_sidecar_min_version)
            if settings.webhook.sidecar.credentials_secret:
                mirror = credentials.CredentialsMirror(kube, settings.webhook.sidecar, users=users, mode=users_mode)
            await stack.enter_async_context(webhook.serve(settings.webhook, native_sidecar=native,
                                                          configmap_name=settings.configmap_name, mirror=mirror))
        if not settings.standalone:
            await _ensure_peering(kube, settings)
        rt = handlers.Runtime(settings=settings, redis=redis_client, kube=kube, keyspace=keyspace, users=users,
                              mirror=mirror)
        kwargs: dict[str, Any] = {}
        if settings.namespace:
            kwargs["namespaces"] = [settings.namespace]
        else:
            kwargs["clusterwide"] = True
        if settings.standalone:
            kwargs["standalone"] = True
        else:
            kwargs["peering_name"] = settings.peering_name
            # Equal priorities make kopf pause every replica; a random draw orders them instead.
            kwargs["priority"] = (settings.peering_priority if settings.peering_priority is not None
                                  else random.SystemRandom().randint(1, 1_000_000))
            log.info("peering %s with priority %s", settings.peering_name, kwargs["priority"])
        if settings.health_listen:
            host, port = parse_listen(settings.health_listen)
            kwargs["liveness_endpoint"] = f"http://{host}:{port}/healthz"
        log.info("operator starting: redis %s, namespace %s, eviction every %ss",
                 connection.redact(settings.redis_url), settings.namespace or "(all)",
                 settings.eviction.interval_s)
        await kopf.operator(registry=handlers.build_registry(settings), memo=handlers.memo_for(rt),
                            settings=handlers.kopf_settings(settings), stop_flag=stop_flag, ready_flag=ready_flag,
                            **kwargs)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    # kopf installs its own SIGINT/SIGTERM handlers inside kopf.operator(); nothing to add here.
    asyncio.run(run_operator(settings))
    return 0
