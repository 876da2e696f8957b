"""Precision/recall of semantic-cache matching on a labelled set: plain cosine vs GPTCache vs ours.

    .venv/bin/python benchmarks/semantic_eval.py [--data benchmarks/data/semantic_pairs.jsonl]

Each pair is (query, cached text, category, label, split): label 1 means the cached
answer may serve the query (a paraphrase), 0 means it must not (a hard negative
of one category: negation/antonym, numbers/units, entities, direction/roles,
task change, related topic). For every method and a threshold sweep it reports:

- overall precision, recall and false-hit count;
- per category: false hits, and the category's precision = hits on paraphrases /
  (hits on paraphrases + false hits of that category) — the precision traffic made
  of paraphrases and that kind of near miss would see.

Methods, all on the same all-MiniLM-L6-v2 embeddings from the wheel:

- ``cosine``: hit when cosine similarity ≥ threshold (what most semantic caches do);
- ``gptcache``: GPTCache's ``NumpyNormEvaluation`` score, normalised by its ``range()``
  as GPTCache's ``similarity_threshold`` is (requires ``pip install 'llmcache[bench]'``);
- ``ours``: cosine ≥ threshold AND :class:`llmcache.proxy.verify.Verifier` accepts.

The operating point is chosen on the ``dev`` split (most recall with precision ≥
0.98 and every category ≥ 0.95) and reported on the held-out ``test`` split, so
the numbers say how the checks generalise to pairs they were not tuned on.
Writes ``benchmarks/results/semantic_eval.json`` and ``semantic_eval_pr_curve.png``.

``benchmarks/data/semantic_pairs_holdout.jsonl`` (68 pairs, written after the verifier was
tuned and evaluated once) is a second held-out check::

    .venv/bin/python benchmarks/semantic_eval.py --data benchmarks/data/semantic_pairs_holdout.jsonl --name semantic_eval_holdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmcache.proxy.embedder import LocalEmbedder  # noqa: E402
from llmcache.proxy.verify import Verifier  # noqa: E402

HERE = Path(__file__).resolve().parent
CATEGORIES = ("negation", "numbers", "entities", "direction", "task", "related")
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 1.0001, 0.01)]
GOAL_PRECISION, GOAL_RECALL, GOAL_CATEGORY_PRECISION = 0.98, 0.60, 0.95


def load_pairs(path: Path) -> list[dict[str, Any]]:
    pairs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"query", "cached", "category", "label"} - row.keys()
            if missing:
                raise SystemExit(f"{path}:{n}: missing fields {sorted(missing)}")
            row.setdefault("split", "dev")
            pairs.append(row)
    return pairs


def metrics(pairs: list[dict[str, Any]], hits: list[bool]) -> dict[str, Any]:
    """Overall and per-category precision / recall / false hits for one decision vector."""
    tp = sum(1 for p, h in zip(pairs, hits) if h and p["label"] == 1)
    fp = sum(1 for p, h in zip(pairs, hits) if h and p["label"] == 0)
    pos = sum(1 for p in pairs if p["label"] == 1)
    fp_by = Counter(p["category"] for p, h in zip(pairs, hits) if h and p["label"] == 0)
    n_by = Counter(p["category"] for p in pairs)
    per_cat = {}
    for cat in CATEGORIES:
        if n_by[cat] == 0:
            continue
        per_cat[cat] = {"pairs": n_by[cat], "false_hits": fp_by[cat],
                        "precision": tp / (tp + fp_by[cat]) if tp + fp_by[cat] else 1.0}
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / pos if pos else 0.0,
        "true_hits": tp, "false_hits": fp, "positives": pos,
        "categories": per_cat,
    }


def meets_goal(m: dict[str, Any]) -> bool:
    return (m["precision"] >= GOAL_PRECISION and m["recall"] >= GOAL_RECALL
            and all(c["precision"] >= GOAL_CATEGORY_PRECISION for c in m["categories"].values()))


def best_threshold(pairs: list[dict[str, Any]], scores: np.ndarray, accepted: np.ndarray) -> float | None:
    """Threshold with most recall where precision ≥ goal and every category ≥ goal (on these pairs)."""
    best: tuple[float, float] | None = None
    for t in THRESHOLDS:
        m = metrics(pairs, list((scores >= t) & accepted))
        ok = m["precision"] >= GOAL_PRECISION and all(c["precision"] >= GOAL_CATEGORY_PRECISION for c in m["categories"].values())
        if ok and m["true_hits"] > 0 and (best is None or m["recall"] > best[1]):
            best = (t, m["recall"])
    return None if best is None else best[0]


def gptcache_scores(queries: np.ndarray, cached: np.ndarray, pairs: list[dict[str, Any]]) -> np.ndarray | None:
    try:
        from gptcache.similarity_evaluation import NumpyNormEvaluation
    except ImportError:
        print("gptcache not installed (pip install 'llmcache[bench]'): skipping that baseline", file=sys.stderr)
        return None
    ev = NumpyNormEvaluation(enable_normal=True)
    lo, hi = ev.range()
    out = []
    for p, q, c in zip(pairs, queries, cached):
        score = ev.evaluation({"question": p["query"], "embedding": q}, {"question": p["cached"], "embedding": c})
        out.append((score - lo) / (hi - lo))  # GPTCache maps similarity_threshold onto range() the same way
    return np.asarray(out)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs = load_pairs(Path(args.data))
    embedder = await LocalEmbedder.load()
    try:
        q = await embedder.embed([p["query"] for p in pairs])
        c = await embedder.embed([p["cached"] for p in pairs])
        cosine = np.sum(q * c, axis=1)
        verifier = Verifier(word_embed=embedder.embed, word_similarity=args.word_similarity)
        verdicts = [await verifier.check(p["query"], p["cached"]) for p in pairs]
    finally:
        await embedder.close()
    accepted = np.array([v.ok for v in verdicts])
    everything = np.ones(len(pairs), dtype=bool)
    methods: dict[str, tuple[np.ndarray, np.ndarray]] = {"cosine": (cosine, everything)}
    g = gptcache_scores(q, c, pairs)
    if g is not None:
        methods["gptcache"] = (g, everything)
    methods["ours"] = (cosine, accepted)

    splits = {"all": list(range(len(pairs))),
              "dev": [i for i, p in enumerate(pairs) if p["split"] == "dev"],
              "test": [i for i, p in enumerate(pairs) if p["split"] == "test"]}
    result: dict[str, Any] = {"data": str(args.data), "num_pairs": len(pairs),
                              "num_by_category": dict(Counter(p["category"] for p in pairs)),
                              "num_by_split": {k: len(v) for k, v in splits.items()},
                              "goal": {"precision": GOAL_PRECISION, "recall": GOAL_RECALL,
                                       "category_precision": GOAL_CATEGORY_PRECISION},
                              "methods": {}}
    for name, (scores, acc) in methods.items():
        entry: dict[str, Any] = {"sweep": {}}
        for split, idx in splits.items():
            sub = [pairs[i] for i in idx]
            entry["sweep"][split] = {f"{t:.2f}": metrics(sub, list((scores[idx] >= t) & acc[idx])) for t in THRESHOLDS}
        dev_idx = splits["dev"]
        t_best = best_threshold([pairs[i] for i in dev_idx], scores[dev_idx], acc[dev_idx]) if dev_idx else None
        entry["chosen_on_dev"] = t_best
        if t_best is not None:
            entry["at_chosen"] = {split: entry["sweep"][split][f"{t_best:.2f}"] for split in splits}
            entry["meets_goal_on_test"] = meets_goal(entry["at_chosen"]["test"])
            entry["meets_goal_on_all"] = meets_goal(entry["at_chosen"]["all"])
        result["methods"][name] = entry
    result["verifier_rejections"] = {cat: dict(Counter(v.reason for p, v in zip(pairs, verdicts) if p["category"] == cat))
                                     for cat in ("paraphrase", *CATEGORIES)}
    if args.show_errors:
        for p, v, s in zip(pairs, verdicts, cosine):
            wrong = (p["label"] == 1 and not v.ok) or (p["label"] == 0 and v.ok)
            if wrong and p["split"] in args.show_errors:
                print(f"  [{p['category']}/{p['split']}] cos={s:.2f} {v.reason:<9} {v.detail[:60]!s:<60} | {p['query']} || {p['cached']}")
    return result


def print_tables(result: dict[str, Any], thresholds: list[str]) -> None:
    for name, entry in result["methods"].items():
        print(f"\n== {name} (all pairs) ==")
        head = f"{'thr':>5} {'prec':>6} {'recall':>6} {'FP':>4} " + " ".join(f"{c[:8]:>9}" for c in CATEGORIES)
        print(head)
        for t in thresholds:
            m = entry["sweep"]["all"][t]
            cats = " ".join(f"{m['categories'][c]['false_hits']:>3}/{m['categories'][c]['precision']:.2f}" for c in CATEGORIES)
            print(f"{t:>5} {m['precision']:6.3f} {m['recall']:6.3f} {m['false_hits']:>4} {cats}")
        t_best = entry.get("chosen_on_dev")
        if t_best is None:
            print("  no operating point chosen (no dev split, or no threshold reaches the goal on it)")
            continue
        print(f"  chosen on dev: {t_best:.2f}")
        for split in ("dev", "test", "all"):
            m = entry["at_chosen"][split]
            worst = min(m["categories"].items(), key=lambda kv: kv[1]["precision"])
            print(f"  {split:>4}: precision {m['precision']:.3f} recall {m['recall']:.3f} false hits {m['false_hits']}"
                  f" (worst category {worst[0]} {worst[1]['precision']:.3f})")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, entry in result["methods"].items():
        pts = [(m["recall"], m["precision"]) for m in entry["sweep"]["all"].values() if m["true_hits"] + m["false_hits"] > 0]
        ax.plot([r for r, _ in pts], [p for _, p in pts], marker=".", label=name)
        if entry.get("chosen_on_dev") is not None:
            m = entry["at_chosen"]["all"]
            ax.annotate(f"{entry['chosen_on_dev']:.2f}", (m["recall"], m["precision"]))
    ax.axhline(GOAL_PRECISION, color="grey", ls="--", lw=0.8)
    ax.axvline(GOAL_RECALL, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("recall (paraphrases served)")
    ax.set_ylabel("precision")
    ax.set_title(f"Semantic cache matching, {result['num_pairs']} labelled pairs (threshold sweep)")
    ax.set_ylim(0.3, 1.01)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE / "data" / "semantic_pairs.jsonl"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="semantic_eval",
                        help="result file stem: <name>.json and <name>_pr_curve.png (default: semantic_eval)")
    parser.add_argument("--word-similarity", type=float, default=0.80)
    parser.add_argument("--show-errors", nargs="*", default=[], choices=("dev", "test"),
                        help="print pairs the verifier gets wrong in these splits (tune on dev only)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_tables(result, ["0.70", "0.75", "0.80", "0.85", "0.90", "0.95"])
    json_path, png_path = out / f"{args.name}.json", out / f"{args.name}_pr_curve.png"
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
