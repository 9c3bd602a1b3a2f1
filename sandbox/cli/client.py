"""CLI client of the REST API: submit, status, jobs, cancel, result, budget, review.

The commands talk to the server through ``apiclient.ApiClient`` (where the URL and
token come from, error answers, retries) and say on stderr which server they used.
Errors keep the server's one shape and the exit codes: 0 ok, 2 refused, 1 the system
failed. ``submit`` sends an idempotency key
and retries with it when the connection fails (docs/api.md, idempotent submissions).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from sandbox.cli.analysis import queue_kind
from sandbox.cli.apiclient import ApiClient
from sandbox.cli.common import (
    JsonOption,
    console,
    err_console,
    handle_errors,
    print_json,
    print_table,
)
from sandbox.cli.jobview import show_job as _show_job
from sandbox.display import fmt_amount
from sandbox.errors import BadInput, SystemFailure

review_app = typer.Typer(help="The review queue (supervisors).", no_args_is_help=True)

WAITING = {"submitted", "compiled", "budget_reserved", "running", "noised"}


def _client(ctx: typer.Context) -> ApiClient:
    """The command's client, closed when the command ends; says which server it is."""
    from sandbox.cli.common import configured_url, say_source, settings

    s = settings(ctx)
    url = configured_url(ctx)
    api = ApiClient.from_settings(s, url=url)
    ctx.call_on_close(api.close)
    if url is not None:
        say_source(f"via {api.url}")
    elif (s.home / "client.json").is_file():
        say_source(f"via {api.url} (from {s.home / 'client.json'})")
    else:
        say_source(f"via {api.url} (the default; set SANDBOX_URL or --url)")
    return api


def _read_sql(path: Path) -> str:
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    if not path.is_file():
        raise BadInput(
            f"No file {str(path)!r}.", hint="Pass the path of a .sql file, or - for stdin."
        )
    return path.read_text(encoding="utf-8")


def _waiting(job: dict[str, Any]) -> bool:
    """Still running, or (an operator's analysis job) held until the decision."""
    return job["state"] in WAITING or bool(job.get("held"))


def wait_for(api: ApiClient, job_id: str, *, show: bool, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a job until it leaves the running states (an operator's analysis job: until
    the supervisors decide); a spinner shows the state."""
    job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}")
    if not show:
        while _waiting(job):
            time.sleep(poll_s)
            job = api.get(f"/v1/jobs/{job_id}")
        return job
    started = time.monotonic()
    with err_console.status(f"{job_id}: {job['state']}", spinner="dots") as status:
        while _waiting(job):
            time.sleep(poll_s)
            job = api.get(f"/v1/jobs/{job_id}")
            status.update(f"{job_id}: {job['state']} ({time.monotonic() - started:.0f} s)")
    return job


def _exit_for(job: dict[str, Any]) -> None:
    if job["state"] in ("refused", "rejected"):
        raise typer.Exit(2)
    if job["state"] == "failed":
        err = job.get("error") or {}
        kind = 2 if err.get("code") in _REFUSAL_CODES else 1
        raise typer.Exit(kind)


_REFUSAL_CODES = {"BUDGET_EXHAUSTED", "NO_GRANT", "GRANT_EXPIRED", "SYNTHETIC_DATA_REFUSED"}


def _check_operator(api: Any, operator: str) -> None:
    """``submit --operator X``: refuse before submitting unless the token is X's. An
    operator's token lists only its own grants, so any other name among them means
    another operator (with no grants at all, the submission is refused NO_GRANT)."""
    from sandbox.errors import BadInput

    named = {str(g.get("operator")) for g in api.get("/v1/grants") if isinstance(g, dict)}
    if named and operator not in named:
        raise BadInput(
            f"The token is not operator {operator}'s.",
            code="WRONG_OPERATOR",
            hint="Use that operator's SANDBOX_TOKEN, or leave out --operator.",
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("submit")
    @handle_errors
    def submit(
        ctx: typer.Context,
        query: Path = typer.Argument(..., help="A .sql file (or - for stdin)."),
        scenario: str = typer.Option(..., "--scenario", "-s", help="The scenario (应用场景)."),
        epsilon: float = typer.Option(..., "--epsilon", "-e", help="ε to spend."),
        delta: float = typer.Option(
            None, "--delta", "-d", help="δ (default: 0 if none is needed, else the grant's δ/10)."
        ),
        operator: str = typer.Option(
            None, "--operator", "-o", help="Refuse unless the token is this operator's."
        ),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait while the job runs."),
        idempotency_key: str = typer.Option(
            None,
            "--idempotency-key",
            help="Sent as the Idempotency-Key (default: a fresh UUID each run). Run again "
            "with the key a failed submit printed: the server returns the job it made, if "
            "it made one, and never charges twice.",
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """Submit a query as the operator; shows the job's progress until it finishes or
        waits for review. Takes the flags of `sandbox explain` (the δ default is the same).
        The submission carries an idempotency key, so the retries made when the
        connection fails never make a second job or a second charge."""
        from sandbox.service.idempotency import check_key

        key = check_key(idempotency_key) or str(uuid.uuid4())
        api = _client(ctx)
        body: dict[str, Any] = {"sql": _read_sql(query), "scenario": scenario, "epsilon": epsilon}
        if delta is not None:
            body["delta"] = delta
        if operator is not None:
            _check_operator(api, operator)
        try:
            job, replayed = api.submit(body, idempotency_key=key)
        except SystemFailure as exc:  # the job may exist: the same key finds it
            exc.hint = " ".join(
                filter(None, [exc.hint, f"Retry with --idempotency-key {key} (no second charge)."])
            )
            raise
        if replayed and not as_json:
            err_console.print(
                f"[dim]{job['id']} was submitted before with this idempotency key: "
                "no new job, no new charge.[/]"
            )
        if wait:
            job = wait_for(api, job["id"], show=not as_json)
        if as_json:
            print_json(job)
        else:
            _show_job(job)
        _exit_for(job)

    @app.command("explain")
    @handle_errors
    def explain(
        ctx: typer.Context,
        query: Path = typer.Argument(..., help="A .sql file (or - for stdin)."),
        scenario: str = typer.Option(None, "--scenario", "-s", help="The scenario (应用场景)."),
        epsilon: float = typer.Option(None, "--epsilon", "-e", help="ε (default: the ceiling)."),
        delta: float = typer.Option(
            None, "--delta", "-d", help="δ (default: 0 if none is needed, else the grant's δ/10)."
        ),
        operator: str = typer.Option(
            None,
            "--operator",
            "-o",
            help="Explain locally against the policy files as this operator (no server).",
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """What a query would cost and how accurate it would be; touches no data.

        With --operator the query is compiled locally against the policy files (as
        `sandbox policy explain`); otherwise the server explains it for your token."""
        if operator is not None:
            from sandbox.cli.policy import explain as explain_locally

            explain_locally(
                ctx,
                query=str(query),
                operator=operator,
                scenario=scenario,
                epsilon=epsilon,
                delta=delta,
                as_json=as_json,
            )
            return
        if scenario is None:
            from sandbox.errors import BadInput

            raise BadInput("explain needs --scenario.", hint="Pass --scenario ID.")
        api = _client(ctx)
        body: dict[str, Any] = {"sql": _read_sql(query), "scenario": scenario}
        if epsilon is not None:
            body["epsilon"] = epsilon
        if delta is not None:
            body["delta"] = delta
        result = api.post("/v1/explain", body)
        if as_json:
            print_json(result)
            return
        from rich.table import Table

        cost = result["cost"]
        console.print(
            f"dataset {result['dataset']} ({result['grade']}), grant {result['grant']}, "
            f"ε={cost.get('epsilon')} δ={cost.get('delta')}; "
            f"{result['required_approvals']} supervisor approval(s) needed"
        )
        table = Table("output", "kind", "mechanism", "noise scale", "±95%")
        for o in result["outputs"]:
            cells = ("name", "kind", "mechanism", "scale")
            # a derived output's ± is per cell: the rule that propagates its components
            pm = o.get("accuracy_95")
            pm_cell = _fmt(pm) if pm is not None else str(o.get("pm95_rule") or "-")
            table.add_row(*(_fmt(o.get(k)) for k in cells), pm_cell)
        console.print(table)

    @app.command("status")
    @handle_errors
    def status(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The job id (j-…)."),
        wait: bool = typer.Option(False, "--wait", help="Wait while the job runs."),
        as_json: bool = JsonOption,
    ) -> None:
        """Show one job: its state, error or flags, and review decisions."""
        api = _client(ctx)
        job = wait_for(api, job_id, show=not as_json) if wait else api.get(f"/v1/jobs/{job_id}")
        if as_json:
            print_json(job)
        else:
            _show_job(job)

    @app.command("jobs")
    @handle_errors
    def list_jobs(
        ctx: typer.Context,
        state: str = typer.Option(None, "--state", help="Only jobs in this state."),
        limit: int = typer.Option(50, "--limit", help="At most this many."),
        as_json: bool = JsonOption,
    ) -> None:
        """Your jobs (all jobs for a supervisor), newest first."""

        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        found = _client(ctx).get("/v1/jobs", params=params)
        if as_json:
            print_json(found)
            return
        print_table(
            ("job", "state", "operator", "scenario / dataset", "ε", "created"),
            [
                (
                    j["id"],
                    j["state"],
                    j["operator"],
                    f"{j['scenario']}\n  {j['dataset'] or '-'}",
                    fmt_amount(j["epsilon"]),
                    j["created_at"][:16].replace("T", "\n"),
                )
                for j in found
            ],
            keep=("job", "state", "operator", "scenario / dataset", "created"),
        )

    @app.command("cancel")
    @handle_errors
    def cancel(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The job id (j-…)."),
        as_json: bool = JsonOption,
    ) -> None:
        """Cancel an unfinished job (budget comes back only if it never ran)."""
        job = _client(ctx).post(f"/v1/jobs/{job_id}/cancel")
        if as_json:
            print_json(job)
        else:
            _show_job(job)

    @app.command("result")
    @handle_errors
    def result(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The job id (j-…)."),
        fmt: str = typer.Option("csv", "--format", "-f", help="csv, parquet or json."),
        output: Path = typer.Option(None, "--output", "-o", help="File (default: JOB.FORMAT)."),
        as_json: bool = JsonOption,
    ) -> None:
        """Download a released product: FILE and FILE.manifest.json (the signed certificate)."""
        api = _client(ctx)
        path = output or Path(f"{job_id}.{fmt}")
        _, summary = api.download(
            path,
            f"/v1/jobs/{job_id}/product",
            f"/v1/products/{job_id}/manifest",
            params={"format": fmt},
        )
        if as_json:
            print_json(summary)
        else:
            console.print(
                f"wrote {path} ({summary['bytes']} bytes) and {Path(summary['manifest']).name}; "
                f"check it with `{_verify_command(ctx, api, path)}`",
                soft_wrap=True,
            )

    @app.command("budget")
    @handle_errors
    def budget(
        ctx: typer.Context,
        operator: str = typer.Option(None, "--operator", help="Supervisors: one operator."),
        as_json: bool = JsonOption,
    ) -> None:
        """What is left of the privacy budget, per grant and dataset: in the account's
        unit (ε, or ρ for zCDP datasets with its ε-equivalent) and in queries left at a
        typical cost."""
        from sandbox.cli.budgetview import budget_table, footnote

        params = {"operator": operator} if operator else {}
        rows = _client(ctx).get("/v1/budget", params=params)
        if as_json:
            print_json(rows)
            return
        console.print(budget_table(rows))
        console.print(f"[dim]{escape(footnote())}[/]")

    @review_app.command("list")
    @handle_errors
    def review_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
        """Jobs waiting for review, oldest first."""

        queue = _client(ctx).get("/v1/review")
        if as_json:
            print_json(queue)
            return
        print_table(
            ("job / operator", "scenario / dataset", "kind", "grade", "approvals", "flags"),
            [
                (
                    f"{j['id']}\n  {j['operator']}",
                    f"{j['scenario']}\n  {j['dataset']}",
                    queue_kind(j),
                    j["grade"],
                    f"{j['approvals']} of {j['required_approvals']}",
                    ", ".join(f["code"] for f in j["flags"]) or "-",
                )
                for j in queue
            ],
            keep=("job / operator", "scenario / dataset", "kind", "grade", "approvals"),
        )

    def _decide(
        ctx: typer.Context, job_id: str, decision: str, reason: str, as_json: bool, **outputs: Any
    ) -> None:
        body = {"decision": decision, "reason": reason, **outputs}  # outputs: analysis jobs
        out = _client(ctx).post(f"/v1/review/{job_id}", body)
        if as_json:
            print_json(out)
            return
        console.print(f"{decision}: outcome [bold]{out['outcome']}[/]")
        _show_job(out["job"])

    @review_app.command("approve")
    @handle_errors
    def approve(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The job id."),
        reason: str = typer.Option(..., "--reason", "-r", help="Why (kept in the audit log)."),
        output: list[str] = typer.Option(
            None,
            "--output",
            "-o",
            help="An analysis job's output to release (its uid, e.g. output_0); repeat it. "
            "Default: all. Released are the outputs every approving supervisor chose.",
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """Approve a job's release (of an analysis job: all outputs, or those --output names)."""
        _decide(ctx, job_id, "approve", reason, as_json, **({"outputs": output} if output else {}))

    @review_app.command("reject")
    @handle_errors
    def reject(
        ctx: typer.Context,
        job_id: str = typer.Argument(..., help="The job id."),
        reason: str = typer.Option(..., "--reason", "-r", help="Why (kept in the audit log)."),
        as_json: bool = JsonOption,
    ) -> None:
        """Reject a job: nothing is released."""
        _decide(ctx, job_id, "reject", reason, as_json)

    app.add_typer(review_app, name="review")


def _verify_command(ctx: typer.Context, api: ApiClient, path: Path) -> str:
    """The `product verify` that checks a product just downloaded from ``api``: with
    the server named when verify would not find it (nor a local key) by itself."""
    from sandbox.cli.common import configured_url, settings

    if configured_url(ctx) is None and not (settings(ctx).keys_dir / "products.pub").is_file():
        return f"sandbox --url {api.url} product verify {path}"
    return f"sandbox product verify {path}"


def _fmt(value: Any) -> str:
    return (
        f"{value:.4g}"
        if isinstance(value, int | float)
        else str(value if value is not None else "-")
    )
