"""Accuracy beside OpenDP: our noise scale, OpenDP Context's, and the minimum.

    python -m bench.accuracy_table            # rewrite the table in docs/privacy.md
    python -m bench.accuracy_table --print    # print it instead

For every example query (``queries/*.sql``, against the demo catalogue and grants in
``policies/``, at the ε and δ of its ``-- try:`` line, or the default δ when that line
names none) and every measure of its Plan, three noise scales:

- **ours**: ``privacy.plan_cost``, what the sandbox adds;
- **OpenDP**: OpenDP's Polars ``Context`` given the same thing — the measure's share
  of the budget (ε, or ρ for zCDP, and the selection δ), the same value bounds, the
  same contribution bounds (R rows and G groups per unit) and the same margins
  (``max_length`` = the float sums' row bound ``privacy.float_sum_rows``) — read
  from ``query.summarize()``;
- **minimum**: derived by hand, independently of both: sensitivity / ε for Laplace
  (and twice that for the exponential mechanism); for zCDP, Δ₂ / √(2ρ) at the share
  of the ρ that the Canonne–Kamath–Steinke bound, minimised here with SciPy, allows
  for the query's (ε, δ) — the tightest ρ → (ε, δ) conversion known for ρ-zCDP.

For zCDP rows it also gives the 95% half-width of the Gaussian we add and of a Laplace
mechanism charged the same ρ (ε₀²/2 = ρ, OpenDP's pure → zCDP conversion), the
comparison behind docs/privacy.md's "Laplace or Gaussian".

The table is written into docs/privacy.md between the two ``accuracy-table`` markers;
``tests/bench/test_accuracy_table.py`` checks it is current, that ours is never above
OpenDP's (beyond float noise) and never below the minimum.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "privacy.md"
START = "<!-- accuracy-table:start -->"
END = "<!-- accuracy-table:end -->"
# ours may sit this far above OpenDP's scale: our fit aims at 1 − 2⁻⁴⁰ of the share and
# steps the scale up by 10⁻⁹ when OpenDP's map rounds a hair above it
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Row:
    query: str  # the file's number, e.g. "05"
    measure: str  # what is measured, e.g. "sum(monthly_income)"
    mechanism: str
    share: str  # "ε 0.25" or "ρ 0.0081"
    ours: float
    opendp: float
    minimum: float
    ours_95: float | None = None  # zCDP only: our Gaussian's 95% half-width
    laplace_95: float | None = None  # zCDP only: a Laplace charged the same ρ
    threshold: int | None = None  # selection only: ours
    opendp_threshold: int | None = None  # selection only: OpenDP's


# ------------------------------------------------------------------ the example queries


def try_line(text: str) -> dict[str, str]:
    """The flags of a query's ``-- try: sandbox explain ...`` line."""
    for line in text.splitlines():
        if line.startswith("-- try: sandbox "):
            words = shlex.split(line.removeprefix("-- try: sandbox "))
            return dict(zip(words[2::2], words[3::2], strict=False))
    raise ValueError("no try: line")


def examples(policies: Path = ROOT / "policies", queries: Path = ROOT / "queries") -> list[Any]:
    """(query file, plan, dataset, cost) for every example query."""
    from sandbox.catalog import load_catalog
    from sandbox.compiler import compile_query
    from sandbox.grants import find_grant, load_grants
    from sandbox.privacy import choose_delta, plan_cost

    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    out = []
    for path in sorted(queries.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        flags = try_line(text)
        grant = find_grant(grants, flags["--operator"], flags["--scenario"])
        plan = compile_query(text, catalog=catalog, grant=grant)
        dataset = catalog.dataset(plan.dataset)
        assert dataset is not None
        asked = float(flags["--delta"]) if "--delta" in flags else None
        delta = choose_delta(asked, plan, dataset, grant)
        eps = float(flags["--epsilon"])
        cost = plan_cost(plan, epsilon=eps, delta=delta, dataset=dataset, grant=grant)
        out.append((path, plan, dataset, cost))
    return out


def describe(m: Any) -> str:
    col = (m.column or "").split(".")[-1].replace("^2", "²")
    if m.kind == "count":
        what = f"count({col})" if col else "count(*)"
    elif m.kind == "count_units":
        what = "count(distinct unit)"
    elif m.kind == "sum":
        what = f"sum({col})"
    else:
        what = f"quantile {m.alpha:g} ({col})"
    return what + (", thresholded" if m.selection else "")


# ------------------------------------------------------------------ hand-derived minimum


def _cks_log_delta(rho: float, eps: float) -> float:
    """ln δ of ρ-zCDP at ε by Canonne, Kamath and Steinke (2020), Proposition 12:
    δ = inf_{α>1} exp((α−1)(αρ−ε)) / (α−1) · (1 − 1/α)^α."""
    from scipy.optimize import minimize_scalar

    def f(t: float) -> float:
        a = 1.0 + math.exp(t)
        return (a - 1) * (a * rho - eps) - math.log(a - 1) + a * math.log1p(-1 / a)

    best = minimize_scalar(f, bounds=(-30.0, 40.0), method="bounded", options={"xatol": 1e-12})
    return float(best.fun)


@lru_cache(maxsize=64)
def cks_rho(eps: float, delta: float) -> float:
    """The largest ρ whose CKS conversion at δ gives at most ε (bisection)."""
    lo, hi = 0.0, eps
    target = math.log(delta)
    for _ in range(200):
        mid = (lo + hi) / 2
        if _cks_log_delta(mid, eps) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def _alpha_fraction(alpha: float) -> tuple[int, int]:
    """The fraction a/d OpenDP's score transformation uses for α (the sandbox's)."""
    from sandbox.privacy import quantile_alpha_fraction

    return quantile_alpha_fraction(alpha)


def _l1_l2(plan: Any, dataset: Any, m: Any) -> tuple[float, float]:
    """A measure's L1 and L2 sensitivity, from the bounds by hand (docs/privacy.md)."""
    r, g = plan.unit_rows, plan.unit_groups
    if m.kind == "count":
        return float(r), float(r)
    if m.kind == "count_units":
        return float(g), math.sqrt(g)
    bound = max(abs(m.lower), abs(m.upper))
    base = r * bound
    if m.integer:
        return base, base
    units = dataset.privacy.max_units
    n = units if r == 1 else r * (units + 1)  # rows in a group's sum
    tau = 2 * n * n * 2.0**-52 * bound  # OpenDP's rounding allowance for n rows
    return base + g * tau, base + math.sqrt(g) * tau


def minimum(plan: Any, dataset: Any, cost: Any, m: Any, mc: Any) -> float:
    """The smallest scale the measure's share allows, derived by hand."""
    pure = cost.definition == "pure"
    if pure:
        eps = mc.share
    else:  # the share of the tightest ρ for the query's (ε, δ)
        conv_delta = cost.delta - cost.selection_delta
        rho = cks_rho(cost.epsilon, conv_delta) * mc.share / cost.rho
    if m.kind == "histogram":
        # exponential mechanism over OpenDP's scores, whose sensitivity is R·max(a, d−a)
        # for α = a/d: ε = 2Δ/scale, ρ = ε²/8; in rows of rank (÷ d)
        num, den = _alpha_fraction(m.alpha)
        sens = plan.unit_rows * max(num, den - num)
        if pure:
            return 2 * sens / eps / den
        return 2 * sens / math.sqrt(8 * rho) / den
    l1, l2 = _l1_l2(plan, dataset, m)
    if pure:
        return (math.ceil(l1) if m.integer else l1) / eps
    return l2 / math.sqrt(2 * rho)


# ------------------------------------------------------------------ OpenDP's Context


def opendp_scale(plan: Any, dataset: Any, cost: Any, m: Any, mc: Any) -> tuple[float, int | None]:
    """OpenDP Context's noise scale for one measure at its share (see the module doc),
    a quantile's in rows of rank, and its threshold for a selection measure."""
    import opendp.prelude as dp
    import polars as pl

    from sandbox.privacy import float_sum_rows

    dp.enable_features("contrib")
    r, g = plan.unit_rows, plan.unit_groups
    pure = cost.definition == "pure"
    sel = mc.delta if mc.selection else None
    loss = dp.loss_of(epsilon=mc.share, delta=sel) if pure else dp.loss_of(rho=mc.share, delta=sel)
    n = float_sum_rows(plan, dataset)
    integer = m.integer and m.kind != "histogram"
    size = 300
    values = [i % 90 for i in range(size)] if integer else [float(i % 90) for i in range(size)]
    frame = pl.LazyFrame({"g": [f"k{i % 3}" for i in range(size)], "v": values})
    keyed = bool(plan.keys)
    margins = [dp.polars.Margin(by=[], max_length=n)]
    if keyed:  # public keys (a selection measure instead lets OpenDP threshold them)
        invariant = None if mc.selection else "keys"
        margins.append(dp.polars.Margin(by=["g"], max_length=n, max_groups=g, invariant=invariant))
    if m.kind == "count_units":  # one row per (unit, group): ≤ 1 in each of ≤ G groups
        per_row, per_group = g, 1
    else:
        per_row, per_group = r, r
    bounds = [dp.polars.Bound(per_group=per_row)]
    if keyed:
        bounds.append(dp.polars.Bound(by=["g"], per_group=per_group, num_groups=g))
    ctx = dp.Context.compositor(
        data=frame,
        privacy_unit=dp.unit_of(contributions=bounds),
        privacy_loss=loss,
        split_evenly_over=1,
        margins=margins,
    )
    if m.kind in ("count", "count_units"):
        expr = dp.len(signed=True)
    elif m.kind == "sum":
        lo, hi = (int(m.lower), int(m.upper)) if integer else (float(m.lower), float(m.upper))
        expr = pl.col("v").fill_null(0 if integer else 0.0).dp.sum((lo, hi))
    else:
        expr = pl.col("v").fill_null(0.0).dp.quantile(m.alpha, list(m.candidates))
    query = ctx.query()
    query = query.group_by("g").agg(expr) if keyed else query.select(expr)
    summary = query.summarize()
    scale = float(summary["scale"][0])
    threshold = None
    if "threshold" in summary.columns and summary["threshold"][0] is not None:
        threshold = int(summary["threshold"][0])
    if m.kind == "histogram":  # OpenDP's Polars path picks its own α denominator
        scale /= _opendp_alpha_den(m, loss_kind=pure, n=n)
    return scale, threshold


def _opendp_alpha_den(m: Any, *, loss_kind: bool, n: int) -> float:
    """The denominator d of the α fraction OpenDP's Polars quantile uses at this
    max_length, read off OpenDP: one row per unit at ε = 1 gives scale = 2·max(a, d−a)."""
    import opendp.prelude as dp
    import polars as pl

    frame = pl.LazyFrame({"v": [float(i % 90) for i in range(300)]})
    ctx = dp.Context.compositor(
        data=frame,
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=1.0),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=[], max_length=n)],
    )
    expr = pl.col("v").fill_null(0.0).dp.quantile(m.alpha, list(m.candidates))
    top = float(ctx.query().select(expr).summarize()["scale"][0]) / 2
    return top / max(m.alpha, 1 - m.alpha)


# ------------------------------------------------------------------ Laplace or Gaussian


def half_widths(mc: Any, l1: float) -> tuple[float, float]:
    """95% half-widths at the measure's ρ share: our Gaussian, and a Laplace whose ε₀
    gives the same ρ = ε₀²/2 (OpenDP's make_pureDP_to_zCDP), by OpenDP's formulas."""
    import opendp.prelude as dp

    gauss = dp.discrete_gaussian_scale_to_accuracy if mc.integer else dp.gaussian_scale_to_accuracy
    lap = dp.discrete_laplacian_scale_to_accuracy if mc.integer else dp.laplacian_scale_to_accuracy
    b = l1 / math.sqrt(2 * mc.share)
    return float(gauss(scale=mc.scale, alpha=0.05)), float(lap(scale=b, alpha=0.05))


# ------------------------------------------------------------------ the table


def compute(
    policies: Path = ROOT / "policies",
    queries: Path = ROOT / "queries",
    *,
    with_opendp: bool = True,
) -> list[Row]:
    """Every row of the table; without OpenDP's column (NaN) when ``with_opendp`` is
    false (OpenDP's Context takes about a minute for them all)."""
    rows = []
    for path, plan, dataset, cost in examples(policies, queries):
        by_name = {m.name: m for m in plan.measures}
        for mc in cost.measures:
            m = by_name[mc.name]
            unit = "ε" if cost.definition == "pure" else "ρ"
            ours_95 = laplace_95 = None
            if cost.definition == "zcdp" and m.kind != "histogram":
                ours_95, laplace_95 = half_widths(mc, _l1_l2(plan, dataset, m)[0])
            theirs, their_threshold = (
                opendp_scale(plan, dataset, cost, m, mc) if with_opendp else (math.nan, None)
            )
            rank = mc.score_den if m.kind == "histogram" and mc.score_den else 1
            rows.append(
                Row(
                    query=path.name[:2],
                    measure=describe(m),
                    mechanism=mc.mechanism,
                    share=f"{unit} {mc.share:.4g}",
                    ours=mc.scale / rank,
                    opendp=theirs,
                    minimum=minimum(plan, dataset, cost, m, mc),
                    ours_95=ours_95,
                    laplace_95=laplace_95,
                    threshold=mc.threshold,
                    opendp_threshold=their_threshold,
                )
            )
    return rows


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


COLUMNS = (
    "query",
    "measure",
    "mechanism",
    "share",
    "ours",
    "OpenDP",
    "minimum",
    "ours ÷ OpenDP",
    "ours ÷ minimum",
    "threshold (ours / OpenDP)",
    "95% ± at the same ρ: Gaussian (ours) / Laplace",
)


def short(mechanism: str) -> str:
    """A mechanism's name, short enough for the table."""
    if "quantile" in mechanism:
        return "exponential mechanism ‡"
    if mechanism.startswith("partition selection: "):
        return mechanism.removeprefix("partition selection: ")
    return mechanism.replace(" (OpenDP, float-safe)", " (float)")


def cells(r: Row) -> list[str]:
    hw = "—" if r.ours_95 is None else f"{_num(r.ours_95)} / {_num(r.laplace_95)}"
    thr = "—" if r.threshold is None else f"{r.threshold} / {r.opendp_threshold}"
    return [
        r.query,
        r.measure,
        short(r.mechanism),
        r.share,
        _num(r.ours),
        _num(r.opendp),
        _num(r.minimum),
        f"{r.ours / r.opendp:.4f}",
        f"{r.ours / r.minimum:.4f}",
        thr,
        hw,
    ]


def render(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def replace_table(doc: str, table: str) -> str:
    head, sep, rest = doc.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{DOC.name} has no {START} … {END} markers")
    return f"{head}{START}\n{table}{END}{tail}"


def current_table(doc: str) -> str:
    """The table between the markers, as written."""
    return doc.partition(START)[2].partition(END)[0].removeprefix("\n")


def parse(table: str) -> list[dict[str, str]]:
    """The rows of a rendered table, by column name (for the test)."""
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")]
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(names, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        for ln in lines[2:]
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the table, leave the doc")
    args = ap.parse_args(argv)
    table = render(compute())
    if args.print:
        sys.stdout.write(table)
        return 0
    DOC.write_text(replace_table(DOC.read_text(encoding="utf-8"), table), encoding="utf-8")
    print(f"wrote the accuracy table into {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
