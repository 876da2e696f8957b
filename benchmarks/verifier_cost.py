"""CPU cost of the semantic verifier per candidate, and a fingerprint of its decisions, over every pair file.

    .venv/bin/python benchmarks/verifier_cost.py [--repeat 3] [--out benchmarks/results]
    .venv/bin/python benchmarks/verifier_cost.py --check benchmarks/results/verifier_cost_baseline.json
    .venv/bin/python benchmarks/verifier_cost.py --write-expected    # refresh tests/proxy/data/verifier_decisions.json

Runs :class:`llmcache.proxy.semantic.verify.Verifier` (``check_sync``: both analyses, the checks, the
explanation) over every pair of every ``benchmarks/data/semantic_pairs*.jsonl`` file, and over the
pairs of ``semantic_stream_clusters.jsonl`` (each paraphrase and each negative against its cluster's
base prompt), and prints, side by side with the committed baseline when one is given:

- **cost**: thread CPU time per candidate (``time.thread_time_ns``: this thread only, so waiting for a
  core on a shared machine does not count), p50/p90/p99/max over all pairs and per file. Each
  candidate is timed ``--repeat`` times and its median kept. Every timing is *cold*: the verifier's
  per-text memo (if any) is cleared before each candidate, so both texts are analysed as if never seen
  (a new query against a stored text never compared before). The word-level look-ups (WordNet
  morphology, a process-lifetime working set) are warm, as they are in a running sidecar. A second
  figure, ``stored warm``, keeps the stored side's analysis memoised (a hot cache entry).
- **decisions**: per pair ``accept/refuse`` + reason (+ evidence of an accepted pair); one SHA-256 per
  file of the decisions, and one of the details too. ``--check OLD.json`` compares them with an
  earlier run and exits 1 on any difference. Only digests and counts are written to the JSON (held-out
  files — ``*blind*`` and the ``tune:check`` splits — are never printed pair by pair); ``--map-out``
  keeps the full per-pair map (ids only, no text) locally for a diff. Runs under ``PYTHONHASHSEED=0`` (it
  re-executes itself so): a detail may name the first member of a set, whose order follows the hash seed.

Writes ``<out>/verifier_cost.json`` (or ``--name``) and a PNG of the cost distribution.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmcache.proxy.semantic import verify  # after the offline switch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent
EXPECTED = ROOT / "tests" / "proxy" / "data" / "verifier_decisions.json"
#: The committed tuning file whose per-pair decisions a test pins (no held-out split in it).
EXPECTED_FILE = "semantic_pairs.jsonl"
#: Where verify keeps its per-text memo, if it has one (cleared before each cold timing).
_CLEAR_NAMES = ("clear_caches",)


def load_all() -> dict[str, list[tuple[str, str, str]]]:
    """``file name → [(id, query, cached)]`` for every pair file, and the stream clusters as pairs."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(DATA.glob("semantic_pairs*.jsonl")):
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    r = json.loads(line)
                    rows.append((str(r.get("id", f"line{n}")), r["query"], r["cached"]))
        out[path.name] = rows
    clusters = DATA / "semantic_stream_clusters.jsonl"
    if clusters.exists():
        rows = []
        with clusters.open() as f:
            for line in f:
                if not line.strip():
                    continue
                c = json.loads(line)
                base = c["base"]["prompt"]
                for k, p in enumerate(c["paraphrases"]):
                    rows.append((f"{c['cluster_id']}:p{k}", p, base))
                for k, neg in enumerate(c["negatives"]):
                    rows.append((f"{c['cluster_id']}:n{k}", neg["prompt"], base))
        out[clusters.name] = rows
    return out


def held_out(name: str) -> bool:
    return "blind" in name


def _clearer(verifier: verify.Verifier) -> Callable[[], None]:
    for name in _CLEAR_NAMES:
        fn = getattr(verifier, name, None)
        if fn is not None:
            return fn
    return lambda: None


def decision(v: verify.Verdict) -> str:
    """What the fingerprint compares: accept/refuse, the reason, and for a hit the evidence that explained it."""
    return f"{'accept' if v.ok else 'refuse'}:{v.reason}" + (f":{','.join(v.evidence)}" if v.ok else "")


def full(v: verify.Verdict) -> str:
    return f"{decision(v)}|{v.detail}|{v.score!r}"


def digest(m: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(xs, 0.50), "p90_ms": pct(xs, 0.90), "p99_ms": pct(xs, 0.99), "max_ms": max(xs, default=0.0),
            "mean_ms": statistics.fmean(xs) if xs else 0.0, "num": len(xs)}


def decide(verifier: verify.Verifier, files: dict[str, list[tuple[str, str, str]]]) -> dict[str, dict[str, str]]:
    """Per file, per id: the full verdict string (decision | detail | score)."""
    clear = _clearer(verifier)
    out: dict[str, dict[str, str]] = {}
    for name, rows in files.items():
        m: dict[str, str] = {}
        for pid, q, c in rows:
            clear()
            m[pid] = full(verifier.check_sync(q, [c])[0])
        out[name] = m
    return out


def time_pairs(verifier: verify.Verifier, files: dict[str, list[tuple[str, str, str]]], *, repeat: int,
               warm_stored: bool) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU ms per candidate over ``repeat`` runs, per file: (medians, minimums)."""
    clear = _clearer(verifier)
    med: dict[str, list[float]] = {}
    low: dict[str, list[float]] = {}
    tt = time.thread_time_ns
    for name, rows in files.items():
        costs, best = [], []
        for _pid, q, c in rows:
            runs = []
            for _ in range(repeat):
                clear()
                if warm_stored:
                    verifier.check_sync(c, [c + " "])  # the stored side analysed once before (a hot entry)
                t0 = tt()
                verifier.check_sync(q, [c])
                runs.append((tt() - t0) / 1e6)
            costs.append(statistics.median(runs))
            best.append(min(runs))
        med[name], low[name] = costs, best
    return med, low


def bound_cases(verifier: verify.Verifier) -> dict[str, float]:
    """Cost at the input bound: two 2,000-character texts (random words; English prose differing in one word)."""
    import random

    clear = _clearer(verifier)
    rng = random.Random(0)
    vocab = [f"w{i}x" for i in range(5000)]
    long_a = " ".join(rng.choice(vocab) for _ in range(400))[:2000]
    long_b = long_a[:-40] + " other words at the end here"
    words = ["the", "team", "should", "review", "how", "my", "service", "handles", "a", "request", "when", "the",
             "cache", "is", "cold", "and"]
    prose = " ".join(words[i % len(words)] for i in range(400))[:2000]
    out = {}
    for name, (x, y) in {"random_words_2000": (long_a, long_b),
                         "english_2000": (prose, prose.replace("cold", "empty", 1)[:2000])}.items():
        runs = []
        for _ in range(5):
            clear()
            t0 = time.thread_time_ns()
            verifier.check_sync(x, [y])
            runs.append((time.thread_time_ns() - t0) / 1e6)
        out[name] = statistics.median(runs)
    return out


def write_expected(verifier: verify.Verifier, files: dict[str, list[tuple[str, str, str]]]) -> None:
    rows = files[EXPECTED_FILE]
    m = {pid: decision(v) for pid, v in ((pid, verifier.check_sync(q, [c])[0]) for pid, q, c in rows)}
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    EXPECTED.write_text(json.dumps({"file": f"benchmarks/data/{EXPECTED_FILE}",
                                    "made_by": "benchmarks/verifier_cost.py --write-expected",
                                    "decisions": m}, indent=0, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED} ({len(m)} decisions)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="verifier_cost")
    parser.add_argument("--repeat", type=int, default=3, help="timings per candidate; the median is kept")
    parser.add_argument("--check", metavar="OLD_JSON", help="compare decisions (and costs) with an earlier run")
    parser.add_argument("--map-out", metavar="PATH", help="also write the per-pair verdict map (ids, no text) here")
    parser.add_argument("--map-in", metavar="PATH", help="with --check: an earlier --map-out, to list differing ids")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--write-expected", action="store_true",
                        help=f"write the decisions on {EXPECTED_FILE} to {EXPECTED.relative_to(ROOT)} and exit")
    args = parser.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Some details name the first of a set's members: one hash seed makes runs comparable detail for detail.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    files = load_all()
    verifier = verify.Verifier()
    if args.write_expected:
        write_expected(verifier, files)
        return 0
    t0 = time.perf_counter()
    verdicts = decide(verifier, files)  # also warms the word-level look-ups
    decide_s = time.perf_counter() - t0
    # The same pairs again, each checked twice in a row without clearing (the second time from kept analyses
    # and the indexes built on them; a stream cluster's base also from its comparisons with other queries):
    # a memo must never change a verdict.
    again = {f: {pid: full([verifier.check_sync(q, [c]) for _ in range(2)][1][0]) for pid, q, c in rows}
             for f, rows in files.items()}
    memo_same = again == verdicts
    decisions = {f: {k: v.split("|", 1)[0] for k, v in m.items()} for f, m in verdicts.items()}
    cold, cold_min = time_pairs(verifier, files, repeat=args.repeat, warm_stored=False)
    warm, _ = time_pairs(verifier, files, repeat=args.repeat, warm_stored=True)
    all_cold = [x for xs in cold.values() for x in xs]
    all_cold_min = [x for xs in cold_min.values() for x in xs]
    all_warm = [x for xs in warm.values() for x in xs]
    result: dict[str, Any] = {
        "command": "benchmarks/verifier_cost.py " + " ".join(sys.argv[1:]),
        "repeat": args.repeat, "load_average_1m": os.getloadavg()[0], "decide_all_s": decide_s,
        "cold": summary(all_cold), "cold_best": summary(all_cold_min), "stored_warm": summary(all_warm),
        "per_file": {f: {"cold": summary(cold[f]), "cold_best": summary(cold_min[f]), "stored_warm": summary(warm[f])}
                     for f in files},
        "at_input_bound_ms": bound_cases(verifier),
        "memo_warm_verdicts_identical": memo_same,
        "fingerprint": {f: {"num": len(decisions[f]), "decisions_sha256": digest(decisions[f]),
                            "verdicts_sha256": digest(verdicts[f])} for f in files},
    }
    old = json.loads(Path(args.check).read_text()) if args.check else None
    print(f"verifier CPU per candidate, ms (thread time; cold = both texts analysed; median of {args.repeat} runs, "
          f"and best of {args.repeat}):")
    head = (f"{'pairs':<32} {'n':>5}  {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} | best p50 / p99 "
            "| stored warm p50 / p99")
    print(head + (" | baseline p50 / p99, best p50 / p99" if old else ""))
    per = result["per_file"]
    rows = [("ALL", result["cold"], result["cold_best"], result["stored_warm"], old)]
    rows += [(f, per[f]["cold"], per[f]["cold_best"], per[f]["stored_warm"],
              old["per_file"].get(f) if old else None) for f in files]
    for name, c, b, w, o in rows:
        line = (f"{name[:32]:<32} {c['num']:>5}  {c['p50_ms']:6.3f} {c['p90_ms']:6.3f} {c['p99_ms']:6.3f} "
                f"{c['max_ms']:6.2f} | {b['p50_ms']:5.3f} / {b['p99_ms']:5.3f} "
                f"| {w['p50_ms']:6.3f} / {w['p99_ms']:6.3f}")
        if o:
            ob = o.get("cold_best", {"p50_ms": float("nan"), "p99_ms": float("nan")})
            line += (f" | {o['cold']['p50_ms']:5.3f} / {o['cold']['p99_ms']:5.3f}, "
                     f"{ob['p50_ms']:5.3f} / {ob['p99_ms']:5.3f}")
        print(line)
    b = result["at_input_bound_ms"]
    print("input bound (two 2,000-char texts): " + ", ".join(f"{k} {v:.2f} ms" for k, v in b.items())
          + (("   | baseline " + ", ".join(f"{k} {v:.2f} ms" for k, v in old["at_input_bound_ms"].items()))
             if old else ""))
    print(f"load average {result['load_average_1m']:.1f}")
    print(f"verdicts with every analysis kept from a first pass: {'identical' if memo_same else 'DIFFER'} "
          "to those of fresh analyses")
    status = 0 if memo_same else 1
    if old:
        print("\ndecisions vs " + args.check + ":")
        prev_map = json.loads(Path(args.map_in).read_text()) if args.map_in else None
        for f, fp in result["fingerprint"].items():
            ofp = old["fingerprint"].get(f)
            if ofp is None:
                print(f"  {f:<36} (not in the earlier run)")
                continue
            same = ofp["decisions_sha256"] == fp["decisions_sha256"]
            same_all = ofp["verdicts_sha256"] == fp["verdicts_sha256"]
            print(f"  {f:<36} {fp['num']:>5} pairs: decisions {'identical' if same else 'DIFFER'}; "
                  f"details and scores {'identical' if same_all else 'differ'}")
            if not same:
                status = 1
            if prev_map and not same_all and f in prev_map:
                diff = [k for k in verdicts[f] if prev_map[f].get(k) != verdicts[f][k]]
                if held_out(f):
                    print(f"    {len(diff)} pairs differ (held-out file: ids not shown)")
                else:
                    print(f"    differing ids: {diff[:20]}{' …' if len(diff) > 20 else ''}")
    if args.map_out:
        Path(args.map_out).write_text(json.dumps(verdicts))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.name}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = sorted(all_cold)
        ax.plot(xs, [i / len(xs) for i in range(len(xs))], label="this run, cold")
        ax.plot(sorted(all_warm), [i / len(all_warm) for i in range(len(all_warm))], label="this run, stored warm")
        ax.axvline(2.0, color="grey", ls="--", lw=0.8, label="goal p99 ≤ 2 ms")
        ax.set_xscale("log")
        ax.set_xlabel("verifier CPU per candidate (ms, thread time)")
        ax.set_ylabel("share of candidates")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{args.name}.png", dpi=110)
    print(f"\nwrote {json_path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
