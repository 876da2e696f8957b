"""A second listening address that serves only the proxy's health endpoints.

In a pod the proxy serves LLM traffic on ``127.0.0.1`` (only containers of the pod
can send requests through it, and so spend its tenants' cache), while the kubelet's
probes and Prometheus reach the pod IP. ``--health-listen 0.0.0.0:PORT`` adds that
second address, answering only::

    GET /healthz   liveness: the event loop answers (a frozen loop fails it)
    GET /readyz    readiness
    GET /metrics   Prometheus

Anything else on the health address is 404. Both addresses are served by the same
app and event loop, so a stuck loop fails the liveness probe and the kubelet restarts
the container.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from llmcache.settings import bind_listen_socket, parse_listen

__all__ = ["HEALTH_PATHS", "bind", "health_only_middleware"]

#: The paths the health address answers; everything else there is 404.
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (``run_app(sock=…)`` serves it); raises :class:`ConfigError`."""
    host, port = parse_listen(listen, flag="--health-listen")
    sock = bind_listen_socket(host, port, flag="--health-listen")
    sock.listen(128)
    sock.setblocking(False)
    return sock


def health_only_middleware(health_port: int) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """Middleware: on a connection to ``health_port``, only :data:`HEALTH_PATHS` are served."""

    @web.middleware
    async def health_only(request: web.Request, handler: _Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname and sockname[1] == health_port and request.path not in HEALTH_PATHS:
            return web.json_response({"error": {"message": "the health port serves only /healthz, /readyz and "
                                                           "/metrics; send LLM traffic to the proxy's --listen",
                                                "type": "not_found"}}, status=404)
        return await handler(request)

    return health_only
