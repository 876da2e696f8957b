# syntax=docker/dockerfile:1
# The scenario's app container: the official openai package and nothing of
# llmcache. tests/kind/run.sh runs client_job.py as a Job; the local cluster
# suite (tests/cluster/) keeps the container up and runs its checks with exec.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN python -m venv /opt/client && /opt/client/bin/pip install --no-compile 'openai>=1.30'
ENV PATH=/opt/client/bin:$PATH
COPY tests/kind/client_job.py /client_job.py
COPY tests/cluster/images/app_client.py /app_client.py
USER 10001:10001
ENTRYPOINT ["python", "/client_job.py"]
