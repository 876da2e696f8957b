#!/usr/bin/env bash
# The full-cluster scenario: a kind cluster, the llmcache images built and
# loaded, `helm install` of the chart (hooks and all: the certificate Jobs run
# here), a CachePolicy, and an unmodified OpenAI client Job whose pod gets the
# sidecar injected and must see cache hits. Then `helm test`.
#
# Needs Docker, kind, kubectl and helm on PATH (see README.md). It cannot run
# on the development machines of this project (no Docker engine there); CI runs
# it from .github/workflows/kind.yml.
#
#   tests/kind/run.sh            # create, test, delete the cluster
#   KEEP_CLUSTER=1 tests/kind/run.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster="${KIND_CLUSTER:-llmcache-e2e}"
tag="${IMAGE_TAG:-e2e}"
ns=llmcache
app_ns=kind-app

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not on PATH (see tests/kind/README.md)" >&2; exit 2; }
done

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "run.sh: failed (exit $rc); cluster state:" >&2
        kubectl get pods -A -o wide >&2 || true
        kubectl -n "$ns" logs deploy/llmcache-operator --tail=100 >&2 || true
        kubectl -n "$app_ns" logs job/openai-client --all-containers --tail=100 >&2 || true
    fi
    if [[ -z "${KEEP_CLUSTER:-}" ]]; then
        kind delete cluster --name "$cluster" || true
    fi
}
trap cleanup EXIT

echo "== kind cluster $cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s

echo "== images (tag $tag)"
docker build -f proxy/Dockerfile -t "ghcr.io/llmcache/proxy:$tag" .
docker build -f operator/Dockerfile -t "ghcr.io/llmcache/operator:$tag" .
docker build -f tests/kind/model-server.Dockerfile -t "ghcr.io/llmcache/model-server:$tag" .
docker build -f tests/kind/client.Dockerfile -t "llmcache-kind-client:$tag" .
for image in proxy operator model-server; do
    kind load docker-image --name "$cluster" "ghcr.io/llmcache/$image:$tag"
done
kind load docker-image --name "$cluster" "llmcache-kind-client:$tag"

echo "== helm install"
# No GPU in kind: the model server runs on CPU without the GPU limit/toleration.
helm upgrade --install llmcache charts/llmcache --namespace "$ns" --create-namespace \
    --set operator.image.tag="$tag" --set operator.image.pullPolicy=Never \
    --set sidecar.image.tag="$tag" \
    --set modelServer.image.tag="$tag" --set modelServer.image.pullPolicy=Never \
    --set modelServer.device=cpu \
    --set-json 'modelServer.resources={"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"memory":"4Gi"}}' \
    --set-json 'modelServer.tolerations=[]' \
    --set redis.bundled.persistence.enabled=false \
    --wait --timeout 15m
kubectl -n "$ns" get pods -o wide
kubectl get crd cachepolicies.llmcache.io

echo "== a CachePolicy and the client Job"
kubectl create namespace "$app_ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$app_ns" -f - <<'YAML'
apiVersion: llmcache.io/v1alpha1
kind: CachePolicy
metadata:
  name: kind-exact
spec:
  selector:
    matchLabels: {app: openai-client}
  priority: 10
  mode: Exact
  ttlSeconds: 600
YAML
kubectl -n "$app_ns" delete job openai-client --ignore-not-found
kubectl apply -n "$app_ns" -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: openai-client
spec:
  backoffLimit: 0
  template:
    metadata:
      labels:
        app: openai-client
        llmcache.io/inject: enabled
    spec:
      restartPolicy: Never
      containers:
        - name: client
          image: llmcache-kind-client:$tag
          imagePullPolicy: Never
YAML

# The webhook must have injected the sidecar.
for _ in $(seq 60); do
    pod="$(kubectl -n "$app_ns" get pods -l job-name=openai-client -o name | head -1)"
    [[ -n "$pod" ]] && break
    sleep 2
done
status="$(kubectl -n "$app_ns" get "$pod" -o jsonpath='{.metadata.annotations.llmcache\.io/inject-status}')"
[[ "$status" == injected ]] || { echo "run.sh: $pod was not injected (inject-status='$status')" >&2; exit 1; }

kubectl -n "$app_ns" wait --for=condition=complete job/openai-client --timeout=15m
kubectl -n "$app_ns" logs job/openai-client -c client
kubectl -n "$app_ns" get cachepolicy kind-exact -o wide

echo "== helm test"
helm test llmcache --namespace "$ns" --logs --timeout 5m
echo "kind scenario passed"
