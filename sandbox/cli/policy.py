"""CLI: ``sandbox policy check|catalog`` and ``sandbox explain`` (the compiler's work,
shown without touching any data).

``sandbox explain FILE_OR_SQL --operator OP --scenario SC [--epsilon E] [--delta D]``
compiles the query against the local policies exactly as the server would and prints
the Plan: tables, keys (public or private), measures with bounds and sensitivity,
outputs, the bounding applied and the runner SQL. With ``--epsilon`` it also shows
each output's noise scale and 95% accuracy. ``--operator``/``--scenario`` default to
``-- operator: …`` / ``-- scenario: …`` lines in the query's comment header.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sandbox.cli.common import JsonOption, console, handle_errors, print_json, settings

if TYPE_CHECKING:
    from sandbox.catalog import Catalog
    from sandbox.plan import Plan

policy_app = typer.Typer(
    help="Policy files: catalogue (目录) and grants (授权).", no_args_is_help=True
)

_HEADER = re.compile(r"^\s*--\s*(operator|scenario)\s*[:=]\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_HEADER_FLAG = re.compile(r"--(operator|scenario)[ =](\S+)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(policy_app, name="policy")
    # `sandbox explain` is also the client's server-side explain (sandbox/cli/client.py);
    # whichever registers last wins, so the local one is always `sandbox policy explain`.
    policy_app.command("explain")(explain)


@policy_app.command("check")
@handle_errors
def check(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Validate catalog.yaml and grants.yaml; exit 2 with the reason if they are invalid."""
    from sandbox.catalog import load_catalog
    from sandbox.grants import load_grants

    policies = settings(ctx).policies
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    summary = policy_summary(catalog, grants)
    summary["policies"] = str(policies)
    if as_json:
        print_json(summary)
        return
    console.print(f"[green]ok[/] policies in {policies}")
    console.print(
        f"  {summary['datasets']} datasets ({summary['private_datasets']} private, "
        f"{summary['lookup_datasets']} public lookup), {summary['tables']} tables, "
        f"{summary['columns']} columns, {summary['key_sets']} public key sets"
    )
    console.print(
        f"  {summary['operators']} operators, {summary['grants']} grants, "
        f"{summary['scenarios']} scenarios"
    )
    for d in summary["not_grantable"]:
        console.print(f"  [dim]not grantable:[/] {d['id']} ({d['grade']}, {d['sharing']})")


def policy_summary(catalog: Catalog, grants: Any) -> dict[str, Any]:
    """Counts for ``policy check`` (and the API, if it wants them)."""
    return {
        "ok": True,
        "datasets": len(catalog.datasets),
        "private_datasets": sum(1 for d in catalog.datasets if not d.is_public),
        "lookup_datasets": sum(1 for d in catalog.datasets if d.is_public),
        "tables": sum(len(d.tables) for d in catalog.datasets),
        "columns": sum(len(t.columns) for d in catalog.datasets for t in d.tables),
        "key_sets": len(catalog.key_sets),
        "operators": len(grants.operators),
        "grants": len(grants.grants),
        "scenarios": len({g.scenario.id for g in grants.grants}),
        "not_grantable": [
            {"id": d.id, "grade": d.grade.value, "sharing": d.sharing.attribute.value}
            for d in catalog.datasets
            if not d.grantable
        ],
    }


@policy_app.command("catalog")
@handle_errors
def show_catalog(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """The catalogue as operators see it: datasets, tables, columns, uses, bounds."""
    from sandbox.catalog import load_catalog

    catalog = load_catalog(settings(ctx).policies)
    data = catalog.model_dump(mode="json", exclude={"resolved_keys"})
    if as_json:
        print_json(data)
        return
    for d in catalog.datasets:
        unit = f"unit {d.privacy_unit}" if d.privacy_unit else "public lookup"
        console.print(f"[bold]{d.id}[/] {d.title} — {d.grade.value}, "
                      f"{d.sharing.attribute.value}, {unit}")  # fmt: skip
        for t in d.tables:
            rows = f"{t.rows_per_unit} row(s)/unit" if t.rows_per_unit else "lookup"
            console.print(f"  [cyan]{t.name}[/] ({rows})")
            for c in t.columns:
                uses = ",".join(sorted(u.value for u in c.uses)) or "-"
                extra = f" bounds {list(c.bounds)}" if c.bounds else ""
                extra += f" keys {c.keys}" if c.keys else ""
                console.print(f"    {c.name:<20} {c.type:<8} {uses}{extra}")


@handle_errors
def explain(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="A .sql file, - for stdin, or the SQL text itself."),
    operator: str = typer.Option(
        None, "--operator", "-o", help="Operator id (default: '-- operator:' in the file)."
    ),
    scenario: str = typer.Option(
        None, "--scenario", "-s", help="Scenario id (default: '-- scenario:' in the file)."
    ),
    epsilon: float = typer.Option(None, "--epsilon", "-e", help="ε, to show noise and accuracy."),
    delta: float = typer.Option(
        None, "--delta", "-d", help="δ (default: 0 if none is needed, else the grant's δ/10)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Compile a query locally and show the Plan (and, with --epsilon, its accuracy).
    Touches no data."""
    from sandbox.catalog import load_catalog
    from sandbox.compiler import compile_query
    from sandbox.errors import BadInput
    from sandbox.grants import find_grant, load_grants

    sql = _read_query(query)
    header = dict((k.lower(), v) for k, v in _HEADER.findall(sql))
    header.update({k: v for k, v in _HEADER_FLAG.findall(sql) if k not in header})
    operator_id = operator or header.get("operator")
    scenario_id = scenario or header.get("scenario")
    if not operator_id or not scenario_id:
        raise BadInput(
            "explain needs --operator and --scenario.",
            hint="Pass them, or put '-- operator: ID' and '-- scenario: ID' in the query's header.",
        )
    policies = settings(ctx).policies
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    grant = find_grant(grants, operator_id, scenario_id)
    plan = compile_query(sql, catalog=catalog, grant=grant)
    summary = plan_summary(plan, operator=operator_id, scenario=scenario_id, grant_id=grant.id)
    if epsilon is not None:
        summary.update(_accuracy(plan, catalog, grant, epsilon, delta))
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


def _read_query(query: str) -> str:
    from sandbox.errors import BadInput

    if query == "-":
        return sys.stdin.read()
    if "\n" not in query and len(query) < 4096 and query.lower().endswith(".sql"):
        path = Path(query)
        if not path.is_file():
            raise BadInput(f"No such query file: {query}.", hint="Pass a .sql file or SQL text.")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{query} is not UTF-8 text.") from exc
    return query


def _accuracy(
    plan: Plan, catalog: Catalog, grant: Any, epsilon: float, delta: float | None
) -> dict[str, Any]:
    from sandbox import privacy

    dataset = catalog.dataset(plan.dataset)
    assert dataset is not None  # the compiler only plans catalogue datasets
    cost = privacy.plan_cost(
        plan,
        epsilon=epsilon,
        delta=privacy.choose_delta(delta, plan, dataset, grant),  # the server's default too
        dataset=dataset,
        grant=grant,
    )
    return {"cost": cost.to_dict(), "accuracy": privacy.explain(plan, cost)}


def _sensitivity(plan: Plan, kind: str, lower: float | None, upper: float | None) -> str:
    r, g = plan.unit_rows, plan.unit_groups
    groups = f"in at most {g} group(s)" if g > 1 else "in one group"
    if kind == "count":
        return f"one unit adds 0..{r} per group, {groups}"
    if kind == "count_units":
        return f"one unit adds 0 or 1 per group, {groups}"
    if kind == "sum":
        span = max(abs(lower or 0.0), abs(upper or 0.0))
        return f"one unit moves it by at most {r} × {span:g} per group, {groups}"
    return f"one unit adds at most {r} value(s) per group, {groups}"


def plan_summary(plan: Plan, **context: Any) -> dict[str, Any]:
    """What ``explain`` shows: the Plan, readable, plus the full Plan itself."""
    keys = []
    for k in plan.keys:
        entry: dict[str, Any] = {"name": k.name, "source": k.source, "public": k.public is not None}
        if k.public is not None:
            entry["public_values"] = len(k.public)
            entry["sample"] = list(k.public[:12])
        keys.append(entry)
    measures = []
    for m in plan.measures:
        measures.append(
            {
                "name": m.name,
                "kind": m.kind,
                "column": m.column,
                "bounds": None if m.lower is None else [m.lower, m.upper],
                "integer": m.integer,
                "alpha": m.alpha,
                "candidates": None if m.candidates is None else len(m.candidates),
                "selection": m.selection,
                "sensitivity": _sensitivity(plan, m.kind, m.lower, m.upper),
            }
        )
    return {
        **context,
        "dataset": plan.dataset,
        "dataset_version": plan.dataset_version,
        "definition": plan.definition,
        "privacy_unit": plan.privacy_unit,
        "query_sha256": plan.query_sha256,
        "plan_digest": plan.digest(),
        "tables": plan.tables,
        "keys": keys,
        "measures": measures,
        "outputs": [
            {"name": o.name, "kind": o.kind, "measures": list(o.measures), "expr": o.expr}
            for o in plan.outputs
        ],
        "bounding": {
            "unit_rows": plan.unit_rows,
            "unit_groups": plan.unit_groups,
            "max_groups": plan.max_groups,
            "private_keys": plan.private_keys,
        },
        "notes": list(plan.notes),
        "sql": plan.sql,
        "post_sql": plan.post_sql,
        "plan": plan.to_dict(),
    }


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(f"[bold]{s['dataset']}[/] v{s['dataset_version']} ({s['definition']} DP, "
                  f"unit {s['privacy_unit']}) — grant {s['grant_id']}, "
                  f"operator {s['operator']}, scenario {s['scenario']}")  # fmt: skip
    console.print("tables: " + ", ".join(f"{t} ({f})" for t, f in s["tables"].items()))
    b = s["bounding"]
    console.print(f"bounding: ≤ {b['unit_rows']} row(s) and ≤ {b['unit_groups']} group(s) "
                  f"per unit; ≤ {b['max_groups']} groups")  # fmt: skip
    if s["keys"]:
        kt = Table("key", "source", "values")
        for k in s["keys"]:
            vals = f"public ({k['public_values']})" if k["public"] else "private (selection)"
            kt.add_row(k["name"], k["source"], vals)
        console.print(kt)
    mt = Table("measure", "kind", "column", "bounds", "sensitivity")
    for m in s["measures"]:
        bounds = "" if m["bounds"] is None else f"[{m['bounds'][0]:g}, {m['bounds'][1]:g}]"
        mt.add_row(m["name"] + (" (selection)" if m["selection"] else ""), m["kind"],
                   m["column"] or "*", bounds, m["sensitivity"])  # fmt: skip
    console.print(mt)
    acc = {a["name"]: a for a in s.get("accuracy", [])}
    ot = Table("output", "kind", "measures", "noise scale", "±95%")
    for o in s["outputs"]:
        a = acc.get(o["name"], {})
        scale = a.get("scale")
        hw = a.get("accuracy_95")
        pm = f"{hw:.4g}" if hw is not None else str(a.get("pm95_rule") or "")  # derived: per cell
        ot.add_row(o["name"], o["kind"], ", ".join(o["measures"]),
                   "" if scale is None else f"{scale:.4g}", pm)  # fmt: skip
    console.print(ot)
    for n in s["notes"]:
        console.print(f"[dim]- {n}[/]")
    console.print("[bold]runner SQL[/]")
    console.print(s["sql"], markup=False, highlight=False)
    console.print("[bold]post-processing SQL[/]")
    console.print(s["post_sql"], markup=False, highlight=False)
