"""The privacy-budget ledger: one account per (grant, dataset), a hard cap.

A job's life in the ledger::

    reserve ──▶ reserved ──charge──▶ charged      (data was read: final, whatever follows)
                    │
                    └──release──▶ released        (refused before any raw row was read)

Every function runs INSIDE the caller's ``store.transaction(conn)`` (one writer at a
time: SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock), so a reservation and the
job's state change commit together, and concurrent writers (threads, processes,
several servers on one PostgreSQL) are serialised.

Units. Amounts are stored as integers, never floats: ε and ρ in units of 10⁻⁹
(``LOSS_UNITS``), δ in units of 10⁻¹⁵ (``DELTA_UNITS``). An amount is read as the
decimal number its float stands for (``repr``: ε = 0.1 is 1/10, not the binary
0.1000000000000000055…), then a cost is rounded UP to the next unit and a total DOWN
with exact rational arithmetic: 150 queries of ε = 0.1 fit in ε = 15, and a query may
ask the grant's whole δ. That reading is sound because the privacy layer fits every
noise scale and threshold to its target times ``accounting.FIT_MARGIN`` (1 − 2⁻⁴⁰),
far more than the ≤ 2⁻⁵³ relative gap between a float and its decimal, so what a
mechanism spends is below the decimal amount charged.

Composition. Pure-ε datasets: basic composition, Σε ≤ grant ε and Σδ ≤ grant δ.
ρ-zCDP datasets: ρ adds up; the cap is the largest ρ whose OpenDP conversion
(``make_zCDP_to_approxDP``) at half the grant's δ is within the grant's ε, the same
function (``privacy.rho_from_epsilon_delta``) a query's ρ comes from: half the grant's
δ is kept for that final ρ → (ε, δ) conversion and the other half is the cap on the δ
that partition selection spends (Σδ_sel ≤ δ/2). Everything spent on the account is
then (ε, δ)-DP for the grant's ε and δ.

Crashes. Reservations are rows in the database, so they survive a restart. ``recover``
decides what happens to reservations left by a crashed process: a reservation is
charged unless the caller states that its job never read data; nothing is dropped
silently, and a charge is never counted twice (a job has one row; charging is a
state change).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

from sandbox import store
from sandbox.errors import BudgetRefused, Conflict, NotFound

if TYPE_CHECKING:
    from sandbox.grants import Grant
    from sandbox.privacy import Cost

__all__ = ["reserve", "charge", "release", "balance", "recent_losses", "recover", "SCHEMA"]

LOSS_UNITS = 10**9
DELTA_UNITS = 10**15

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_accounts (
    grant_id     TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    definition   TEXT NOT NULL CHECK (definition IN ('pure', 'zcdp')),
    total_loss   INTEGER NOT NULL CHECK (total_loss >= 0),   -- ε or ρ, 1e-9 units
    total_delta  INTEGER NOT NULL CHECK (total_delta >= 0),  -- δ, 1e-15 units
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (grant_id, dataset)
);
CREATE TABLE IF NOT EXISTS ledger_entries (
    job_id       TEXT PRIMARY KEY,
    grant_id     TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    loss         INTEGER NOT NULL CHECK (loss >= 0),
    delta        INTEGER NOT NULL CHECK (delta >= 0),
    state        TEXT NOT NULL CHECK (state IN ('reserved', 'charged', 'released')),
    cost_json    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    FOREIGN KEY (grant_id, dataset) REFERENCES ledger_accounts (grant_id, dataset)
);
CREATE INDEX IF NOT EXISTS ledger_entries_account
    ON ledger_entries (grant_id, dataset, state);
"""

store.register_schema("sandbox.ledger", SCHEMA)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _decimal(value: float) -> Fraction:
    """The decimal number ``value`` was written as (its shortest round-trip repr)."""
    return Fraction(repr(float(value)))


def _up(value: float, per_unit: int) -> int:
    return math.ceil(_decimal(value) * per_unit)


def _down(value: float, per_unit: int) -> int:
    return math.floor(_decimal(value) * per_unit)


def grant_totals(grant: Grant, definition: str) -> tuple[int, int]:
    """The account's caps in integer units: (ε or ρ, δ)."""
    eps, delta = grant.budget.epsilon, grant.budget.delta
    if definition == "pure":
        return _down(eps, LOSS_UNITS), _down(delta, DELTA_UNITS)
    if delta <= 0:
        return 0, 0  # zCDP needs δ > 0 to state its guarantee; nothing can be spent
    from sandbox.privacy import rho_from_epsilon_delta
    from sandbox.privacy.accounting import FIT_MARGIN

    # the query's function (OpenDP's conversion, searched within ε·FIT_MARGIN); the
    # margin again keeps the float ρ below the cap where it is rounded to the ledger's
    # grain
    rho = rho_from_epsilon_delta(eps, delta / 2) * FIT_MARGIN
    return _down(rho, LOSS_UNITS), _down(delta / 2, DELTA_UNITS)


def cost_units(cost: Cost) -> tuple[int, int]:
    """What a cost takes from the account, rounded up: (ε or ρ, δ)."""
    if cost.definition == "pure":
        return _up(cost.epsilon, LOSS_UNITS), _up(cost.selection_delta, DELTA_UNITS)
    assert cost.rho is not None
    return _up(cost.rho, LOSS_UNITS), _up(cost.selection_delta, DELTA_UNITS)


def _ensure_account(conn: store.Connection, grant: Grant, dataset: str, definition: str) -> None:
    total_loss, total_delta = grant_totals(grant, definition)
    row = conn.execute(
        "SELECT definition FROM ledger_accounts WHERE grant_id = ? AND dataset = ?",
        (grant.id, dataset),
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO ledger_accounts VALUES (?, ?, ?, ?, ?, ?)",
            (grant.id, dataset, definition, total_loss, total_delta, _now()),
        )
    elif row["definition"] != definition:
        raise Conflict(
            f"The budget account of grant {grant.id} on {dataset} is kept in "
            f"{_unit_name(row['definition'])}; the query asks for {_unit_name(definition)}.",
            hint="The dataset's privacy definition changed; the bureau must open a new grant.",
        )
    else:  # the grant's budget comes from policy: follow it (spent amounts stay)
        conn.execute(
            "UPDATE ledger_accounts SET total_loss = ?, total_delta = ?, updated_at = ? "
            "WHERE grant_id = ? AND dataset = ?",
            (total_loss, total_delta, _now(), grant.id, dataset),
        )


def _unit_name(definition: str) -> str:
    return "ε" if definition == "pure" else "ρ"


def _sums(conn: store.Connection, grant_id: str, dataset: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state, COALESCE(SUM(loss), 0) AS loss, COALESCE(SUM(delta), 0) AS delta "
        "FROM ledger_entries WHERE grant_id = ? AND dataset = ? GROUP BY state",
        (grant_id, dataset),
    ).fetchall()
    out = {"spent_loss": 0, "spent_delta": 0, "reserved_loss": 0, "reserved_delta": 0}
    for r in rows:
        if r["state"] == "charged":
            out["spent_loss"], out["spent_delta"] = r["loss"], r["delta"]
        elif r["state"] == "reserved":
            out["reserved_loss"], out["reserved_delta"] = r["loss"], r["delta"]
    return out


def reserve(conn: store.Connection, *, grant: Grant, dataset: str, job_id: str, cost: Cost) -> None:
    """Reserve ``cost`` for ``job_id`` or raise BudgetRefused (BUDGET_EXHAUSTED).

    Call inside ``store.transaction(conn)``. Reserving the same job twice with the same
    cost is a no-op; with another cost it is a Conflict.
    """
    import json

    if not conn.in_transaction:
        raise RuntimeError("ledger.reserve must run inside store.transaction(conn)")
    _ensure_account(conn, grant, dataset, cost.definition)
    loss, delta = cost_units(cost)
    existing = conn.execute(
        "SELECT grant_id, dataset, loss, delta, state FROM ledger_entries WHERE job_id = ?",
        (job_id,),
    ).fetchone()
    if existing is not None:
        same = (existing["grant_id"], existing["dataset"], existing["loss"], existing["delta"])
        if same == (grant.id, dataset, loss, delta) and existing["state"] != "released":
            return
        raise Conflict(f"Job {job_id} already has a ledger entry ({existing['state']}).")
    acct = conn.execute(
        "SELECT total_loss, total_delta FROM ledger_accounts WHERE grant_id = ? AND dataset = ?",
        (grant.id, dataset),
    ).fetchone()
    s = _sums(conn, grant.id, dataset)
    used_loss = s["spent_loss"] + s["reserved_loss"]
    used_delta = s["spent_delta"] + s["reserved_delta"]
    unit = _unit_name(cost.definition)
    if used_loss + loss > acct["total_loss"]:
        left = (acct["total_loss"] - used_loss) / LOSS_UNITS
        asked = cost.epsilon if cost.definition == "pure" else cost.rho
        raise BudgetRefused(
            f"The query needs {unit} = {asked:.6g} but only {unit} = {max(left, 0):.6g} is left "
            f"of {acct['total_loss'] / LOSS_UNITS:.6g} on grant {grant.id} for {dataset} "
            f"(spent {s['spent_loss'] / LOSS_UNITS:.6g}, "
            f"reserved by running jobs {s['reserved_loss'] / LOSS_UNITS:.6g}).",
            hint="Ask for a smaller ε, wait for running jobs, or ask the bureau for more budget.",
            details={"left": max(left, 0.0), "unit": unit},
        )
    if used_delta + delta > acct["total_delta"]:
        left = (acct["total_delta"] - used_delta) / DELTA_UNITS
        raise BudgetRefused(
            f"The query needs δ = {cost.selection_delta:.6g} for partition selection but only "
            f"δ = {max(left, 0):.6g} is left of {acct['total_delta'] / DELTA_UNITS:.6g} "
            f"on grant {grant.id} for {dataset}.",
            hint="Ask for a smaller δ, use public group keys, or ask the bureau for more budget.",
            details={"left_delta": max(left, 0.0)},
        )
    now = _now()
    conn.execute(
        "INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?, ?)",
        (
            job_id,
            grant.id,
            dataset,
            loss,
            delta,
            json.dumps(cost.to_dict(), sort_keys=True),
            now,
            now,
        ),
    )


def _entry(conn: store.Connection, job_id: str) -> store.Row:
    row = conn.execute("SELECT state FROM ledger_entries WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"Job {job_id} has no budget reservation.")
    return cast(store.Row, row)


def charge(conn: store.Connection, job_id: str) -> None:
    """Make the reservation final (data has been read). Charging twice is a no-op."""
    state = _entry(conn, job_id)["state"]
    if state == "charged":
        return
    if state == "released":
        raise Conflict(f"Job {job_id}'s reservation was released; it cannot be charged.")
    conn.execute(
        "UPDATE ledger_entries SET state = 'charged', updated_at = ? "
        "WHERE job_id = ? AND state = 'reserved'",
        (_now(), job_id),
    )


def release(conn: store.Connection, job_id: str) -> None:
    """Free the reservation of a job refused before reading data. No-op once charged."""
    state = _entry(conn, job_id)["state"]
    if state != "reserved":
        return
    conn.execute(
        "UPDATE ledger_entries SET state = 'released', updated_at = ? "
        "WHERE job_id = ? AND state = 'reserved'",
        (_now(), job_id),
    )


def recover(conn: store.Connection, *, not_started: Iterable[str] = ()) -> dict[str, list[str]]:
    """After a crash: charge every open reservation, except those of jobs the caller
    KNOWS never read data (``not_started``), which are released.

    Call at start-up inside ``store.transaction(conn)``, with the job ids whose state
    proves they never reached the runner. Returns {"charged": [...], "released": [...]}.
    """
    safe = set(not_started)
    open_ids = [
        r["job_id"]
        for r in conn.execute(
            "SELECT job_id FROM ledger_entries WHERE state = 'reserved' ORDER BY created_at"
        )
    ]
    done: dict[str, list[str]] = {"charged": [], "released": []}
    for job_id in open_ids:
        if job_id in safe:
            release(conn, job_id)
            done["released"].append(job_id)
        else:
            charge(conn, job_id)
            done["charged"].append(job_id)
    return done


def recent_losses(conn: store.Connection, grant_id: str, dataset: str, limit: int) -> list[float]:
    """What the latest ``limit`` jobs on one account took from it (ε or ρ, as charged or
    still reserved), newest first; a returned reservation took nothing and is left out."""
    rows = conn.execute(
        "SELECT loss FROM ledger_entries WHERE grant_id = ? AND dataset = ?"
        " AND state != 'released' ORDER BY created_at DESC, rowid DESC LIMIT ?",
        (grant_id, dataset, max(0, limit)),
    ).fetchall()
    return [int(r[0]) / LOSS_UNITS for r in rows]


def balance(
    conn: store.Connection, grant: Grant, dataset: str, *, definition: str | None = None
) -> dict[str, Any]:
    """total, spent, reserved, left (ε for pure datasets, ρ for zCDP) and the same for δ.

    Before the account's first reservation its definition is unknown to the ledger:
    pass the dataset's ``definition`` (default "pure")."""
    row = conn.execute(
        "SELECT definition, total_loss, total_delta FROM ledger_accounts "
        "WHERE grant_id = ? AND dataset = ?",
        (grant.id, dataset),
    ).fetchone()
    if row is None:
        definition = definition or "pure"
        total_loss, total_delta = grant_totals(grant, definition)
    else:
        definition, total_loss, total_delta = (
            row["definition"],
            row["total_loss"],
            row["total_delta"],
        )
    s = _sums(conn, grant.id, dataset)
    return {
        "grant": grant.id,
        "dataset": dataset,
        "unit": "epsilon" if definition == "pure" else "rho",
        "total": total_loss / LOSS_UNITS,
        "spent": s["spent_loss"] / LOSS_UNITS,
        "reserved": s["reserved_loss"] / LOSS_UNITS,
        "left": max(total_loss - s["spent_loss"] - s["reserved_loss"], 0) / LOSS_UNITS,
        "delta_total": total_delta / DELTA_UNITS,
        "delta_spent": s["spent_delta"] / DELTA_UNITS,
        "delta_reserved": s["reserved_delta"] / DELTA_UNITS,
        "delta_left": max(total_delta - s["spent_delta"] - s["reserved_delta"], 0) / DELTA_UNITS,
    }
