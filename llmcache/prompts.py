"""A chat request's messages as the model server renders them: one definition for the server and for routers.

The model server turns ``messages`` into its prompt with the model's chat template; a router
(the proxy) renders the same messages the same way to predict which cached prefix a request
will hit. Both read the messages through :func:`chat_messages`, so they cannot disagree on
what the template sees.
"""

from __future__ import annotations

from typing import Any

from llmcache.errors import LLMCacheError

__all__ = ["CHAT_ROLES", "PromptError", "chat_messages"]

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class PromptError(LLMCacheError):
    """The messages cannot be rendered (HTTP 400 at the model server); ``param`` names the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PromptError(f"messages[{index}].content: only text parts are supported",
                                  param=f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise PromptError(f"messages[{index}].content must be a string or a list of text parts",
                      param=f"messages[{index}].content")


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` with ``developer`` read as ``system`` and text parts joined; PromptError otherwise."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", param="messages")
    clean: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise PromptError(f"messages[{i}] needs a role of system, developer, user, assistant or tool",
                              param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": _text(m.get("content"), i)})
    return clean
