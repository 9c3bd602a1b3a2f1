"""How the CLI prints one job: its state and cost, its error (and, for a supervisor,
the incident's facts), flags, the released or reviewed rows with their ±, the review
it waits for and the decisions."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from sandbox.cli.common import console, print_table
from sandbox.display import fmt_amount, fmt_delta, review_sentence


def show_job(job: dict[str, Any]) -> None:
    state = job["state"]
    colour = {
        "released": "green",
        "refused": "red",
        "failed": "red",
        "rejected": "red",
        "cancelled": "yellow",
        "in_review": "cyan",
    }.get(state, "white")
    rho = (job.get("cost") or {}).get("rho")
    loss = f"ε={fmt_amount(job['epsilon'])} δ={fmt_delta(job['delta'])}"
    loss += f" ρ={fmt_amount(rho)}" if rho is not None else ""
    console.print(
        f"[bold]{job['id']}[/] [{colour}]{state}[/]  {job['scenario']}  "
        f"{loss}  dataset={job.get('dataset') or '-'}",
        soft_wrap=True,
    )
    if job.get("error"):
        e = job["error"]
        if state == "in_review":  # a supervisor's view of an analysis run that failed
            console.print(
                f"  [red]the run failed: {e.get('category') or e['code']}[/] (nothing to "
                "release; approving closes it as failed, rejecting as rejected)"
            )
        extra = f" ({e['category']})" if e.get("category") else ""
        console.print(f"  [red]{e['code']}[/]{extra}: {e['message']}")
        if e.get("incident"):
            console.print(f"  incident {e['incident']}")
        diagnosis = e.get("diagnosis")  # a supervisor's view: the incident's facts
        if diagnosis:
            facts = ("stage", "exception", "category", "exit_code", "oom_killed", "peak_rss_kb")
            shown = [f"{k}={diagnosis[k]}" for k in facts if diagnosis.get(k) is not None]
            console.print(f"  [dim]{'  '.join(shown)}[/]", highlight=False)
        if e.get("hint"):
            console.print(f"  [dim]hint: {e['hint']}[/]")
    for f in job.get("flags") or []:
        console.print(f"  [yellow]flag[/] {f['code']}: {f['message']}")
    show_rows(job)
    waiting = review_sentence(job)
    if waiting:
        console.print(f"  {escape(waiting)}", soft_wrap=False)
    for d in job.get("decisions") or []:
        console.print(f"  {d['decision']} by {d['reviewer']}: {d['reason']}")
    if state == "released":
        console.print(f"  product ready: [bold]sandbox result {job['id']}[/]")


def show_rows(job: dict[str, Any]) -> None:
    """The released (or, for a supervisor, reviewed) rows, each number with its ±,
    rounded to the precision the ± supports (sandbox/display.py)."""
    from sandbox.cli.dev import pm_text
    from sandbox.display import fmt_estimate

    preview = job.get("preview")
    if not preview or not preview.get("rows"):
        return
    accuracy = job.get("accuracy") or {}
    columns = [c for c in preview["columns"] if c != "suppressed"]
    if not columns:
        return
    rows = []
    for i, row in enumerate(preview["rows"]):
        cells = []
        for c in columns:
            value, acc = row.get(c), accuracy.get(c)
            cell = acc[i] if isinstance(acc, list) and i < len(acc) else None
            pm = cell.get("pm95") if isinstance(cell, dict) else None
            if value is None:
                text = "-"
            elif (
                isinstance(pm, int | float)
                and isinstance(cell, dict)
                and cell.get("pm95_unit") != "rank"
            ):
                text = fmt_estimate(value, pm)
            else:
                text = f"{value:,.6g}" if isinstance(value, float) else str(value)
            if row.get("suppressed") and c in accuracy:
                text = "suppressed"
            cells.append(f"{text} {pm_text(cell)}".strip())
        rows.append(cells)
    print_table(columns, rows, keep=columns[:1], right=[c for c in columns if c in accuracy])
    shown, total = len(preview["rows"]), preview.get("total_rows", len(preview["rows"]))
    console.print(
        f"  {shown} of {total} rows; value ± its 95% half-width (rounding included; a "
        "quantile's ± is in rank, rows)",
        highlight=False,
    )
