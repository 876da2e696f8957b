"""Fixtures of the cluster suite: a real single-node cluster (see localcluster.py).

- ``cluster`` (session): a :class:`localcluster.LocalCluster`, started once; at
  teardown it is stopped and the suite fails if any process, mount, interface,
  address or cgroup of it is left on the machine.
- ``kube_cluster`` (session): the same cluster through the control-plane
  helpers (``apply``/``get``/``helm``…, tests/controlplane/fixtures.py).
- ``cluster_namespace`` (function): a fresh namespace, deleted afterwards.

Needs root, ``make cluster-bins`` and ``make images`` (``make test-cluster``
does all of it); a missing piece fails with the command that builds it.

Another cluster instead (kind from tests/kind/run.sh, or a local one kept
running while debugging): set ``LLMCACHE_CLUSTER_SERVER``, ``_CA`` (a file) and
``_TOKEN`` (a cluster-admin bearer token); the images named in
``$LLMCACHE_CACHE_DIR/images/images.env`` must already be on its nodes. The
node-specific tests (test_node.py) then skip; the scenario runs unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster
from controlplane.fixtures import ControlPlane, ControlPlaneBinaries

pytestmark = pytest.mark.cluster


@dataclass(frozen=True, slots=True)
class ExternalCluster:
    """A cluster this suite did not start (kind, or a kept local one): API access and the images."""

    server: str
    ca: Path
    token: str
    images: localcluster.Images
    workdir: Path


def _external() -> ExternalCluster | None:
    server = os.environ.get("LLMCACHE_CLUSTER_SERVER")
    if not server:
        return None
    workdir = Path(os.environ.get("LLMCACHE_CLUSTER_WORKDIR") or Path.cwd() / ".cluster-external")
    workdir.mkdir(parents=True, exist_ok=True)
    return ExternalCluster(server=server, ca=Path(os.environ["LLMCACHE_CLUSTER_CA"]),
                           token=os.environ["LLMCACHE_CLUSTER_TOKEN"], images=localcluster.Images.find(),
                           workdir=workdir)


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.LocalCluster | ExternalCluster]:
    external = _external()
    if external is not None:
        yield external
        return
    try:
        node = localcluster.start()
    except localcluster.ClusterMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        node.stop()
        leftovers = node.leftovers()
        if not leftovers:
            shutil.rmtree(node.workdir, ignore_errors=True)
        assert not leftovers, "the cluster left traces on the machine:\n" + "\n".join(leftovers)


@pytest.fixture(scope="session")
def kube_cluster(cluster: localcluster.LocalCluster | ExternalCluster) -> Iterator[ControlPlane]:
    if isinstance(cluster, localcluster.LocalCluster):
        b = cluster.binaries
        binaries = ControlPlaneBinaries(etcd=b.etcd, kube_apiserver=b.kube_apiserver, helm=b.helm)
        kubeconfig = cluster.kubeconfig
    else:
        helm = os.environ.get("LLMCACHE_HELM") or shutil.which("helm") or str(localcluster.Binaries.helm_path())
        binaries = ControlPlaneBinaries(etcd=Path("/nonexistent"), kube_apiserver=Path("/nonexistent"), helm=Path(helm))
        kubeconfig = cluster.workdir / "kubeconfig"
        localcluster.write_kubeconfig(kubeconfig, server=cluster.server, ca=cluster.ca, token=cluster.token)
    plane = ControlPlane(server=cluster.server, token=cluster.token, ca=cluster.ca, kubeconfig=kubeconfig,
                         workdir=cluster.workdir, binaries=binaries)
    try:
        yield plane
    finally:
        plane.stop()  # closes the clients; owns no process


@pytest.fixture
def cluster_namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        kube_cluster.delete_namespace(name)
