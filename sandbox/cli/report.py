"""``sandbox report``: the supervision report and its alerts (sandbox/reports.py), from
the configured server (``GET /v1/reports``, a supervisor's token) or the local home,
saying on stderr which."""

from __future__ import annotations

from typing import Any

import typer

from sandbox.cli.common import (
    JsonOption,
    console,
    handle_errors,
    local_settings,
    print_json,
    server_client,
)
from sandbox.settings import Settings


@handle_errors
def report_command(
    ctx: typer.Context,
    operator: str = typer.Option(None, "--operator", help="Only this operator."),
    scenario: str = typer.Option(None, "--scenario", help="Only this scenario."),
    as_json: bool = JsonOption,
) -> None:
    """Supervision report per operator and scenario, with alerts."""
    api = server_client(ctx)
    if api is not None:
        params = {k: v for k, v in (("operator", operator), ("scenario", scenario)) if v}
        rep = api.get("/v1/reports", params=params)
    else:
        rep = _local_report(local_settings(ctx), operator, scenario)
    if as_json:
        print_json(rep)
        return
    _print_report(rep)


def _local_report(s: Settings, operator: str | None, scenario: str | None) -> dict[str, Any]:
    from sandbox import reports
    from sandbox.catalog import load_catalog
    from sandbox.errors import SandboxError
    from sandbox.grants import load_grants

    grants = catalog = None
    try:
        catalog = load_catalog(s.policies)
        grants = load_grants(s.policies, catalog)
    except (SandboxError, OSError):
        grants = None  # the report still shows what the audit log holds
    from sandbox import store

    conn = store.connect(s.database)
    try:
        rep: dict[str, Any] = reports.build_report(
            conn, operator=operator, scenario=scenario, grants=grants, catalog=catalog
        )
    finally:
        conn.close()
    return rep


def _print_report(rep: dict[str, Any]) -> None:
    from sandbox.cli.budgetview import budget_table

    console.print(
        f"[bold]Supervision report[/] {rep['generated_at']} ({rep['entries']} audit entries)"
    )
    for g in rep["groups"]:
        console.print(f"\n[bold]{g['operator']}[/] · scenario {g['scenario'] or '-'}")
        jobs = ", ".join(f"{k} {v}" for k, v in g["jobs"].items())
        console.print(f"  jobs: {jobs}")
        if g["refusals_by_code"]:
            codes = ", ".join(f"{k} {v}" for k, v in g["refusals_by_code"].items())
            console.print(f"  refusals: {codes}")
        if g["failures_by_category"]:
            cats = ", ".join(f"{k} {v}" for k, v in g["failures_by_category"].items())
            console.print(f"  failures: {cats}")
        console.print(
            f"  datasets: {', '.join(g['datasets']) or '-'}; products released: "
            f"{len(g['products_released'])}; downloads: {g['downloads']}"
        )
        if g["budget"]:
            console.print(budget_table(g["budget"], first="dataset"))
    console.print(f"\n[bold]Alerts[/] ({len(rep['alerts'])})")
    for a in rep["alerts"]:
        console.print(
            f"  [yellow]{a['kind']}[/] {a['operator']} · {a['scenario'] or '-'}: {a['message']}"
        )
