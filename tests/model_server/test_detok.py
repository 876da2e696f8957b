"""Incremental detokenization with the real SmolLM2 tokenizer: same text as one full decode, stop strings
found across token boundaries, incomplete UTF-8 held back."""

from __future__ import annotations

import random
from typing import Any

import pytest
from transformers import AutoTokenizer

from llmcache.model_server import detok, loader

pytestmark = pytest.mark.slow  # parses the 98 MB GGUF for its tokenizer

TEXTS = ["Hello, world! The capital of France is Paris.", "naïve café — 東京タワー 🚀🚀 done.",
         "def f(x):\n    return x ** 2  # ok", "Ünïcödé mixed with ASCII and emoji 👩‍🔬 in one line."]


@pytest.fixture(scope="module")
def tok() -> Any:
    gguf = loader.find_default_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def decode_fn(tok: Any):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def stream(state: detok.TextState, ids: list[int]) -> list[str]:
    deltas = []
    for i, t in enumerate(ids):
        state.push(t)
        final = i == len(ids) - 1 or state.stopped
        if final:
            state.finish()
        deltas.append(state.take_delta(final=final))
        if state.stopped:
            break
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode(tok: Any, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    state = detok.TextState(decode=decode_fn(tok))
    deltas = stream(state, ids)
    assert "".join(deltas) == state.text == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in d for d in deltas)  # multi-byte characters are never split


def test_random_token_streams_match_full_decode(tok: Any) -> None:
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(0, tok.vocab_size) for _ in range(rng.randrange(1, 60))]
        state = detok.TextState(decode=decode_fn(tok))
        assert "".join(stream(state, ids)) == tok.decode(ids, skip_special_tokens=True)


def test_stop_string_across_tokens_is_cut_and_never_streamed(tok: Any) -> None:
    text = "The answer is forty-two. END of story, more text."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    state = detok.TextState(decode=decode_fn(tok), stops=(". END",))
    deltas = stream(state, ids)
    assert state.stopped and state.text == "The answer is forty-two"
    assert "".join(deltas) == "The answer is forty-two"
    assert all("END" not in d for d in deltas)


def test_the_work_per_token_is_bounded(tok: Any) -> None:
    """Each push decodes a window of a few tokens, not the whole output (no O(n²))."""
    lengths: list[int] = []
    inner = decode_fn(tok)

    def counting(ids: list[int]) -> str:
        lengths.append(len(ids))
        return inner(ids)

    ids = tok(" ".join(["word"] * 400), add_special_tokens=False)["input_ids"]
    state = detok.TextState(decode=counting)
    stream(state, ids)
    assert len(ids) >= 400 and max(lengths) <= 4
