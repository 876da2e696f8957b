"""Helpers shared by the operator tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "llmcache" / "crds"
API_VERSION = "llmcache.io/v1alpha1"
KIND = "CachePolicy"

#: Upper bound for waiting on the operator; generous because two busy cores run everything.
WAIT_S = 90.0


def wait_for(predicate: Callable[[], Any], *, what: str, timeout_s: float = WAIT_S, interval_s: float = 0.2,
             logs: Sequence[Path] = ()) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and log tails)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    tails = "\n".join(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-60:])
                      for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})\n{tails}")


def cachepolicy(name: str, spec: Mapping[str, Any], *, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": dict(spec)}


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def pod_manifest(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A minimal Pod (it stays Pending: there is no kubelet)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}

