"""``sandbox dev run``: a query on synthetic data, through the compiler, the local executor
and the DP layer, spending no budget."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sandbox.catalog import Dataset
from sandbox.dev.context import ADHOC_UNITS, DevContext, parse_header, resolve_target
from sandbox.errors import BadInput, SystemFailure
from sandbox.grants import Grant, find_grant
from sandbox.settings import Settings

# ------------------------------------------------------------------ dev run


def run_query(
    sql: str,
    ctx: DevContext,
    settings: Settings,
    *,
    operator: str | None = None,
    scenario: str | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    units: int = ADHOC_UNITS,
    seed: int = 0,
) -> dict[str, Any]:
    """Compile, run on synthetic data with the local executor, add DP noise.

    Returns the released rows, each cell's accuracy, the mechanisms and what the
    query would cost in the real sandbox. No budget is spent, nothing is recorded.
    """
    from sandbox import privacy
    from sandbox.compiler import compile_query
    from sandbox.executors.local import LocalExecutor

    header = parse_header(sql)
    op, sc = resolve_target(ctx, header, operator=operator, scenario=scenario)
    grant = find_grant(ctx.grants, op, sc)
    plan = compile_query(sql, catalog=ctx.catalog, grant=grant)
    dataset = ctx.catalog.dataset(plan.dataset)
    if dataset is None:
        raise SystemFailure("The plan names a dataset outside the catalogue.", code="INTERNAL")
    eps = epsilon if epsilon is not None else _header_float(header, "epsilon")
    dlt = delta if delta is not None else _header_float(header, "delta")
    eps = eps if eps is not None else grant.budget.max_epsilon_per_query
    if dlt is None:
        dlt = default_delta(plan.private_keys, dataset, grant)
    cost = privacy.plan_cost(plan, epsilon=eps, delta=dlt, dataset=dataset, grant=grant)
    executor = LocalExecutor(settings)
    with tempfile.TemporaryDirectory(prefix="jinyu-dev-") as tmp:
        data_root = ctx.data_root
        if data_root is None or not _has_files(data_root, plan.tables):
            data_root = Path(tmp)
            _synthesise_for(plan.tables, ctx, data_root, units=units, seed=seed)
        exact = executor.run(plan, data_root=data_root, job_id="dev-local")
    noisy = privacy.release(plan, exact.table, cost, timeout_s=settings.release_timeout_s)
    del exact  # the exact aggregates of synthetic data; still, never kept
    return {
        "synthetic": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id,
        "dataset": plan.dataset,
        "plan_digest": plan.digest(),
        "columns": noisy.table.column_names,
        "rows": noisy.to_json_rows(),
        "accuracy": noisy.accuracy,
        "mechanisms": noisy.mechanisms,
        "explain": privacy.explain(plan, cost),
        "cost": cost.to_dict(),
        "would_cost": {
            "epsilon": cost.epsilon,
            "delta": cost.delta,
            "rho": cost.rho,
            "definition": cost.definition,
            "grant_total_epsilon": grant.budget.epsilon,
            "grant_total_delta": grant.budget.delta,
            "max_epsilon_per_query": grant.budget.max_epsilon_per_query,
        },
        "budget_spent": 0.0,
        "notes": list(plan.notes),
    }


def default_delta(private_keys: bool, dataset: Dataset, grant: Grant) -> float:
    """δ when none is asked: the grant's δ when the query needs one (private group
    keys, or a zCDP dataset whose guarantee is stated with δ > 0), else 0."""
    if not dataset.privacy.delta_allowed:
        return 0.0
    if private_keys or dataset.privacy.definition == "zcdp":
        return grant.budget.delta
    return 0.0


def _header_float(header: dict[str, str], key: str) -> float | None:
    if key not in header:
        return None
    try:
        return float(header[key])
    except ValueError as exc:
        raise BadInput(f"The query header's {key} is not a number.") from exc


def _has_files(root: Path, tables: dict[str, str]) -> bool:
    return all((root / rel).is_file() for rel in tables.values())


def _synthesise_for(
    tables: dict[str, str], ctx: DevContext, out: Path, *, units: int, seed: int
) -> None:
    from sandbox.synthetic import generate_synthetic

    wanted = []
    for name in tables:
        found = ctx.catalog.find_table(name)
        if found is not None and found[0].id not in wanted:
            wanted.append(found[0].id)
    generate_synthetic(out, ctx.catalog, wanted, units=units, seed=seed, policies=ctx.policies)
