"""``sandbox dev run script.py``: the CLI side of a local analysis-script run
(sandbox/dev/analysis.py): run it, print each ACRO output with its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.cli.common import console, print_json
from sandbox.settings import Settings


def run_script_command(
    s: Settings,
    path: Path,
    *,
    operator: str | None,
    scenario: str | None,
    project: Path | None,
    units: int,
    out: Path | None,
    as_json: bool,
) -> None:
    from sandbox.dev import load_context
    from sandbox.dev.analysis import read_script, run_script

    files, entry = read_script(path)
    dctx = load_context(s, project=project, near=path)
    result = run_script(
        files, entry, dctx, s, operator=operator, scenario=scenario, units=units, out_dir=out
    )
    result["script"] = str(path)
    if as_json:
        print_json(result)
        return
    print_script_run(result)


def print_script_run(result: dict[str, Any]) -> None:
    from rich.markup import escape

    console.print(
        f"[bold]{escape(result['script'])}[/] as {result['operator']} / {result['scenario']} "
        f"(grant {result['grant']}; tables {', '.join(result['tables'])})",
        soft_wrap=True,
    )
    console.print("[yellow]SYNTHETIC DATA: the outputs are not real.[/]")
    colour = {"pass": "green", "fail": "red", "review": "yellow"}
    for o in result["outputs"]:
        verdict = o["status"]
        console.print(
            f"  {o['uid']} {o['type']} ({o['method']}): "
            f"[{colour.get(verdict, 'white')}]{verdict}[/]",
            soft_wrap=True,
        )
        for check, v in sorted(o["checks"].items()):
            console.print(f"    {check}: {v}")
        if o["summary"]:
            console.print(f"    [dim]{escape(o['summary'])}[/]", soft_wrap=True)
        if o["exception"]:
            console.print(f"    exception requested: {escape(o['exception'])}", soft_wrap=True)
    for r in result["refused"]:
        console.print(f"  [red]refused[/] {r['uid']}: custom outputs never leave the sandbox")
    if not result["outputs"]:
        console.print("  no ACRO outputs: only ACRO's outputs leave an analysis job")
    for name in result["written"]:
        console.print(f"  wrote {escape(name)}", soft_wrap=True)
    console.print(
        f"In the sandbox every output waits for review: {result['required_approvals']} "
        "supervisor approval(s); no privacy budget is charged (no DP guarantee).",
        soft_wrap=True,
    )
