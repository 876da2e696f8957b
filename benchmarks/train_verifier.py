"""Fit the verifier's pair model on the ``train`` split only; write ``proxy/semantic/data/verify_model.json``.

    .venv/bin/python benchmarks/train_verifier.py [--threshold 0.80] [--dry-run] [--out PATH]

Only pairs that pass every evidence check and still have unaligned words reach the
pair model; this script collects those from ``benchmarks/data/semantic_pairs_gen.jsonl``
(``split == "train"``: held-out families and edit types are never read), computes
:attr:`llmcache.proxy.semantic.verify.PairModel.FEATURES`, fits an L2-regularised logistic
regression with numpy and picks the decision threshold with the most train recall
at precision ≥ 0.985 and every category ≥ 0.96 refused (cosine gate at ``--threshold``).
JSON, schema version 1; no pickle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmcache.proxy.semantic.embedder import LocalEmbedder
from llmcache.policy import DEFAULT_SIMILARITY_THRESHOLD
from llmcache.proxy.semantic.verify import MODEL_PATH, PairModel, Verifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from semantic_eval import SETS, CachedEmbed, embed_pairs, load_pairs, metrics  # noqa: E402


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, steps: int = 4000, lr: float = 0.5) -> tuple[np.ndarray, float]:
    """Plain batch gradient descent on standardised features; returns weights/bias in raw feature units."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        grad_w = z.T @ (p - y) / len(y) + l2 * w
        grad_b = float(np.mean(p - y))
        w -= lr * grad_w
        b -= lr * grad_b
    return w / sd, b - float(np.sum(w * mu / sd))


async def main_async(args: argparse.Namespace) -> int:
    pairs = [p for p in load_pairs(SETS["gen"], "gen") if p["split"] == "train"]
    embedder = await LocalEmbedder.load(cache_entries=200_000)
    embed = CachedEmbed(embedder, Path(os.path.join(os.environ.get("TMPDIR", "/tmp"), "llmcache_eval_vectors.npz")))
    try:
        q, c = await embed_pairs(embed, pairs)
        cosine = np.sum(q * c, axis=1)
        placeholder = PairModel(tuple([0.0] * len(PairModel.FEATURES)), 0.0, 0.5)
        verifier = Verifier(word_embed=embed, model=placeholder)
        staged = [verifier._stage_one(p["query"], [p["cached"]]) for p in pairs]  # noqa: SLF001
        pending = [(i, s[1][0]) for i, s in enumerate(staged) if s[1]]
        words = sorted({w for _, item in pending for w in (*item.all_a, *item.all_b)})
        vecs = await embed(words)
    finally:
        embed.save()
        await embedder.close()
    vectors = dict(zip(words, vecs))
    idx = np.array([i for i, _ in pending])
    x = np.array([verifier.features(item, float(cosine[i]), vectors) for i, item in pending])
    y = np.array([pairs[i]["label"] for i in idx], dtype=float)
    print(f"{len(pairs)} train pairs; {len(pending)} reach the pair model ({int(y.sum())} paraphrases)")
    w, b = fit_logistic(x, y)
    probs = 1 / (1 + np.exp(-(x @ w + b)))
    early_ok = np.array([s[0][0] is not None and s[0][0].ok for s in staged])
    best: tuple[float, float] | None = None
    for t in np.arange(0.30, 0.96, 0.01):
        accepted = early_ok.copy()
        accepted[idx] = probs >= t
        m = metrics(pairs, (cosine >= args.threshold) & accepted)
        ok = m["precision"] >= 0.985 and all(cat["correct"] >= 0.96 for cat in m["categories"].values())
        if ok and (best is None or m["recall"] > best[1]):
            best = (float(t), m["recall"])
    if best is None:
        print("no decision threshold reaches precision 0.985 on train; keeping 0.9", file=sys.stderr)
        best = (0.9, float("nan"))
    print("weights:", dict(zip(PairModel.FEATURES, np.round(w, 3))), "bias", round(b, 3))
    print(f"decision threshold {best[0]:.2f} (train recall {best[1]:.3f} with the cosine gate at {args.threshold})")
    doc: dict[str, Any] = {
        "schema_version": 1, "features": list(PairModel.FEATURES), "weights": [round(float(v), 5) for v in w],
        "bias": round(float(b), 5), "threshold": round(best[0], 2),
        "trained_on": f"benchmarks/data/semantic_pairs_gen.jsonl split=train ({len(pending)} pairs at the content stage)",
        "cosine_gate": args.threshold}
    if not args.dry_run:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_SIMILARITY_THRESHOLD)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=MODEL_PATH,
                        help=f"where the fitted model's JSON goes (default: {MODEL_PATH}, what the proxy loads)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
