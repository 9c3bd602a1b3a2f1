"""View dicts: what each role may see of the catalogue, a grant, a job and a budget
(and ``since_seq``, where an audit search starts).

Operators see only their own grants' datasets (valid now), job times to the whole
second, nothing of a result before it is released (then its rows, as the product);
supervisors also see previews."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox import display, jobs, ledger, products, review, store
from sandbox.catalog import Catalog, Dataset
from sandbox.errors import BadInput
from sandbox.grants import Grant, Grants
from sandbox.jobs import Job, State, analysis
from sandbox.jobs.states import HIDDEN_MOVES, SHOWN_HELD
from sandbox.tokens import Principal, Role

TIME_FIELDS = ("created_at", "updated_at", "finished_at")


def catalog_view(catalog: Catalog, grants: Grants, p: Principal) -> dict[str, Any]:
    """The catalogue (schema and policy, never rows); operators see the datasets of
    their grants that are valid now (not an expired or not yet valid one)."""
    if p.role == Role.OPERATOR:
        now = datetime.now(UTC)
        allowed = {d for g in grants.for_operator(p.name) if g.is_valid_at(now) for d in g.datasets}
        datasets = [d for d in catalog.datasets if d.id in allowed]
    else:
        datasets = list(catalog.datasets)
    used_keys = {c.keys for d in datasets for t in d.tables for c in t.columns if c.keys}
    return {
        "datasets": [dataset_view(d) for d in datasets],
        "key_sets": {k: list(catalog.keys(k)) for k in sorted(used_keys)},
    }


def dataset_view(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "title": d.title,
        "owner": d.owner,
        "description": d.description,
        "version": d.version,
        "grade": d.grade.value,
        "sharing": {"attribute": d.sharing.attribute.value, "reason": d.sharing.reason},
        "privacy_unit": d.privacy_unit,
        "privacy": d.privacy.model_dump(mode="json"),
        "tables": [
            {
                "name": t.name,
                "description": t.description,
                "file": t.file,
                "rows_per_unit": t.rows_per_unit,
                "lookup_key": t.lookup_key,
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type,
                        "description": c.description,
                        "uses": sorted(u.value for u in c.uses),
                        "bounds": list(c.bounds) if c.bounds else None,
                        "keys": c.keys,
                        "null_rate": c.null_rate,
                        "synthetic": c.synthetic,
                    }
                    for c in t.columns
                ],
            }
            for t in d.tables
        ],
    }


def grant_view(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "operator": g.operator,
        "scenario": {"id": g.scenario.id, "purpose": g.scenario.purpose},
        "datasets": list(g.datasets),
        "columns": {k: sorted(u.value for u in v) for k, v in g.columns.items()},
        "budget": g.budget.model_dump(mode="json"),
        "valid_from": g.valid_from.isoformat(),
        "valid_until": g.valid_until.isoformat(),
    }


def job_view(
    conn: store.Connection,
    products_dir: Path,
    p: Principal,
    job: Job,
    *,
    detail: bool = False,
    rules: review.ReviewRules | None = None,
) -> dict[str, Any]:
    """A job as ``p`` may see it; ``detail`` adds transitions (and a supervisor's preview).
    With the review ``rules``, a job that needs approval says why (``review_reasons``:
    its grade, a near-duplicate; facts of the query, never of the data)."""
    view = job.public(
        operator_view=p.role == Role.OPERATOR,
        transitions=jobs.transitions(conn, job.id) if detail else None,
        # an analysis run that failed waits for review with its incident (supervisors)
        incident=jobs.incident_for(conn, job.id)
        if job.state == State.FAILED or job["error_code"]
        else None,
    )
    if p.role == Role.OPERATOR:
        coarsen_times(view)
    view["decisions"] = review.decisions(conn, job.id)
    view["approvals"] = sum(1 for d in view["decisions"] if d["decision"] == "approve")
    if rules is not None and (view.get("required_approvals") or 0) > 0:
        view["review_reasons"] = display.review_reasons(
            grade=job["grade"],
            grade_approvals=rules.for_grade(job["grade"] or "").approvals,
            flags=view.get("flags") or [],
        )
    if p.role == Role.OPERATOR and job.state != State.RELEASED:
        # an operator learns nothing of the result before it is released (a rejected
        # job releases nothing, not even how many cells were small)
        view.update(accuracy=None, flags=[], disclosure_control={}, rows=None)
    # a supervisor previews what would be released; once it is, its operator sees the
    # released rows too (each value with its ± in ``accuracy``: `sandbox status`)
    reviewable = (State.NOISED, State.IN_REVIEW, State.RELEASED)
    if detail and (
        (p.role == Role.SUPERVISOR and job.state in reviewable)
        or (p.role == Role.OPERATOR and job.state == State.RELEASED)
    ):
        try:
            view["preview"] = products.preview(products_dir, job.id)
        except FileNotFoundError:
            view["preview"] = None
    view["kind"] = job.record.get("kind") or "sql"
    if p.role == Role.OPERATOR and view["kind"] == analysis.KIND:
        hold_for_operator(view, job)
    if job.state == State.RELEASED and view["kind"] == "analysis":
        view["product"] = {  # sandbox/products_analysis.py
            "id": job.id,
            "formats": ["zip"],
            "href": f"/v1/analysis-jobs/{job.id}/product",
            "manifest": f"/v1/analysis-jobs/{job.id}/manifest",
        }
    elif job.state == State.RELEASED:
        view["product"] = {
            "id": job.id,
            "formats": sorted(products.FORMATS),
            "href": f"/v1/jobs/{job.id}/product",
            "manifest": f"/v1/products/{job.id}/manifest",
        }
    return view


def hold_for_operator(view: dict[str, Any], job: Job) -> None:
    """An analysis job as its operator sees it (docs/analysis-jobs.md, "Held until the
    decision"). Until a supervisor decides it is one held state, ``in_review``, from
    submission on: not whether its run started, ended or failed, no time after its
    submission, no decision yet (the first of two approvals would date the run's end).
    Always: no moves of the run (when it started and ended). A rejected job shows no
    failure (a rejection tells nothing of the run). Supervisors and the audit keep the
    truth."""
    view["transitions"] = (
        None
        if view.get("transitions") is None
        else [t for t in view["transitions"] if t.get("to_state") not in HIDDEN_MOVES]
    )
    view["held"] = analysis.is_held(job)
    if job.state == State.REJECTED:
        view["error"] = None
    if not view["held"]:
        return
    view.update(
        state=SHOWN_HELD.value,
        updated_at=view.get("created_at"),
        finished_at=None,
        error=None,
        rows=None,
        decisions=[],
        approvals=0,
    )


def budget_rows(
    conn: store.Connection, catalog: Catalog, grants: Iterable[Grant]
) -> list[dict[str, Any]]:
    """What is left of each grant's budget, per private dataset, and what that means in
    queries (``outlook``: a typical cost, the queries left at it, for ρ the ε-equivalent;
    sandbox/display.py)."""
    out = []
    for g in grants:
        for ds in g.datasets:
            d = catalog.dataset(ds)
            if d is None or d.is_public:
                continue
            row = {
                "grant": g.id,
                "operator": g.operator,
                "scenario": g.scenario.id,
                "dataset": ds,
                "valid_until": g.valid_until.isoformat(),
                "max_epsilon_per_query": g.budget.max_epsilon_per_query,
                **plain(ledger.balance(conn, g, ds, definition=d.privacy.definition)),
            }
            row["outlook"] = display.budget_outlook(
                row,
                ledger.recent_losses(conn, g.id, ds, display.RECENT_JOBS),
                ceiling_epsilon=g.budget.max_epsilon_per_query,
                grant_delta=g.budget.delta,
            )
            out.append(row)
    return out


def since_seq(conn: store.Connection, since: str | None) -> int:
    """The audit search's ``since`` (a sequence number or an ISO time) as the sequence
    number events must come after."""
    if since is None or since == "":
        return 0
    if since.isascii() and since.isdigit():
        return min(int(since), 2**63 - 1)  # SQLite's largest integer
    from sandbox.audit.log import stored_time

    try:
        stamp = stored_time(since)
    except ValueError as exc:
        raise BadInput(
            "'since' must be a sequence number or an ISO 8601 time.",
            hint="For example 2026-01-31T00:00:00Z.",
        ) from exc
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE time < ?", (stamp,)
    ).fetchone()
    return int(row[0])


def plain(obj: Any) -> dict[str, Any]:
    """JSON-ready copy of a record (dataclasses, tuples, datetimes)."""
    copy: dict[str, Any] = json.loads(
        json.dumps(obj, default=lambda o: getattr(o, "__dict__", str(o)))
    )
    return copy


def whole_second(stamp: Any) -> Any:
    """An ISO timestamp cut to the whole second (issue 20); anything else unchanged."""
    if not isinstance(stamp, str):
        return stamp
    try:
        return datetime.fromisoformat(stamp).replace(microsecond=0).isoformat()
    except ValueError:
        return stamp


def coarsen_times(view: dict[str, Any]) -> None:
    """Operators see job times to the whole second only: how long a run took can depend
    on the exact data, and sub-second transition times would let an operator read it
    (issue 20; docs/privacy.md, "What an operator can observe"). Supervisors see all."""
    for name in TIME_FIELDS:
        view[name] = whole_second(view.get(name))
    for t in view.get("transitions") or []:
        t["at"] = whole_second(t.get("at"))
