#!/usr/bin/env bash
# Install the machine packages the local cluster needs, from Debian's archive.
#
#   docker.io        dockerd, only to build images (bridge off, host-network builds)
#   containerd runc  the node's container runtime (CRI plugin) and OCI runtime
#   containernetworking-plugins  bridge, host-local, loopback, portmap
#   mmdebstrap       the base image, made from Debian packages (no registry here)
#   iproute2 iptables conntrack  network namespace, kube-proxy's rules
#   gcc libc6-dev    the static "pause" binary for the pod sandbox image
#
# Idempotent: installs only what is missing (CI on a new machine runs it).
set -euo pipefail
pkgs=(docker.io containerd runc containernetworking-plugins mmdebstrap
      iproute2 iptables conntrack gcc libc6-dev util-linux procps psmisc)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "install-deps.sh: all packages present"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: no docker compose/buildx/apparmor extras we do not use.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's packages start their daemons through systemd where there is one;
# the cluster fixture starts its own instances on private sockets instead.
echo "install-deps.sh: installed ${missing[*]}"
