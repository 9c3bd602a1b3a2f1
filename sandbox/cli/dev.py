"""CLI commands: ``demo-data`` (fabricated raw data for the demo sandbox) and ``dev``
(local development against synthetic data: ``dev init``, ``dev run``, ``dev check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sandbox.cli.common import JsonOption, console, handle_errors, print_json, settings


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("demo-data")(demo_data)
    dev = typer.Typer(
        name="dev",
        help="Local development: write and test queries on synthetic data (no Docker, no server).",
        no_args_is_help=True,
    )
    dev.command("init")(dev_init)
    dev.command("run")(dev_run)
    dev.command("check")(dev_check)
    dev.command("synthetic")(dev_synthetic)
    app.add_typer(dev)


@handle_errors
def demo_data(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", help="Output directory (default: the data root)."),
    people: int = typer.Option(300_000, "--people", min=1, help="Persons in the register."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same data)."),
    as_json: bool = JsonOption,
) -> None:
    """Write FABRICATED demo datasets (Parquet) for every grantable dataset in the catalogue."""
    from sandbox.ops.demo_data import generate_demo_data

    s = settings(ctx)
    out_dir = out if out is not None else s.data_dir
    if as_json:
        summary = generate_demo_data(out_dir, s.policies, people=people, seed=seed)
        print_json(summary)
        return
    summary = _with_progress(
        lambda progress: generate_demo_data(
            out_dir, s.policies, people=people, seed=seed, progress=progress
        ),
        show=people >= 1_000_000,
    )
    console.print(f"[bold]Fabricated demo data[/] (seed {seed}) in {summary['out_dir']}")
    for t in summary["tables"]:
        name = f"{t['dataset']}.{t['table']}"
        console.print(f"  {name:<28} {t['rows']:>12,} rows  {t['path']}", soft_wrap=True)
    for sk in summary["skipped"]:
        console.print(f"  [yellow]skipped[/] {sk['dataset']}: {sk['reason']}", soft_wrap=True)
    console.print("[dim]Every row is made up; the files are marked jinyu.fabricated=true.[/]")


def _with_progress(run: Any, *, show: bool) -> Any:
    """Run ``run(progress)`` under a rich progress bar (one task per table)."""
    if not show:
        return run(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=console,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        return run(progress)


@handle_errors
def dev_init(
    ctx: typer.Context,
    operator: str = typer.Option(None, "--operator", help="Your operator id."),
    policies: Path = typer.Option(
        None, "--policies", help="Read the catalogue and grants from this policies directory."
    ),
    server: str = typer.Option(None, "--server", help="Fetch them from this sandbox server URL."),
    token: str = typer.Option(None, "--token", help="Your token for --server (env SANDBOX_TOKEN)."),
    directory: Path = typer.Option(Path("jinyu-dev"), "--dir", help="The project folder."),
    units: int = typer.Option(
        10_000, "--units", min=1, help="Synthetic privacy units per dataset."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Synthetic data seed."),
    as_json: bool = JsonOption,
) -> None:
    """Write a local project folder: your granted catalogue, grants, synthetic data."""
    from sandbox.dev import init_project

    s = settings(ctx)
    if server is None and policies is None:
        policies = s.policies
    summary = init_project(
        directory,
        operator=operator,
        policies=policies,
        server=server,
        token=token or s.token,
        units=units,
        seed=seed,
    )
    if as_json:
        print_json(summary)
        return
    console.print(f"[bold]Local project[/] for {summary['operator']} in {summary['dir']}")
    console.print(f"  scenarios: {', '.join(summary['scenarios'])}")
    for t in summary["tables"]:
        name = f"{t['dataset']}.{t['table']}"
        console.print(f"  [dim]synthetic[/] {name:<28} {t['rows']:>10,} rows")
    if summary["example"]:
        console.print(f"Next: sandbox dev run {summary['example']}", soft_wrap=True)


@handle_errors
def dev_run(
    ctx: typer.Context,
    query: Path = typer.Argument(..., help="The .sql file, or a .py analysis script."),
    scenario: str = typer.Option(None, "--scenario", help="Scenario (default: the query header)."),
    operator: str = typer.Option(None, "--operator", help="Operator (default: header/project)."),
    epsilon: float = typer.Option(None, "--epsilon", help="ε (default: the per-query ceiling)."),
    delta: float = typer.Option(
        None, "--delta", help="δ (default: 0 if none is needed, else the grant's δ/10)."
    ),
    project: Path = typer.Option(None, "--project", help="Project folder (default: found)."),
    units: int = typer.Option(5_000, "--units", min=1, help="Units if data is made on the fly."),
    out: Path = typer.Option(
        None, "--out", help="A script's run: write ACRO's output files (of synthetic data) here."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Compile as the server would, run on synthetic data, add DP noise and review the
    output as the server would (rounding, suppression); spends no budget. A .py file
    (or a folder of them) is an analysis script: it runs in the runner image on
    synthetic data with the same ACRO checks (Docker needed; see --out)."""
    from sandbox.dev import load_context, read_query, run_query

    s = settings(ctx)
    if query.suffix == ".py" or query.is_dir():  # an analysis script (issue 18)
        from sandbox.cli.dev_analysis import run_script_command

        run_script_command(s, query, operator=operator, scenario=scenario, project=project,
                           units=units, out=out, as_json=as_json)  # fmt: skip
        return
    sql = read_query(query)
    dctx = load_context(s, project=project, near=query)
    result = run_query(
        sql, dctx, s, operator=operator, scenario=scenario, epsilon=epsilon, delta=delta,
        units=units,
    )  # fmt: skip
    result["query"] = str(query)
    if as_json:
        print_json(result)
        return
    _print_run(result)


def _print_run(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]{result['query']}[/] as {result['operator']} / {result['scenario']} "
        f"(grant {result['grant']}, dataset {result['dataset']})",
        soft_wrap=True,
    )
    console.print("[yellow]SYNTHETIC DATA: the values below are not real.[/]")
    table = Table(show_lines=False)
    hidden = set(result.get("accuracy_columns", {}).values())  # shown as "value ± pm"
    columns = [c for c in result["columns"] if c not in hidden]
    for col in columns:
        table.add_column(col, justify="right")
    accuracy = result["accuracy"]
    for i, row in enumerate(result["rows"]):
        cells = []
        for col in columns:
            value = row[col]
            acc = accuracy.get(col)
            cell = acc[i] if acc is not None and i < len(acc) else None
            cells.append(escape(_cell_text(value, cell)))
        table.add_row(*cells)
    console.print(table)
    console.print(f"{len(result['rows'])} rows. Each noisy cell shows value ± its 95% "
                  "half-width, as the product's _pm95 columns carry it (rounding included; "
                  "a quantile's ± is in rank, rows).", soft_wrap=True)  # fmt: skip
    sdc = result["disclosure_control"]
    rounding = f"counts rounded to {sdc['round_base']}" if sdc["round_base"] else "no rounding"
    console.print(
        f"Output review as in the sandbox ({result['grade']}): {rounding}; rows with a noisy "
        f"count below {sdc['min_count']} suppressed ({sdc['suppressed_rows']} here); "
        f"{result['required_approvals']} supervisor approval(s) needed.",
        soft_wrap=True,
    )
    for flag in result["flags"]:
        console.print(f"[yellow]flag {flag['code']}[/]: {escape(flag['message'])}", soft_wrap=True)
    for entry in result["explain"]:
        if entry.get("statement"):
            console.print(f"[dim]{entry['name']}: {entry['statement']}[/]", soft_wrap=True)
    w = result["would_cost"]
    rho = f", ρ = {w['rho']:.6g}" if w["rho"] is not None else ""
    console.print(
        f"In the sandbox this query would cost ε = {w['epsilon']:g}, δ = {w['delta']:g}{rho} "
        f"({w['definition']}) of grant {result['grant']} (total ε = "
        f"{w['grant_total_epsilon']:g}, δ = {w['grant_total_delta']:g}; at most ε = "
        f"{w['max_epsilon_per_query']:g} per query).",
        soft_wrap=True,
    )
    console.print(
        f"Mechanisms: {', '.join(result['mechanisms'])}. No budget was spent.", soft_wrap=True
    )
    for note in result["notes"]:
        console.print(f"[dim]note: {note}[/]", soft_wrap=True)


def _cell_text(value: Any, cell: dict[str, Any] | None) -> str:
    """A cell as text: a noisy value rounded to the precision its ± supports
    (sandbox/display.py), with the ±."""
    from sandbox.display import fmt_estimate

    if value is None:
        return "NULL"
    if isinstance(value, bool):  # the `suppressed` column
        return "yes" if value else ""
    text = f"{value:,.2f}" if isinstance(value, float) else str(value)
    if cell is None:
        return text
    pm = cell.get("pm95")
    numeric = isinstance(pm, int | float) and not isinstance(pm, bool) and pm > 0
    if numeric and cell.get("pm95_unit") != "rank":  # to the precision its ± supports
        text = fmt_estimate(value, pm)
    return f"{text} {pm_text(cell)}".strip()


def pm_text(cell: dict[str, Any] | None) -> str:
    """A released cell's ± as the product carries it: '± 20', '± 13 rows (rank)',
    '± unbounded'; '' without one."""
    if not isinstance(cell, dict):
        return ""
    pm = cell.get("pm95")
    if cell.get("unbounded"):
        return "± unbounded"
    if not isinstance(pm, int | float):
        return ""
    text = f"{pm:,}" if isinstance(pm, int) else f"{pm:,.6g}"
    return f"± {text} rows (rank)" if cell.get("pm95_unit") == "rank" else f"± {text}"


@handle_errors
def dev_check(
    ctx: typer.Context,
    queries: list[Path] = typer.Argument(..., help="One or more .sql files."),
    scenario: str = typer.Option(
        None, "--scenario", help="Check against this scenario's grant (default: header)."
    ),
    operator: str = typer.Option(None, "--operator", help="Operator (default: header/project)."),
    project: Path = typer.Option(None, "--project", help="Project folder (default: found)."),
    fmt: str = typer.Option("text", "--format", help="text, json or gcc."),
    as_json: bool = JsonOption,
) -> None:
    """Compile only; print errors as file:line:col: CODE message. Exit 2 on a refusal."""
    from sandbox.dev import (
        check_query,
        diagnostic,
        format_diagnostic,
        load_context,
        read_query,
    )
    from sandbox.errors import BadInput, Refused

    if as_json:
        fmt = "json"
    if fmt not in ("text", "json", "gcc"):
        raise BadInput("--format must be text, json or gcc.")
    s = settings(ctx)
    results: list[dict[str, Any]] = []
    for path in queries:
        try:
            sql = read_query(path)
            dctx = load_context(s, project=project, near=path)
            summary = check_query(sql, dctx, operator=operator, scenario=scenario)
            results.append({"file": str(path), **summary, "errors": []})
        except Refused as exc:
            results.append({"file": str(path), "ok": False, "errors": [diagnostic(str(path), exc)]})
    refused = any(not r["ok"] for r in results)
    if fmt == "json":
        print_json({"ok": not refused, "files": results})
    else:
        for r in results:
            for d in r["errors"]:
                typer.echo(format_diagnostic(d, fmt))
                if d["hint"] and fmt == "text":
                    typer.echo(f"    hint: {d['hint']}")
            if r["ok"] and fmt == "text":
                where = f"scenario {r['scenario']}" if r["scenario"] else "every grantable dataset"
                typer.echo(f"{r['file']}: ok ({r['dataset']}; checked against {where})")
    if refused:
        raise typer.Exit(2)


@handle_errors
def dev_synthetic(
    ctx: typer.Context,
    project: Path = typer.Option(Path("."), "--project", help="The project folder."),
    units: int = typer.Option(10_000, "--units", min=1, help="Synthetic privacy units."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed."),
    as_json: bool = JsonOption,
) -> None:
    """Regenerate a project's synthetic data (another size or seed)."""
    from sandbox.dev import find_project, regenerate_synthetic

    root = find_project(project) or project
    summary = regenerate_synthetic(root, units=units, seed=seed)
    if as_json:
        print_json(summary)
        return
    for t in summary["tables"]:
        name = f"{t['dataset']}.{t['table']}"
        console.print(f"  [dim]synthetic[/] {name:<28} {t['rows']:>10,} rows")
