"""App factory entry point: ``create_app(settings)`` (see :mod:`llmcache.model_server.handlers`)."""

from __future__ import annotations

from llmcache.model_server.handlers import STATE_KEY, ServerState, create_app

__all__ = ["create_app", "STATE_KEY", "ServerState"]
