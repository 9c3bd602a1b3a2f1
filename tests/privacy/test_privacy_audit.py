"""Empirical privacy audit: run the real mechanisms many times on two neighbouring
datasets and bound the privacy loss from below with exact confidence intervals.

For an event S, (ε, δ)-DP promises P[M(D′) ∈ S] ≤ e^ε·P[M(D) ∈ S] + δ. With N runs on
each side, Clopper–Pearson bounds at confidence 1 − β (β = 10⁻⁶ per bound) give

    ε_lower = ln((p′_low − δ) / p_high)

which exceeds the claimed ε only with probability ≤ 2β if the mechanism keeps its
promise. Each audit also runs on a deliberately broken configuration (the
neighbours differ by more than the sensitivity the scale was fitted for) and must
catch it: the test can fail.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from scipy.stats import beta as beta_dist

from sandbox.plan import KeySpec, Measure, Output
from sandbox.privacy import release
from sandbox.privacy.release import _noise
from tests.privacy.factories import cost_of, make_grant, make_plan

BETA = 1e-6


def cp_low(k: int, n: int) -> float:
    return 0.0 if k == 0 else float(beta_dist.ppf(BETA, k, n - k + 1))


def cp_high(k: int, n: int) -> float:
    return 1.0 if k == n else float(beta_dist.ppf(1 - BETA, k + 1, n - k))


def epsilon_lower(k_neighbour: int, k_base: int, n: int, delta: float = 0.0) -> float:
    num = cp_low(k_neighbour, n) - delta
    den = cp_high(k_base, n)
    return -math.inf if num <= 0 else math.log(num / den)


def hits(cost, name: str, x: float, at_least: float, n: int, pure: bool) -> int:
    """How many of n runs on true value x give an output ≥ at_least."""
    return sum(1 for v in _noise(cost.measure(name), [x] * n, pure) if v >= at_least)


def audit_vector(
    cost, name: str, x: float, neighbours: list[float], n: int, pure: bool
) -> list[float]:
    """ε lower bounds for the event 'output ≥ x′' for each neighbour value x′."""
    delta = 0.0 if pure else cost.delta
    out = []
    for xn in neighbours:
        k_base = hits(cost, name, x, xn, n, pure)
        k_neigh = hits(cost, name, xn, xn, n, pure)
        out.append(epsilon_lower(k_neigh, k_base, n, delta))
    return out


def count_plan(rows: int, definition: str = "pure"):
    return make_plan(
        keys=(),
        outputs=(Output("n", "count", ("n",)),),
        post_sql="SELECT n FROM noisy",
        unit_rows=rows,
        definition=definition,
    )


def sum_plan(integer: bool):
    return make_plan(
        keys=(),
        measures=(Measure("s", "sum", "t.v", -20, 100, integer),),
        outputs=(Output("s", "sum", ("s",)),),
        post_sql="SELECT s FROM noisy",
        unit_rows=2,
    )


def test_count_keeps_epsilon_and_audit_catches_a_wrong_sensitivity() -> None:
    cost = cost_of(count_plan(rows=3), epsilon=1.0)
    # a unit adds up to R = 3 rows: neighbours 1000 and 1003; then, as if R were
    # understated, the same scale on counts 6 rows apart
    measured, broken = audit_vector(cost, "n", 1000, [1003, 1006], 40_000, True)
    assert measured <= 1.0
    assert measured >= 0.75  # the audit is tight enough to mean something
    assert broken > 1.0


@pytest.mark.parametrize("integer", [True, False])
def test_sum_keeps_epsilon(integer: bool) -> None:
    cost = cost_of(sum_plan(integer), epsilon=0.8)
    # a unit's 2 rows clamped to [-20, 100]: the sum moves by at most 200
    n = 30_000 if integer else 20_000  # float Laplace samples cost more
    measured, broken = audit_vector(cost, "s", 5000, [5200, 5400], n, True)
    assert 0.55 <= measured <= 0.8
    assert broken > 0.8


def test_zcdp_count_keeps_epsilon_delta() -> None:
    cost = cost_of(
        count_plan(rows=1, definition="zcdp"), definition="zcdp", epsilon=1.0, delta=1e-5
    )
    (measured,) = audit_vector(cost, "n", 1000, [1001], 30_000, False)
    assert measured <= cost.epsilon
    # the audit sees real privacy loss (a power check, not the claim): CI once
    # measured 0.0998 against the earlier bound of 0.1, so the bound is 0.05
    assert measured > 0.05


def selection_plan(definition: str = "pure"):
    return make_plan(
        definition=definition,
        keys=(KeySpec("g", "t.g", None),),
        measures=(Measure("n", "count"), Measure("units", "count_units", selection=True)),
        outputs=(Output("g", "key"), Output("n", "count", ("n",))),
        post_sql="SELECT g, n FROM noisy",
        max_groups=100_000,  # above the 20,000 groups released at once below
    )


def released(plan, cost, units: int, n: int) -> int:
    """Release n independent groups that each have ``units`` units; count the released."""
    exact = pa.table({"g": [f"g{i}" for i in range(n)], "n": [units] * n, "units": [units] * n})
    return release(plan, exact, cost).table.num_rows


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
def test_partition_selection_keeps_epsilon_delta(definition: str) -> None:
    plan = selection_plan(definition)
    delta = 0.02  # large, so that the δ part is measurable with n runs
    grant = make_grant(delta=0.5)
    cost = cost_of(plan, epsilon=1.0, delta=delta, grant=grant, definition=definition)
    sel = cost.measure("units")
    assert sel.threshold is not None
    n = 20_000
    # D has no such group, D′ has it with one unit: only δ may leak it
    k_new = released(plan, cost, 1, n)
    assert cp_low(k_new, n) <= sel.delta
    # a group at the threshold, with and without one more unit: ε on the selection share
    k_base = released(plan, cost, sel.threshold - 1, n)
    k_neigh = released(plan, cost, sel.threshold, n)
    measured = epsilon_lower(k_neigh, k_base, n, sel.delta)
    claimed = sel.share if definition == "pure" else cost.epsilon
    assert measured <= claimed
    if definition == "pure":
        # power: groups 3 units apart (wrongly) treated as neighbours are caught
        k_far = released(plan, cost, sel.threshold + 2, n)
        assert epsilon_lower(k_far, k_base, n, sel.delta) > sel.share


def test_opendp_threshold_map_alone_would_understate_delta() -> None:
    """Why privacy.accounting._selection_cost fits the threshold one count higher: with the
    threshold OpenDP's map accepts for (l0, l1, l∞) = (1, 1, 1), a key of count 1
    (one unit's new group) passes more often than the δ it reports. If OpenDP changes
    this, the test fails and the workaround can be revisited."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    dom = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
    metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
    delta, threshold = 0.02, 1
    while True:
        m = dp.m.make_laplace_threshold(dom, metric, scale=2.0, threshold=threshold)
        if m.map((1, 1, 1))[1] <= delta:
            break
        threshold += 1
    n = 20_000
    passed = len(m({i: 1 for i in range(n)}))
    assert cp_low(passed, n) > m.map((1, 1, 1))[1]
