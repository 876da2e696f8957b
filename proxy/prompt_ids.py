"""A request's prompt as the model server's token ids, without torch: what prefix routing hashes.

The model server shares its tokenizer (``GET /llmcache/v1/tokenizer``: the fast tokenizer's
JSON, the chat template and the special tokens the template sees). The proxy renders a chat
the way transformers' ``apply_chat_template`` does (a sandboxed jinja2 environment with the
same options, filters and globals), then tokenizes the text with the ``tokenizers`` library::

    /v1/chat/completions  messages ─▶ llmcache.prompts.chat_messages ─▶ template ─▶ encode(no specials)
    /v1/completions       "text"   ─▶ encode(with specials)     [ids…] ─▶ as they are

Where this differs from the server (a template feature the sandbox lacks, a tokenizer
option), routing only gets less precise: it never changes an answer. The proxy's
``llmcache_route_predicted_cached_tokens_total`` beside the servers'
``…_reported_cached_tokens_total`` shows how close it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from llmcache import prompts

__all__ = ["PromptTokenizer", "prompt_ids"]


class PromptTokenizer:
    """One model's tokenizer and chat template (from its model server's ``/llmcache/v1/tokenizer``)."""

    def __init__(self, *, tokenizer_json: str, chat_template: str | None, special_tokens: Mapping[str, str]) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer_json)
        self._special = dict(special_tokens)
        self._template = _compile(chat_template) if chat_template else None

    def chat_ids(self, messages: Any) -> list[int] | None:
        """Token ids of a chat prompt (generation prompt added), or ``None`` when it cannot be rendered."""
        if self._template is None:
            return None
        try:
            clean = prompts.chat_messages(messages)
            text = self._template.render(messages=clean, tools=None, documents=None, add_generation_prompt=True,
                                         **self._special)
        except Exception:  # noqa: BLE001 - a template error only costs routing precision
            return None
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a completion prompt (special tokens added, as the server's tokenizer call does)."""
        return list(self._tok.encode(text, add_special_tokens=True).ids)


def prompt_ids(route: str, body: Mapping[str, Any], tokenizer: PromptTokenizer | None) -> list[int] | None:
    """The prompt of a chat/completions ``body`` as token ids; ``None`` when it cannot be known here."""
    if route.endswith("/chat/completions"):
        return tokenizer.chat_ids(body.get("messages")) if tokenizer is not None else None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if isinstance(prompt, str) and tokenizer is not None:
        return tokenizer.text_ids(prompt)
    return None


def _compile(source: str) -> Any:
    """The template in the environment transformers compiles chat templates in (its generation-tag
    extension aside: a template using ``{% generation %}`` fails to compile and is not used)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError:
        return None
