"""Issue 17: OpenDP's half-widths are computed once per distinct noise and reused.

``accuracy._half_width_of`` caches OpenDP's ``*_scale_to_accuracy`` by (definition,
integer, scale, alpha). The ± of every released cell must be what OpenDP gives: the
cached values equal fresh OpenDP calls, and a release's per-cell accuracy is the same
computed with a cold cache and with a warm one.
"""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest

from sandbox.privacy import accuracy, release
from tests.privacy.factories import cost_of, exact_of, persons_table, sum_count_plan

dp.enable_features("contrib")

_OPENDP = {
    ("pure", True): dp.discrete_laplacian_scale_to_accuracy,
    ("pure", False): dp.laplacian_scale_to_accuracy,
    ("zcdp", True): dp.discrete_gaussian_scale_to_accuracy,
    ("zcdp", False): dp.gaussian_scale_to_accuracy,
}


@pytest.mark.parametrize(("definition", "integer"), list(_OPENDP))
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 90.8, 1e4, 123456.75])
@pytest.mark.parametrize("alpha", [0.05, 0.025, 0.05 / 3])
def test_cached_half_widths_are_opendps(
    definition: str, integer: bool, scale: float, alpha: float
) -> None:
    accuracy._half_width_of.cache_clear()
    first = accuracy._half_width_of(definition, integer, scale, alpha)
    again = accuracy._half_width_of(definition, integer, scale, alpha)
    assert accuracy._half_width_of.cache_info().hits >= 1
    assert first == again
    if definition == "zcdp" and integer and scale > 1e4:  # the documented bound
        want = math.ceil(float(dp.gaussian_scale_to_accuracy(scale=scale, alpha=alpha))) + 1.0
    else:
        want = float(_OPENDP[definition, integer](scale=scale, alpha=alpha))
    assert first == want


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
def test_explain_and_cells_are_the_same_cold_and_warm(definition: str) -> None:
    plan = sum_count_plan(definition=definition)
    delta = 1e-6 if definition == "zcdp" else 0.0
    cost = cost_of(plan, epsilon=1.0, delta=delta, definition=definition)
    accuracy._half_width_of.cache_clear()
    cold = accuracy.explain(plan, cost)
    warm = accuracy.explain(plan, cost)
    assert cold == warm and accuracy._half_width_of.cache_info().hits > 0
    noisy = release(plan, exact_of(plan.sql, persons_table(300)), cost)
    entries = {e["name"]: e for e in cold}
    for name in ("n", "s"):
        assert {c["accuracy_95"] for c in noisy.accuracy[name]} == {entries[name]["accuracy_95"]}
    scale = cost.measure("n").scale
    if not (definition == "zcdp" and scale > 1e4):
        want = float(_OPENDP[definition, True](scale=scale, alpha=0.05))
        assert entries["n"]["accuracy_95"] == want
