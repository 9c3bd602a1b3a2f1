"""Supervision reports and alerts, computed from the audit log (and the ledger).

A report groups the audit events by operator and scenario: jobs and how they ended,
refusals by error code, budget spent and left per dataset, datasets touched, products
released and downloaded. Alerts point a supervisor at patterns worth a look:

- ``refusal_streak``: 5 or more refusals in a row for one operator;
- ``budget_nearly_exhausted``: 80 % or more of a grant's budget on a dataset spent;
- ``query_burst``: 3 or more jobs with the same plan digest (or the same SQL hash)
  from one operator within an hour;
- ``resource_limit``: runs that hit the memory, time or resource limits;
- ``failure_burst``: 3 or more failed jobs of one operator within an hour, whatever
  the category (``plan_mismatch``, ``engine_error``, ``INTERNAL`` …);
- ``plan_mismatch``: any run whose result was not what the Plan declared
  (``plan_mismatch``, ``output_invalid``): it does not happen by accident;
- ``filter_sweep``: 3 or more queries of one operator within an hour that are the
  same but for one constant (e.g. ``WHERE age = 30``, ``= 31``, ``= 32``): a sweep
  over a filter value, the classic way to single somebody out by differencing. Read
  from the jobs table's SQL; the alert names the jobs, never the constants.

Jobs are attributed to an operator through their ``job.submitted`` event (its actor
and scenario); later events about the job (subject = job id) follow it, whoever wrote
them. The report reads only the audit log's metadata: never data, never aggregates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox import audit, display, ledger, store
from sandbox.alerts import (
    ALERT_RULES,
    JobFacts,
    failure_alerts,
    group_alerts,
    job_sql,
    sweep_alerts,
)
from sandbox.catalog import Catalog
from sandbox.grants import Grants

__all__ = ["ALERT_RULES", "build_report"]

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
class _Group:
    operator: str
    scenario: str | None
    jobs: list[JobFacts] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    product_jobs: set[str] = field(default_factory=set)
    downloads: int = 0
    reviews: Counter[str] = field(default_factory=Counter)


def build_report(
    conn: store.Connection,
    *,
    operator: str | None = None,
    scenario: str | None = None,
    grants: Grants | None = None,
    catalog: Catalog | None = None,
    use_ledger: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The supervision report (groups per operator × scenario) and its alerts.

    ``grants`` gives each budget its total (and, with ``use_ledger``, the ledger's own
    balance, which is authoritative); without them budgets show only what was spent.
    ``catalog`` says which datasets count in ρ (zCDP) before their first job; a budget
    is in ρ as soon as a job on it was."""
    jobs: dict[str, JobFacts] = {}
    groups: dict[tuple[str, str | None], _Group] = {}
    product_job: dict[str, str] = {}
    entries = 0

    def group_of(op: str, sc: str | None) -> _Group:
        return groups.setdefault((op, sc), _Group(op, sc))

    for ev in audit.events(conn):
        entries += 1
        details = _details(ev)
        job = jobs.get(ev.subject)
        if ev.action == "job.failed" and job is not None:
            job.failed_at = _time(ev.time)
        if ev.action == "job.submitted" or (
            job is None and ev.action == "job.refused" and ev.role == "operator"
        ):
            job = JobFacts(ev.subject, ev.actor, ev.scenario, ev.seq, _time(ev.time))
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
    definitions = (
        {d.id: d.privacy.definition for d in catalog.datasets if not d.is_public}
        if catalog is not None
        else None
    )
    report_groups = [_group_report(g, grants, conn, ledger_balance, definitions) for g in selected]
    alerts: list[dict[str, Any]] = []
    for g, rg in zip(selected, report_groups, strict=True):
        alerts += group_alerts(g.operator, g.scenario, g.jobs, rg["budget"])
    by_operator: dict[str, list[JobFacts]] = defaultdict(list)
    for g in selected:
        by_operator[g.operator] += g.jobs
    for op, op_jobs in sorted(by_operator.items()):
        alerts += failure_alerts(op, op_jobs)
        alerts += sweep_alerts(op, op_jobs, job_sql(conn, [j.id for j in op_jobs]))
    return {
        "generated_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "filters": {"operator": operator, "scenario": scenario},
        "entries": entries,
        "groups": report_groups,
        "alerts": alerts,
        "rules": {k: list(v) if isinstance(v, tuple) else v for k, v in ALERT_RULES.items()},
    }


def _apply(job: JobFacts, action: str, details: dict[str, Any]) -> None:
    if action == "job.compiled":
        job.plan_digest = _str(details.get("plan_digest")) or job.plan_digest
        job.dataset = _str(details.get("dataset")) or job.dataset
    elif action in ("budget.reserved", "job.budget_reserved"):
        job.reserved = True
        if "epsilon" in details:
            job.epsilon = _num(details.get("epsilon"))
            job.delta = _num(details.get("delta"))
        rho = details.get("rho")
        if isinstance(rho, int | float) and not isinstance(rho, bool):
            job.rho = float(rho)
        job.dataset = _str(details.get("dataset")) or job.dataset
        job.grant = _str(details.get("grant")) or job.grant
    elif action == "budget.charged" or action in _RAN:
        job.charged = job.charged or job.reserved or action == "budget.charged"
    elif action == "budget.released":
        job.released_budget = True
    elif action == "job.failed":
        category = _str(details.get("category"))
        if category and category != "ok":
            job.category = category
        job.failure = job.category or _str(details.get("code")) or "UNKNOWN"
    if action in _OUTCOMES:
        job.outcome = _OUTCOMES[action]
        if action == "job.refused":
            job.refusal = _str(details.get("code")) or "UNKNOWN"


def _group_report(
    g: _Group,
    grants: Grants | None,
    conn: store.Connection,
    ledger_balance: Any,
    definitions: Mapping[str, str] | None,
) -> dict[str, Any]:
    """One group's figures; ``definitions`` (from the catalogue, when known) are the
    private datasets' (a public dataset has no budget)."""
    outcomes = Counter(j.outcome or "open" for j in g.jobs)
    refusals = Counter(j.refusal for j in g.jobs if j.refusal)
    failures = Counter(j.failure for j in g.jobs if j.failure)
    datasets = sorted({j.dataset for j in g.jobs if j.dataset})
    # per dataset: ε, δ, ρ of the jobs whose data was read; whether any was in ρ
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    in_rho: set[str] = {ds for ds, d in (definitions or {}).items() if d == "zcdp"}
    costs: dict[str, list[float]] = defaultdict(list)  # newest first
    for j in sorted(g.jobs, key=lambda j: j.seq, reverse=True):
        if j.dataset and j.rho is not None:
            in_rho.add(j.dataset)
        if j.charged and j.dataset:
            spent[j.dataset][0] += j.epsilon
            spent[j.dataset][1] += j.delta
            spent[j.dataset][2] += j.rho or 0.0
            cost = j.rho if j.rho is not None else j.epsilon
            if cost:
                costs[j.dataset].append(cost)
    grant = _grant_for(grants, g.operator, g.scenario)
    budget_datasets = sorted(set(spent) | set(grant.datasets if grant else ()))
    if definitions is not None:
        budget_datasets = [ds for ds in budget_datasets if ds in definitions]
    budget = []
    for ds in budget_datasets:
        rho = ds in in_rho
        # From the audit log: ε (or ρ) of the jobs whose data was read (reserved, then ran).
        row: dict[str, Any] = {
            "dataset": ds,
            "unit": "rho" if rho else "epsilon",
            "spent": round(spent[ds][2] if rho else spent[ds][0], 9),
            "delta_spent": spent[ds][1],
            "source": "audit",
        }
        if grant is not None:
            # the account's caps as the ledger sets them (ρ from the grant's (ε, δ))
            total_units, delta_units = ledger.grant_totals(grant, "zcdp" if rho else "pure")
            total = total_units / ledger.LOSS_UNITS
            left = round(max(0.0, total - float(row["spent"])), 9)
            row.update(
                grant=grant.id,
                total=total,
                left=left,
                delta_total=delta_units / ledger.DELTA_UNITS,
            )
            # The ledger is authoritative when present (it also knows reservations and
            # zCDP accounts, counted in ρ).
            bal = _ledger(
                ledger_balance, conn, grant, ds, "zcdp" if rho else (definitions or {}).get(ds)
            )
            if bal is not None and _eps(bal.get("total")):
                row.update(
                    unit=str(bal.get("unit", "epsilon")),
                    total=_eps(bal.get("total")),
                    spent=_eps(bal.get("spent")) or 0.0,
                    reserved=_eps(bal.get("reserved")) or 0.0,
                    left=_eps(bal.get("left")) or 0.0,
                    delta_spent=_eps(bal.get("delta_spent")) or 0.0,
                    delta_total=_eps(bal.get("delta_total")) or 0.0,
                    source="ledger",
                )
            used = float(row["spent"]) + float(row.get("reserved", 0.0))
            cap = float(row["total"])
            row["fraction_spent"] = round(used / cap, 4) if cap else None
            if row["source"] == "ledger":  # what the ledger charged the latest jobs
                costs[ds] = ledger.recent_losses(conn, grant.id, ds, display.RECENT_JOBS)
            row["outlook"] = display.budget_outlook(
                row,
                costs[ds],
                ceiling_epsilon=grant.budget.max_epsilon_per_query,
                grant_delta=grant.budget.delta,
            )
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


def _grant_for(grants: Grants | None, operator: str, scenario: str | None) -> Any:
    if grants is None:
        return None
    return next((g for g in grants.for_operator(operator) if g.scenario.id == scenario), None)


def _ledger_balance() -> Any:
    from sandbox import ledger

    return ledger.balance


def _ledger(
    balance: Any, conn: store.Connection, grant: Any, dataset: str, definition: str | None
) -> Any:
    if balance is None:
        return None
    try:
        result = balance(conn, grant, dataset, definition=definition)
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
