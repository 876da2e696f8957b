"""Small helpers of the cluster suite: waiting on pods and running commands in them."""

from __future__ import annotations

import time
from typing import Any

from controlplane.fixtures import ControlPlane


def wait_for(what: str, check: Any, *, timeout_s: float, interval_s: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; raise naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


def pods(kube: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    return kube.list_objects("v1", "Pod", namespace=namespace, label_selector=selector)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True" and not (pod.get("metadata") or {}).get("deletionTimestamp")


def wait_ready(kube: ControlPlane, namespace: str, selector: str, *, count: int = 1,
               timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Wait until ``count`` pods matching ``selector`` are Ready; return them."""

    def ready() -> list[dict[str, Any]]:
        found = [p for p in pods(kube, namespace, selector) if is_ready(p)]
        return found if len(found) >= count else []

    try:
        return wait_for(f"{count} Ready pod(s) {selector} in {namespace}", ready, timeout_s=timeout_s)
    except AssertionError as exc:
        states = [(p["metadata"]["name"], (p.get("status") or {}).get("phase"),
                   [(c.get("name"), c.get("state")) for c in (p.get("status") or {}).get("containerStatuses") or []])
                  for p in pods(kube, namespace, selector)]
        raise AssertionError(f"{exc}; pods: {states}") from None


def exec_in(kube: ControlPlane, namespace: str, pod: str, command: list[str], *, container: str | None = None,
            timeout_s: float = 120.0) -> tuple[int, str]:
    """Run ``command`` in a container through the API server (kubelet exec); return (exit code, output)."""
    import kubernetes.client

    # stream() patches the request method of the ApiClient it is given while it runs: a client
    # of its own, so other threads' ordinary calls on kube.api_client stay plain HTTP.
    api = kubernetes.client.ApiClient(kube.api_client.configuration)
    core = kubernetes.client.CoreV1Api(api)
    kwargs = {"container": container} if container else {}
    try:
        return _exec(core, namespace, pod, command, kwargs, timeout_s=timeout_s)
    finally:
        api.close()


def _exec(core: Any, namespace: str, pod: str, command: list[str], kwargs: dict[str, str], *,
          timeout_s: float) -> tuple[int, str]:
    from kubernetes.stream import stream

    resp = stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=command, stderr=True, stdin=False,
                  stdout=True, tty=False, _preload_content=False, **kwargs)
    output: list[str] = []
    deadline = time.monotonic() + timeout_s
    while resp.is_open():
        resp.update(timeout=1)
        if resp.peek_stdout():
            output.append(resp.read_stdout())
        if resp.peek_stderr():
            output.append(resp.read_stderr())
        if time.monotonic() > deadline:
            resp.close()
            raise AssertionError(f"exec {command} in {namespace}/{pod} ran past {timeout_s:.0f} s: {''.join(output)}")
    resp.close()
    try:
        code = resp.returncode
    except ValueError as exc:  # the runtime could not start the command at all
        return 126, f"{''.join(output)}{exc}"
    return (0 if code is None else int(code)), "".join(output)
