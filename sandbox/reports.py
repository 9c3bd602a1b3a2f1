"""Supervision reports and alerts, computed from the audit log (and the ledger).

A report groups the audit events by operator and scenario: jobs and how they ended,
refusals by error code, budget spent and left per dataset, datasets touched, products
released and downloaded. Alerts point a supervisor at patterns worth a look:

- ``refusal_streak``: 5 or more refusals in a row for one operator;
- ``budget_nearly_exhausted``: 80 % or more of a grant's budget on a dataset spent;
- ``query_burst``: 3 or more jobs with the same plan digest (or the same SQL hash)
  from one operator within an hour;
- ``resource_limit``: runs that hit the memory, time or resource limits.

Jobs are attributed to an operator through their ``job.submitted`` event (its actor
and scenario); later events about the job (subject = job id) follow it, whoever wrote
them. The report reads only the audit log's metadata: never data, never aggregates.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox import audit
from sandbox.grants import Grants

__all__ = ["ALERT_RULES", "build_report"]

ALERT_RULES: dict[str, Any] = {
    "refusal_streak": 5,
    "budget_fraction": 0.8,
    "burst_count": 3,
    "burst_window_s": 3600,
    "limit_categories": ("memory", "timeout", "resource_limit"),
}

# Job states after which data has been read and the budget is kept.
_RAN = {"job.running", "job.noised", "job.in_review", "job.released", "job.rejected"}
_OUTCOMES = {
    "job.refused": "refused",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
    "job.released": "released",
    "job.rejected": "rejected",
}


@dataclass
class _Job:
    id: str
    operator: str
    scenario: str | None
    seq: int
    time: datetime
    dataset: str | None = None
    grant: str | None = None
    plan_digest: str | None = None
    sql_hash: str | None = None
    epsilon: float = 0.0
    delta: float = 0.0
    reserved: bool = False
    charged: bool = False
    released_budget: bool = False
    outcome: str | None = None
    refusal: str | None = None
    category: str | None = None


@dataclass
class _Group:
    operator: str
    scenario: str | None
    jobs: list[_Job] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    product_jobs: set[str] = field(default_factory=set)
    downloads: int = 0
    reviews: Counter[str] = field(default_factory=Counter)


def build_report(
    conn: sqlite3.Connection,
    *,
    operator: str | None = None,
    scenario: str | None = None,
    grants: Grants | None = None,
    use_ledger: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The supervision report (groups per operator × scenario) and its alerts.

    ``grants`` gives each budget its total (and, with ``use_ledger``, the ledger's own
    balance, which is authoritative); without them budgets show only what was spent."""
    jobs: dict[str, _Job] = {}
    groups: dict[tuple[str, str | None], _Group] = {}
    product_job: dict[str, str] = {}
    entries = 0

    def group_of(op: str, sc: str | None) -> _Group:
        return groups.setdefault((op, sc), _Group(op, sc))

    for ev in audit.events(conn):
        entries += 1
        details = _details(ev)
        job = jobs.get(ev.subject)
        if ev.action == "job.submitted" or (
            job is None and ev.action == "job.refused" and ev.role == "operator"
        ):
            job = _Job(ev.subject, ev.actor, ev.scenario, ev.seq, _time(ev.time))
            job.sql_hash = _str(details.get("sql_sha256") or details.get("query_hash"))
            job.epsilon = _num(details.get("epsilon"))
            job.delta = _num(details.get("delta"))
            jobs[job.id] = job
            group_of(job.operator, job.scenario).jobs.append(job)
        if ev.action.startswith("product."):
            job_id = _str(details.get("job")) or product_job.get(ev.subject) or ev.subject
            owner = jobs.get(job_id or "")
            if owner is None:
                continue
            group = group_of(owner.operator, owner.scenario)
            if ev.action == "product.released":
                product_job[ev.subject] = owner.id
                group.products.append(ev.subject)
                group.product_jobs.add(owner.id)
            elif ev.action == "product.downloaded":
                group.downloads += 1
            continue
        if job is None:
            continue
        _apply(job, ev.action, details)
        if ev.action.startswith("review."):
            group_of(job.operator, job.scenario).reviews[ev.action.split(".", 1)[1]] += 1

    selected = [
        g
        for g in groups.values()
        if (operator is None or g.operator == operator)
        and (scenario is None or g.scenario == scenario)
    ]
    ledger_balance = _ledger_balance() if use_ledger else None
    report_groups = [_group_report(g, grants, conn, ledger_balance) for g in selected]
    alerts: list[dict[str, Any]] = []
    for g, rg in zip(selected, report_groups, strict=True):
        alerts += _alerts(g, rg)
    return {
        "generated_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "filters": {"operator": operator, "scenario": scenario},
        "entries": entries,
        "groups": report_groups,
        "alerts": alerts,
        "rules": {k: list(v) if isinstance(v, tuple) else v for k, v in ALERT_RULES.items()},
    }


def _apply(job: _Job, action: str, details: dict[str, Any]) -> None:
    if action == "job.compiled":
        job.plan_digest = _str(details.get("plan_digest")) or job.plan_digest
        job.dataset = _str(details.get("dataset")) or job.dataset
    elif action in ("budget.reserved", "job.budget_reserved"):
        job.reserved = True
        if "epsilon" in details:
            job.epsilon = _num(details.get("epsilon"))
            job.delta = _num(details.get("delta"))
        job.dataset = _str(details.get("dataset")) or job.dataset
        job.grant = _str(details.get("grant")) or job.grant
    elif action == "budget.charged" or action in _RAN:
        job.charged = job.charged or job.reserved or action == "budget.charged"
    elif action == "budget.released":
        job.released_budget = True
    elif action in ("container.finished", "job.failed"):
        category = _str(details.get("category"))
        if category and category != "ok":
            job.category = category
    if action in _OUTCOMES:
        job.outcome = _OUTCOMES[action]
        if action == "job.refused":
            job.refusal = _str(details.get("code")) or "UNKNOWN"


def _group_report(
    g: _Group, grants: Grants | None, conn: sqlite3.Connection, ledger_balance: Any
) -> dict[str, Any]:
    outcomes = Counter(j.outcome or "open" for j in g.jobs)
    refusals = Counter(j.refusal for j in g.jobs if j.refusal)
    failures = Counter(j.category for j in g.jobs if j.category)
    datasets = sorted({j.dataset for j in g.jobs if j.dataset})
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for j in g.jobs:
        if j.charged and j.dataset:
            spent[j.dataset][0] += j.epsilon
            spent[j.dataset][1] += j.delta
    grant = _grant_for(grants, g.operator, g.scenario)
    budget_datasets = sorted(set(spent) | set(grant.datasets if grant else ()))
    budget = []
    for ds in budget_datasets:
        # From the audit log: ε of the jobs whose data was read (reserved and then ran).
        row: dict[str, Any] = {
            "dataset": ds,
            "unit": "epsilon",
            "spent": round(spent[ds][0], 9),
            "delta_spent": spent[ds][1],
            "source": "audit",
        }
        if grant is not None:
            total = grant.budget.epsilon
            left = round(max(0.0, total - spent[ds][0]), 9)
            row.update(grant=grant.id, total=total, left=left)
            # The ledger is authoritative when present (it also knows reservations and
            # zCDP accounts, counted in ρ).
            bal = _ledger(ledger_balance, conn, grant, ds)
            if bal is not None and _eps(bal.get("total")):
                row.update(
                    unit=str(bal.get("unit", "epsilon")),
                    total=_eps(bal.get("total")),
                    spent=_eps(bal.get("spent")) or 0.0,
                    reserved=_eps(bal.get("reserved")) or 0.0,
                    left=_eps(bal.get("left")) or 0.0,
                    delta_spent=_eps(bal.get("delta_spent")) or 0.0,
                    source="ledger",
                )
            used = float(row["spent"]) + float(row.get("reserved", 0.0))
            row["fraction_spent"] = round(used / float(row["total"]), 4) if row["total"] else None
        budget.append(row)
    return {
        "operator": g.operator,
        "scenario": g.scenario,
        "jobs": {"submitted": len(g.jobs), **dict(sorted(outcomes.items()))},
        "refusals_by_code": dict(sorted(refusals.items())),
        "failures_by_category": dict(sorted(failures.items())),
        "budget": budget,
        "datasets": datasets,
        # Products by id; a released job without a product.released event counts by job id.
        "products_released": g.products
        + [j.id for j in g.jobs if j.outcome == "released" and j.id not in g.product_jobs],
        "downloads": g.downloads,
        "reviews": dict(sorted(g.reviews.items())),
    }


def _alerts(g: _Group, rg: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = {"operator": g.operator, "scenario": g.scenario}
    # Refusals in a row (jobs in submission order; a job that was not refused breaks it).
    run: list[_Job] = []
    longest: list[_Job] = []
    for j in sorted(g.jobs, key=lambda j: j.seq):
        run = run + [j] if j.outcome == "refused" else []
        if len(run) > len(longest):
            longest = run
    if len(longest) >= ALERT_RULES["refusal_streak"]:
        codes = Counter(j.refusal for j in longest)
        out.append(
            {
                **base,
                "kind": "refusal_streak",
                "count": len(longest),
                "jobs": [j.id for j in longest],
                "codes": dict(codes),
                "message": f"{len(longest)} refusals in a row.",
            }
        )
    for row in rg["budget"]:
        frac = row.get("fraction_spent")
        if frac is not None and frac >= ALERT_RULES["budget_fraction"]:
            out.append(
                {
                    **base,
                    "kind": "budget_nearly_exhausted",
                    "dataset": row["dataset"],
                    "fraction_spent": frac,
                    "message": f"{frac:.0%} of the budget on {row['dataset']} is used.",
                }
            )
    # Bursts of near-identical queries: same plan digest (else SQL hash) within the window.
    window = timedelta(seconds=ALERT_RULES["burst_window_s"])
    by_key: dict[str, list[_Job]] = defaultdict(list)
    for j in g.jobs:
        key = j.plan_digest or j.sql_hash
        if key:
            by_key[key].append(j)
    for key, same in by_key.items():
        same.sort(key=lambda j: j.time)
        best: list[_Job] = []
        lo = 0
        for hi in range(len(same)):
            while same[hi].time - same[lo].time > window:
                lo += 1
            if hi - lo + 1 > len(best):
                best = same[lo : hi + 1]
        if len(best) >= ALERT_RULES["burst_count"]:
            out.append(
                {
                    **base,
                    "kind": "query_burst",
                    "digest": key,
                    "count": len(best),
                    "jobs": [j.id for j in best],
                    "message": f"{len(best)} jobs with the same query within an hour.",
                }
            )
    limited = [j for j in g.jobs if j.category in ALERT_RULES["limit_categories"]]
    if limited:
        out.append(
            {
                **base,
                "kind": "resource_limit",
                "count": len(limited),
                "jobs": [j.id for j in limited],
                "categories": dict(Counter(j.category for j in limited)),
                "message": f"{len(limited)} runs hit resource limits.",
            }
        )
    return out


def _grant_for(grants: Grants | None, operator: str, scenario: str | None) -> Any:
    if grants is None:
        return None
    return next((g for g in grants.for_operator(operator) if g.scenario.id == scenario), None)


def _ledger_balance() -> Any:
    from sandbox import ledger

    return ledger.balance


def _ledger(balance: Any, conn: sqlite3.Connection, grant: Any, dataset: str) -> Any:
    if balance is None:
        return None
    try:
        result = balance(conn, grant, dataset)
    except Exception:  # noqa: BLE001 - a report still shows the audit's own numbers
        return None
    return result if isinstance(result, dict) else None


def _eps(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("epsilon")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _details(ev: audit.AuditEvent) -> dict[str, Any]:
    import json

    try:
        value = json.loads(ev.details)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
