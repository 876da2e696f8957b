# Small utility image (the chart's `tests.image`): busybox applets such as wget
# on top of the Debian base, for `helm test`'s HTTP checks.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /opt/busybox && busybox --install -s /opt/busybox
# Appended, so the base's own tools come first and only missing ones (wget) are busybox.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/busybox
USER 10001:10001
