"""The error-bound model (llmcache.errorbound): Beta arithmetic, the certified walk, the Redis hash format."""

from __future__ import annotations

import math
import random

import pytest

from llmcache import errorbound as eb


def state(cells: dict[tuple[str, float], tuple[int, int, int]], **totals: int) -> eb.ModelState:
    """A model state from ``(class, similarity) → (seen, judged, wrong)``."""
    s = eb.ModelState(version="v1", **{f"num_{k}": v for k, v in totals.items()})
    for (cls, sim), (seen, judged, wrong) in cells.items():
        s.cells[(cls, eb.similarity_bin(sim))] = eb.CellCounts(seen, judged, wrong)
    return s


@pytest.mark.parametrize("q, a, b, exact", [
    (0.95, 1.0, 50.0, 1 - 0.05 ** (1 / 50)),           # Beta(1, n): 1 - (1 - q)^(1/n)
    (0.05, 1.0, 7.0, 1 - 0.95 ** (1 / 7)),
    (0.95, 3.0, 1.0, 0.95 ** (1 / 3)),                  # Beta(a, 1): q^(1/a)
    (0.9, 0.5, 0.5, math.sin(math.pi * 0.9 / 2) ** 2),  # arcsine
    (0.5, 4.0, 4.0, 0.5),                               # symmetric
])
def test_beta_quantile_matches_closed_forms(q: float, a: float, b: float, exact: float) -> None:
    assert eb.beta_ppf(q, a, b) == pytest.approx(exact, abs=1e-8)


def test_beta_quantile_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="0 < q < 1"):
        eb.beta_ppf(1.0, 1.0, 1.0)


def test_min_judged_is_where_a_clean_region_first_passes() -> None:
    n = eb.min_judged(0.01)
    assert n == 193 and eb.min_judged(0.05) == 39
    clean = state({("a", 0.95): (n, n, 0)})
    assert eb.fit(clean, 0.01).serves("a", eb.similarity_bin(0.95))
    # A few judgements fewer and the same clean record cannot certify 1 %.
    fewer = state({("a", 0.95): (n - 20, n - 20, 0)})
    assert not eb.fit(fewer, 0.01).bounded


def test_evidence_spread_over_many_bins_counts_as_much_as_in_one() -> None:
    """One prior per region, not per cell: 200 clean judgements certify 1 % however many bins hold them."""
    one_bin = state({("p", 0.95): (200, 200, 0)})
    sims = (0.80, 0.83, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96)
    eight_bins = state({("p", sim): (25, 25, 0) for sim in sims})
    assert eb.fit(one_bin, 0.01).bounded
    fit = eb.fit(eight_bins, 0.01)
    assert fit.threshold_similarities == {"p": 0.80}
    assert fit.error_upper == pytest.approx(eb.fit(one_bin, 0.01).error_upper, rel=1e-6)


def test_served_bins_nobody_judged_yet_do_not_undo_the_certificate_below() -> None:
    """Certified down to 0.90, the class also serves 0.99, where only served hits (no judgement) arrive."""
    s = state({("p", 0.90): (300, 300, 0), ("p", 0.99): (3, 0, 0)})
    fit = eb.fit(s, 0.01)
    assert fit.threshold_similarities == {"p": 0.90} and fit.serves("p", eb.similarity_bin(0.995))
    assert not eb.fit(state({("p", 0.99): (50, 0, 0)}), 0.01).bounded  # no judgement at all: nothing


def test_nothing_judged_is_learning_and_serves_nothing() -> None:
    fit = eb.fit(state({("s", 0.9): (50, 0, 0)}), 0.01)
    assert not fit.bounded and fit.error_rate is None
    assert not fit.serves("s", eb.similarity_bin(0.9))
    assert fit.describe() == "learning (0 judged)"


def test_walk_certifies_down_to_the_first_region_over_the_bound_and_no_further() -> None:
    s = state({
        ("a", 0.99): (300, 300, 0),
        ("a", 0.96): (300, 300, 0),
        ("a", 0.90): (300, 300, 30),   # 10 % wrong: the region down to 0.90 fails …
        ("a", 0.83): (300, 300, 0),    # … so this clean bin below it is never certified (fixed sequence)
    })
    fit = eb.fit(s, 0.01)
    assert fit.threshold_similarities == {"a": 0.96}
    assert fit.serves("a", eb.similarity_bin(0.97)) and not fit.serves("a", eb.similarity_bin(0.91))
    assert not fit.serves("a", eb.similarity_bin(0.84))
    assert fit.error_upper is not None and fit.error_upper <= 0.01
    assert fit.describe().startswith("bounded (error ≤ ")


def test_classes_get_their_own_thresholds_and_the_static_comparator_pools_them() -> None:
    s = state({
        ("a", 0.99): (300, 300, 0), ("a", 0.90): (300, 300, 0), ("a", 0.84): (300, 300, 0),
        ("s", 0.99): (300, 300, 0), ("s", 0.90): (300, 300, 60), ("s", 0.84): (300, 300, 90),
    })
    fit = eb.fit(s, 0.01)
    assert fit.threshold_similarities == {"a": 0.83, "s": 0.99}
    # One threshold for both classes must stop where the scored class turns bad.
    assert fit.static_bin == eb.similarity_bin(0.99)
    assert fit.serves("a", eb.similarity_bin(0.85)) and not fit.static_serves(eb.similarity_bin(0.85))


def test_region_error_is_weighted_by_traffic_not_by_how_often_cells_were_judged() -> None:
    """A bin seen often but judged rarely (explored hits) counts with its traffic."""
    judged_alike = state({("a", 0.99): (1000, 1000, 0), ("a", 0.96): (1000, 1000, 30)})
    # Same judgements, but the bad bin carries 20× the traffic: the region's error is mostly its 3 %.
    traffic_heavy = state({("a", 0.99): (1000, 1000, 0), ("a", 0.96): (20000, 1000, 30)})
    light = eb.fit(judged_alike, 0.05)
    heavy = eb.fit(traffic_heavy, 0.05)
    assert light.error_rate is not None and heavy.error_rate is not None
    assert heavy.error_rate > 1.8 * light.error_rate
    assert heavy.error_rate == pytest.approx(30.5 / 1001 * 20 / 21, rel=0.05)


def test_certification_is_rare_when_the_true_error_exceeds_the_bound() -> None:
    """Coverage: cells whose true error is 2 % pass a 1 % bound in well under 5 % of trials; at 0.1 % they pass."""
    rng = random.Random(20)

    def trial(true_error: float, n: int) -> bool:
        wrong = sum(rng.random() < true_error for _ in range(n))
        return eb.fit(state({("s", 0.95): (n, n, wrong)}), 0.01).bounded

    assert sum(trial(0.02, 400) for _ in range(300)) / 300 < 0.05
    assert sum(trial(0.001, 800) for _ in range(100)) / 100 > 0.8


def test_parse_reads_the_current_version_and_ignores_junk() -> None:
    raw = {
        b"current": b"v2",
        b"v2:a:11:n": b"10", b"v2:a:11:j": b"8", b"v2:a:11:w": b"1",
        b"v2:served": b"7", b"v2:gained": b"2", b"v2:explored": b"1", b"v2:delta": b"0.01", b"v2:t": b"123",
        b"v1:a:11:j": b"999",        # an older verifier's counts
        b"v2:zz:11:j": b"5", b"v2:a:99:j": b"5", b"v2:a:11:x": b"5", b"v2:a:11:n:extra": b"1",
        b"v2:s:3:j": b"not a number",
    }
    s = eb.parse(raw)
    assert s.version == "v2" and s.cells == {("a", 11): eb.CellCounts(10, 8, 1)}
    assert (s.num_served, s.num_gained, s.num_explored) == (7, 2, 1)
    assert s.max_error_rate == 0.01 and s.updated_s == 123
    assert eb.parse(raw, version="v1").cells == {("a", 11): eb.CellCounts(0, 999, 0)}
    assert eb.parse({}).cells == {}


def test_fields_round_trip_through_parse() -> None:
    raw = {eb.cell_field("v", "s+", 5, "j"): "4", eb.cell_field("v", "s+", 5, "w"): "1",
           eb.total_field("v", "delta"): "0.05", "current": "v"}
    s = eb.parse(raw)
    assert s.cells[("s+", 5)] == eb.CellCounts(0, 4, 1) and s.max_error_rate == 0.05


def test_a_remembered_wrong_pair_is_never_served() -> None:
    s = state({("x", 0.99): (5000, 5000, 0), ("p", 0.99): (300, 300, 0)})
    fit = eb.fit(s, 0.01)
    assert fit.thresholds == {"p": eb.similarity_bin(0.99)} and not fit.serves("x", eb.similarity_bin(0.995))


def test_candidate_class_and_bins() -> None:
    assert eb.candidate_class(verified=True, scored=True, crowded=True, pair="right") == "p"
    assert eb.candidate_class(verified=True, scored=False, crowded=False, pair="wrong") == "x"
    assert eb.candidate_class(verified=True, scored=False, crowded=False) == "a"
    assert eb.candidate_class(verified=True, scored=True, crowded=True) == "s+"
    assert eb.candidate_class(verified=False, scored=False, crowded=False) == "u"
    assert eb.SIMILARITY_EDGES[eb.similarity_bin(0.8)] == 0.80
    assert eb.SIMILARITY_EDGES[eb.similarity_bin(0.7999)] == 0.75
    assert eb.similarity_bin(1.2) == len(eb.SIMILARITY_EDGES) - 1 and eb.similarity_bin(-1) == 0


def test_fit_rejects_a_bound_outside_0_1() -> None:
    with pytest.raises(ValueError, match="max_error_rate"):
        eb.fit(eb.ModelState(), 0.0)
