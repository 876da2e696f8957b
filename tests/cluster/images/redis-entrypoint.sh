#!/bin/sh
# Like the official redis image's entrypoint: `redis-server ARGS` starts the
# server with the search and JSON modules loaded; anything else is exec'd as is.
set -e
if [ "$1" = redis-server ]; then
    shift
    exec redis-server "$@" --loadmodule /opt/redis-modules/redisearch.so --loadmodule /opt/redis-modules/rejson.so
fi
exec "$@"
