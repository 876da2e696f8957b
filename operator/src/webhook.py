"""The sidecar-injection admission webhook: ``POST /mutate-pods`` over HTTPS.

A pod labelled ``llmcache.io/inject: enabled`` gets, as one JSONPatch:

- the proxy container ``llmcache-proxy``: a *native sidecar* (first init
  container with ``restartPolicy: Always``) when the API server is ≥ 1.29, else
  an ordinary container appended to ``spec.containers``;
- its env: ``LLMCACHE_LISTEN`` (``127.0.0.1``: LLM traffic only from inside the
  pod), ``LLMCACHE_HEALTH_LISTEN`` (``0.0.0.0:<health port>``: ``/healthz``,
  ``/readyz``, ``/metrics`` only, for the startup/readiness/liveness probes),
  ``LLMCACHE_REDIS_URL`` and ``LLMCACHE_TENANT_SALT`` (``secretKeyRef`` to the
  credentials Secret the operator keeps in the pod's namespace, see
  :mod:`llmcache.operator.credentials`; literals only without one, for local use),
  ``LLMCACHE_UPSTREAM``, ``LLMCACHE_POD_NAME`` / ``LLMCACHE_POD_NAMESPACE``
  (downward-API ``fieldRef``), ``LLMCACHE_POD_LABELS_FILE``, ``LLMCACHE_POLICY_FILE``;
- the configured ``imagePullSecrets`` (for the sidecar image) added to the pod's;
- volume ``llmcache-podinfo`` (downward API, ``labels`` → ``/etc/podinfo/labels``)
  and ``llmcache-policies`` (the policies ConfigMap, optional, for start-up
  while Redis is away);
- annotation ``llmcache.io/inject-status: injected``.

Idempotent: a pod that already has the annotation or a container named
``llmcache-proxy`` is admitted unchanged, as is every pod without the label.
A pod one of whose containers declares the sidecar's port or health port is
admitted without the sidecar and annotated ``skipped: <why>`` (the sidecar
could not bind, and would hold the app back forever).
Failing closed, for the pods that asked only: the chart's configuration sends
the webhook only pods labelled ``llmcache.io/inject: enabled`` (``objectSelector``)
with ``failurePolicy: Fail``, so while the operator is down such a pod is not
created (its Deployment's ReplicaSet retries until the webhook is back) instead
of running its whole life without the sidecar its app talks to; unlabelled pods
never reach the webhook and are never affected. The webhook follows the same
policy when it cannot build a patch itself (an internal error): it refuses the
pod under ``Fail`` (:attr:`WebhookSettings.failure_policy`), admits it unchanged
under ``Ignore``. It never refuses a pod for any other reason. The pod's *app*
containers do wait for the native sidecar's startup probe (``/healthz``, at most
60 s): it passes as soon as the proxy process serves, whatever Redis or the
model server do; if the sidecar image cannot be pulled the app waits like for
any init container (hence the pull secrets above).

The in-cluster ``MutatingWebhookConfiguration`` (with ``service:`` client
config and its certificate) ships in the chart, not from here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from llmcache.errors import ConfigError
from llmcache.operator import credentials
from llmcache.operator.settings import (
    INJECT_LABEL,
    INJECT_STATUS_ANNOTATION,
    SIDECAR_CONTAINER_NAME,
    SidecarSettings,
    WebhookSettings,
)
from llmcache.settings import parse_listen

__all__ = ["create_app", "injection_patch", "port_conflict", "review_response", "serve", "sidecar_container",
           "wants_injection"]

log = logging.getLogger(__name__)

PODINFO_VOLUME = "llmcache-podinfo"
POLICIES_VOLUME = "llmcache-policies"
REDIS_CA_VOLUME = "llmcache-redis-ca"
#: Where the sidecar finds a TLS Redis's CA (the chart's sidecar URL names this file).
REDIS_CA_DIR = "/etc/llmcache/redis-tls"
HEALTH_PORT_NAME = "llmcache-health"


def _escape(key: str) -> str:
    """JSON-Pointer escaping (RFC 6901) of one path segment."""
    return key.replace("~", "~0").replace("/", "~1")


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """True when the pod is labelled for injection and not injected yet."""
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get(INJECT_LABEL) != "enabled":
        return False
    if (meta.get("annotations") or {}).get(INJECT_STATUS_ANNOTATION) == "injected":
        return False
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    return SIDECAR_CONTAINER_NAME not in names


def sidecar_container(sidecar: SidecarSettings, *, native: bool) -> dict[str, Any]:
    """The proxy container spec (with ``restartPolicy: Always`` when it is a native sidecar)."""
    def field_ref(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    def credential(key: str, literal: str) -> dict[str, Any]:
        # From the operator-kept Secret of the pod's namespace when there is one: no credential
        # in the pod spec. Optional: a missing Secret never blocks the pod (the proxy then
        # passes traffic through uncached).
        if sidecar.credentials_secret:
            return {"valueFrom": {"secretKeyRef": {"name": sidecar.credentials_secret, "key": key,
                                                   "optional": True}}}
        return {"value": literal}

    health = {"httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME}}
    container: dict[str, Any] = {
        "name": SIDECAR_CONTAINER_NAME,
        "image": sidecar.image,
        "args": ["proxy"],
        # Only the health port is reachable on the pod IP; LLM traffic stays inside the pod.
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": sidecar.health_port, "protocol": "TCP"}],
        "env": [
            {"name": "LLMCACHE_LISTEN", "value": f"127.0.0.1:{sidecar.port}"},
            {"name": "LLMCACHE_HEALTH_LISTEN", "value": f"0.0.0.0:{sidecar.health_port}"},
            {"name": "LLMCACHE_REDIS_URL", **credential(credentials.REDIS_URL_KEY, sidecar.redis_url)},
            {"name": "LLMCACHE_UPSTREAM", "value": sidecar.upstream},
            {"name": "LLMCACHE_POD_NAME", "valueFrom": field_ref("metadata.name")},
            {"name": "LLMCACHE_POD_NAMESPACE", "valueFrom": field_ref("metadata.namespace")},
            {"name": "LLMCACHE_POD_LABELS_FILE", "value": f"{sidecar.podinfo_dir}/labels"},
            {"name": "LLMCACHE_POLICY_FILE", "value": f"{sidecar.policies_dir}/policies.json"},
        ],
        "volumeMounts": [
            {"name": PODINFO_VOLUME, "mountPath": sidecar.podinfo_dir, "readOnly": True},
            {"name": POLICIES_VOLUME, "mountPath": sidecar.policies_dir, "readOnly": True},
        ],
        # /healthz, not /readyz: the sidecar only serves its own pod over loopback, so a shared
        # dependency (the model server, Redis) being down must not take every app pod out of its
        # Services at once; /readyz still says what is wrong, and the metrics count it.
        "readinessProbe": {**health, "periodSeconds": 5},
        # For a native sidecar the kubelet starts the app containers once this passes: /healthz
        # answers as soon as the process serves, whatever Redis and the model server do.
        "startupProbe": {**health, "periodSeconds": 1, "failureThreshold": 60},
        # A wedged event loop (a CPU-bound request, a deadlock) stops answering: restart it.
        "livenessProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if sidecar.credentials_secret:
        # A namespace's own Redis user has no CLIENT TRACKING (its BCAST mode would show every
        # namespace's writes: README, isolation): no near cache, and no denied attempt at one.
        container["env"].append({"name": "LLMCACHE_NEAR_CACHE_BYTES", "value": "0"})
    if sidecar.tenant_salt_secret:
        container["env"].append({"name": "LLMCACHE_TENANT_SALT", "valueFrom": {"secretKeyRef": {
            "name": sidecar.tenant_salt_secret, "key": "tenant-salt", "optional": True}}})
    elif sidecar.tenant_salt:
        container["env"].append({"name": "LLMCACHE_TENANT_SALT",
                                 **credential(credentials.TENANT_SALT_KEY, sidecar.tenant_salt)})
    if sidecar.redis_ca_file and sidecar.credentials_secret:
        container["volumeMounts"].append({"name": REDIS_CA_VOLUME, "mountPath": REDIS_CA_DIR, "readOnly": True})
    if sidecar.write_timeout_s is not None:
        container["env"].append({"name": "LLMCACHE_WRITE_TIMEOUT_SECONDS", "value": f"{sidecar.write_timeout_s:g}"})
    if sidecar.embedder_url:
        # The semantic cache embeds over HTTP: the proxy image has no torch.
        container["env"] += [{"name": "LLMCACHE_EMBEDDER", "value": "remote"},
                             {"name": "LLMCACHE_EMBEDDER_URL", "value": sidecar.embedder_url}]
    if native:
        container["restartPolicy"] = "Always"
    return container


def injection_patch(pod: Mapping[str, Any], sidecar: SidecarSettings, *, native: bool,
                    configmap_name: str) -> list[dict[str, Any]]:
    """The JSONPatch that injects the sidecar into ``pod``; ``[]`` when nothing is to be done."""
    if not wants_injection(pod):
        return []
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    ops: list[dict[str, Any]] = []
    clash = port_conflict(pod, sidecar)
    if clash:
        # Containers of a pod share one network namespace: a sidecar that cannot bind its port
        # would crash-loop and, as a native sidecar, keep the app from ever starting. Admit the
        # pod unchanged, saying why on the pod itself.
        log.warning("not injecting into a pod in %s: %s", meta.get("namespace"), clash)
        return [_annotate(meta, f"skipped: {clash}")]
    container = sidecar_container(sidecar, native=native)
    if native:
        # First, so that other init containers can already use the cache.
        if spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": container})

    volumes = [
        {"name": PODINFO_VOLUME,
         "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        {"name": POLICIES_VOLUME, "configMap": {"name": configmap_name, "optional": True}},
    ]
    if sidecar.redis_ca_file and sidecar.credentials_secret:
        volumes.append({"name": REDIS_CA_VOLUME, "secret": {
            "secretName": sidecar.credentials_secret, "optional": True,
            "items": [{"key": credentials.CA_KEY, "path": "ca.crt"}]}})
    existing = {v.get("name") for v in spec.get("volumes") or []}
    new = [v for v in volumes if v["name"] not in existing]
    if spec.get("volumes"):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in new)
    elif new:
        ops.append({"op": "add", "path": "/spec/volumes", "value": new})

    # The sidecar image may need the pull secrets the app's own images do not.
    have = {s.get("name") for s in spec.get("imagePullSecrets") or []}
    pull = [{"name": n} for n in sidecar.image_pull_secrets if n not in have]
    if pull and spec.get("imagePullSecrets"):
        ops.extend({"op": "add", "path": "/spec/imagePullSecrets/-", "value": p} for p in pull)
    elif pull:
        ops.append({"op": "add", "path": "/spec/imagePullSecrets", "value": pull})

    ops.append(_annotate(meta, "injected"))
    return ops


def _annotate(meta: Mapping[str, Any], status: str) -> dict[str, Any]:
    """The patch op that sets the inject-status annotation to ``status``."""
    if meta.get("annotations"):
        return {"op": "add", "path": f"/metadata/annotations/{_escape(INJECT_STATUS_ANNOTATION)}", "value": status}
    return {"op": "add", "path": "/metadata/annotations", "value": {INJECT_STATUS_ANNOTATION: status}}


def port_conflict(pod: Mapping[str, Any], sidecar: SidecarSettings) -> str | None:
    """Why the sidecar's ports clash with a port a container of ``pod`` declares, or ``None``."""
    spec = pod.get("spec") or {}
    ours = {sidecar.port: "sidecar.port", sidecar.health_port: "sidecar.healthPort"}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for p in c.get("ports") or []:
            if p.get("containerPort") in ours and (p.get("protocol") or "TCP") == "TCP":
                return (f"container {c.get('name')!r} uses port {p['containerPort']}, the llmcache sidecar's "
                        f"{ours[p['containerPort']]}; change one of them")
    return None


def review_response(review: Mapping[str, Any], sidecar: SidecarSettings, *, native: bool,
                    configmap_name: str, fail_closed: bool = True) -> dict[str, Any]:
    """The ``AdmissionReview`` answer to ``review``: allowed, with a patch when injecting; refused only
    when building the patch failed and ``fail_closed`` (the configured ``failurePolicy`` is ``Fail``)."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    pod = request.get("object") or {}
    try:
        ops = injection_patch(pod, sidecar, native=native, configmap_name=configmap_name)
    except Exception as exc:
        log.exception("sidecar injection failed for a pod in %s; %s", request.get("namespace"),
                      "refusing it (failurePolicy Fail)" if fail_closed else "admitting it unchanged")
        if fail_closed:
            response.update(allowed=False, status={"code": 500, "message": (
                f"the llmcache webhook could not inject the sidecar this pod asked for ({type(exc).__name__}); "
                "the pod is refused rather than run without it and will be retried by its controller: "
                "see the llmcache operator's log")})
        ops = []
    if ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    if any(op["path"].startswith(("/spec/initContainers", "/spec/containers")) for op in ops):
        log.info("injecting %s sidecar into pod %s/%s", "native" if native else "classic",
                 request.get("namespace"), (pod.get("metadata") or {}).get("name")
                 or (pod.get("metadata") or {}).get("generateName"))
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}


_SETTINGS = web.AppKey("settings", WebhookSettings)
_NATIVE = web.AppKey("native", bool)
_CONFIGMAP = web.AppKey("configmap", str)
_MIRROR = web.AppKey("mirror", object)
#: Longest the webhook waits for the credentials Secret before answering (the API server's
#: webhook timeout is 5 s by default; a late Secret only means an uncached sidecar).
ENSURE_TIMEOUT_S = 2.0


async def _mutate_pods(request: web.Request) -> web.Response:
    try:
        review = await request.json()
        if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
            raise ValueError("not an AdmissionReview")
    except ValueError as exc:
        return web.json_response({"error": f"expected an AdmissionReview JSON body: {exc}"}, status=400)
    settings = request.app[_SETTINGS]
    answer = review_response(review, settings.sidecar, native=request.app[_NATIVE],
                             configmap_name=request.app[_CONFIGMAP], fail_closed=settings.failure_policy == "Fail")
    mirror = request.app.get(_MIRROR)
    req = review["request"]
    injected = "patch" in answer["response"] and port_conflict(req.get("object") or {}, settings.sidecar) is None
    if isinstance(mirror, credentials.CredentialsMirror) and injected and not req.get("dryRun"):
        # The injected env references the Secret: make it exist in the pod's namespace first.
        namespace = str(req.get("namespace") or "")
        try:
            await asyncio.wait_for(mirror.ensure(namespace), ENSURE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - admitted anyway: a pod never waits on llmcache
            mirror.forget(namespace)
            log.warning("cannot write credentials Secret %s/%s (%s): the sidecar starts without Redis",
                        namespace, mirror.name, exc)
    return web.json_response(answer)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(settings: WebhookSettings, *, native_sidecar: bool, configmap_name: str,
               mirror: credentials.CredentialsMirror | None = None) -> web.Application:
    """The webhook's aiohttp app (``POST /mutate-pods``, ``GET /healthz``)."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[_SETTINGS] = settings
    app[_NATIVE] = native_sidecar
    app[_CONFIGMAP] = configmap_name
    if mirror is not None:
        app[_MIRROR] = mirror
    app.router.add_post("/mutate-pods", _mutate_pods)
    app.router.add_get("/healthz", _healthz)
    return app


def _ssl_context(cert_dir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return ctx


async def _reload_certs(ctx: ssl.SSLContext, cert_dir: Path, *, interval_s: float) -> None:
    """Reload the key pair into the live context when the mounted Secret changes (cert rotation)."""
    crt = cert_dir / "tls.crt"
    last = crt.stat().st_mtime
    while True:
        await asyncio.sleep(interval_s)
        try:
            mtime = crt.stat().st_mtime
            if mtime != last:
                ctx.load_cert_chain(crt, cert_dir / "tls.key")
                last = mtime
                log.info("reloaded webhook certificate from %s", cert_dir)
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot reload webhook certificate from %s: %s", cert_dir, exc)


@contextlib.asynccontextmanager
async def serve(settings: WebhookSettings, *, native_sidecar: bool, configmap_name: str,
                reload_interval_s: float = 60.0,
                mirror: credentials.CredentialsMirror | None = None) -> AsyncIterator[web.AppRunner]:
    """Serve the webhook over HTTPS on ``settings.listen`` until the context exits."""
    cert_dir = Path(settings.cert_dir)
    if not (cert_dir / "tls.crt").is_file() or not (cert_dir / "tls.key").is_file():
        raise ConfigError(f"--webhook-cert-dir {cert_dir} lacks tls.crt/tls.key: mount the webhook TLS Secret "
                          "there, or pass --webhook-listen '' to disable the webhook")
    ctx = _ssl_context(cert_dir)
    host, port = parse_listen(settings.listen)
    runner = web.AppRunner(create_app(settings, native_sidecar=native_sidecar, configmap_name=configmap_name,
                                      mirror=mirror), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    reloader = asyncio.create_task(_reload_certs(ctx, cert_dir, interval_s=reload_interval_s))
    log.info("sidecar-injection webhook listening on https://%s:%s/mutate-pods (native sidecar: %s)",
             host, port, native_sidecar)
    try:
        yield runner
    finally:
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        await runner.cleanup()
