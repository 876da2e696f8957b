# syntax=docker/dockerfile:1
# The kind scenario's client: the official openai package and nothing of llmcache.
FROM python:3.12-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install 'openai>=1.30'
COPY tests/kind/client_job.py /client_job.py
USER 10001:10001
ENTRYPOINT ["python", "/client_job.py"]
