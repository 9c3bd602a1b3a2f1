"""Empirical check of the claims (issue 15 point 8, "Done when"), in bounded time.

1. A count's output distribution on neighbouring datasets D and D′ (one unit added):
   the released values of many draws (OpenDP's sampler, through the release's own
   noise function at the scale ``plan_cost`` fitted) are binned, and in every
   well-populated bin the log-ratio of the two frequencies must stay within the
   claimed ε. Each bin's ratio is bounded from below with Clopper–Pearson intervals
   (one-sided, β = 10⁻⁶ per bound, so a sound mechanism fails with probability
   ≤ 2β per bin); for (ε, δ) the bound is taken on (p − δ)/q. The same histogram
   on neighbours twice as far apart must exceed ε (the test can fail).
2. A private group made of one unit is released with frequency at most δ, through
   the real release (partition selection thresholds the released count itself), at a
   δ large enough to measure: 0.05.

Neither is a proof; together they catch a wrong sensitivity, a wrong conversion or a
threshold that leaks more than δ.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pyarrow as pa
import pytest
from scipy.stats import beta as beta_dist

from sandbox.plan import KeySpec, Measure, Output
from sandbox.privacy import release
from sandbox.privacy.release import _noise
from tests.privacy.factories import cost_of, make_grant, make_plan

BETA = 1e-6
DRAWS = 100_000
POPULATED = 500  # a bin is read only if both sides have at least this many draws


def _low(k: int, n: int) -> float:
    return 0.0 if k == 0 else float(beta_dist.ppf(BETA, k, n - k + 1))


def _high(k: int, n: int) -> float:
    return 1.0 if k == n else float(beta_dist.ppf(1 - BETA, k + 1, n - k))


def count_plan(definition: str):
    return make_plan(
        definition=definition,
        keys=(),
        outputs=(Output("n", "count", ("n",)),),
        post_sql="SELECT n FROM noisy",
    )


def histogram_loss(
    mc, x: int, x_neighbour: int, pure: bool, delta: float
) -> tuple[list[float], float]:
    """Over the well-populated bins k: the estimates |ln P[out = k | D] / P[out = k |
    D′]|, and the largest lower confidence bound on them, from DRAWS draws a side."""
    base = Counter(_noise(mc, [x] * DRAWS, pure))
    neigh = Counter(_noise(mc, [x_neighbour] * DRAWS, pure))
    estimates, bound = [], -math.inf
    for k in set(base) & set(neigh):
        a, b = base[k], neigh[k]
        if min(a, b) < POPULATED:
            continue
        estimates.append(abs(math.log(a / b)))
        for p, q in ((a, b), (b, a)):  # both directions of the ratio
            num = _low(p, DRAWS) - delta
            if num > 0:
                bound = max(bound, math.log(num / _high(q, DRAWS)))
    assert len(estimates) >= 5, "too few well-populated bins to read"
    return estimates, bound


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
def test_a_counts_output_distribution_stays_within_epsilon(definition: str) -> None:
    pure = definition == "pure"
    # ε = 1 on one count, R = 1: discrete Laplace of scale 1, or the discrete Gaussian
    # of the ρ OpenDP's conversion allows for (1, 10⁻⁶)
    delta = 0.0 if pure else 1e-6
    cost = cost_of(count_plan(definition), epsilon=1.0, delta=delta, definition=definition)
    mc = cost.measure("n")
    estimates, bound = histogram_loss(mc, 1000, 1001, pure, delta)
    assert bound <= cost.epsilon
    # the check has power: neighbours 2 apart (a unit of 2 rows passed off as 1)
    far, broken = histogram_loss(mc, 1000, 1002, pure, delta)
    if pure:
        # the discrete Laplace's ratio is e^±ε in every bin: the loss is all there...
        assert statistics.median(estimates) == pytest.approx(1.0, abs=0.05)
        assert broken > cost.epsilon  # ...and twice the distance is caught
    else:
        # the Gaussian's ratio grows with the distance from the mean: in well-populated
        # bins it stays below ε (beyond them lies the δ), and doubles with the distance
        assert 0.2 < max(estimates) < cost.epsilon
        assert max(far) > 1.5 * max(estimates)


def selection_plan(definition: str):
    """A private-key COUNT(*): the released count is the thresholded one."""
    return make_plan(
        definition=definition,
        keys=(KeySpec("g", "t.g", None),),
        measures=(Measure("n", "count", selection=True),),
        outputs=(Output("g", "key"), Output("n", "count", ("n",))),
        post_sql="SELECT g, n FROM noisy",
        max_groups=100_000,  # above the groups released at once below
    )


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
def test_a_one_unit_private_group_is_released_with_probability_at_most_delta(
    definition: str,
) -> None:
    plan = selection_plan(definition)
    delta = 0.05
    cost = cost_of(
        plan, epsilon=1.0, delta=delta, definition=definition, grant=make_grant(delta=0.5)
    )
    sel = cost.measure("n")
    assert sel.selection and sel.threshold is not None
    claimed = sel.delta  # all of δ (pure) or its half for selection (zCDP)
    n = 40_000
    exact = pa.table({"g": [f"g{i}" for i in range(n)], "n": [1] * n})
    kept = release(plan, exact, cost).table.num_rows
    # D′ has a group of one unit, D has none: the group shows only with probability δ
    assert _low(kept, n) <= claimed
    assert kept / n <= claimed * 1.1  # and the frequency itself, within sampling error
    assert kept > 0  # it is measured, not vacuous: the threshold is fitted to δ
