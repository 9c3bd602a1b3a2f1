"""Alerts: the patterns in one operator's jobs that a supervisor should look at.

``reports.build_report`` reads the audit log into one ``JobFacts`` per job and asks
this module for alerts (the kinds are listed in ``sandbox.reports``). Every rule reads
only the audit log's metadata and, for ``filter_sweep``, the jobs' SQL text: never
data, never aggregates. The thresholds are ``ALERT_RULES``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sandbox import store

__all__ = [
    "ALERT_RULES",
    "JobFacts",
    "failure_alerts",
    "group_alerts",
    "job_sql",
    "sweep_alerts",
]

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


@dataclass
class JobFacts:
    """What the audit log says about one job."""

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
    rho: float | None = None  # a zCDP job's ρ (what its account is charged)
    reserved: bool = False
    charged: bool = False
    released_budget: bool = False
    outcome: str | None = None
    refusal: str | None = None
    category: str | None = None
    failure: str | None = None  # the category, else the error code (every failure counts)
    failed_at: datetime | None = None


def group_alerts(
    operator: str, scenario: str | None, jobs: list[JobFacts], budget: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Alerts about one operator's jobs under one scenario."""
    out: list[dict[str, Any]] = []
    base = {"operator": operator, "scenario": scenario}
    # Refusals in a row (jobs in submission order; a job that was not refused breaks it).
    run: list[JobFacts] = []
    longest: list[JobFacts] = []
    for j in sorted(jobs, key=lambda j: j.seq):
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
    for row in budget:
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
    by_key: dict[str, list[JobFacts]] = defaultdict(list)
    for j in jobs:
        key = j.plan_digest or j.sql_hash
        if key:
            by_key[key].append(j)
    for key, same in by_key.items():
        best = _in_window(same, lambda j: j.time, window)
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
    limited = [j for j in jobs if j.category in ALERT_RULES["limit_categories"]]
    out += _by_category(base, "resource_limit", limited, "runs hit resource limits.")
    return out


def _by_category(
    base: dict[str, Any], kind: str, jobs: list[JobFacts], what: str
) -> list[dict[str, Any]]:
    """One alert over ``jobs`` (if any) counting their failure categories."""
    if not jobs:
        return []
    categories = Counter(j.failure or j.category for j in jobs)
    return [_alert(base, kind, jobs, f"{len(jobs)} {what}", categories=dict(categories))]


def _alert(
    base: dict[str, Any], kind: str, jobs: list[JobFacts], message: str, **facts: Any
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


def _in_window(
    jobs: list[JobFacts], when: Callable[[JobFacts], datetime], window: timedelta
) -> list[JobFacts]:
    """The largest run of ``jobs`` (sorted by ``when``) that fits in ``window``."""
    jobs = sorted(jobs, key=when)
    best: list[JobFacts] = []
    lo = 0
    for hi in range(len(jobs)):
        while when(jobs[hi]) - when(jobs[lo]) > window:
            lo += 1
        if hi - lo + 1 > len(best):
            best = jobs[lo : hi + 1]
    return best


def failure_alerts(operator: str, jobs: list[JobFacts]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = {"operator": operator, "scenario": None}
    failed = [j for j in jobs if j.failure]
    window = timedelta(seconds=ALERT_RULES["failure_window_s"])
    burst = _in_window(failed, lambda j: j.failed_at or j.time, window)
    if len(burst) >= ALERT_RULES["failure_burst"]:
        out += _by_category(base, "failure_burst", burst, "failed jobs within an hour.")
    odd = [j for j in failed if j.failure in ALERT_RULES["mismatch_categories"]]
    out += _by_category(
        base, "plan_mismatch", odd, "runs returned something other than their Plan."
    )
    return out


def job_sql(conn: store.Connection, job_ids: list[str]) -> dict[str, str]:
    """The SQL text of these jobs, from the jobs table (absent in a bare audit log)."""
    out: dict[str, str] = {}
    try:
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT id, sql FROM jobs WHERE id IN ({marks})", chunk):
                out[str(r[0])] = str(r[1])
    except store.OperationalError:  # no jobs table: an audit log on its own
        return {}
    return out


def sweep_alerts(operator: str, jobs: list[JobFacts], sql: dict[str, str]) -> list[dict[str, Any]]:
    """Queries that are the same but for one constant, many values of it in a window."""
    from sandbox.review import sql_literals, sql_shape

    window = timedelta(seconds=ALERT_RULES["sweep_window_s"])
    # (shape, position, the other constants) -> [(job, the constant at the position)]
    buckets: dict[tuple[str, int, tuple[str, ...]], list[tuple[JobFacts, str]]] = defaultdict(list)
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
        firsts: dict[str, JobFacts] = {}
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
