"""llmcache: a Kubernetes-native caching layer for OpenAI-compatible LLM inference.

Public surface (everything else is internal and may change):

- :mod:`llmcache.settings`  — flag/env helpers and per-concern settings
- :mod:`llmcache.policy`    — the CachePolicy model and its Redis layout
- :mod:`llmcache.redis_server` — embedded Redis (Valkey + RediSearch) for local use and tests
- :mod:`llmcache.errors`    — :class:`LLMCacheError` and friends
"""

from __future__ import annotations

from llmcache.errors import ConfigError, DependencyError, LLMCacheError, PolicyError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DependencyError", "LLMCacheError", "PolicyError", "__version__"]
