#!/bin/sh
# Like the official redis image's entrypoint: `redis-server ARGS` starts the
# server with the search and JSON modules loaded; anything else is exec'd as is.
# The official image builds Redis with protected-mode defaulting to no (access
# is the chart's job: ACL users and a NetworkPolicy); same here, before the
# caller's arguments so they can still override it.
set -e
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --protected-mode no "$@" --loadmodule /opt/redis-modules/redisearch.so --loadmodule /opt/redis-modules/rejson.so
fi
exec "$@"
