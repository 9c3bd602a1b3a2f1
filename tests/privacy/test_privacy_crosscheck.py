"""Cross-check: our noise scale is never below OpenDP's own Context API for the same
query shape, privacy loss, bounds and contribution limits.

OpenDP's Polars Context builds each query from the rows with its own sensitivity
analysis; we read its scales with ``query.summarize()``. Each case builds our Plan by
hand with the same R (rows per unit), G (groups per unit) and bounds.
"""

from __future__ import annotations

import math
from typing import Any

import opendp.prelude as dp
import polars as pl
import pytest

from sandbox.plan import KeySpec, Measure, Output
from sandbox.privacy import float_sum_rows, plan_cost, quantile_candidates
from tests.privacy.factories import make_dataset, make_grant, make_plan

dp.enable_features("contrib")

pytestmark = pytest.mark.slow

EPS, DELTA = 1.0, 1e-6
KEYS = ("a", "b", "c")


def frame() -> pl.LazyFrame:
    n = 300
    return pl.LazyFrame(
        {
            "g": [KEYS[i % 3] for i in range(n)],
            "x": [float(i % 90) for i in range(n)],
            "x2": [float((i % 90) ** 2) for i in range(n)],
            "i": [i % 90 for i in range(n)],
        }
    )


def loss(definition: str, cost: Any) -> Any:
    if definition == "pure":
        return dp.loss_of(epsilon=cost.epsilon, delta=cost.selection_delta or None)
    return dp.loss_of(rho=cost.rho, delta=cost.selection_delta or None)


def context(
    definition: str,
    cost: Any,
    parts: int,
    rows: int,
    groups: int = 1,
    keys: bool = True,
    per_group: int | None = None,
) -> Any:
    # the float sums' row bound: what the sandbox sizes its rounding term for
    max_length = float_sum_rows(make_plan(unit_rows=rows), make_dataset(definition))
    margins = [dp.polars.Margin(by=[], max_length=max_length)]
    if keys:
        margins.append(
            dp.polars.Margin(by=["g"], max_length=max_length, max_groups=groups, invariant="keys")
        )
    if per_group is not None:
        # at most `rows` rows in all, at most `per_group` in each of `groups` groups
        unit = dp.unit_of(
            contributions=[
                dp.polars.Bound(per_group=rows),
                dp.polars.Bound(by=["g"], per_group=per_group, num_groups=groups),
            ]
        )
    else:
        unit = dp.unit_of(contributions=rows)
    return dp.Context.compositor(
        data=frame(),
        privacy_unit=unit,
        privacy_loss=loss(definition, cost),
        split_evenly_over=parts,
        margins=margins,
    )


def scales(query: Any) -> list[float]:
    return [float(s) for s in query.summarize()["scale"].to_list()]


def ours(definition: str, rows: int, groups: int, **plan: Any) -> Any:
    p = make_plan(definition=definition, unit_rows=rows, unit_groups=groups, **plan)
    delta = DELTA if (definition == "zcdp" or p.private_keys) else 0.0
    return plan_cost(
        p, epsilon=EPS, delta=delta, dataset=make_dataset(definition), grant=make_grant(ceiling=EPS)
    )


def noise(expr: Any, definition: str) -> Any:
    return expr  # the Context picks Laplace or Gaussian from the privacy loss


DEFS = ["pure", "zcdp"]
LIMITS = [(12, 7)]  # (R, G); OpenDP's Context takes seconds per query here


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize(("rows", "groups"), [(1, 1), *LIMITS])
def test_count(definition: str, rows: int, groups: int) -> None:
    cost = ours(definition, rows, groups, keys=(KeySpec("g", "t.g", KEYS),))
    q = context(definition, cost, 1, rows, groups).query().group_by("g").agg(dp.len(signed=True))
    theirs = scales(q)[0]
    assert cost.measure("n").scale >= theirs * (1 - 1e-9)
    assert cost.measure("n").scale == pytest.approx(theirs, rel=0.01)  # not needlessly worse


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize(("rows", "groups"), LIMITS)
@pytest.mark.parametrize(
    ("column", "bounds", "integer"), [("i", (0, 90), True), ("x", (-30.0, 90.0), False)]
)
def test_sum(
    definition: str, rows: int, groups: int, column: str, bounds: tuple[float, float], integer: bool
) -> None:
    cost = ours(
        definition,
        rows,
        groups,
        keys=(KeySpec("g", "t.g", KEYS),),
        measures=(Measure("s", "sum", f"t.{column}", bounds[0], bounds[1], integer),),
        outputs=(Output("g", "key"), Output("s", "sum", ("s",))),
    )
    expr = pl.col(column).fill_null(0 if integer else 0.0).dp.sum(bounds)
    q = (
        context(definition, cost, 1, rows, groups)
        .query()
        .group_by("g")
        .agg(noise(expr, definition))
    )
    theirs = scales(q)[0]
    assert cost.measure("s").scale >= theirs * (1 - 1e-9)
    assert cost.measure("s").scale == pytest.approx(theirs, rel=0.05)


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize(("rows", "groups"), LIMITS)
def test_mean(definition: str, rows: int, groups: int) -> None:
    cost = ours(
        definition,
        rows,
        groups,
        keys=(),
        measures=(Measure("s", "sum", "t.x", 0.0, 90.0, False), Measure("n", "count")),
        outputs=(Output("m", "mean", ("s", "n")),),
        post_sql="SELECT s / n AS m FROM noisy",
    )
    # OpenDP's own dp.mean divides the budget between its sum and length by its own
    # rule (unevenly once the float sum's rounding term is large), so each part is
    # compared with OpenDP's sum and length at the share the sandbox gives it: half
    ctx = context(definition, cost, 2, rows, keys=False)
    their_sum = scales(
        ctx.query().select(noise(pl.col("x").fill_null(0.0).dp.sum((0.0, 90.0)), definition))
    )[0]
    their_len = scales(ctx.query().select(dp.len(signed=True)))[0]
    assert cost.measure("s").scale >= their_sum * (1 - 1e-9)
    assert cost.measure("n").scale >= their_len * (1 - 1e-9)


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize(("rows", "groups"), LIMITS)
def test_variance_components(definition: str, rows: int, groups: int) -> None:
    # variance = post-processing of count, sum and sum of squares
    cost = ours(
        definition,
        rows,
        groups,
        keys=(),
        measures=(
            Measure("n", "count"),
            Measure("s", "sum", "t.x", 0.0, 90.0, False),
            Measure("ss", "sum", "t.x2", 0.0, 8100.0, False),
        ),
        outputs=(Output("v", "variance", ("n", "s", "ss")),),
        post_sql="SELECT ss / n - (s / n) ^ 2 AS v FROM noisy",
    )
    ctx = context(definition, cost, 3, rows, keys=False)
    theirs = [
        scales(ctx.query().select(dp.len(signed=True)))[0],
        scales(
            ctx.query().select(noise(pl.col("x").fill_null(0.0).dp.sum((0.0, 90.0)), definition))
        )[0],
        scales(
            ctx.query().select(noise(pl.col("x2").fill_null(0.0).dp.sum((0.0, 8100.0)), definition))
        )[0],
    ]
    for name, their in zip(("n", "s", "ss"), theirs, strict=True):
        assert cost.measure(name).scale >= their * (1 - 1e-9), name


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize(("rows", "groups"), LIMITS)
@pytest.mark.parametrize("alpha", [0.5, 0.25])  # exact fractions: same score units
def test_quantile(definition: str, rows: int, groups: int, alpha: float) -> None:
    cands = quantile_candidates(0, 90, True)
    cost = ours(
        definition,
        rows,
        groups,
        keys=(),
        measures=(Measure("h", "histogram", "t.x", 0, 90, True, cands, alpha),),
        outputs=(Output("q", "quantile", ("h",)),),
        post_sql="SELECT h AS q FROM noisy",
    )
    expr = pl.col("x").fill_null(0.0).dp.quantile(alpha, list(cands))
    q = context(definition, cost, 1, rows, keys=False).query().select(expr)
    theirs = scales(q)[0]
    assert cost.measure("h").scale >= theirs * (1 - 1e-9)
    assert cost.measure("h").scale == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize("groups", [3])
def test_count_units(definition: str, groups: int) -> None:
    # distinct units per group: each unit adds at most 1 to each of at most G groups
    cost = ours(
        definition,
        groups,
        groups,
        keys=(KeySpec("g", "t.g", KEYS),),
        measures=(Measure("u", "count_units"),),
        outputs=(Output("g", "key"), Output("u", "count_units", ("u",))),
    )
    ctx = context(definition, cost, 1, groups, groups, per_group=1)
    theirs = scales(ctx.query().group_by("g").agg(dp.len(signed=True)))[0]
    assert cost.measure("u").scale >= theirs * (1 - 1e-9)
    assert cost.measure("u").scale == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("definition", DEFS)
@pytest.mark.parametrize("groups", [3])
def test_group_by_with_partition_selection(definition: str, groups: int) -> None:
    cost = ours(
        definition,
        groups,
        groups,
        keys=(KeySpec("g", "t.g", None),),
        measures=(Measure("n", "count"), Measure("units", "count_units", selection=True)),
        outputs=(Output("g", "key"), Output("n", "count", ("n",))),
    )
    # OpenDP: a noisy count that is also thresholded, each unit ≤ 1 row per group
    ctx = context(definition, cost, 2, groups, groups, keys=False, per_group=1)
    q = ctx.query().group_by("g").agg(dp.len(signed=True))
    summary = q.summarize()
    their_scale = float(summary["scale"][0])
    assert "threshold" in summary.columns
    sel = cost.measure("units")
    assert sel.scale >= their_scale * (1 - 1e-9)
    assert sel.threshold is not None and sel.threshold >= 1
    if definition == "pure":
        assert math.isclose(sel.scale, their_scale, rel_tol=0.01)
