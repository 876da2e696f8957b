"""Precision/recall of semantic-cache matching on labelled pairs: ours vs plain cosine vs GPTCache, in one run.

    .venv/bin/python benchmarks/semantic_eval.py [--out benchmarks/results] [--final]

Data (``benchmarks/data/``):

- ``semantic_pairs_gen.jsonl`` — ≥ 2,000 pairs from ``gen_semantic_pairs.py``: 47 paraphrase
  families × writing styles, hard negatives by controlled edits. ``split`` holds out whole
  families and whole edit types (``test``); the pair model and every rule were tuned on
  ``train`` only;
- ``semantic_pairs.jsonl`` (366) and ``semantic_pairs_holdout.jsonl`` (68): the older hand-written sets;
- ``semantic_pairs_final.jsonl`` — written after tuning, in another style (everyday questions,
  hand-written); ``--final`` evaluates it once and reports it as the headline.

Methods, all on the same all-MiniLM-L6-v2 embeddings from the wheel:

- ``ours``: cosine ≥ the default threshold AND :class:`llmcache.proxy.semantic.verify.Verifier` accepts;
- ``cosine``: cosine ≥ its best threshold (chosen on ``train``: most recall at precision ≥ 0.98,
  else best F1) — what most semantic caches do;
- ``gptcache``: GPTCache's default similarity evaluation (``init_similar_cache``:
  ``SearchDistanceEvaluation`` over faiss L2² distance, ``similarity_threshold`` 0.8), needs
  ``pip install 'llmcache[bench]'``.

Per category it prints the share of that edit's negatives refused ("correct") and the precision
traffic made of paraphrases and that kind of near miss would see. Per held-out family: P/R.
Also the verifier's own cost per candidate (analysis + checks + pair model, word vectors cached).
Writes ``<out>/<name>.json`` and ``<out>/<name>_pr_curve.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmcache.proxy.semantic.embedder import LocalEmbedder
from llmcache.policy import DEFAULT_SIMILARITY_THRESHOLD
from llmcache.proxy.semantic.verify import PairModel, Verdict, Verifier

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SETS = {"gen": DATA / "semantic_pairs_gen.jsonl", "legacy": DATA / "semantic_pairs.jsonl",
        "legacy_holdout": DATA / "semantic_pairs_holdout.jsonl"}
FINAL = DATA / "semantic_pairs_final.jsonl"
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 1.0001, 0.01)]
GOAL_PRECISION, GOAL_RECALL, GOAL_CATEGORY = 0.98, 0.70, 0.95
GPTCACHE_DEFAULT_THRESHOLD = 0.8  # gptcache.config.Config.similarity_threshold


def load_pairs(path: Path, source: str) -> list[dict[str, Any]]:
    pairs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"query", "cached", "category", "label"} - row.keys()
            if missing:
                raise SystemExit(f"{path}:{n}: missing fields {sorted(missing)}")
            row.setdefault("split", "test")
            row.setdefault("family", row["category"])
            row["source"] = source
            pairs.append(row)
    return pairs


class CachedEmbed:
    """The embedder behind an on-disk cache of vectors (npz without pickle), so reruns skip the model."""

    def __init__(self, embedder: LocalEmbedder, path: Path) -> None:
        self._embedder, self._path = embedder, path
        self._vecs: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                self._vecs = dict(zip(z["texts"].tolist(), z["vectors"]))
        self._dirty = False

    async def __call__(self, texts: Any) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vecs]
        for i in range(0, len(missing), 256):
            chunk = missing[i:i + 256]
            self._vecs.update(zip(chunk, await self._embedder.embed(chunk)))
            self._dirty = True
        return np.stack([self._vecs[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

    def save(self) -> None:
        if self._dirty:
            texts = list(self._vecs)
            np.savez(self._path, texts=np.array(texts), vectors=np.stack([self._vecs[t] for t in texts]))


async def embed_pairs(embed: Any, pairs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    texts = list(dict.fromkeys(t for p in pairs for t in (p["query"], p["cached"])))
    vecs = dict(zip(texts, await embed(texts)))
    q = np.stack([vecs[p["query"]] for p in pairs])
    c = np.stack([vecs[p["cached"]] for p in pairs])
    return q, c


async def verdicts_for(verifier: Verifier, pairs: list[dict[str, Any]], cosine: np.ndarray) -> list[Verdict]:
    return [(await verifier.check_many(p["query"], [p["cached"]], similarities=[float(s)]))[0]
            for p, s in zip(pairs, cosine)]


def metrics(pairs: list[dict[str, Any]], hits: np.ndarray) -> dict[str, Any]:
    """Precision, recall, per-category refusal rate and precision for one decision vector."""
    labels = np.array([p["label"] for p in pairs])
    tp = int(np.sum(hits & (labels == 1)))
    fp = int(np.sum(hits & (labels == 0)))
    pos = int(np.sum(labels == 1))
    cats: dict[str, dict[str, Any]] = {}
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        if p["label"] == 0:
            by_cat[p["category"]].append(i)
    for cat, idx in sorted(by_cat.items()):
        fp_c = int(np.sum(hits[idx]))
        cats[cat] = {"pairs": len(idx), "false_hits": fp_c, "correct": 1 - fp_c / len(idx),
                     "precision": tp / (tp + fp_c) if tp + fp_c else 1.0}
    return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / pos if pos else 0.0,
            "true_hits": tp, "false_hits": fp, "positives": pos, "negatives": len(pairs) - pos, "categories": cats}


def meets_goal(m: dict[str, Any]) -> bool:
    return (m["precision"] >= GOAL_PRECISION and m["recall"] >= GOAL_RECALL
            and all(c["correct"] >= GOAL_CATEGORY for c in m["categories"].values()))


def best_cosine_threshold(pairs: list[dict[str, Any]], cosine: np.ndarray, *, f1: bool = False) -> tuple[float, str]:
    """Most recall at precision ≥ goal on these pairs (else, or with ``f1``, the best F1)."""
    best: tuple[float, float] | None = None
    f1_best: tuple[float, float] = (THRESHOLDS[0], -1.0)
    for t in THRESHOLDS:
        m = metrics(pairs, cosine >= t)
        if m["precision"] >= GOAL_PRECISION and m["true_hits"] and (best is None or m["recall"] > best[1]):
            best = (t, m["recall"])
        p, r = m["precision"], m["recall"]
        f_score = 2 * p * r / (p + r) if p + r else 0.0
        if f_score > f1_best[1]:
            f1_best = (t, f_score)
    if f1 or best is None:
        return f1_best[0], "best F1"
    return best[0], "precision≥0.98"


def gptcache_scores(cosine: np.ndarray) -> np.ndarray | None:
    """GPTCache's default evaluation score (normalised to its range) for each pair, or ``None`` if absent."""
    try:
        from gptcache.similarity_evaluation import SearchDistanceEvaluation
    except ImportError:
        print("gptcache not installed (pip install 'llmcache[bench]'): skipping that baseline", file=sys.stderr)
        return None
    ev = SearchDistanceEvaluation()
    lo, hi = ev.range()
    l2sq = np.clip(2.0 - 2.0 * cosine, 0.0, None)  # faiss IndexFlatL2 distance between unit vectors
    return np.array([(ev.evaluation({}, {"search_result": (float(d), None)}) - lo) / (hi - lo) for d in l2sq])


def verifier_cost(verifier: Verifier, pairs: list[dict[str, Any]], cosine: np.ndarray,
                  vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-candidate time of the verifier (analysis, checks, pair model), word vectors already cached.

    CPU time of this thread (``time.thread_time``) is the cost; wall time is reported too, but on a
    shared 2-core machine it mostly measures waiting for a core (the load average is printed with it).
    """
    cpu, wall = [], []
    for p, s in list(zip(pairs, cosine))[:50]:  # warm-up: regex caches, lexicon look-ups
        verifier._stage_one(p["query"], [p["cached"]])  # noqa: SLF001
    for p, s in zip(pairs, cosine):
        t0, c0 = time.perf_counter(), time.thread_time()
        _, pending = verifier._stage_one(p["query"], [p["cached"]])  # noqa: SLF001 - measuring the stage itself
        for item in pending:
            verifier._judge(item, float(s), vectors)  # noqa: SLF001
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    c, w = np.array(cpu) * 1000, np.array(wall) * 1000
    # Worst case at the input bound: two 2,000-character texts of distinct words, nearly the same.
    rng = np.random.default_rng(0)
    vocab = [f"w{i}x" for i in range(5000)]
    long_a = " ".join(rng.choice(vocab, 400))[:2000]
    long_b = long_a[:-40] + " other words at the end here"
    c0 = time.thread_time()
    for _ in range(5):
        verifier._stage_one(long_a, [long_b])  # noqa: SLF001
    bound_ms = (time.thread_time() - c0) / 5 * 1000
    return {"p50_ms": float(np.percentile(c, 50)), "p99_ms": float(np.percentile(c, 99)), "max_ms": float(c.max()),
            "wall_p50_ms": float(np.percentile(w, 50)), "wall_p99_ms": float(np.percentile(w, 99)),
            "load_average_1m": os.getloadavg()[0], "num": len(c), "at_input_bound_ms": bound_ms}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sets = {name: load_pairs(path, name) for name, path in SETS.items() if path.exists()}
    if args.final:
        sets["final"] = load_pairs(FINAL, "final")
    pairs = [p for rows in sets.values() for p in rows]
    embedder = await LocalEmbedder.load(cache_entries=200_000, backend=args.embedder_backend)
    embed = CachedEmbed(embedder, Path(args.embed_cache))
    try:
        q, c = await embed_pairs(embed, pairs)
        cosine = np.sum(q * c, axis=1)
        verifier = Verifier(word_embed=embed)
        verdicts = await verdicts_for(verifier, pairs, cosine)
        words = sorted({w for p in pairs for w in (p["query"] + " " + p["cached"]).lower().split()})[:5000]
        word_vecs = await embed(words)
        t0 = time.perf_counter()
        await embedder.embed([f"uncached word {i} {time.time()}" for i in range(8)])
        word_batch_ms = (time.perf_counter() - t0) * 1000
    finally:
        embed.save()
        await embedder.close()
    accepted = np.array([v.ok for v in verdicts])
    thr = args.threshold
    groups = {"gen:train": [i for i, p in enumerate(pairs) if p["source"] == "gen" and p["split"] == "train"],
              "gen:test (held out)": [i for i, p in enumerate(pairs) if p["source"] == "gen" and p["split"] == "test"],
              "legacy (366)": [i for i, p in enumerate(pairs) if p["source"] == "legacy"],
              "legacy holdout (68)": [i for i, p in enumerate(pairs) if p["source"] == "legacy_holdout"]}
    if args.final:
        groups["FINAL fresh holdout"] = [i for i, p in enumerate(pairs) if p["source"] == "final"]
    train_idx = groups["gen:train"]
    t_cos, why = best_cosine_threshold([pairs[i] for i in train_idx], cosine[train_idx])
    t_f1, _ = best_cosine_threshold([pairs[i] for i in train_idx], cosine[train_idx], f1=True)
    g = gptcache_scores(cosine)
    methods: dict[str, np.ndarray] = {f"ours @{thr:.2f}": (cosine >= thr) & accepted,
                                      f"cosine @{t_cos:.2f}": cosine >= t_cos,
                                      f"cosine @{t_f1:.2f} (F1)": cosine >= t_f1}
    if g is not None:
        methods[f"gptcache default @{GPTCACHE_DEFAULT_THRESHOLD}"] = g >= GPTCACHE_DEFAULT_THRESHOLD
    result: dict[str, Any] = {
        "threshold": thr, "cosine_threshold": t_cos, "cosine_threshold_rule": why, "cosine_threshold_f1": t_f1,
        "goal": {"precision": GOAL_PRECISION, "recall": GOAL_RECALL, "category_correct": GOAL_CATEGORY},
        "num_pairs": {k: len(v) for k, v in groups.items()},
        "num_families": len({p["family"] for p in sets.get("gen", [])}),
        "groups": {}, "held_out_families": {}, "held_out_edits": {}, "sweep": {}}
    for gname, idx in groups.items():
        sub = [pairs[i] for i in idx]
        result["groups"][gname] = {m: metrics(sub, hits[idx]) for m, hits in methods.items()}
        result["groups"][gname]["ours_meets_goal"] = meets_goal(result["groups"][gname][f"ours @{thr:.2f}"])
    test = groups["gen:test (held out)"]
    ours = methods[f"ours @{thr:.2f}"]
    fams = sorted({pairs[i]["family"] for i in test if pairs[i]["split"] == "test"})
    from gen_semantic_pairs import TEST_EDITS, TEST_FAMILIES  # type: ignore[import-not-found]
    for fam in sorted(TEST_FAMILIES & set(fams)):
        idx = [i for i in test if pairs[i]["family"] == fam]
        result["held_out_families"][fam] = metrics([pairs[i] for i in idx], ours[idx])
    for edit in sorted(TEST_EDITS):
        idx = [i for i in test if pairs[i]["edit"] == edit]
        if idx:
            result["held_out_edits"][edit] = {"pairs": len(idx), "correct": float(1 - ours[idx].mean())}
    for name, idx in groups.items():
        sub = [pairs[i] for i in idx]
        result["sweep"][name] = {
            "cosine": [[t, *_pr(sub, cosine[idx] >= t)] for t in THRESHOLDS],
            "ours": [[t, *_pr(sub, (cosine[idx] >= t) & accepted[idx])] for t in THRESHOLDS]}
    result["refusals"] = {cat: dict(Counter(v.reason for p, v in zip(pairs, verdicts) if p["category"] == cat))
                          for cat in sorted({p["category"] for p in pairs})}
    vec_map = dict(zip(words, word_vecs))
    result["verifier_cost"] = verifier_cost(verifier, [pairs[i] for i in range(len(pairs))], cosine,
                                            _VectorLookup(vec_map, word_vecs.shape[1]))
    result["verifier_cost"]["word_embed_batch_of_8_uncached_ms"] = word_batch_ms
    result["verifier_cost"]["share_needing_word_vectors"] = float(np.mean([v.score is not None for v in verdicts]))
    if args.show_errors:
        for i, (p, v, s) in enumerate(zip(pairs, verdicts, cosine)):
            hit = bool(s >= thr and v.ok)
            if hit != bool(p["label"]) and p["source"] == "gen" and p["split"] in args.show_errors:
                print(f"  [{p['family']}/{p['category']}] cos={s:.2f} {v.reason:<10} {v.detail[:50]!s:<50} | "
                      f"{p['query']} || {p['cached']}")
    return result


class _VectorLookup(dict):  # type: ignore[type-arg]
    """Word vectors for the cost measurement: known words from the warm map, unknown ones a fixed vector."""

    def __init__(self, known: dict[str, np.ndarray], dim: int) -> None:
        super().__init__(known)
        self._fallback = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)

    def __missing__(self, key: str) -> np.ndarray:
        return self._fallback


def _pr(pairs: list[dict[str, Any]], hits: np.ndarray) -> list[float]:
    m = metrics(pairs, hits)
    return [m["precision"], m["recall"]]


def print_tables(result: dict[str, Any]) -> None:
    for gname, per_method in result["groups"].items():
        n = result["num_pairs"][gname]
        print(f"\n== {gname}: {n} pairs ==")
        names = [k for k in per_method if k != "ours_meets_goal"]
        cats = sorted({c for m in names for c in per_method[m]["categories"]})
        print(f"{'method':<26} {'prec':>6} {'recall':>6} {'FP':>4}  " + " ".join(f"{c[:9]:>9}" for c in cats))
        for m in names:
            r = per_method[m]
            cells = " ".join(f"{r['categories'][c]['correct']:>9.2f}" for c in cats)
            print(f"{m:<26} {r['precision']:6.3f} {r['recall']:6.3f} {r['false_hits']:>4}  {cells}")
        print(f"  (category columns: share of that edit's negatives refused; ours meets goal: {per_method['ours_meets_goal']})")
    print("\n== held-out families (gen:test, ours) ==")
    for fam, m in result["held_out_families"].items():
        print(f"  {fam:<16} precision {m['precision']:.3f} recall {m['recall']:.3f}  (+{m['positives']} / -{m['negatives']})")
    print("== held-out edit types (gen:test, ours): share refused ==")
    for edit, m in result["held_out_edits"].items():
        print(f"  {edit:<16} {m['correct']:.3f} of {m['pairs']}")
    c = result["verifier_cost"]
    print(f"\nverifier per candidate (analysis+checks+pair model, word vectors cached), CPU time: p50 {c['p50_ms']:.3f} ms, "
          f"p99 {c['p99_ms']:.3f} ms, max {c['max_ms']:.2f} ms over {c['num']} (wall p50 {c['wall_p50_ms']:.3f} / p99 "
          f"{c['wall_p99_ms']:.2f} ms at load {c['load_average_1m']:.1f}); two 2,000-character texts (the input bound): "
          f"{c['at_input_bound_ms']:.2f} ms; {c['share_needing_word_vectors']:.0%} "
          f"of pairs need word vectors (uncached batch of 8: {c['word_embed_batch_of_8_uncached_ms']:.1f} ms)")
    print(f"cosine thresholds chosen on gen:train: {result['cosine_threshold']:.2f} ({result['cosine_threshold_rule']}), "
          f"{result['cosine_threshold_f1']:.2f} (best F1)")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["sweep"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, pts in result["sweep"][name].items():
            ax.plot([r for _, _, r in pts], [p for _, p, _ in pts], marker=".", ms=3, label=method)
        ax.axhline(GOAL_PRECISION, color="grey", ls="--", lw=0.8)
        ax.axvline(GOAL_RECALL, color="grey", ls=":", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylim(0.3, 1.01)
    axes[0][0].set_ylabel("precision")
    axes[0][0].legend()
    fig.suptitle("Semantic matching: threshold sweep 0.50–1.00 (MiniLM cosine vs cosine + verifier)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="semantic_eval")
    parser.add_argument("--threshold", type=float, default=DEFAULT_SIMILARITY_THRESHOLD,
                        help=f"cosine gate before the verifier (default: the cache's, {DEFAULT_SIMILARITY_THRESHOLD})")
    parser.add_argument("--embed-cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llmcache_eval_vectors.npz"),
                        help="on-disk vector cache (npz, no pickle) so reruns skip the model")
    parser.add_argument("--embedder-backend", default="auto", choices=("auto", "onnx", "torch"),
                        help="local MiniLM on ONNX Runtime or torch (auto: ONNX when installed); give each its own "
                             "--embed-cache, or the cached vectors of the other are reused")
    parser.add_argument("--final", action="store_true", help="also evaluate the fresh held-out file (the headline)")
    parser.add_argument("--show-errors", nargs="*", default=[], choices=("train",),
                        help="print pairs decided wrongly in gen:train (tune on train only)")
    args = parser.parse_args()
    sys.path.insert(0, str(DATA))
    PairModel.load()  # fail early on a bad model file
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_tables(result)
    json_path, png_path = out / f"{args.name}.json", out / f"{args.name}_pr_curve.png"
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
