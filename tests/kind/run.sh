#!/usr/bin/env bash
# The cluster scenario of tests/cluster/test_scenario.py, on kind.
#
# The same pytest code that runs on the local single-node cluster in
# `make test-cluster` runs here against a kind cluster: helm install with its
# hooks, sidecar injection, an unmodified openai client (miss, hit, semantic
# hit, hard negative, the other replica), a policy change on both sidecars,
# eviction, Redis deleted mid-load, helm test / upgrade / uninstall, purge.
#
# Needs Docker, kind, kubectl, mmdebstrap (the images are built from Debian
# packages by tests/cluster/images.sh, here with your Docker) and the repo's
# venv (`make venv`); helm is the one `make controlplane` builds unless
# LLMCACHE_HELM names another.
#
#   tests/kind/run.sh            # create, test, delete the cluster
#   KEEP_CLUSTER=1 tests/kind/run.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster="${KIND_CLUSTER:-llmcache-e2e}"
ctx="kind-$cluster"

for tool in docker kind kubectl mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not on PATH (see tests/kind/README.md)" >&2; exit 2; }
done
[[ -x .venv/bin/python ]] || { echo "run.sh: run \`make venv\` first" >&2; exit 2; }

workdir="$(mktemp -d /tmp/llmcache-kind.XXXXXX)"
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "run.sh: failed (exit $rc); cluster state:" >&2
        kubectl --context "$ctx" get pods -A -o wide >&2 || true
    fi
    if [[ -z "${KEEP_CLUSTER:-}" ]]; then
        kind delete cluster --name "$cluster" || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

echo "== kind cluster $cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s

echo "== images (tests/cluster/images.sh with this machine's Docker)"
manifest="$(LLMCACHE_DOCKER=system bash tests/cluster/images.sh)"
# shellcheck disable=SC1090
source "$manifest"
for ref in "$OPERATOR_IMAGE" "$PROXY_IMAGE" "$MODEL_SERVER_IMAGE" "$REDIS_IMAGE" "$CERTGEN_IMAGE" \
           "$CLIENT_IMAGE" "$TOOLS_IMAGE"; do
    kind load docker-image --name "$cluster" "$ref"
done

echo "== a cluster-admin token for the suite"
kubectl --context "$ctx" -n kube-system create serviceaccount llmcache-e2e --dry-run=client -o yaml \
    | kubectl --context "$ctx" apply -f -
kubectl --context "$ctx" create clusterrolebinding llmcache-e2e --clusterrole=cluster-admin \
    --serviceaccount=kube-system:llmcache-e2e --dry-run=client -o yaml | kubectl --context "$ctx" apply -f -
export LLMCACHE_CLUSTER_TOKEN="$(kubectl --context "$ctx" -n kube-system create token llmcache-e2e --duration=2h)"
export LLMCACHE_CLUSTER_SERVER="$(kubectl config view --raw -o jsonpath="{.clusters[?(@.name==\"$ctx\")].cluster.server}")"
kubectl config view --raw -o jsonpath="{.clusters[?(@.name==\"$ctx\")].cluster.certificate-authority-data}" \
    | base64 -d >"$workdir/ca.crt"
export LLMCACHE_CLUSTER_CA="$workdir/ca.crt"
export LLMCACHE_CLUSTER_WORKDIR="$workdir"

echo "== the scenario (tests/cluster/test_scenario.py)"
.venv/bin/python -m pytest tests/cluster/test_scenario.py -v
echo "kind scenario passed"
