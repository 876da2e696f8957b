"""The verifier: every hard-negative category is rejected for its reason, paraphrases pass, on the labelled set too."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from semantic_helpers import local_embedder

from llmcache.proxy.embedder import LocalEmbedder
from llmcache.proxy.verify import REASONS, Verifier, analyse

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "semantic_pairs.jsonl"


@pytest.fixture
async def embedder() -> AsyncIterator[LocalEmbedder]:
    emb = local_embedder()
    yield emb
    await emb.close()


@pytest.fixture
def verifier(embedder: LocalEmbedder) -> Verifier:
    return Verifier(word_embed=embedder.embed)


# Pairs written for this test, not taken from the benchmark set.
REJECT = [
    ("negation", "Can I run this script as root?", "Can I not run this script as root?"),
    ("negation", "Why won't my car start?", "Why will my car start?"),
    ("antonym", "Switch on the hallway light.", "Switch off the hallway light."),
    ("antonym", "How do I maximize a window in Ubuntu?", "How do I minimize a window in Ubuntu?"),
    ("antonym", "Is this mushroom edible or poisonous? Is it safe?", "Is this mushroom edible or poisonous? Is it unsafe?"),
    ("number", "What is 40% of 90?", "What is 45% of 90?"),
    ("number", "Plan a trip for two people.", "Plan a trip for four people."),
    ("unit", "How heavy is 3 kg of flour?", "How heavy is 3 lb of flour?"),
    ("task", "Summarize the attached report.", "Translate the attached report."),
    ("direction", "Convert GBP to JPY.", "Convert JPY to GBP."),
    ("direction", "Did Spain beat Italy in 2012?", "Did Italy beat Spain in 2012?"),
    ("direction", "Who did Ali defeat in 1974?", "Who defeated Ali in 1974?"),
    ("content", "What is the capital of Peru?", "What is the capital of Chile?"),
    ("content", "How do I center text in a table cell in HTML?", "How do I center text in a table cell in LaTeX?"),
    ("content", "How do I sort an array in Go?", "How do I shuffle an array in Go?"),
]

ACCEPT = [
    ("What's the tallest building in the world?", "Which building is the tallest in the world?"),
    ("How do I rename a file in Linux?", "How can I rename a file on Linux?"),
    ("Explain how photosynthesis works.", "How does photosynthesis work?"),
    ("What is NLP?", "What is natural language processing?"),
    ("Compare Python and Go.", "Compare Go and Python."),
    ("How can I delete a Docker image?", "How do I remove a Docker image?"),
]


@pytest.mark.parametrize(("reason", "query", "stored"), REJECT, ids=[f"{r[0]}-{i}" for i, r in enumerate(REJECT)])
async def test_hard_negatives_are_rejected_for_their_reason(verifier: Verifier, reason: str, query: str, stored: str) -> None:
    verdict = await verifier.check(query, stored)
    assert not verdict.ok and verdict.reason == reason, verdict
    assert verdict.reason in REASONS


@pytest.mark.parametrize(("query", "stored"), ACCEPT)
async def test_paraphrases_pass(verifier: Verifier, query: str, stored: str) -> None:
    verdict = await verifier.check(query, stored)
    assert verdict.ok, verdict
    assert (await verifier.check(stored, query)).ok  # symmetric


async def test_identical_text_passes_without_analysis(verifier: Verifier) -> None:
    assert (await verifier.check("  Turn off dark mode ", "turn off dark mode")).reason == "identical"


def test_analysis_reads_numbers_units_and_requests() -> None:
    a = analyse("Please summarise these 2,500 words about twenty five km runs.")
    assert a.numbers == Counter({2500.0: 1, 25.0: 1})
    assert a.units == ["km"] and a.tasks == frozenset({"summarize"})
    assert analyse("How do I summarize a table in pandas?").tasks == frozenset()  # a topic, not a request


def test_without_word_embeddings_unmatched_words_reject() -> None:
    import asyncio

    strict = Verifier()
    assert not asyncio.run(strict.check("How do I mend a sock?", "How do I darn a sock?")).ok


async def test_labelled_set_precision(verifier: Verifier) -> None:
    """Verifier alone (no cosine gate) on the benchmark set: no false accept in any category, most paraphrases pass."""
    pairs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert len(pairs) >= 300
    accepted = Counter()
    totals = Counter()
    for p in pairs:
        totals[p["category"]] += 1
        if (await verifier.check(p["query"], p["cached"])).ok:
            accepted[p["category"]] += 1
    false_accepts = sum(n for cat, n in accepted.items() if cat != "paraphrase")
    precision = accepted["paraphrase"] / (accepted["paraphrase"] + false_accepts)
    assert precision >= 0.98, (accepted, totals)
    assert accepted["paraphrase"] / totals["paraphrase"] >= 0.60
