"""Accounting: (ε, δ) validation, the budget split over measures, and the cost.

``plan_cost`` checks the request against the grant and dataset policy, splits ε (pure)
or ρ (zCDP) over the plan's measures, and fits each measure's noise scale (and the
selection threshold) by OpenDP's own privacy maps. It reads no data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sandbox.errors import BudgetRefused, SystemFailure
from sandbox.privacy.mechanisms import (
    SCALE_SLACK,
    histogram_alpha,
    noisy_max,
    partition_threshold,
    quantile_alpha_fraction,
    vector_noise,
    zcdp_conversion,
    zcdp_epsilon,
)

if TYPE_CHECKING:
    from sandbox.catalog import Dataset
    from sandbox.grants import Grant
    from sandbox.plan import Measure, Plan

__all__ = [
    "FIT_MARGIN",
    "MIN_EPSILON",
    "Cost",
    "MeasureCost",
    "check_cost",
    "check_epsilon_delta",
    "float_sum_rows",
    "plan_cost",
    "rho_from_epsilon_delta",
]

# Every noise scale and threshold is fitted to its target times this: the ledger
# charges the decimal an ε/ρ/δ was written as (0.1, not the binary 0.1000…055), which
# differs from the float by at most 2⁻⁵³ relative; the margin keeps what a mechanism
# spends below what is charged (and covers float rounding in the budget split).
FIT_MARGIN = 1.0 - 2.0**-40


def _refuse(code: str, message: str, hint: str = "", status: int = 400) -> BudgetRefused:
    return BudgetRefused(message, code=code, hint=hint, http_status=status)


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
    ε; ``epsilon_equivalent`` is OpenDP's conversion of ``rho`` back, a hair below it).
    ``rho`` is set for zCDP.
    ``selection_delta`` is the part of δ spent on partition selection (the ledger adds
    it up); for zCDP the rest of δ only states the ρ → (ε, δ) conversion.
    ``max_units`` is the dataset's declared size the sensitivities assume (float sums'
    rounding term): the runner's check of the data (``sandbox.datacheck``) holds the
    data to it even if the catalogue changed since (None in costs stored before it).
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
    max_units: int | None = None

    def measure(self, name: str) -> MeasureCost:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measures"] = [asdict(m) for m in self.measures]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        """The cost ``to_dict`` wrote (a job's reserved cost, read back to run it)."""
        fields = dict(data)
        measures = tuple(MeasureCost(**m) for m in fields.pop("measures", ()))
        return cls(**fields, measures=measures)


@lru_cache(maxsize=1024)
def rho_from_epsilon_delta(epsilon: float, delta: float) -> float:
    """The largest ρ (to 10⁻¹¹ relative) whose OpenDP conversion to (ε, δ)-DP
    (``make_zCDP_to_approxDP``, the Canonne–Kamath–Steinke bound) at δ gives at most
    ``epsilon``.

    Both sides keep ``FIT_MARGIN``: the conversion is asked at δ·FIT_MARGIN for an ε of
    at most ε·FIT_MARGIN, so the decimal (ε, δ) the ledger charges holds even where the
    floats sit a hair off it. The search starts from the classic ρ of
    ε = ρ + 2√(ρ ln(1/δ)), which the tighter conversion always allows, and returns a ρ
    whose conversion was checked (the ρ OpenDP's map itself converts), never an
    interpolated one.
    """
    if not (math.isfinite(epsilon) and epsilon > 0 and 0 < delta < 1):
        raise ValueError("need epsilon > 0 and 0 < delta < 1")
    goal, at = epsilon * FIT_MARGIN, delta * FIT_MARGIN

    def excess(rho: float) -> tuple[float, float]:
        converted, eps = zcdp_conversion(rho, at)
        return converted, eps - goal

    log = math.log(1.0 / at)
    lo, f_lo = excess((math.sqrt(log + goal) - math.sqrt(log)) ** 2)
    for _ in range(100):  # not expected: the classic bound is the looser one
        if f_lo <= 0:
            break
        lo, f_lo = excess(lo / 2)
    hi = lo * 2
    checked, f_hi = excess(hi)
    for _ in range(100):  # a tiny ε: δ alone carries most of the guarantee, ρ ≫ classic
        if f_hi > 0:
            break
        lo, f_lo, hi = checked, f_hi, hi * 16
        checked, f_hi = excess(hi)
    if not (f_lo <= 0 < f_hi and math.isfinite(f_hi)):
        raise SystemFailure("Could not convert (ε, δ) to ρ.", code="INTERNAL")
    side = 0  # Illinois regula falsi on a bracket that always keeps a checked lo
    for _ in range(200):
        if hi - lo <= lo * 1e-11:
            break
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        if not lo < x < hi:
            x = (lo + hi) / 2
        checked, f_x = excess(x)
        if f_x <= 0:
            lo, f_lo = checked, f_x
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = x, f_x
            if side == 1:
                f_lo /= 2
            side = 1
    return lo


def float_sum_rows(plan: Plan, dataset: Dataset) -> int:
    """The most rows any one group's float sum can add: the bound of its rounding term.

    Float sums are computed by the runner in double precision, and rounding can move a
    sum by more than the clamped values explain; like OpenDP we add its relaxation,
    2·n²·2⁻⁵²·max|bound| for each of the G groups a unit touches. n must be a bound
    that holds: the dataset declares ``max_units`` (public, like its schema) and the
    runner refuses a table with more units (``sandbox.datacheck``). Every private table
    joins on the unit and every lookup is read one row per key, so a query's rows are
    at most ``unit_rows`` per unit: with ``unit_rows`` = 1 (each table checked to have
    one row per unit, with a unit id) that is ``max_units`` rows; above, the per-unit
    window also puts all rows without a unit id in one partition of ``unit_rows``
    rows, so one more unit's worth.
    """
    units = dataset.privacy.max_units
    r = plan.unit_rows
    return units if r == 1 else r * (units + 1)


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
    rows = float_sum_rows(plan, dataset)

    selection = [m for m in plan.measures if m.selection]
    if plan.private_keys and not selection:
        raise SystemFailure("The plan has private keys but no selection measure.", code="INTERNAL")
    if definition == "pure":
        sel_delta = dlt if selection else 0.0
        measures = tuple(
            _measure_cost(plan, m, shares[m.name] * eps, "pure", sel_delta, rows)
            for m in plan.measures
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
            max_units=dataset.privacy.max_units,
        )
    # zCDP: half of δ for selection (if any), the rest states the conversion
    sel_delta = dlt / 2 if selection else 0.0
    conv_delta = dlt - sel_delta
    rho = rho_from_epsilon_delta(eps, conv_delta)
    measures = tuple(
        _measure_cost(plan, m, shares[m.name] * rho, "zcdp", sel_delta, rows) for m in plan.measures
    )
    return Cost(
        epsilon=eps,
        delta=dlt,
        rho=rho,
        definition="zcdp",
        selection_delta=sel_delta,
        epsilon_equivalent=zcdp_epsilon(rho, conv_delta),
        requested_epsilon=eps,
        requested_delta=dlt,
        measures=measures,
        max_units=dataset.privacy.max_units,
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
    plan: Plan, m: Measure, share: float, definition: str, sel_delta: float, rows: int
) -> MeasureCost:
    r, g = plan.unit_rows, plan.unit_groups
    pure = definition == "pure"
    if m.selection:
        return _selection_cost(m, share, pure, g if m.kind == "count_units" else r, sel_delta, r, g)
    if m.kind == "histogram":
        num, den = quantile_alpha_fraction(histogram_alpha(m))
        sens = float(r * max(num, den - num))
        scale = _fit(
            lambda s: noisy_max(s, pure),
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
        l1 = l2 = r * _bound(m)
        integer = m.integer
        if not integer:
            # each of the G sums a unit touches may round differently (OpenDP's term),
            # for sums of at most `rows` rows (float_sum_rows: a checked bound); the
            # changes add as a vector: L1 by G of them, L2 by √G (triangle inequality)
            relax = 2.0 * float(rows) ** 2 * 2.0**-52 * _bound(m)
            l1 += g * relax
            l2 += math.sqrt(g) * relax
    else:
        raise SystemFailure(f"Unknown measure kind {m.kind!r}.", code="INTERNAL")
    if pure:
        if integer:  # the i64 metric takes an integer distance
            l1 = float(math.ceil(l1))
        d_in: Any = int(l1) if integer else l1
        scale = _fit(lambda s: vector_noise(s, True, integer), d_in, share, l1 / share)
        mech = "discrete Laplace" if integer else "Laplace (OpenDP, float-safe)"
        return MeasureCost(m.name, m.kind, mech, share, l1, scale, integer)
    scale = _fit(lambda s: vector_noise(s, False, integer), l2, share, l2 / math.sqrt(2 * share))
    mech = "discrete Gaussian" if integer else "Gaussian (OpenDP, float-safe)"
    return MeasureCost(m.name, m.kind, mech, share, l2, scale, integer)


def _selection_cost(
    m: Measure, share: float, pure: bool, l1: int, sel_delta: float, r: int, g: int
) -> MeasureCost:
    linf = 1 if m.kind == "count_units" else r
    l0 = g if m.kind == "count_units" else min(g, r)
    d_in = (l0, l1, linf)
    guess = l1 / share if pure else math.sqrt(min(l1 * l1, l0 * linf * linf)) / math.sqrt(2 * share)
    scale = _fit(lambda s: partition_threshold(s, 1 << 40, pure), d_in, share, guess, index=0)
    # OpenDP 0.16's δ for a key that only one neighbour has is the chance that noise
    # alone reaches the threshold from linf − 1, but such a key's count IS up to linf
    # (measured: keys of count 1 pass more often than the map says; see
    # tests/privacy/test_privacy_audit.py). So the threshold is fitted for linf + 1.
    d_delta = (l0, l1 + l0, linf + 1)
    target = sel_delta * FIT_MARGIN
    lo, hi = 1, 2
    while partition_threshold(scale, hi, pure).map(d_delta)[1] > target:
        lo, hi = hi, hi * 2
        if hi > 1 << 50:
            raise SystemFailure("No threshold meets δ.", code="INTERNAL")
    while lo < hi:
        mid = (lo + hi) // 2
        if partition_threshold(scale, mid, pure).map(d_delta)[1] <= target:
            hi = mid
        else:
            lo = mid + 1
    mech = "partition selection: " + ("Laplace threshold" if pure else "Gaussian threshold")
    return MeasureCost(m.name, m.kind, mech, share, float(l1), scale, True, True, sel_delta, hi)


def _fit(make: Any, d_in: Any, target: float, guess: float, index: int | None = None) -> float:
    """The smallest scale near ``guess`` whose OpenDP privacy map is ≤ ``target``
    (times ``FIT_MARGIN``)."""
    scale = guess
    goal = target * FIT_MARGIN
    for _ in range(200):
        loss = make(scale).map(d_in)
        if index is not None:
            loss = loss[index]
        if loss <= goal:
            return scale
        scale *= 1.0 + SCALE_SLACK
    raise SystemFailure("Could not fit a noise scale.", code="INTERNAL")


def check_cost(plan: Plan, cost: Cost) -> None:
    """Refuse (INTERNAL) a cost computed for another plan's measures."""
    names = {m.name for m in cost.measures}
    if names != {m.name for m in plan.measures}:
        raise SystemFailure("The cost was computed for another plan.", code="INTERNAL")
