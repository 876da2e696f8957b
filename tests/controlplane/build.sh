#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver) and helm from Go modules.
# With --node, also the rest of a single-node cluster (tests/cluster/):
# kubelet, kube-controller-manager, kube-scheduler, kube-proxy (same
# k8s.io/kubernetes module) and CoreDNS (tests/cluster/coredns), listed in
# node.env next to controlplane.env.
#
# Binaries go to ${LLMCACHE_CACHE_DIR:-$HOME/.cache/llmcache}/bin/<name>-<version>/<name>
# and are only built when missing, so each machine builds each version once.
# The versions are read from the go.mod files next to this script: bumping a
# version there is all it takes to get a new build.
#
# Cold cost on a 2-core machine is dominated by kube-apiserver (see the
# report printed at the end); the Go module and build caches live under $HOME
# (go's defaults) so a rebuild after a cache-dir wipe is fast.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${LLMCACHE_CACHE_DIR:-$HOME/.cache/llmcache}"
bin_dir="$cache_dir/bin"

# The machine's own Go (go.mod says 1.26.0; the toolchain here is newer).
# Never let the go command fetch a different toolchain behind our back.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
# Persist across CI runs on the same machine: go's defaults are under $HOME.
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"

if ! command -v go >/dev/null; then
    echo "build.sh: the go command is not on PATH; install Go >= 1.26 (apt-get install golang-go or the distribution's Go)" >&2
    exit 1
fi

# module_version DIR MODULE -> the version DIR/go.mod resolves MODULE to.
module_version() {
    (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

k8s_version="$(module_version "$here" k8s.io/kubernetes)"
etcd_version="$(module_version "$here" go.etcd.io/etcd/server/v3)"
helm_version="$(module_version "$here/helm" helm.sh/helm/v3)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
# helm's built-in Kubernetes version (used by `helm template`/`lint` without a
# cluster) comes from its client-go: v0.X.Y means Kubernetes 1.X, as in helm's Makefile.
helm_k8s_minor="$(module_version "$here/helm" k8s.io/client-go | cut -d. -f2)"

# One build at a time per cache dir (two `make test` runs on one machine would
# otherwise write the same .partial files).
mkdir -p "$bin_dir"
exec 9>"$bin_dir/.build.lock"
if ! flock -n 9; then
    echo "build.sh: another build holds $bin_dir/.build.lock; waiting for it ..."
    flock 9
fi

# build NAME VERSION MODULE_DIR PACKAGE [extra ldflags]
build() {
    local name="$1" version="$2" moddir="$3" pkg="$4" extra_ldflags="${5:-}"
    local out="$bin_dir/$name-$version/$name"
    if [[ -x "$out" ]]; then
        echo "build.sh: $name $version already built: $out"
        return 0
    fi
    echo "build.sh: building $name $version ($pkg) into $out ..."
    local start=$SECONDS
    mkdir -p "$(dirname "$out")"
    # Build to a temp name and rename, so an interrupted build never leaves a
    # half-written binary that the "already built" check would trust.
    (cd "$moddir" && nice -n 10 go build -ldflags="-s -w $extra_ldflags" -o "$out.partial" "$pkg")
    mv "$out.partial" "$out"
    echo "build.sh: built $name $version in $((SECONDS - start)) s: $out"
}

build etcd "$etcd_version" "$here" ./cmd/etcd
# kube-apiserver reports gitVersion at /version; helm checks a chart's
# kubeVersion against it, so stamp the real release instead of v0.0.0-master.
build kube-apiserver "$k8s_version" "$here" ./cmd/kube-apiserver \
    "-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
build helm "$helm_version" "$here/helm" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$helm_version \
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$helm_k8s_minor \
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$helm_k8s_minor"

if [[ "${1:-}" == --node ]]; then
    coredns_dir="$here/../cluster/coredns"
    coredns_version="$(module_version "$coredns_dir" github.com/coredns/coredns)"
    k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
    for component in kubelet kube-controller-manager kube-scheduler kube-proxy; do
        build "$component" "$k8s_version" "$here" "./cmd/$component" "$k8s_ldflags"
    done
    build coredns "$coredns_version" "$coredns_dir" . \
        "-X github.com/coredns/coredns/coremain.GitCommit=$coredns_version"
    node_manifest="$bin_dir/node.env"
    {
        for component in kubelet kube-controller-manager kube-scheduler kube-proxy; do
            echo "$(echo "$component" | tr 'a-z-' 'A-Z_')=$bin_dir/$component-$k8s_version/$component"
        done
        echo "COREDNS=$bin_dir/coredns-$coredns_version/coredns"
    } >"$node_manifest.partial"
    mv "$node_manifest.partial" "$node_manifest"
    echo "build.sh: node ready: kubelet, kube-controller-manager, kube-scheduler, kube-proxy $k8s_version, coredns $coredns_version (listed in $node_manifest)"
fi

# The fixture reads this file to find the binaries for the versions pinned here.
manifest="$bin_dir/controlplane.env"
cat >"$manifest.partial" <<EOF
ETCD=$bin_dir/etcd-$etcd_version/etcd
KUBE_APISERVER=$bin_dir/kube-apiserver-$k8s_version/kube-apiserver
HELM=$bin_dir/helm-$helm_version/helm
EOF
mv "$manifest.partial" "$manifest"
echo "build.sh: control plane ready: etcd $etcd_version, kube-apiserver $k8s_version, helm $helm_version (listed in $manifest)"
