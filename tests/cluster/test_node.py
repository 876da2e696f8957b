"""The local node is a real cluster: pods run on the kubelet, Services and DNS work.

A python http.server Deployment behind a Service, reached from another pod by
its DNS name (CoreDNS → kube-proxy's iptables rules → the CNI bridge), and the
kubelet's exec through the API server. The session fixture then asserts that
stopping the cluster leaves nothing behind.
"""

from __future__ import annotations

import subprocess

import localcluster
import pytest
from helpers import exec_in, wait_for, wait_ready

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def _local_only(cluster: object) -> None:
    if not isinstance(cluster, localcluster.LocalCluster):
        pytest.skip("node-level checks of the local cluster (tests/cluster/localcluster.py); this run uses another")


def test_node_is_ready_with_the_built_versions(cluster: localcluster.LocalCluster, kube_cluster) -> None:
    node = kube_cluster.get("v1", "Node", localcluster.NODE_NAME)
    assert node is not None
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == localcluster.NODE_IP


def test_pod_to_service_by_dns_name(cluster: localcluster.LocalCluster, kube_cluster, cluster_namespace: str) -> None:
    ns = cluster_namespace
    image = cluster.images.refs["client"]
    kube_cluster.apply(f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image}
          imagePullPolicy: Never
          command:
            - python
            - -c
            - |-
              import http.server,socketserver,os;
              class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                  b=os.environ['HOSTNAME'].encode();self.send_response(200);self.end_headers();self.wfile.write(b)
              http.server.ThreadingHTTPServer(('',8000),H).serve_forever()
          ports: [{{containerPort: 8000}}]
          readinessProbe: {{tcpSocket: {{port: 8000}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: probe, labels: {{app: probe}}}}
spec:
  containers:
    - name: probe
      image: {image}
      imagePullPolicy: Never
      command: ["python", "-c", "import time; time.sleep(3600)"]
""", namespace=ns)
    web = wait_ready(kube_cluster, ns, "app=web")[0]
    wait_ready(kube_cluster, ns, "app=probe")
    pod_ip = web["status"]["podIP"]
    assert pod_ip.startswith("10.244.0.")
    # Ready is the kubelet's word. The Service reaches the pod once kube-proxy has written its rule (it
    # batches changes, ~1 s); until then the Service's REJECT rule refuses the connection.
    wait_for(f"kube-proxy's rule from Service {ns}/web to {pod_ip}:8000", lambda: any(
        f"{ns}/web" in line and f"--to-destination {pod_ip}:8000" in line
        for line in cluster.run_in(["iptables-save", "-t", "nat"]).stdout.splitlines()), timeout_s=60)
    code, out = exec_in(kube_cluster, ns, "probe", [
        "python", "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://web.{ns}.svc.cluster.local/', timeout=10)"
        ".read().decode())"])
    assert code == 0, out
    assert out.strip() == web["metadata"]["name"]
    # The short name resolves through the pod's search path too.
    code, out = exec_in(kube_cluster, ns, "probe", [
        "python", "-c",
        "import urllib.request; print(urllib.request.urlopen('http://web/', timeout=10).read().decode())"])
    assert code == 0 and out.strip() == web["metadata"]["name"], out


def test_cluster_addresses_exist_only_inside_its_namespace(cluster: localcluster.LocalCluster) -> None:
    host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert localcluster.NODE_IP not in host and "10.244.0." not in host
    inside = cluster.run_in(["ip", "-o", "addr"]).stdout
    assert localcluster.NODE_IP in inside and "cni0" in inside
