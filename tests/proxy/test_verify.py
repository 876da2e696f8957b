"""The verifier: refuses a candidate only on evidence of a different meaning, accepts lexical variety, fails closed.

Pairs here are written for this test, not taken from the benchmark sets; the real MiniLM
embedder from the wheel provides sentence and word vectors.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from semantic_helpers import local_embedder

from llmcache.errors import ConfigError
from llmcache.proxy.semantic import verify
from llmcache.proxy.semantic.analysis import analyse
from llmcache.proxy.semantic.embedder import LocalEmbedder
from llmcache.proxy.semantic.verify import REASONS, PairModel, Verifier

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "semantic_pairs.jsonl"


@pytest.fixture
async def embedder() -> AsyncIterator[LocalEmbedder]:
    emb = local_embedder()
    yield emb
    await emb.close()


@pytest.fixture
def verifier(embedder: LocalEmbedder) -> Verifier:
    return Verifier(word_embed=embedder.embed)


REJECT = [
    ("negation", "Can I run this script as root?", "Can I not run this script as root?"),
    ("negation", "Why won't my car start?", "Why will my car start?"),
    ("antonym", "Is it fine to store bread in the fridge?", "Is it unhealthy to store bread in the fridge?"),
    ("antonym", "Switch on the hallway light.", "Switch off the hallway light."),
    ("antonym", "How do I maximize a window in Ubuntu?", "How do I minimize a window in Ubuntu?"),
    ("number", "What is 40% of 90?", "What is 45% of 90?"),
    ("number", "Plan a trip for two people.", "Plan a trip for four people."),
    ("number", "Give me a 5-day plan for Lisbon.", "Give me a 2-day plan for Lisbon."),
    ("unit", "How heavy is 3 kg of flour?", "How heavy is 3 lb of flour?"),
    ("quantifier", "Do all owls hunt at night?", "Do some owls hunt at night?"),
    ("quantifier", "Does every student pass the exam?", "Do most students pass the exam?"),
    ("modality", "Can I drive with a learner's permit?", "Should I drive with a learner's permit?"),
    ("modality", "May I bring food on the plane?", "Must I bring food on the plane?"),
    ("comparison", "Is a lion as fast as a horse?", "Is a lion faster than a horse?"),
    ("question", "When did the bridge open?", "Where did the bridge open?"),
    ("task", "Summarize the attached report.", "Translate the attached report."),
    ("task", "What is 12 times 9?", "What is 12 plus 9?"),
    ("shape", "Explain recursion.", "Explain recursion in JSON."),
    ("shape", "Describe the water cycle briefly.", "Describe the water cycle in detail."),
    ("direction", "Convert GBP to JPY.", "Convert JPY to GBP."),
    ("direction", "Did Spain beat Italy in 2012?", "Did Italy beat Spain in 2012?"),
    ("direction", "Did Priya lend money to Omar?", "Did Omar lend money to Priya?"),
    ("direction", "Is tea healthier than coffee?", "Is coffee healthier than tea?"),
    ("direction", "Who did Ali defeat in 1974?", "Who defeated Ali in 1974?"),
    ("topic", "How tall is the Shard?", "How old is the Shard?"),
    ("topic", "What is the capital of Chile?", "What is the currency of Chile?"),
    ("tense", "Who is the mayor of Lyon?", "Who was the mayor of Lyon?"),
    ("entity", "What is the capital of Peru?", "What is the capital of Chile?"),
    ("entity", "How do I center text in a table cell in HTML?", "How do I center text in a table cell in LaTeX?"),
    ("content", "How do I sort an array in Go?", "How do I shuffle an array in Go?"),
    ("symbol", "Is 7 > 3?", "Is 7 < 3?"),
    ("symbol", "What does a == b do in JavaScript?", "What does a != b do in JavaScript?"),
    ("symbol", "Where is order abc_xyz?", "Where is order abc_xyw?"),
    ("symbol", "What does os.path.join return?", "What does os.path.split return?"),
    ("entity", "Track order abc-xyz", "Track order abc-xyw"),
]

ACCEPT = [
    ("What's the tallest building in the world?", "Which building is the tallest in the world?"),
    ("How do I rename a file in Linux?", "How can I rename a file on Linux?"),
    ("Explain how photosynthesis works.", "How does photosynthesis work?"),
    ("What is NLP?", "What is natural language processing?"),
    ("Compare Python and Go.", "Compare Go and Python."),
    ("How can I delete a Docker image?", "How do I remove a Docker image?"),
    ("Who composed the Four Seasons?", "Who is the composer of the Four Seasons?"),
    ("What does NATO stand for?", "What is NATO short for?"),
    ("How many people live in Lima?", "What's the population of Lima?"),
    ("how do i quit nano", "How do I exit nano?"),
    ("What's the difference between a duck and a goose?", "What's the difference between a goose and a duck?"),
]


@pytest.mark.parametrize(("reason", "query", "stored"), REJECT, ids=[f"{r[0]}-{i}" for i, r in enumerate(REJECT)])
async def test_hard_negatives_are_refused_for_their_reason(verifier: Verifier, reason: str, query: str, stored: str) -> None:
    verdict = await verifier.check(query, stored)
    assert not verdict.ok and verdict.reason == reason, verdict
    assert verdict.reason in REASONS
    assert not (await verifier.check(stored, query)).ok  # symmetric


@pytest.mark.parametrize(("query", "stored"), ACCEPT)
async def test_paraphrases_pass(verifier: Verifier, query: str, stored: str) -> None:
    verdict = await verifier.check(query, stored)
    assert verdict.ok, verdict
    assert (await verifier.check(stored, query)).ok  # symmetric


@pytest.mark.parametrize(("query", "stored"), [
    ("如何启用双重认证？", "如何禁用双重认证？"),          # enable / disable 2FA
    ("Как включить 2FA?", "Как отключить 2FA?"),        # Russian enable / disable
    ("東京の人口は？", "大阪の人口は？"),
    ("Is Athens in Ελλάδα?", "Is Athens in Greece?"),   # one unreadable word is enough
])
async def test_text_in_scripts_it_cannot_read_fails_closed(verifier: Verifier, query: str, stored: str) -> None:
    verdict = await verifier.check(query, stored, similarity=1.0)
    assert not verdict.ok and verdict.reason == "unreadable"


async def test_identical_text_passes_without_analysis(verifier: Verifier) -> None:
    assert (await verifier.check("  Turn off dark mode ", "turn off dark mode")).reason == "identical"
    assert (await verifier.check("如何启用双重认证？", "如何启用双重认证？")).ok  # the exact text is the same question


async def test_input_is_bounded_and_long_text_fails_closed(embedder: LocalEmbedder) -> None:
    long_text = "word " * 30_000  # 150 k characters: a quadratic check would take minutes here
    strict = Verifier(word_embed=embedder.embed, max_chars=2000)
    verdict = await strict.check(long_text, long_text + "more", similarity=0.99)
    assert not verdict.ok and verdict.reason == "unreadable" and verdict.detail == "too_long"
    assert analyse(long_text).unreadable == "too_long"
    # Right at the bound the analysis still runs and finds no difference in a repeated text.
    at_bound = ("the cat sat on the mat " * 100)[:2000]
    assert analyse(at_bound).unreadable is None


async def test_analysis_runs_off_the_event_loop(verifier: Verifier, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = Verifier._stage_one

    def spy(self: Verifier, query: str, stored: list[str]):  # type: ignore[no-untyped-def]
        seen.append(threading.get_ident())
        return original(self, query, stored)

    monkeypatch.setattr(Verifier, "_stage_one", spy)
    await verifier.check("How do I boil an egg?", "How do I fry an egg?")
    assert seen and seen[0] != threading.get_ident()


def test_analysis_reads_numbers_units_and_requests() -> None:
    a = analyse("Please summarise these 2,500 words about twenty five km runs.")
    assert a.numbers == Counter({2500.0: 1, 25.0: 1})
    assert a.units == ["km"] and a.tasks == frozenset({"summarize"})
    assert analyse("How do I summarize a table in pandas?").tasks == frozenset()  # a topic, not a request
    assert analyse("Convert 5 km to miles").quantities == Counter({("#5", "km"): 1})
    assert analyse("Is 7 >= 3 in C++?").symbols == Counter({">=": 1, "id:c++": 1})
    assert analyse("Answer in 3 bullet points, in French").shape == {"fmt:bullets", "lang:french"}


def test_without_word_embeddings_unaligned_words_refuse() -> None:
    import asyncio

    strict = Verifier()
    assert not asyncio.run(strict.check("How do I mend a sock?", "How do I darn a sock?", similarity=0.9)).ok


def test_pair_model_file_is_json_with_a_schema(tmp_path: Path) -> None:
    doc = json.loads(verify.MODEL_PATH.read_text())
    assert doc["schema_version"] == 1 and doc["features"] == list(PairModel.FEATURES)
    model = PairModel.load()
    assert 0.0 < model.threshold < 1.0
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps({**doc, "schema_version": 2}))
    with pytest.raises(ConfigError, match="retrain"):
        PairModel.load(bad)
    bad.write_text("\x80not json")
    with pytest.raises(ConfigError, match="unreadable"):
        PairModel.load(bad)


async def test_labelled_set_precision_and_recall(verifier: Verifier, embedder: LocalEmbedder) -> None:
    """Cosine gate 0.80 + verifier on the older hand-written set (not used to fit the pair model)."""
    pairs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert len(pairs) >= 300
    q = await embedder.embed([p["query"] for p in pairs])
    c = await embedder.embed([p["cached"] for p in pairs])
    hits = Counter()
    totals = Counter(p["category"] for p in pairs)
    for p, qv, cv in zip(pairs, q, c):
        sim = float(qv @ cv)
        if sim >= 0.80 and (await verifier.check(p["query"], p["cached"], similarity=sim)).ok:
            hits[p["category"]] += 1
    false_hits = sum(n for cat, n in hits.items() if cat != "paraphrase")
    assert hits["paraphrase"] / (hits["paraphrase"] + false_hits) >= 0.98, (hits, totals)
    assert hits["paraphrase"] / totals["paraphrase"] >= 0.80
