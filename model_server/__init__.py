"""llmcache model server: OpenAI-compatible torch/transformers server with a radix prefix KV cache.

Public surface: :func:`create_app` (aiohttp app factory), the settings dataclasses in
:mod:`llmcache.model_server.settings`, :class:`~llmcache.model_server.generate.Engine` and
:class:`~llmcache.model_server.radix.RadixCache`. Attributes are resolved lazily so that
``import llmcache.model_server`` does not pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "ModelServerSettings", "RadixCache", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from llmcache.model_server.handlers import create_app

        return create_app
    if name == "ModelServerSettings":
        from llmcache.model_server.settings import ModelServerSettings

        return ModelServerSettings
    if name == "Engine":
        from llmcache.model_server.generate import Engine

        return Engine
    if name == "RadixCache":
        from llmcache.model_server.radix import RadixCache

        return RadixCache
    raise AttributeError(name)
