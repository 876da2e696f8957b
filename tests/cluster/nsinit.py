"""PID 1 of the test cluster's namespaces (started by ``unshare`` from localcluster.py).

Runs in fresh network, mount and PID namespaces (``/proc`` already remounted).
Sets up the node side of the network (loopback, a veth holding the node
address, a route for Service addresses, forwarding on), remounts ``/sys`` so it shows this network
namespace (the CNI bridge plugin reads it) with the machine's cgroup
hierarchies bound back under it, puts a tmpfs on ``/run`` and binds the
cluster's private directories over the well-known paths. Prints
``nsinit: ready``, then reaps orphans until SIGTERM; its exit makes the kernel
kill every process left in the namespace.

argv[1]: JSON ``{"binds": {host_dir: path_inside}, "node_ip": "10.250.0.1",
"service_cidr": "10.96.0.0/16"}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True)


def main() -> None:
    config = json.loads(sys.argv[1])
    sh("ip", "link", "set", "lo", "up")
    # The node address lives on one end of a veth pair that never leaves this
    # namespace (this kernel has no `dummy` link type).
    sh("ip", "link", "add", "llmnode0", "type", "veth", "peer", "name", "llmnode1")
    sh("ip", "link", "set", "llmnode0", "up")
    sh("ip", "link", "set", "llmnode1", "up")
    sh("ip", "addr", "add", f"{config['node_ip']}/32", "dev", "llmnode0")
    # Locally made connections to a Service address need a route before
    # kube-proxy's OUTPUT rules rewrite them to an endpoint.
    sh("ip", "route", "add", config["service_cidr"], "dev", "llmnode0")
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    # /sys of this network namespace, with the cgroup mounts carried over.
    os.makedirs("/run/llmcache-ns-cgroup", exist_ok=True)
    sh("mount", "--rbind", "/sys/fs/cgroup", "/run/llmcache-ns-cgroup")
    sh("mount", "-t", "sysfs", "sysfs", "/sys")
    sh("mount", "--move", "/run/llmcache-ns-cgroup", "/sys/fs/cgroup")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    for source, target in config["binds"].items():
        os.makedirs(target, exist_ok=True)
        sh("mount", "--bind", source, target)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))

    def reap(*_: object) -> None:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass

    signal.signal(signal.SIGCHLD, reap)
    print("nsinit: ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
