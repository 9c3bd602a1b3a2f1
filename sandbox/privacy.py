"""The differential-privacy layer: budget split, OpenDP noise, partition selection, accuracy.

The runner gives us an *exact* table (one row per group: keys + measures, see
``sandbox/plan.py``). This module turns it into a *noisy* one and only then runs the
Plan's ``post_sql`` over it. Every random number comes from an OpenDP measurement;
this module does arithmetic (sensitivities, budget split, scores) and bookkeeping.

Neighbouring datasets differ by adding or removing ONE privacy unit (e.g. one
person). After the compiler's bounding a unit contributes at most ``R =
plan.unit_rows`` rows to the whole query and touches at most ``G = plan.unit_groups``
groups. Per measure, over the vector of all groups at once:

========================  ===================  ====================
measure                   L1 (pure ε)          L2 (ρ-zCDP)
========================  ===================  ====================
count (rows)              R                    R
sum, clamped [lo, hi]     R·max(|lo|, |hi|)    R·max(|lo|, |hi|)
count_units (distinct)    G                    √G
histogram → quantile      score L∞ = R·max(a, d−a) per group (see below)
========================  ===================  ====================

(L2 for rows is not smaller than L1: a unit may put all R rows in one group.) Float
sums add OpenDP's floating-point relaxation (``FLOAT_SUM_MAX_ROWS``). Quantiles use
OpenDP's exponential-mechanism scores (``make_quantile_score_candidates``), computed
here from the runner's histogram exactly as OpenDP computes them from rows, and
select with ``make_noisy_max``; a unit's R rows change the scores of the groups it
touches by at most R·max(a, d−a) in total, so one scale covers all groups.

``definition`` comes from the dataset policy: ``"pure"`` uses (discrete) Laplace
noise and basic composition; ``"zcdp"`` uses (discrete) Gaussian noise, the
requested (ε, δ) is turned into ρ with ρ = (√(ln(1/δ)+ε) − √(ln(1/δ)))², and OpenDP's
own conversion reports the (ε, δ) that ρ actually gives (never more than asked).
Private group keys are released only through a noisy threshold on the distinct-unit
count (``make_laplace_threshold`` / ``make_gaussian_threshold``), which needs δ > 0.
At most ``plan.max_groups`` of the selected groups are released: those with the
largest NOISY distinct-unit counts (ties by a hash of the key), a post-processing of
the threshold's output. The cap is never applied to exact groups: a job whose outcome
changed when the exact group count crossed it would be an oracle (issue 20).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sandbox.errors import BudgetRefused, SystemFailure

if TYPE_CHECKING:
    import pyarrow as pa

    from sandbox.catalog import Dataset
    from sandbox.grants import Grant
    from sandbox.plan import Measure, Plan

__all__ = [
    "Cost",
    "MeasureCost",
    "Noisy",
    "explain",
    "plan_cost",
    "quantile_alpha_fraction",
    "quantile_candidates",
    "quantile_scores",
    "release",
    "rho_from_epsilon_delta",
    "FLOAT_SUM_MAX_ROWS",
    "MAX_CANDIDATES",
]

ALPHA = 0.05  # accuracy statements are 95% intervals
MAX_CANDIDATES = 1000
# Float sums are computed by the runner in double precision. Rounding can move a sum
# by more than the clamped values explain; like OpenDP we add a relaxation for up to
# this many rows per group (2·n²·2⁻⁵²·max|bound| per group a unit touches, OpenDP's
# own term).
FLOAT_SUM_MAX_ROWS = 10_000_000
_SCALE_SLACK = 1e-9  # relative bump when OpenDP's map rounds a hair above the target


def _refuse(code: str, message: str, hint: str = "", status: int = 400) -> BudgetRefused:
    return BudgetRefused(message, code=code, hint=hint, http_status=status)


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


# ---------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class MeasureCost:
    """The budget share, sensitivity and noise scale of one measure."""

    name: str
    kind: str
    mechanism: str
    share: float  # ε (pure) or ρ (zcdp) spent on this measure
    sensitivity: float  # L1 (pure), L2 (zcdp), score L∞ (quantile), l1 (selection)
    scale: float
    integer: bool = True
    selection: bool = False
    delta: float = 0.0  # selection only
    threshold: int | None = None  # selection only
    score_den: int | None = None  # quantile only: OpenDP's alpha denominator


@dataclass(frozen=True)
class Cost:
    """What a query costs and how its budget is spent; computed before any data is read.

    ``epsilon``/``delta`` state the query's (ε, δ)-DP guarantee (for zCDP: the requested
    ε; OpenDP's tighter conversion is ``epsilon_equivalent``). ``rho`` is set for zCDP.
    ``selection_delta`` is the part of δ spent on partition selection (the ledger adds
    it up); for zCDP the rest of δ only states the ρ → (ε, δ) conversion.
    """

    epsilon: float
    delta: float
    rho: float | None
    definition: str
    selection_delta: float = 0.0
    epsilon_equivalent: float | None = None
    requested_epsilon: float = 0.0
    requested_delta: float = 0.0
    measures: tuple[MeasureCost, ...] = field(default=())

    def measure(self, name: str) -> MeasureCost:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measures"] = [asdict(m) for m in self.measures]
        return d


def rho_from_epsilon_delta(epsilon: float, delta: float) -> float:
    """The ρ whose standard conversion ε = ρ + 2√(ρ ln(1/δ)) gives exactly ``epsilon``."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError("need epsilon > 0 and 0 < delta < 1")
    log = math.log(1.0 / delta)
    return (math.sqrt(log + epsilon) - math.sqrt(log)) ** 2


def plan_cost(
    plan: Plan,
    *,
    epsilon: float,
    delta: float,
    dataset: Dataset,
    grant: Grant,
    weights: dict[str, float] | None = None,
) -> Cost:
    """Validate (ε, δ) against the grant and dataset policy and split them over measures.

    Raises BudgetRefused with INVALID_EPSILON, INVALID_DELTA, EPSILON_ABOVE_CEILING,
    DELTA_NOT_ALLOWED, DELTA_ABOVE_GRANT, DELTA_REQUIRED or INVALID_WEIGHTS. Reads no data.
    """
    eps = _check_epsilon(epsilon)
    dlt = _check_delta(delta)
    ceiling = grant.budget.max_epsilon_per_query
    if eps > ceiling:
        raise _refuse(
            "EPSILON_ABOVE_CEILING",
            f"ε = {eps:g} is above the per-query ceiling ε = {ceiling:g} of grant {grant.id}.",
            hint=f"Ask for ε ≤ {ceiling:g}.",
        )
    definition = dataset.privacy.definition
    if plan.dataset != dataset.id or plan.definition != definition:
        raise SystemFailure(
            "The plan does not match the dataset's privacy policy.", code="INTERNAL"
        )
    if dlt > 0 and not dataset.privacy.delta_allowed:
        raise _refuse(
            "DELTA_NOT_ALLOWED",
            f"δ = {dlt:g} was asked, but dataset {dataset.id} allows no δ (pure ε only).",
            hint="Ask with δ = 0" + (" and public group keys." if plan.private_keys else "."),
        )
    if dlt > grant.budget.delta:
        # under ρ-zCDP a larger δ buys a larger ρ for the same ε: a query asking for more
        # δ than the whole grant has would pass the per-query ε ceiling in name only
        raise _refuse(
            "DELTA_ABOVE_GRANT",
            f"δ = {dlt:g} is above the total δ = {grant.budget.delta:g} of grant {grant.id}.",
            hint=f"Ask for δ ≤ {grant.budget.delta:g}.",
        )
    if dlt == 0 and plan.private_keys:
        private = ", ".join(k.name for k in plan.keys if k.public is None)
        raise _refuse(
            "DELTA_REQUIRED",
            f"Group key(s) {private} have no public key set, so groups are released only "
            "through partition selection, which needs δ > 0; δ = 0 was asked.",
            hint=f"Give δ > 0 (this grant's total δ is {grant.budget.delta:g}).",
        )
    if dlt == 0 and definition == "zcdp":
        raise _refuse(
            "DELTA_REQUIRED",
            f"Dataset {dataset.id} uses ρ-zCDP, whose guarantee is stated as (ε, δ) with "
            "δ > 0; δ = 0 was asked.",
            hint=f"Give δ > 0 (this grant's total δ is {grant.budget.delta:g}).",
        )
    shares = _split(plan, weights)

    selection = [m for m in plan.measures if m.selection]
    if plan.private_keys and not selection:
        raise SystemFailure("The plan has private keys but no selection measure.", code="INTERNAL")
    if definition == "pure":
        sel_delta = dlt if selection else 0.0
        measures = tuple(
            _measure_cost(plan, m, shares[m.name] * eps, "pure", sel_delta) for m in plan.measures
        )
        return Cost(
            epsilon=eps,
            delta=sel_delta,
            rho=None,
            definition="pure",
            selection_delta=sel_delta,
            epsilon_equivalent=eps,
            requested_epsilon=eps,
            requested_delta=dlt,
            measures=measures,
        )
    # zCDP: half of δ for selection (if any), the rest states the conversion
    sel_delta = dlt / 2 if selection else 0.0
    conv_delta = dlt - sel_delta
    rho = rho_from_epsilon_delta(eps, conv_delta)
    measures = tuple(
        _measure_cost(plan, m, shares[m.name] * rho, "zcdp", sel_delta) for m in plan.measures
    )
    return Cost(
        epsilon=eps,
        delta=dlt,
        rho=rho,
        definition="zcdp",
        selection_delta=sel_delta,
        epsilon_equivalent=_zcdp_epsilon(rho, conv_delta),
        requested_epsilon=eps,
        requested_delta=dlt,
        measures=measures,
    )


def check_epsilon_delta(epsilon: object, delta: object) -> None:
    """Refuse (INVALID_EPSILON, INVALID_DELTA) an ε or δ that is not a valid number."""
    _check_epsilon(epsilon)
    _check_delta(delta)


# the ledger's unit: a smaller ε is charged as this much anyway, and far smaller ones
# make noise scales overflow
MIN_EPSILON = 1e-9


def _check_epsilon(epsilon: object) -> float:
    ok = isinstance(epsilon, int | float) and not isinstance(epsilon, bool)
    if not ok or not math.isfinite(float(epsilon)) or float(epsilon) < MIN_EPSILON:  # type: ignore[arg-type]
        raise _refuse(
            "INVALID_EPSILON",
            f"ε must be a finite number of at least {MIN_EPSILON:g}; {epsilon!r} was given.",
            hint="For example --epsilon 0.5.",
        )
    return float(epsilon)  # type: ignore[arg-type]


def _check_delta(delta: object) -> float:
    ok = isinstance(delta, int | float) and not isinstance(delta, bool)
    if not ok or not math.isfinite(float(delta)) or not 0 <= float(delta) < 1:  # type: ignore[arg-type]
        raise _refuse(
            "INVALID_DELTA",
            f"δ must be a finite number in [0, 1); {delta!r} was given.",
            hint="For example --delta 1e-7, or 0.",
        )
    return float(delta)  # type: ignore[arg-type]


def _split(plan: Plan, weights: dict[str, float] | None) -> dict[str, float]:
    """Each measure's fraction of the budget (sums to 1).

    Evenly over measures by default. With weights (one per output that has measures),
    an output's weight is shared equally by the measures it is computed from; a
    measure used by several outputs adds their parts; the selection measure (and any
    measure no output names) gets the mean output weight.
    """
    names = [m.name for m in plan.measures]
    if not names:
        raise SystemFailure("The plan has no measures.", code="INTERNAL")
    if weights is None:
        return {n: 1.0 / len(names) for n in names}
    outputs = {o.name: o for o in plan.outputs if o.measures}
    bad = sorted(
        str(k)
        for k, v in weights.items()
        if k not in outputs
        or not isinstance(v, int | float)
        or isinstance(v, bool)
        or not math.isfinite(v)
        or v <= 0
    )
    missing = sorted(set(outputs) - set(weights))
    if bad or missing:
        parts = []
        if bad:
            parts.append(f"not a positive weight of an output: {', '.join(bad)}")
        if missing:
            parts.append(f"no weight for: {', '.join(missing)}")
        raise _refuse(
            "INVALID_WEIGHTS",
            "Budget weights must be positive numbers, one per output (" + "; ".join(parts) + ").",
            hint="Outputs that take budget: " + ", ".join(sorted(outputs)) + ".",
        )
    raw: dict[str, float] = dict.fromkeys(names, 0.0)
    for name, out in outputs.items():
        for m in out.measures:
            if m in raw:
                raw[m] += float(weights[name]) / len(out.measures)
    mean = sum(float(weights[n]) for n in outputs) / len(outputs)
    for n in names:
        if raw[n] == 0.0:
            raw[n] = mean
    # scale by the largest part first, so huge weights cannot overflow the sum
    top = max(raw.values())
    shares = {n: v / top for n, v in raw.items()} if math.isfinite(top) and top > 0 else {}
    total = sum(shares.values())
    if not shares or not math.isfinite(total) or any(v / total <= 0 for v in shares.values()):
        raise _refuse(
            "INVALID_WEIGHTS",
            "Budget weights must be positive numbers of a usable size; these give an "
            "output no budget or overflow.",
            hint="Use weights of similar magnitude, for example 1 and 3.",
        )
    return {n: v / total for n, v in shares.items()}


def _bound(m: Measure) -> float:
    if m.lower is None or m.upper is None:
        raise SystemFailure(f"Measure {m.name} has no bounds.", code="INTERNAL")
    return max(abs(m.lower), abs(m.upper))


def _measure_cost(
    plan: Plan, m: Measure, share: float, definition: str, sel_delta: float
) -> MeasureCost:
    r, g = plan.unit_rows, plan.unit_groups
    pure = definition == "pure"
    if m.selection:
        return _selection_cost(m, share, pure, g if m.kind == "count_units" else r, sel_delta, r, g)
    if m.kind == "histogram":
        num, den = quantile_alpha_fraction(_alpha(m))
        sens = float(r * max(num, den - num))
        scale = _fit(
            lambda s: _noisy_max(s, pure),
            int(sens),
            share,
            2 * sens / share if pure else 2 * sens / math.sqrt(8 * share),
        )
        mech = "exponential-mechanism quantile (OpenDP quantile scores + noisy max"
        mech += ", pure ε)" if pure else ", ρ-zCDP)"
        return MeasureCost(m.name, m.kind, mech, share, sens, scale, m.integer, score_den=den)
    if m.kind == "count":
        l1, l2, integer = float(r), float(r), True
    elif m.kind == "count_units":
        l1, l2, integer = float(g), math.sqrt(g), True
    elif m.kind == "sum":
        l1 = r * _bound(m)
        integer = m.integer
        if not integer:
            # each of the G sums a unit touches may round differently (OpenDP's term)
            l1 += g * 2.0 * FLOAT_SUM_MAX_ROWS**2 * 2.0**-52 * _bound(m)
        l2 = l1
    else:
        raise SystemFailure(f"Unknown measure kind {m.kind!r}.", code="INTERNAL")
    if pure:
        if integer:  # the i64 metric takes an integer distance
            l1 = float(math.ceil(l1))
        d_in: Any = int(l1) if integer else l1
        scale = _fit(lambda s: _vector_noise(s, True, integer), d_in, share, l1 / share)
        mech = "discrete Laplace" if integer else "Laplace (OpenDP, float-safe)"
        return MeasureCost(m.name, m.kind, mech, share, l1, scale, integer)
    scale = _fit(lambda s: _vector_noise(s, False, integer), l2, share, l2 / math.sqrt(2 * share))
    mech = "discrete Gaussian" if integer else "Gaussian (OpenDP, float-safe)"
    return MeasureCost(m.name, m.kind, mech, share, l2, scale, integer)


def _selection_cost(
    m: Measure, share: float, pure: bool, l1: int, sel_delta: float, r: int, g: int
) -> MeasureCost:
    linf = 1 if m.kind == "count_units" else r
    l0 = g if m.kind == "count_units" else min(g, r)
    d_in = (l0, l1, linf)
    guess = l1 / share if pure else math.sqrt(min(l1 * l1, l0 * linf * linf)) / math.sqrt(2 * share)
    scale = _fit(lambda s: _threshold(s, 1 << 40, pure), d_in, share, guess, index=0)
    # OpenDP 0.16's δ for a key that only one neighbour has is the chance that noise
    # alone reaches the threshold from linf − 1, but such a key's count IS up to linf
    # (measured: keys of count 1 pass more often than the map says; see
    # tests/test_privacy_audit.py). So the threshold is fitted for linf + 1.
    d_delta = (l0, l1 + l0, linf + 1)
    lo, hi = 1, 2
    while _threshold(scale, hi, pure).map(d_delta)[1] > sel_delta:
        lo, hi = hi, hi * 2
        if hi > 1 << 50:
            raise SystemFailure("No threshold meets δ.", code="INTERNAL")
    while lo < hi:
        mid = (lo + hi) // 2
        if _threshold(scale, mid, pure).map(d_delta)[1] <= sel_delta:
            hi = mid
        else:
            lo = mid + 1
    mech = "partition selection: " + ("Laplace threshold" if pure else "Gaussian threshold")
    return MeasureCost(m.name, m.kind, mech, share, float(l1), scale, True, True, sel_delta, hi)


def _fit(make: Any, d_in: Any, target: float, guess: float, index: int | None = None) -> float:
    """The smallest scale near ``guess`` whose OpenDP privacy map is ≤ ``target``."""
    scale = guess
    for _ in range(200):
        loss = make(scale).map(d_in)
        if index is not None:
            loss = loss[index]
        if loss <= target:
            return scale
        scale *= 1.0 + _SCALE_SLACK
    raise SystemFailure("Could not fit a noise scale.", code="INTERNAL")


# ------------------------------------------------------------- OpenDP measurements


@lru_cache(maxsize=512)
def _vector_noise(scale: float, pure: bool, integer: bool) -> Any:
    dp = _dp()
    atom = dp.atom_domain(T="i64") if integer else dp.atom_domain(T=float, nan=False)
    dom = dp.vector_domain(atom)
    if pure:
        metric = dp.l1_distance(T="i64") if integer else dp.l1_distance(T=float)
        return dp.m.make_laplace(dom, metric, scale=scale)
    return dp.m.make_gaussian(dom, dp.l2_distance(T=float), scale=scale)


@lru_cache(maxsize=512)
def _noisy_max(scale: float, pure: bool) -> Any:
    dp = _dp()
    space = dp.vector_domain(dp.atom_domain(T="u64")), dp.linf_distance(T="u64")
    measure = dp.max_divergence() if pure else dp.zero_concentrated_divergence()
    return dp.m.make_noisy_max(*space, measure, scale=scale, negate=True)


@lru_cache(maxsize=512)
def _threshold(scale: float, threshold: int, pure: bool) -> Any:
    dp = _dp()
    dom = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
    if pure:
        metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        return dp.m.make_laplace_threshold(dom, metric, scale=scale, threshold=threshold)
    metric = dp.l02inf_distance(dp.absolute_distance(T="i64"))
    return dp.m.make_gaussian_threshold(dom, metric, scale=scale, threshold=threshold)


def _zcdp_epsilon(rho: float, delta: float) -> float:
    """OpenDP's own (tighter) ε for ρ-zCDP at ``delta``."""
    dp = _dp()
    base = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False),
        dp.absolute_distance(T=float),
        scale=1.0 / math.sqrt(2.0 * rho) * (1.0 + _SCALE_SLACK),
    )
    return float(dp.c.make_zCDP_to_approxDP(base).map(1.0).epsilon(delta))


# ------------------------------------------------------------------ quantiles


def quantile_candidates(lower: float, upper: float, integer: bool) -> tuple[float, ...]:
    """Candidate values for a quantile: the integers lower..upper when there are at
    most MAX_CANDIDATES of them, else MAX_CANDIDATES evenly spaced values."""
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError("need finite lower < upper")
    if integer:
        lo, hi = math.ceil(lower), math.floor(upper)
        if hi - lo + 1 <= MAX_CANDIDATES:
            return tuple(float(v) for v in range(lo, hi + 1))
    step = (upper - lower) / (MAX_CANDIDATES - 1)
    values = [lower + i * step for i in range(MAX_CANDIDATES - 1)] + [upper]
    return tuple(values)


@lru_cache(maxsize=256)
def quantile_alpha_fraction(alpha: float) -> tuple[int, int]:
    """(numerator, denominator) that OpenDP uses for ``alpha``, read from OpenDP itself:
    with one candidate 0, the score of the data [1] is the numerator and of [-1] is
    denominator − numerator."""
    dp = _dp()
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
    t = dp.t.make_quantile_score_candidates(*space, candidates=[0], alpha=alpha)
    num = int(t([1])[0])
    return num, num + int(t([-1])[0])


def quantile_scores(histogram: dict[int, int], n_candidates: int, alpha: float) -> list[int]:
    """OpenDP's quantile scores, from the runner's histogram instead of rows.

    Slot 2i+1 counts values equal to candidate i, slot 2i values strictly between
    candidates i−1 and i (slot 0 below the first, slot 2k above the last). OpenDP's
    score of candidate c is |(d−a)·#(x<c) − a·#(x>c)| (lower is better), with
    (a, d) = ``quantile_alpha_fraction(alpha)`` and counts capped at ⌊(2⁶⁴−1)/d⌋.
    """
    return [int(v) for v in _scores_array(histogram, n_candidates, alpha)]


def _scores_array(histogram: dict[int, int], n_candidates: int, alpha: float) -> Any:
    import numpy as np  # arithmetic only: every random draw is OpenDP's

    num, den = quantile_alpha_fraction(alpha)
    slots = np.zeros(2 * n_candidates + 1, dtype=np.int64)
    for slot, count in histogram.items():
        if not 0 <= slot <= 2 * n_candidates:
            raise SystemFailure("A histogram slot is outside the candidates.", code="INTERNAL")
        slots[slot] += count
    n = int(slots.sum())
    if n * den >= 2**63:
        raise SystemFailure("Too many rows for exact quantile scores.", code="INTERNAL")
    before = np.concatenate(([0], np.cumsum(slots)))  # before[j] = rows in slots < j
    lt = before[0 : 2 * n_candidates : 2] + slots[0 : 2 * n_candidates : 2]
    le = lt + slots[1 : 2 * n_candidates : 2]
    gt = n - le
    return np.abs((den - num) * lt - num * gt).astype(np.uint64)


def _alpha(m: Measure) -> float:
    if m.alpha is None or not 0 <= m.alpha <= 1 or not m.candidates:
        raise SystemFailure(f"Histogram {m.name} needs alpha and candidates.", code="INTERNAL")
    return float(m.alpha)


# ---------------------------------------------------------------------- release


@dataclass
class Noisy:
    """A released result: operator outputs, per-cell accuracy, the mechanisms used."""

    table: pa.Table
    accuracy: dict[str, list[dict[str, Any]]]
    mechanisms: list[str]
    # notes for the operator, each a function of the Plan and noisy values only
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_json_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return [{k: _jsonable(v) for k, v in r.items()} for r in rows]


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def release(plan: Plan, exact: pa.Table, cost: Cost) -> Noisy:
    """Noise every measure with OpenDP, select private groups, run ``post_sql``.

    Public key sets: every combination is released (absent groups count 0); rows whose
    keys are outside the public sets are dropped. Private keys: only groups whose noisy
    distinct-unit count passes the threshold are released. Noisy counts are integers
    and are NOT floored at 0 (flooring would bias them); post_sql may post-process.
    """
    import pyarrow as pa

    _check_cost(plan, cost)
    missing = [c for c in plan.result_columns if c not in exact.column_names]
    if missing:
        raise SystemFailure("The exact table does not have the plan's columns.", code="INTERNAL")
    key_names = [k.name for k in plan.keys]
    key_types = [exact.schema.field(n).type for n in key_names]
    rows = _exact_rows(plan, exact)
    if plan.private_keys:
        groups = _public_filter(plan, key_types, list(rows))
    else:
        groups = _public_product(plan, key_types)
    pure = cost.definition == "pure"

    # partition selection first: noise on the other measures of dropped groups is never used
    warnings: list[dict[str, Any]] = []
    if plan.private_keys:
        sel = next(m for m in plan.measures if m.selection)
        mc = cost.measure(sel.name)
        counts = {i: int(rows[g][sel.name] or 0) for i, g in enumerate(groups)}
        kept = _threshold(mc.scale, mc.threshold, pure)(counts)
        top = _top_groups(kept, groups, plan.max_groups)
        if len(top) < len(kept):
            warnings.append(
                {
                    "code": "groups_capped",
                    "message": f"{len(kept)} groups passed partition selection; the "
                    f"{plan.max_groups} with the largest noisy unit counts are released.",
                    "selected": len(kept),
                    "released": len(top),
                }
            )
        groups = [groups[i] for i in sorted(top)]

    columns: dict[str, Any] = {}
    for i, name in enumerate(key_names):
        columns[name] = pa.array([g[i] for g in groups], type=key_types[i])
    noisy_values: dict[str, list[Any]] = {}
    for m in plan.measures:
        if m.selection:
            continue
        mc = cost.measure(m.name)
        exact_col = [rows.get(g, {}).get(m.name) for g in groups]
        if m.kind == "histogram":
            values: list[Any] = _release_quantiles(m, mc, exact_col, pure)
            columns[m.name] = pa.array(values, type=pa.int64() if m.integer else pa.float64())
        elif mc.integer:
            values = _noise(mc, [int(v or 0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.int64())
        else:
            values = _noise(mc, [float(v or 0.0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.float64())
        noisy_values[m.name] = values
    noisy = pa.table(columns) if columns else pa.table({})
    table = _post_process(plan, noisy)
    accuracy = _cell_accuracy(plan, cost, table, key_names, groups, noisy_values)
    mechanisms = sorted({cost.measure(m.name).mechanism for m in plan.measures})
    return Noisy(table=table, accuracy=accuracy, mechanisms=mechanisms, warnings=warnings)


def _top_groups(kept: dict[int, Any], groups: list[tuple[Any, ...]], cap: int) -> list[int]:
    """The (at most) ``cap`` selected groups with the largest noisy counts.

    ``kept`` is the threshold's output (group index → noisy count), so this is
    post-processing: which groups survive depends on noisy counts and on the keys
    (ties: a hash of the key's text), never on an exact value.
    """
    if len(kept) <= cap:
        return list(kept)

    def rank(i: int) -> tuple[int, str]:
        digest = hashlib.sha256(repr(groups[i]).encode("utf-8", "backslashreplace"))
        return (-int(kept[i]), digest.hexdigest())

    return sorted(kept, key=rank)[: max(0, cap)]


def _check_cost(plan: Plan, cost: Cost) -> None:
    names = {m.name for m in cost.measures}
    if names != {m.name for m in plan.measures}:
        raise SystemFailure("The cost was computed for another plan.", code="INTERNAL")


def _exact_rows(plan: Plan, exact: pa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    key_names = [k.name for k in plan.keys]
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in exact.to_pylist():
        key = tuple(row[k] for k in key_names)
        if key in out:
            raise SystemFailure("The exact table has a duplicate group.", code="INTERNAL")
        out[key] = row
    return out


def _typed_public(plan: Plan, key_types: list[Any]) -> list[list[Any] | None]:
    import pyarrow as pa

    typed: list[list[Any] | None] = []
    for spec, typ in zip(plan.keys, key_types, strict=True):
        if spec.public is None:
            typed.append(None)
            continue
        try:
            arr = pa.array(list(spec.public)).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SystemFailure(
                f"The public key set of {spec.name} does not fit its column type.", code="INTERNAL"
            ) from exc
        typed.append(list(dict.fromkeys(arr.to_pylist())))
    return typed


def _public_product(plan: Plan, key_types: list[Any]) -> list[tuple[Any, ...]]:
    import itertools

    typed = _typed_public(plan, key_types)
    return [tuple(c) for c in itertools.product(*[t or [] for t in typed])]


def _public_filter(
    plan: Plan, key_types: list[Any], keys: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    typed = [None if t is None else set(t) for t in _typed_public(plan, key_types)]
    return [
        k
        for k in keys
        if all(allowed is None or v in allowed for v, allowed in zip(k, typed, strict=True))
    ]


def _noise(mc: MeasureCost, values: list[Any], pure: bool) -> list[Any]:
    import numpy as np  # a typed array crosses into OpenDP without per-element checks

    meas = _vector_noise(mc.scale, pure, mc.integer)
    arr = np.asarray(values, dtype=np.int64 if mc.integer else np.float64)
    return [int(v) if mc.integer else float(v) for v in meas(arr)]


def _release_quantiles(m: Measure, mc: MeasureCost, exact_col: list[Any], pure: bool) -> list[Any]:
    assert m.candidates is not None
    meas = _noisy_max(mc.scale, pure)
    alpha = _alpha(m)
    out: list[Any] = []
    for hist in exact_col:
        scores = _scores_array(_as_hist(hist), len(m.candidates), alpha)
        value = m.candidates[int(meas(scores))]
        out.append(int(value) if m.integer else float(value))
    return out


def _as_hist(value: Any) -> dict[int, int]:
    if value is None:
        return {}
    items = value.items() if isinstance(value, dict) else value
    hist: dict[int, int] = {}
    for slot, count in items:
        if count:
            hist[int(slot)] = hist.get(int(slot), 0) + int(count)
    return hist


def _post_process(plan: Plan, noisy: pa.Table) -> pa.Table:
    """Run post_sql over the noisy table only, in a boxed DuckDB (sandbox/hostsql.py)."""
    import duckdb

    from sandbox import hostsql

    try:
        with hostsql.connect() as con:
            con.register("noisy", noisy)
            return hostsql.arrow(con, plan.post_sql)
    except (duckdb.Error, hostsql.HostSQLTimeout) as exc:
        raise SystemFailure("Post-processing of the noisy table failed.", code="INTERNAL") from exc


# --------------------------------------------------------------------- accuracy


def _half_width(mc: MeasureCost, definition: str, alpha: float = ALPHA) -> float:
    dp = _dp()
    if definition == "pure":
        fn = (
            dp.discrete_laplacian_scale_to_accuracy
            if mc.integer
            else dp.laplacian_scale_to_accuracy
        )
    elif mc.integer and mc.scale > _EXACT_DISCRETE_GAUSSIAN_MAX_SCALE:
        # OpenDP sums the discrete Gaussian's tail term by term: its time grows with the
        # scale (seconds per 10⁷), so a tiny ε would tie up a worker for hours. Past this
        # scale the continuous half-width rounded up, plus one, bounds it (and equals it
        # in practice).
        return math.ceil(float(dp.gaussian_scale_to_accuracy(scale=mc.scale, alpha=alpha))) + 1.0
    else:
        fn = dp.discrete_gaussian_scale_to_accuracy if mc.integer else dp.gaussian_scale_to_accuracy
    return float(fn(scale=mc.scale, alpha=alpha))


_EXACT_DISCRETE_GAUSSIAN_MAX_SCALE = 1e4


def _quantile_statement(m: Measure, mc: MeasureCost) -> dict[str, Any]:
    cands = m.candidates or ()
    spacing = (cands[-1] - cands[0]) / (len(cands) - 1) if len(cands) > 1 else 0.0
    den = mc.score_den or 1
    # exponential mechanism: with prob ≥ 95% the chosen score is within scale·ln(k/0.05)
    # of the best; a score is about den × (rank distance), so this is in rows
    gap = mc.scale * math.log(len(cands) / ALPHA)
    return {
        "candidates": len(cands),
        "candidate_spacing": spacing,
        "rank_error_95": gap / den,
        "statement": (
            f"one of {len(cands)} candidates {spacing:g} apart; with 95% probability the "
            f"released value's rank is within about {gap / den:.1f} rows of the "
            f"{m.alpha:g}-quantile's rank"
        ),
    }


def _output_entry(plan: Plan, cost: Cost, out: Any) -> dict[str, Any]:
    by_name = {m.name: m for m in plan.measures}
    entry: dict[str, Any] = {"name": out.name, "kind": out.kind, "measures": list(out.measures)}
    if out.kind == "key":
        spec = next((k for k in plan.keys if k.name == out.name), None)
        if spec is not None and spec.public is None:
            sel = next(m for m in cost.measures if m.selection)
            entry["mechanism"] = f"{sel.mechanism} (threshold {sel.threshold}, scale {sel.scale:g})"
            entry["threshold"] = sel.threshold
        else:
            entry["mechanism"] = "public key set (every key released)"
        entry.update(scale=None, accuracy_95=None)
        return entry
    direct = len(out.measures) == 1 and out.kind in ("count", "sum", "count_units", "quantile")
    if direct:
        m = by_name[out.measures[0]]
        mc = cost.measure(m.name)
        entry.update(mechanism=mc.mechanism, scale=mc.scale, epsilon_or_rho=mc.share)
        if m.kind == "histogram":
            entry["accuracy_95"] = None
            entry.update(_quantile_statement(m, mc))
        else:
            entry["accuracy_95"] = _half_width(mc, cost.definition)
        return entry
    parts = []
    for name in out.measures:
        mc = cost.measure(name)
        hw = None if mc.kind == "histogram" else _half_width(mc, cost.definition)
        parts.append({"measure": name, "kind": mc.kind, "scale": mc.scale, "accuracy_95": hw})
    entry.update(
        mechanism="derived (post-processing of noisy measures)",
        scale=None,
        accuracy_95=None,
        components=parts,
        statement=(
            "computed from the noisy measures listed; for a mean, each released cell "
            "carries a conservative 95% interval (each component at 97.5%)"
            if out.kind == "mean"
            else "computed from the noisy measures listed; see their accuracy"
        ),
    )
    return entry


def explain(plan: Plan, cost: Cost) -> list[dict[str, Any]]:
    """One entry per output: mechanism, noise scale, 95% half-width; no data read."""
    _check_cost(plan, cost)
    return [_output_entry(plan, cost, out) for out in plan.outputs]


def _cell_accuracy(
    plan: Plan,
    cost: Cost,
    table: pa.Table,
    key_names: list[str],
    groups: list[tuple[Any, ...]],
    noisy_values: dict[str, list[Any]],
) -> dict[str, list[dict[str, Any]]]:
    by_name = {m.name: m for m in plan.measures}
    entries = {e["name"]: e for e in explain(plan, cost)}
    index = {g: i for i, g in enumerate(groups)}
    out_keys = [n for n in key_names if n in table.column_names]
    rows = table.to_pylist()
    result: dict[str, list[dict[str, Any]]] = {}
    for out in plan.outputs:
        if out.name not in table.column_names or out.kind == "key":
            continue
        e = entries[out.name]
        cells: list[dict[str, Any]] = []
        for row in rows:
            v = row[out.name]
            cell: dict[str, Any] = {"scale": e.get("scale"), "accuracy_95": e.get("accuracy_95")}
            hw = e.get("accuracy_95")
            if hw is not None and isinstance(v, int | float):
                cell["interval_95"] = [v - hw, v + hw]
            elif "rank_error_95" in e:  # a quantile: a statement, not an interval
                cell.update({k: e[k] for k in ("candidate_spacing", "rank_error_95", "statement")})
            elif out.kind == "mean" and len(out_keys) == len(key_names):
                gi = index.get(tuple(row[k] for k in key_names))
                cell.update(
                    derived=True,
                    interval_95=_mean_interval(plan, cost, out, gi, by_name, noisy_values),
                )
            else:
                cell["derived"] = e.get("accuracy_95") is None
            cells.append(cell)
        result[out.name] = cells
    return result


def _mean_interval(
    plan: Plan,
    cost: Cost,
    out: Any,
    gi: int | None,
    by_name: dict[str, Measure],
    noisy_values: dict[str, list[Any]],
) -> list[float] | None:
    """A conservative 95% interval for sum/count: each part at 97.5%, the corners of
    the box, intersected with the value bounds."""
    if gi is None:
        return None
    ms = [by_name[n] for n in out.measures]
    s = next((m for m in ms if m.kind == "sum"), None)
    c = next((m for m in ms if m.kind in ("count", "count_units")), None)
    if s is None or c is None or s.lower is None or s.upper is None:
        return None
    sv, cv = noisy_values[s.name][gi], noisy_values[c.name][gi]
    hs = _half_width(cost.measure(s.name), cost.definition, ALPHA / 2)
    hc = _half_width(cost.measure(c.name), cost.definition, ALPHA / 2)
    c_lo, c_hi = max(cv - hc, 1.0), max(cv + hc, 1.0)
    corners = [a / b for a in (sv - hs, sv + hs) for b in (c_lo, c_hi)]
    lo, hi = max(min(corners), s.lower), min(max(corners), s.upper)
    if cv - hc < 1:  # the count may be ~0: the mean can be anything within bounds
        lo, hi = s.lower, s.upper
    return [float(lo), float(hi)] if lo <= hi else [float(s.lower), float(s.upper)]
