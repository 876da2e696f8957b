"""Derive the verifier's compact English lexicon from WordNet 3.0: ``proxy/semantic/data/wordnet.json.gz``.

    apt-get install wordnet-base        # Debian's WordNet 3.0 dictionary files, /usr/share/wordnet
    .venv/bin/python benchmarks/data/build_wordnet_table.py [--wordnet /usr/share/wordnet] [--senses 3]

Run once at build time; the proxy ships only the derived table (≈ 1 MB gzipped) and reads no
WordNet file at run time. What it keeps, all lower case, single words or ``_``-joined collocations:

- ``pos``: every lemma and the parts of speech it has (``n``, ``v``, ``a``, ``r``) — the English
  vocabulary the language check and the role check read;
- ``exc``: irregular inflections (``ran`` → ``run``, ``children`` → ``child``) from the ``*.exc`` lists;
- ``syn``: word → ids of its synonym sets, each set cut to the lemmas for which that set is among their
  ``--senses`` most
  frequent senses (WordNet orders a lemma's senses by tagged frequency), so rare senses ("run" as
  "function") never make two words the same;
- ``der``: word → derivationally related words (``decide`` ↔ ``decision``) between such frequent senses;
- ``ant``: word → antonyms, between such frequent senses (evidence of a different meaning).

Licence: WordNet 3.0 Copyright 2006 by Princeton University, under the WordNet 3.0 licence
(permissive: use, copy, modify and distribute with its copyright notice and disclaimer), which the
table carries in its ``licence`` field; see ``proxy/semantic/data/WORDNET_LICENSE``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "proxy" / "semantic" / "data" / "wordnet.json.gz"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_WORD_RE = re.compile(r"^[a-z][a-z'_-]*[a-z]$")
LICENCE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE "
           "IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR "
           "IMPLIED. Derived table; full licence text in WORDNET_LICENSE.")


def read_index(path: Path) -> dict[str, list[str]]:
    """lemma → synset offsets in WordNet's sense order (most frequent first)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        f = line.split()
        lemma, n_synsets, n_ptrs = f[0], int(f[2]), int(f[3])
        offsets = f[4 + n_ptrs + 2:]
        assert len(offsets) == n_synsets, line
        out[lemma] = offsets
    return out


def read_data(path: Path, glosses: dict[str, str] | None = None,
              ) -> dict[str, tuple[list[str], list[tuple[str, str, str, str]]]]:
    """offset → (lemmas, pointers ``(symbol, target offset, target pos, source/target word numbers)``).

    With ``glosses``, also fills offset → the synset's definition (its gloss without the quoted examples).
    """
    out: dict[str, tuple[list[str], list[tuple[str, str, str, str]]]] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        if glosses is not None:
            glosses[f[0]] = gloss.split('"')[0].split(";")[0]
        offset, n_words = f[0], int(f[3], 16)
        words = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower() for i in range(n_words)]
        k = 4 + 2 * n_words
        n_ptrs = int(f[k])
        ptrs = [tuple(f[k + 1 + 4 * i:k + 5 + 4 * i]) for i in range(n_ptrs)]
        out[offset] = (words, ptrs)  # type: ignore[assignment]
    return out


#: Senses beyond the frequent ones kept for the weaker "any sense" evidence (rank < this).
MORE_SENSES = 10
#: A gloss word found in more than this share of the kept definitions says nothing about one word ("make", "act").
GLOSS_GENERIC_SHARE = 0.002
_GLOSS_STOP = frozenset("""
a an the of to in on for with by from at as or and but not no is are was be been being that which who whom whose
this these those it its their his her they them he she one ones any some all each every other another such more most
less least very especially usually often sometimes something someone somebody anything thing things used use using
etc e g i having has have had do does did done make makes made into out up down over under than then so also
""".split())  # noqa: SIM905 - a word list reads best as text


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def build(wordnet: Path, senses: int) -> dict[str, object]:  # noqa: C901 - one pass per WordNet file kind
    pos: dict[str, set[str]] = {}
    rank: dict[tuple[str, str, str], int] = {}  # (pos, offset, lemma) → sense rank of that lemma
    order: dict[str, list[tuple[str, str]]] = {}  # lemma → [(pos, offset)] in sense order, per part of speech
    data: dict[str, dict[str, tuple[list[str], list[tuple[str, str, str, str]]]]] = {}
    glosses: dict[str, dict[str, str]] = {}
    for p, name in POS_FILES.items():
        for lemma, offsets in read_index(wordnet / f"index.{name}").items():
            if _WORD_RE.match(lemma):
                pos.setdefault(lemma, set()).add(p)
            for r, off in enumerate(offsets):
                rank[(p, off, lemma)] = r
                order.setdefault(lemma, []).append((p, off))
        glosses[p] = {}
        data[p] = read_data(wordnet / f"data.{name}", glosses[p])
    exc: dict[str, str] = {}
    for name in POS_FILES.values():
        for line in (wordnet / f"{name}.exc").read_text(encoding="latin-1").splitlines():
            f = line.split()
            if len(f) >= 2 and _WORD_RE.match(f[0]) and f[1] in pos:
                exc.setdefault(f[0], f[1])

    def frequent(p: str, off: str, lemma: str) -> bool:
        return rank.get((p, off, lemma), senses) < senses

    # One small id per synset, in file order (stable across rebuilds of the same WordNet).
    ids: dict[tuple[str, str], str] = {}
    for p, synsets in data.items():
        for off in synsets:
            ids[(p, off)] = _base36(len(ids))
    sense: dict[str, list[str]] = {}
    more: dict[str, list[str]] = {}
    frequent_synsets: set[tuple[str, str]] = set()
    for lemma, found in order.items():
        for p, off in found:
            r = rank[(p, off, lemma)]
            if r < senses:
                sense.setdefault(lemma, []).append(ids[(p, off)])
                frequent_synsets.add((p, off))
            elif r < MORE_SENSES:
                more.setdefault(lemma, []).append(ids[(p, off)])
    der: set[tuple[str, str]] = set()
    ant: set[tuple[str, str]] = set()
    hyper: dict[str, list[str]] = {}
    similar: dict[str, list[str]] = {}
    for p, synsets in data.items():
        for off, (words, ptrs) in synsets.items():
            me = ids[(p, off)]
            for symbol, t_off, raw_pos, nums in ptrs:
                t_pos = "a" if raw_pos == "s" else raw_pos
                if (t_pos, t_off) not in ids:
                    continue
                if symbol in ("@", "@i"):
                    hyper.setdefault(me, []).append(ids[(t_pos, t_off)])
                elif symbol in ("&", "^", "$"):  # similar to, also see, verb group
                    similar.setdefault(me, []).append(ids[(t_pos, t_off)])
                if symbol not in ("+", "!") or nums == "0000":
                    continue
                src, dst = int(nums[:2], 16) - 1, int(nums[2:], 16) - 1
                target = data.get(t_pos, {}).get(t_off)
                if target is None or src >= len(words) or dst >= len(target[0]):
                    continue
                a, b = words[src], target[0][dst]
                if a == b or not frequent(p, off, a) or not frequent(t_pos, t_off, b):
                    continue
                (der if symbol == "+" else ant).add((min(a, b), max(a, b)))

    def base(word: str) -> str | None:
        if word in pos:
            return word
        if word in exc:
            return exc[word]
        for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e")):
            if word.endswith(suffix) and word[: -len(suffix)] + repl in pos:
                return word[: -len(suffix)] + repl
        return None

    # Definitions: the content lemmas of each frequent sense's gloss ("ripe": "fully developed … ready to be eaten").
    gloss_words: dict[str, list[str]] = {}
    for p, offs in glosses.items():
        for off, text in offs.items():
            if (p, off) not in frequent_synsets:
                continue
            found = []
            for w in re.findall(r"[a-z][a-z-]+", text.lower()):
                b = base(w)
                if b is not None and b not in _GLOSS_STOP and len(b) > 2 and b not in found:
                    found.append(b)
            if found:
                gloss_words[ids[(p, off)]] = found
    df: dict[str, int] = {}
    for found in gloss_words.values():
        for w in found:
            df[w] = df.get(w, 0) + 1
    generic = {w for w, n in df.items() if n > GLOSS_GENERIC_SHARE * len(gloss_words)}
    gloss = {k: " ".join(w for w in v if w not in generic) for k, v in gloss_words.items()}

    def by_word(rows: set[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        for a, b in sorted(rows):
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
        return {k: " ".join(v) for k, v in sorted(out.items())}

    # Values are strings split on first use, so loading the table is one JSON parse (fast start-up).
    return {
        "schema_version": 3,
        "source": "WordNet 3.0 (Debian package wordnet-base), derived by benchmarks/data/build_wordnet_table.py",
        "licence": LICENCE, "senses": senses,
        "pos": {w: "".join(sorted(ps)) for w, ps in sorted(pos.items()) if "_" not in w},
        "exc": dict(sorted(exc.items())),
        "sense": {w: " ".join(v) for w, v in sorted(sense.items())},
        "more": {w: " ".join(v) for w, v in sorted(more.items())},
        "hyper": {k: " ".join(v) for k, v in hyper.items()},
        "similar": {k: " ".join(v) for k, v in similar.items()},
        "gloss": {k: v for k, v in gloss.items() if v},
        "generic_gloss_words": sorted(generic),
        "der": by_word(der),
        "ant": by_word(ant),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                        help="folder with WordNet 3.0's index.* / data.* / *.exc (apt-get install wordnet-base)")
    parser.add_argument("--senses", type=int, default=3, help="a lemma's most frequent senses that count (default 3)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not (args.wordnet / "index.noun").is_file():
        raise SystemExit(f"{args.wordnet} has no WordNet index files: apt-get install wordnet-base, or pass --wordnet")
    table = build(args.wordnet, args.senses)
    raw = json.dumps(table, separators=(",", ":"), sort_keys=False).encode()
    # mtime=0: the same input gives the same bytes, so a rebuild shows no spurious diff.
    args.out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    print(f"wrote {args.out}: {len(table['pos'])} words, {len(table['sense'])} with frequent senses, "
          f"{len(table['hyper'])} synsets with hypernyms, {len(table['gloss'])} definitions, "
          f"{len(table['der'])} with derivations, {len(table['ant'])} with antonyms, "
          f"{len(table['exc'])} irregular forms; "
          f"{args.out.stat().st_size / 1e6:.2f} MB gzipped ({len(raw) / 1e6:.1f} MB raw)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
