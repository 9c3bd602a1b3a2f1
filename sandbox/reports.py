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
    "failure_burst": 3,
    "failure_window_s": 3600,
    "mismatch_categories": ("plan_mismatch", "output_invalid"),
    "sweep_count": 3,
    "sweep_window_s": 3600,
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
    failure: str | None = None  # the category, else the error code (every failure counts)
    failed_at: datetime | None = None


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
        if ev.action == "job.failed" and job is not None:
            job.failed_at = _time(ev.time)
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
    by_operator: dict[str, list[_Job]] = defaultdict(list)
    for g in selected:
        by_operator[g.operator] += g.jobs
    for op, op_jobs in sorted(by_operator.items()):
        alerts += _failure_alerts(op, op_jobs)
        alerts += _sweep_alerts(op, op_jobs, _job_sql(conn, [j.id for j in op_jobs]))
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
    g: _Group, grants: Grants | None, conn: sqlite3.Connection, ledger_balance: Any
) -> dict[str, Any]:
    outcomes = Counter(j.outcome or "open" for j in g.jobs)
    refusals = Counter(j.refusal for j in g.jobs if j.refusal)
    failures = Counter(j.failure for j in g.jobs if j.failure)
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
            _alert(
                base,
                "refusal_streak",
                longest,
                f"{len(longest)} refusals in a row.",
                codes=dict(codes),
            )
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
                _alert(
                    base,
                    "query_burst",
                    best,
                    f"{len(best)} jobs with the same query within an hour.",
                    digest=key,
                )
            )
    limited = [j for j in g.jobs if j.category in ALERT_RULES["limit_categories"]]
    if limited:
        out.append(
            _alert(
                base,
                "resource_limit",
                limited,
                f"{len(limited)} runs hit resource limits.",
                categories=dict(Counter(j.category for j in limited)),
            )
        )
    return out


def _alert(
    base: dict[str, Any], kind: str, jobs: list[_Job], message: str, **facts: Any
) -> dict[str, Any]:
    """One alert: who it is about, its kind, the jobs behind it and what it says."""
    return {
        **base,
        "kind": kind,
        "count": len(jobs),
        "jobs": [j.id for j in jobs],
        **facts,
        "message": message,
    }


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


def _in_window(jobs: list[_Job], when: Any, window: timedelta) -> list[_Job]:
    """The largest run of ``jobs`` (sorted by ``when``) that fits in ``window``."""
    jobs = sorted(jobs, key=when)
    best: list[_Job] = []
    lo = 0
    for hi in range(len(jobs)):
        while when(jobs[hi]) - when(jobs[lo]) > window:
            lo += 1
        if hi - lo + 1 > len(best):
            best = jobs[lo : hi + 1]
    return best


def _failure_alerts(operator: str, jobs: list[_Job]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = {"operator": operator, "scenario": None}
    failed = [j for j in jobs if j.failure]
    window = timedelta(seconds=ALERT_RULES["failure_window_s"])
    burst = _in_window(failed, lambda j: j.failed_at or j.time, window)
    if len(burst) >= ALERT_RULES["failure_burst"]:
        out.append(
            _alert(
                base,
                "failure_burst",
                burst,
                f"{len(burst)} failed jobs within an hour.",
                categories=dict(Counter(j.failure for j in burst)),
            )
        )
    odd = [j for j in failed if j.failure in ALERT_RULES["mismatch_categories"]]
    if odd:
        out.append(
            _alert(
                base,
                "plan_mismatch",
                odd,
                f"{len(odd)} runs returned something other than their Plan.",
                categories=dict(Counter(j.failure for j in odd)),
            )
        )
    return out


def _job_sql(conn: sqlite3.Connection, job_ids: list[str]) -> dict[str, str]:
    """The SQL text of these jobs, from the jobs table (absent in a bare audit log)."""
    out: dict[str, str] = {}
    try:
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT id, sql FROM jobs WHERE id IN ({marks})", chunk):
                out[str(r[0])] = str(r[1])
    except sqlite3.OperationalError:  # no jobs table: an audit log on its own
        return {}
    return out


def _sweep_alerts(operator: str, jobs: list[_Job], sql: dict[str, str]) -> list[dict[str, Any]]:
    """Queries that are the same but for one constant, many values of it in a window."""
    from sandbox.review import sql_literals, sql_shape

    window = timedelta(seconds=ALERT_RULES["sweep_window_s"])
    # (shape, position, the other constants) -> [(job, the constant at the position)]
    buckets: dict[tuple[str, int, tuple[str, ...]], list[tuple[_Job, str]]] = defaultdict(list)
    for j in jobs:
        text = sql.get(j.id)
        if text is None:
            continue
        shape, lits = sql_shape(text), sql_literals(text)
        for i, lit in enumerate(lits):
            buckets[(shape, i, tuple(lits[:i] + lits[i + 1 :]))].append((j, lit))
    out: list[dict[str, Any]] = []
    seen: set[frozenset[str]] = set()
    for (shape, _i, _rest), members in buckets.items():
        value = dict((j.id, lit) for j, lit in members)
        # one job per distinct constant (the first of each), then the densest window
        firsts: dict[str, _Job] = {}
        for j, lit in sorted(members, key=lambda m: m[0].time):
            firsts.setdefault(lit, j)
        sweep = _in_window(list(firsts.values()), lambda j: j.time, window)
        ids = frozenset(j.id for j in sweep)
        if len({value[j.id] for j in sweep}) < ALERT_RULES["sweep_count"] or ids in seen:
            continue
        seen.add(ids)
        out.append(
            _alert(
                {"operator": operator, "scenario": None},
                "filter_sweep",
                sweep,
                f"{len(sweep)} queries within an hour that differ only in one "
                "constant: a sweep over a filter value.",
                shape=shape[:16],
            )
        )
    return out
