"""The one exception hierarchy of llmcache: every error says what to do next."""

from __future__ import annotations

__all__ = ["ConfigError", "DependencyError", "LLMCacheError", "PolicyError"]


class LLMCacheError(Exception):
    """Base class for every error raised on purpose by llmcache."""


class ConfigError(LLMCacheError):
    """A flag, env var, value or policy field is invalid; the message names it and the fix."""


class DependencyError(LLMCacheError):
    """A required external piece (binary, module, extra, server) is missing or unusable."""


class PolicyError(ConfigError):
    """A CachePolicy spec does not validate; the message names the field path."""
