"""CLI commands for analysis jobs (issue 18): ``submit-script`` and ``script-result``.

``sandbox submit-script FILE --scenario S`` sends one ``.py`` file (or a folder of
them, ``--entry`` naming the one to run, default main.py) to POST /v1/analysis-jobs,
with an idempotency key (retried with it when the connection fails, as ``submit``).
The job is held for review until the supervisors decide, so there is nothing to
watch: it says so and exits 0; ``--wait`` waits for the decision.
``sandbox script-result JOB`` downloads a released analysis product (result.zip and
its signed manifest; check them with ``sandbox product verify``). ``queue_kind`` is
how ``sandbox review list`` shows a queued job's kind.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import typer

from sandbox.cli.common import JsonOption, console, err_console, handle_errors, print_json
from sandbox.errors import BadInput


def read_script(path: Path, entry: str | None) -> dict[str, Any]:
    """The request body's script part: ``script`` for a file, ``files``+``entry`` for a
    folder (its top-level ``.py`` files only)."""
    if path.is_file():
        if entry is not None:
            raise BadInput("--entry goes with a folder, not a file.")
        return {"script": path.read_text(encoding="utf-8")}
    if path.is_dir():
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.py"))}
        if not files:
            raise BadInput(f"The folder {str(path)!r} holds no .py file.")
        return {"files": files, "entry": entry or "main.py"}
    raise BadInput(f"No file {str(path)!r}.", hint="Pass a .py file or a folder of them.")


def queue_kind(job: dict[str, Any]) -> str:
    """What a queued job is (``sandbox review list``): an analysis script with its entry
    file, outputs and flagged outputs, or SQL with its ε."""
    from sandbox.display import fmt_amount

    a = job.get("analysis")
    if job.get("kind") == "analysis" and a:
        return f"analysis script\n  {a['entry']}\n  {a['outputs']} outputs, {a['flagged']} flagged"
    return f"SQL\n  ε {fmt_amount(job.get('epsilon'))}"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("submit-script")
    @handle_errors
    def submit_script(
        ctx: typer.Context,
        path: Path = typer.Argument(..., help="A .py file, or a folder of .py files."),
        scenario: str = typer.Option(..., "--scenario", "-s", help="The scenario (应用场景)."),
        entry: str = typer.Option(None, "--entry", help="With a folder: the file to run."),
        wait: bool = typer.Option(
            False,
            "--wait/--no-wait",
            help="Wait until the supervisors decide (default: say it is held and exit 0).",
        ),
        idempotency_key: str = typer.Option(
            None,
            "--idempotency-key",
            help="Sent as the Idempotency-Key (default: a fresh UUID each run). Run again "
            "with the key a failed submit-script printed: the server returns the job it "
            "made, if it made one, and never makes a second.",
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """Submit an analysis job (a Python script; outputs only through ACRO, always
        reviewed, no privacy budget charged). The job is held for review from
        submission until the supervisors decide: nothing about its run shows before.
        See docs/analysis-jobs.md."""
        from sandbox.cli.client import _client, _exit_for, wait_for
        from sandbox.cli.jobview import show_job as _show_job
        from sandbox.errors import SystemFailure
        from sandbox.service.idempotency import check_key

        key = check_key(idempotency_key) or str(uuid.uuid4())
        api = _client(ctx)
        body = {"scenario": scenario, **read_script(path, entry)}
        try:
            job, replayed = api.submit(body, idempotency_key=key, path="/v1/analysis-jobs")
        except SystemFailure as exc:  # the job may exist: the same key finds it
            exc.hint = " ".join(
                filter(None, [exc.hint, f"Retry with --idempotency-key {key} (no second job)."])
            )
            raise
        if replayed and not as_json:
            err_console.print(
                f"[dim]{job['id']} was submitted before with this idempotency key: no new job.[/]"
            )
        if wait:
            job = wait_for(api, job["id"], show=not as_json)
        if as_json:
            print_json(job)
            _exit_for(job)
            return
        _show_job(job)
        if job.get("held"):
            console.print(
                f"  held for review: nothing of the run shows until the supervisors decide; "
                f"`sandbox status {job['id']} --wait` waits for the decision"
            )
            console.print("  [dim]no budget charged: analysis jobs have no DP guarantee[/]")
        _exit_for(job)

    @app.command("script-result")
    @handle_errors
    def script_result(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The analysis job id (j-…)."),
        output: Path = typer.Option(None, "--output", "-o", help="File (default: JOB.zip)."),
        as_json: bool = JsonOption,
    ) -> None:
        """Download a released analysis product: FILE.zip and FILE.zip.manifest.json."""
        from sandbox.cli.client import _client

        api = _client(ctx)
        path = output or Path(f"{job_id}.zip")
        manifest, summary = api.download(
            path, f"/v1/analysis-jobs/{job_id}/product", f"/v1/analysis-jobs/{job_id}/manifest"
        )
        summary["outputs"] = len(manifest["manifest"]["outputs"])
        if as_json:
            print_json(summary)
        else:
            console.print(
                f"wrote {path} ({summary['bytes']} bytes, {summary['outputs']} outputs) and "
                f"{Path(summary['manifest']).name}; check it with `sandbox product verify {path}`"
            )
