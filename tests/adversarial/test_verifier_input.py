"""Issue 14 item 7 and issue 11: the verifier's input is bounded, its checks are linear, its work is off the loop.

Triggers from the issues: a 4,000-word and a 100,000-word pair (the old pairwise antonym loop
took 0.43 s and minutes on the event loop), text in scripts the verifier cannot read, operators
and identifiers that differ in one character. The safe outcomes: a refusal (fail closed), and an
event loop that keeps serving while the verifier works.
"""

from __future__ import annotations

import asyncio

import pytest

from llmcache.proxy.semantic.verify import Verifier


def _words(n: int, *, seed: int, noun: str = "item") -> str:
    # Polar and prefixed words on both sides: the shape that made the old antonym check quadratic.
    vocab = ["possible", "impossible", "like", "dislike", "on", "off", "safe", "unsafe", "open", "close"]
    return " ".join(f"{vocab[(i * 7 + seed) % len(vocab)]} {noun}{i}" for i in range(n))


@pytest.mark.parametrize("num_words", [4_000, 100_000])
async def test_huge_texts_are_refused_without_analysis_past_the_bound(num_words: int) -> None:
    verifier = Verifier()
    verdict = await verifier.check(_words(num_words, seed=1), _words(num_words, seed=2), similarity=0.99)
    assert not verdict.ok and verdict.reason == "unreadable" and verdict.detail == "too_long"


async def test_the_loop_keeps_running_while_a_large_pair_is_analysed() -> None:
    """With the bound lifted, 20,000 words per side are analysed in a worker thread, in linear time.

    A ticker on the event loop must advance while the check is in flight; a quadratic check
    would not finish within the suite's timeout at all.
    """
    verifier = Verifier(max_chars=10_000_000)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    verdict = await verifier.check(_words(20_000, seed=1), _words(20_000, seed=3, noun="thing"), similarity=0.99)
    done.set()
    await task
    assert not verdict.ok  # different words on each side: refused, for whatever reason comes first
    assert ticks > 1, "the verifier ran on the event loop"


@pytest.mark.parametrize(("query", "stored"), [
    ("如何启用双重认证？", "如何禁用双重认证？"),
    ("两个问题：今天天气怎么样？", "两个问题：明天股票会涨吗？"),
    ("Как включить 2FA?", "Как отключить 2FA?"),
    ("Is 7 > 3?", "Is 7 < 3?"),
    ("Does a == b hold?", "Does a != b hold?"),
    ("Where is order abc-xyz?", "Where is order abc-xyw?"),
    ("Give me a short answer: what is DNS?", "Give me a detailed answer: what is DNS?"),
])
async def test_what_a_code_review_found_accepted_is_refused(query: str, stored: str) -> None:
    assert not (await Verifier().check(query, stored, similarity=1.0)).ok
