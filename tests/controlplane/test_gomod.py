"""go.mod of the control plane stays consistent with the Kubernetes release it pins.

A bump of ``k8s.io/kubernetes`` without regenerating the ``replace`` block (or
with a staging module missing) would build against mismatched libraries or not
at all; this catches it before a 10-minute build does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.controlplane  # needs Go and its module cache, like the build

HERE = Path(__file__).resolve().parent


def _module_versions(gomod: str) -> tuple[dict[str, str], dict[str, str]]:
    """(requires, replaces) of a go.mod text, as {module: version}."""
    requires = dict(re.findall(r"^\s*(?:require\s+)?(\S+) (v\S+)(?: // indirect)?$", gomod, flags=re.M))
    replaces = dict(re.findall(r"^\s*(\S+) => \S+ (v\S+)$", gomod, flags=re.M))
    return requires, replaces


@pytest.fixture(scope="module")
def kubernetes_gomod() -> tuple[str, str]:
    """(version, go.mod text) of the k8s.io/kubernetes release our go.mod requires."""
    if shutil.which("go") is None:
        pytest.fail("the go command is needed (it builds the control plane): install Go >= 1.26", pytrace=False)
    ours = (HERE / "go.mod").read_text()
    version = _module_versions(ours)[0]["k8s.io/kubernetes"]
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    proc = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return version, Path(json.loads(proc.stdout)["GoMod"]).read_text()


def test_every_staging_module_is_replaced_with_the_matching_release(kubernetes_gomod: tuple[str, str]) -> None:
    version, upstream = kubernetes_gomod
    staging = {m for m, v in _module_versions(upstream)[0].items() if m.startswith("k8s.io/") and v == "v0.0.0"}
    assert len(staging) > 20  # api, apimachinery, apiserver, client-go, ...
    _, replaces = _module_versions((HERE / "go.mod").read_text())
    expected = "v0." + version.removeprefix("v1.")  # v1.37.2 -> v0.37.2
    assert {m: replaces.get(m) for m in staging} == dict.fromkeys(staging, expected)


def test_etcd_is_the_version_kubernetes_was_released_with(kubernetes_gomod: tuple[str, str]) -> None:
    _, upstream = kubernetes_gomod
    requires, _ = _module_versions((HERE / "go.mod").read_text())
    assert requires["go.etcd.io/etcd/server/v3"] == _module_versions(upstream)[0]["go.etcd.io/etcd/server/v3"]


def test_helm_is_a_separate_module_with_its_tool() -> None:
    gomod = (HERE / "helm" / "go.mod").read_text()
    assert re.search(r"^tool helm\.sh/helm/v3/cmd/helm$", gomod, flags=re.M)
    assert "k8s.io/kubernetes" not in gomod  # its own k8s.io/* versions, no staging replaces
