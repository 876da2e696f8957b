# The webhook-certificate hook Jobs' image (certgen.py: kube-webhook-certgen's
# `create` / `patch` command line), for clusters that cannot pull
# registry.k8s.io/ingress-nginx/kube-webhook-certgen.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN python -m venv /opt/certgen && /opt/certgen/bin/pip install --no-compile 'cryptography>=42'
COPY tests/cluster/images/certgen.py /opt/certgen/certgen.py
USER 65532:65532
ENTRYPOINT ["/opt/certgen/bin/python", "/opt/certgen/certgen.py"]
