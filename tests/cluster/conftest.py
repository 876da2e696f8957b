"""Fixtures of the cluster suite: a real single-node cluster (see localcluster.py).

- ``cluster`` (session): a :class:`localcluster.LocalCluster`, started once; at
  teardown it is stopped and the suite fails if any process, mount, interface,
  address or cgroup of it is left on the machine.
- ``kube_cluster`` (session): the same cluster through the control-plane
  helpers (``apply``/``get``/``helm``…, tests/controlplane/fixtures.py).
- ``cluster_namespace`` (function): a fresh namespace, deleted afterwards.

Needs root, ``make cluster-bins`` and ``make images`` (``make test-cluster``
does all of it); a missing piece fails with the command that builds it.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster  # noqa: E402
from controlplane.fixtures import ControlPlane, ControlPlaneBinaries  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.LocalCluster]:
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
def kube_cluster(cluster: localcluster.LocalCluster) -> Iterator[ControlPlane]:
    b = cluster.binaries
    plane = ControlPlane(server=cluster.server, token=cluster.token, ca=cluster.ca, kubeconfig=cluster.kubeconfig,
                         workdir=cluster.workdir,
                         binaries=ControlPlaneBinaries(etcd=b.etcd, kube_apiserver=b.kube_apiserver, helm=b.helm))
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
