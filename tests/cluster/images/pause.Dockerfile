# The pod sandbox image: one static binary (pause.c, compiled by images.sh).
FROM scratch
COPY tests/cluster/images/pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
