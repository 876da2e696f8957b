"""Error-bounded semantic caching: the learned model of "is this candidate's answer right?".

A CachePolicy may state the wrong-answer rate it accepts among semantic hits
(``spec.semantic.maxErrorRate``, δ). The proxy then serves a candidate the verifier
accepted only when judged outcomes *certify* that candidates like it are right often
enough: the upper bound of their error rate, at :data:`CONFIDENCE`, is ≤ δ. This module
is the model and its arithmetic; the proxy (``llmcache.proxy.semantic.bound``) feeds it,
the operator (``CachePolicy.status``) and ``llmcache stats`` read it. Pure Python: the
operator has no numpy.

"Like it" is a *cell*: the candidate's class (how the verifier accepted it) and its
similarity bin::

    class  p   this very pair (request text, cached text) was judged right before, never wrong
           x   this very pair was judged wrong before (never served; not counted elsewhere)
           a   every word aligned (no unexplained difference left)    ─┐ "+": a more similar
           s   the verifier's pair model decided (a score)             │ neighbour was refused
           u   unverified (``verify`` off)                            ─┘ (a crowded region)
    bin    [0.80, 0.83) … [0.98, 0.99) [0.99, 1]   (SIMILARITY_EDGES)

Pairs recur: the same popular question is asked by many users, and comes back after its entry
expired. A pair judged once is the strongest evidence there is about the next time it meets,
but it is only as good as the judge, so class ``p`` is certified like every other class (its
candidates keep being judged, and its error rate is what it is), never trusted outright.

Per cell the model counts ``seen`` (candidates that reached the decision), ``judged`` and
``wrong``. Within a class a *region* is every bin at or above a threshold; its error rate is the
traffic-weighted mean of its cells' rates (weights = ``seen``: cells are judged at different
rates, all of an uncertified cell's candidates but only the explored share of a certified one's).
Its posterior is a Beta with one Jeffreys prior, Beta(½, ½), over the weighted estimate and its
Kish effective sample size (Σw)² / Σ(w²/judged), read at :data:`CONFIDENCE`; with every cell judged
at the same rate that is exactly the Jeffreys posterior of the pooled counts. A cell with traffic
but no judgement yet (a bin above a certified threshold that only ever saw served hits) takes no
weight: within a class the error rate does not grow with similarity, so it is no worse than the
judged bins below it::

    class s:  bins from the top ──▶ region ≥ b has ≥ n_min judged?  no ─▶ next bin down
                                    └ yes: upper bound ≤ δ?  yes ─▶ certified down to b, next
                                                             no  ─▶ stop (fixed-sequence test)

Testing the nested regions in a fixed order, stopping at the first failure, keeps the
error of the whole walk at the stated confidence (no multiple-testing correction is
needed); regions too small to pass even with no error (``n_min``, 192 judged at δ = 0.01)
are skipped because of their size, never because of their outcome. The served set is
the disjoint union of every class's certified region, so its error rate is bounded too.

The *static* comparator is the same walk with the classes pooled: one similarity
threshold for every candidate, the kind of rule a policy states today. Hits the learned
rule serves and that one would not are ``gained``.

Redis layout (one HASH per policy group, :meth:`llmcache.keyspace.Keyspace.bound`; fields
prefixed by a model *version*, so a new verifier starts from nothing instead of inheriting
a calibration that no longer applies)::

    current              version the last writer used
    {v}:{cls}:{bin}:n    seen        {v}:served    hits served        {v}:delta  δ in effect
    {v}:{cls}:{bin}:j    judged      {v}:gained    … beyond static    {v}:t      last write (s)
    {v}:{cls}:{bin}:w    wrong       {v}:explored  explorations
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLASSES",
    "CONFIDENCE",
    "NEVER_SERVED",
    "SIMILARITY_EDGES",
    "CellCounts",
    "Fit",
    "ModelState",
    "beta_ppf",
    "candidate_class",
    "cell_field",
    "fit",
    "min_judged",
    "parse",
    "similarity_bin",
    "total_field",
]

#: Confidence of every certified bound (one-sided). 95 %: the usual level, and at δ = 0.01 a
#: region needs 192 clean judgements to pass; 99 % would need 332.
CONFIDENCE = 0.95

#: Lower edges of the similarity bins (cosine, the last bin ends at 1). Finer near the top,
#: where paraphrases and hard negatives sit under MiniLM; below the policy's
#: ``similarityThreshold`` no candidate arrives, so the low bins only matter for low thresholds.
SIMILARITY_EDGES: tuple[float, ...] = (0.0, 0.70, 0.75, 0.80, 0.83, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98,
                                       0.99)

#: Candidate classes, see the module docstring.
CLASSES: tuple[str, ...] = ("p", "x", "a", "a+", "s", "s+", "u", "u+")
#: Classes never served, whatever their counts say.
NEVER_SERVED = frozenset({"x"})

#: Jeffreys prior of a region's error rate.
_PRIOR_A = 0.5
_PRIOR_B = 0.5

#: What the layout hashes to (part of every model version).
LAYOUT = f"2|{','.join(map(str, SIMILARITY_EDGES))}|{','.join(CLASSES)}|{CONFIDENCE}"

_CELL_KINDS = {"n": "seen", "j": "judged", "w": "wrong"}
TOTALS = ("served", "gained", "explored")


def similarity_bin(similarity: float) -> int:
    """Index of the bin holding ``similarity`` (clamped to [0, 1])."""
    s = min(1.0, max(0.0, similarity))
    b = 0
    for i, edge in enumerate(SIMILARITY_EDGES):
        if s >= edge:
            b = i
    return b


def candidate_class(*, verified: bool, scored: bool, crowded: bool, pair: str | None = None) -> str:
    """The class of a candidate: what was judged of this very pair before (``pair``: ``right`` or
    ``wrong``), else how the verifier accepted it and whether a closer neighbour was refused."""
    if pair == "wrong":
        return "x"
    if pair == "right":
        return "p"
    base = "u" if not verified else ("s" if scored else "a")
    return base + ("+" if crowded else "")


def cell_field(version: str, cls: str, bin_: int, kind: str) -> str:
    """Hash field of one cell counter (``kind``: ``n`` seen, ``j`` judged, ``w`` wrong)."""
    return f"{version}:{cls}:{bin_}:{kind}"


def total_field(version: str, name: str) -> str:
    """Hash field of a policy-wide counter or value (``served``, ``gained``, ``explored``, ``delta``, ``t``)."""
    return f"{version}:{name}"


@dataclass(slots=True)
class CellCounts:
    """Counters of one cell."""

    seen: int = 0
    judged: int = 0
    wrong: int = 0


@dataclass(slots=True)
class ModelState:
    """One version's counters of one policy group, as read from Redis."""

    version: str = ""
    cells: dict[tuple[str, int], CellCounts] = field(default_factory=dict)
    num_served: int = 0
    num_gained: int = 0
    num_explored: int = 0
    max_error_rate: float | None = None
    """δ the last writer applied (what ``llmcache stats`` fits with)."""
    updated_s: float = 0.0

    @property
    def num_judged(self) -> int:
        return sum(c.judged for c in self.cells.values())

    @property
    def num_wrong(self) -> int:
        return sum(c.wrong for c in self.cells.values())

    @property
    def num_seen(self) -> int:
        return sum(c.seen for c in self.cells.values())


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse(raw: Mapping[Any, Any], *, version: str | None = None) -> ModelState:
    """The counters of ``version`` (default: the hash's ``current``) from an ``HGETALL`` answer.

    Unknown or malformed fields are ignored: the hash is written by every sidecar of a policy,
    possibly of other releases.
    """
    fields = {_text(k): _text(v) for k, v in raw.items()}
    ver = version if version is not None else fields.get("current", "")
    state = ModelState(version=ver)
    if not ver:
        return state
    prefix = ver + ":"
    for name, value in fields.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split(":")
        try:
            if len(parts) == 3 and parts[0] in CLASSES and parts[2] in _CELL_KINDS:
                bin_, count = int(parts[1]), max(0, int(value))
                if not 0 <= bin_ < len(SIMILARITY_EDGES):
                    continue
                cell = state.cells.setdefault((parts[0], bin_), CellCounts())
                setattr(cell, _CELL_KINDS[parts[2]], count)
            elif len(parts) == 1 and parts[0] in TOTALS:
                setattr(state, f"num_{parts[0]}", max(0, int(value)))
            elif parts == ["delta"]:
                delta = float(value)
                state.max_error_rate = delta if 0.0 < delta < 1.0 else None
            elif parts == ["t"]:
                state.updated_s = float(value)
        except ValueError:
            continue
    return state


# --------------------------------------------------------------------------- Beta arithmetic


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b): Newton steps on the incomplete beta, kept inside a shrinking
    bracket (a step that leaves it bisects instead); |error| < 1e-10. A handful of evaluations, so a
    sidecar refits every second without holding its event loop."""
    if not 0.0 < q < 1.0 or a <= 0 or b <= 0:
        raise ValueError(f"beta_ppf needs 0 < q < 1 and a, b > 0, got q={q} a={a} b={b}")
    lo, hi = 0.0, 1.0
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    z = statistics.NormalDist().inv_cdf(q)
    x = min(1.0 - 1e-12, max(1e-12, mean + z * sd))
    ln_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    for _ in range(200):
        f = _betainc(a, b, x) - q
        if f < 0:
            lo = x
        else:
            hi = x
        if hi - lo < 1e-10:
            break
        density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - ln_beta)
        step = x - f / density if density > 0 else (lo + hi) / 2
        x_next = step if lo < step < hi else (lo + hi) / 2
        if abs(x_next - x) < 1e-12:
            break
        x = x_next
    return x


def min_judged(max_error_rate: float, *, confidence: float = CONFIDENCE) -> int:
    """Fewest judgements with which a region can pass at all (none of them wrong).

    With no error among n the Jeffreys posterior is Beta(½, n + ½), whose upper quantile is
    χ²₁(confidence) / 2n for large n: 192 at δ = 0.01, 39 at δ = 0.05.
    """
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    return math.ceil(z * z / (2 * max_error_rate))


def _region_estimate(cells: Iterable[CellCounts]) -> tuple[float, float]:
    """(estimate, effective sample size) of the seen-weighted error rate of ``cells``."""
    cells = list(cells)
    weights = [max(c.seen, c.judged) for c in cells]
    judged_total = sum(w for c, w in zip(cells, weights, strict=True) if c.judged > 0)
    if judged_total == 0:
        return 1.0, 0.0
    estimate = sum_w2_over_n = 0.0
    for c, w in zip(cells, weights, strict=True):
        if c.judged == 0:
            continue  # no judgement yet: no weight (see the module docstring)
        share = w / judged_total
        estimate += share * min(c.wrong, c.judged) / c.judged
        sum_w2_over_n += share * share / c.judged
    return min(1.0, estimate), 1.0 / sum_w2_over_n


def _posterior(estimate: float, n_eff: float) -> tuple[float, float]:
    """Jeffreys Beta parameters of a weighted estimate with effective sample size ``n_eff``."""
    return _PRIOR_A + estimate * n_eff, _PRIOR_B + (1.0 - estimate) * n_eff


def _region_bound(cells: Iterable[CellCounts], confidence: float) -> tuple[float, float, float]:
    """(posterior mean, upper bound, effective sample size) of the seen-weighted error rate of ``cells``."""
    estimate, n_eff = _region_estimate(cells)
    if n_eff == 0.0:
        return 1.0, 1.0, 0.0
    a, b = _posterior(estimate, n_eff)
    return a / (a + b), beta_ppf(confidence, a, b), n_eff


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True, slots=True)
class Fit:
    """What the counters certify at one δ: the threshold of each class, and the bound of the served set."""

    max_error_rate: float
    thresholds: Mapping[str, int]
    """Class → lowest certified bin (a candidate of that class is served from this bin up)."""
    static_bin: int | None
    """The single threshold bin certified for every class pooled (the static comparator)."""
    error_rate: float | None
    """Posterior mean error rate of the served set (traffic-weighted), ``None`` while nothing is certified."""
    error_upper: float | None
    """Its upper bound at :data:`CONFIDENCE`."""
    num_judged: int = 0
    num_wrong: int = 0
    num_seen: int = 0
    num_served: int = 0
    num_gained: int = 0
    num_explored: int = 0
    confidence: float = CONFIDENCE

    def serves(self, cls: str, bin_: int) -> bool:
        """Is a candidate of this class and similarity bin inside a certified region?"""
        lowest = self.thresholds.get(cls)
        return lowest is not None and bin_ >= lowest

    def static_serves(self, bin_: int) -> bool:
        return self.static_bin is not None and bin_ >= self.static_bin

    @property
    def bounded(self) -> bool:
        """True once some region is certified (otherwise every candidate is a miss: learning)."""
        return bool(self.thresholds)

    @property
    def threshold_similarities(self) -> dict[str, float]:
        """Class → the similarity its certified region starts at."""
        return {cls: SIMILARITY_EDGES[b] for cls, b in sorted(self.thresholds.items())}

    def describe(self) -> str:
        """One line for ``status.semantic`` and ``llmcache stats``: ``learning (37 judged)`` or the bound."""
        if not self.bounded:
            if self.num_judged and self.num_judged >= min_judged(self.max_error_rate, confidence=self.confidence):
                return (f"learning ({self.num_judged} judged, {self.num_wrong} wrong: no region meets "
                        f"{self.max_error_rate:g} yet)")
            return f"learning ({self.num_judged} judged)"
        assert self.error_upper is not None
        return (f"bounded (error ≤ {self.error_upper:.3f} at {self.confidence:.0%} ≤ {self.max_error_rate:g}, "
                f"{self.num_judged} judged)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.describe(), "bounded": self.bounded, "max_error_rate": self.max_error_rate,
            "error_rate": None if self.error_rate is None else round(self.error_rate, 5),
            "error_rate_upper": None if self.error_upper is None else round(self.error_upper, 5),
            "confidence": self.confidence, "thresholds": self.threshold_similarities,
            "static_threshold": None if self.static_bin is None else SIMILARITY_EDGES[self.static_bin],
            "judged": self.num_judged, "wrong": self.num_wrong, "seen": self.num_seen,
            "served": self.num_served, "gained": self.num_gained, "explored": self.num_explored,
        }


def _walk(bins: Mapping[int, CellCounts], max_error_rate: float, n_min: int, confidence: float) -> int | None:
    """Lowest bin whose region (that bin and every bin above) is certified, walking down from the top.

    A region whose effective sample size is below ``n_min`` could not pass even without an error: it is
    skipped for its size (never for its outcome) and the walk goes on to the larger region below.
    """
    certified = None
    region: list[CellCounts] = []
    for b in sorted(bins, reverse=True):
        region.append(bins[b])
        estimate, n_eff = _region_estimate(region)
        if n_eff < n_min:
            continue
        pa, pb = _posterior(estimate, n_eff)
        # The upper bound is above the posterior mean: a mean over δ fails without computing it.
        if pa / (pa + pb) < max_error_rate and beta_ppf(confidence, pa, pb) <= max_error_rate:
            certified = b
        else:
            break
    return certified


def fit(state: ModelState, max_error_rate: float, *, confidence: float = CONFIDENCE) -> Fit:
    """Certify what ``state`` allows at δ = ``max_error_rate`` (see the module docstring)."""
    if not 0.0 < max_error_rate < 1.0:
        raise ValueError(f"max_error_rate must be in (0, 1), got {max_error_rate}")
    n_min = min_judged(max_error_rate, confidence=confidence)
    by_class: dict[str, dict[int, CellCounts]] = {}
    pooled: dict[int, CellCounts] = {}
    for (cls, b), c in state.cells.items():
        by_class.setdefault(cls, {})[b] = c
        p = pooled.setdefault(b, CellCounts())
        p.seen += c.seen
        p.judged += c.judged
        p.wrong += c.wrong
    thresholds: dict[str, int] = {}
    for cls, bins in by_class.items():
        if cls in NEVER_SERVED:
            continue
        lowest = _walk(bins, max_error_rate, n_min, confidence)
        if lowest is not None:
            thresholds[cls] = lowest
    served = [c for (cls, b), c in state.cells.items() if cls in thresholds and b >= thresholds[cls]]
    error_rate = error_upper = None
    if served:
        error_rate, error_upper, _ = _region_bound(served, confidence)
    return Fit(max_error_rate=max_error_rate, thresholds=thresholds,
               static_bin=_walk(pooled, max_error_rate, n_min, confidence),
               error_rate=error_rate, error_upper=error_upper, num_judged=state.num_judged,
               num_wrong=state.num_wrong, num_seen=state.num_seen, num_served=state.num_served,
               num_gained=state.num_gained, num_explored=state.num_explored, confidence=confidence)
