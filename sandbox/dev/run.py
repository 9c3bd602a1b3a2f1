"""``sandbox dev run``: a query on synthetic data, through the compiler, the local executor,
the DP layer and output review, spending no budget.

The local result is shaped as the server's product would be: the same δ rule
(``privacy.choose_delta``), the same disclosure control (``review.check_output`` with
the local ``review.yaml``: rounding, minimum counts, suppression, the ``suppressed``
column), the same flags (``wide_interval`` included), the same per-cell accuracy
(``review.released_accuracy``) and the product's ``_pm95`` columns.
Only near-duplicate detection is missing: there is no job history on your machine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sandbox.dev.context import ADHOC_UNITS, DevContext, parse_header, resolve_target
from sandbox.errors import BadInput, SystemFailure
from sandbox.grants import find_grant
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
    """Compile, run on synthetic data with the local executor, add DP noise, review.

    Returns the rows as the sandbox would release them (rounded, suppressed, with the
    ``suppressed`` column), their schema, each cell's accuracy, the review flags, the
    mechanisms and what the query would cost in the real sandbox. No budget is spent,
    nothing is recorded.
    """
    from sandbox import privacy, products, review
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
    dlt = privacy.choose_delta(dlt, plan, dataset, grant)
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
    rules = review.load_rules(ctx.policies)
    grade = dataset.grade.value
    checked = review.check_output(
        noisy.table, plan, grade=grade, rules=rules, accuracy=noisy.accuracy
    )
    product = products.with_accuracy(checked.table, checked.accuracy)  # ± columns beside
    released = json.loads(products.render(product, "json"))  # as the JSON product
    return {
        "synthetic": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id,
        "dataset": plan.dataset,
        "plan_digest": plan.digest(),
        "grade": grade,
        "columns": released["columns"],
        "schema": [{"name": f.name, "type": str(f.type)} for f in product.schema],
        "rows": released["rows"],
        "accuracy": checked.accuracy,
        "accuracy_columns": products.accuracy_columns(checked.table.column_names, checked.accuracy),
        "flags": [*checked.flags, *noisy.warnings],
        "disclosure_control": {
            "min_count": checked.min_count,
            "round_base": checked.round_base,
            "suppressed_rows": checked.suppressed_rows,
        },
        "required_approvals": checked.required_approvals,
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
