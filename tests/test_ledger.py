"""The budget ledger: caps, atomic reservations under concurrency, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from sandbox import ledger, store
from sandbox.errors import BudgetRefused, Conflict, NotFound
from sandbox.privacy import Cost, rho_from_epsilon_delta
from tests.privacy.factories import cost_of, make_grant, make_plan, private_plan

ROOT = Path(__file__).resolve().parent.parent


def make_cost(
    epsilon: float = 1.0,
    selection_delta: float = 0.0,
    definition: str = "pure",
    rho: float | None = None,
) -> Cost:
    return Cost(
        epsilon=epsilon,
        delta=selection_delta,
        rho=rho,
        definition=definition,
        selection_delta=selection_delta,
        requested_epsilon=epsilon,
    )


@pytest.fixture()
def db(database: Path | str) -> Path | str:
    """Every ledger test runs on SQLite and on PostgreSQL (tests/conftest.py)."""
    return database


def reserve(conn, grant, job_id, cost, dataset="population") -> None:
    with store.transaction(conn):
        ledger.reserve(conn, grant=grant, dataset=dataset, job_id=job_id, cost=cost)


def test_reserve_charge_release_and_balance(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant(epsilon=3.0, delta=1e-5, ceiling=2.0)
    reserve(conn, grant, "j1", make_cost(1.0))
    reserve(conn, grant, "j2", make_cost(1.5, selection_delta=1e-6))
    b = ledger.balance(conn, grant, "population")
    assert (b["total"], b["spent"], b["reserved"], b["left"]) == (3.0, 0.0, 2.5, 0.5)
    assert b["delta_reserved"] == pytest.approx(1e-6) and b["unit"] == "epsilon"
    with store.transaction(conn):
        ledger.charge(conn, "j1")
        ledger.release(conn, "j2")
        ledger.release(conn, "j1")  # no-op: charged stays charged
        ledger.charge(conn, "j1")  # no-op
    b = ledger.balance(conn, grant, "population")
    assert (b["spent"], b["reserved"], b["left"]) == (1.0, 0.0, 2.0)
    with store.transaction(conn), pytest.raises(Conflict):
        ledger.charge(conn, "j2")  # released before reading: cannot become a charge
    with store.transaction(conn), pytest.raises(NotFound):
        ledger.release(conn, "nope")


def test_budget_exhausted_says_what_is_left(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant(epsilon=2.0, ceiling=2.0)
    reserve(conn, grant, "a", make_cost(1.25))
    with pytest.raises(BudgetRefused) as info:
        reserve(conn, grant, "b", make_cost(1.0))
    err = info.value
    assert err.code == "BUDGET_EXHAUSTED" and err.exit_code == 2
    assert "ε = 1 " in err.message and "ε = 0.75 is left of 2" in err.message
    assert err.to_dict()["error"]["left"] == 0.75
    reserve(conn, grant, "c", make_cost(0.75))  # exactly what is left fits
    assert ledger.balance(conn, grant, "population")["left"] == 0.0


def test_delta_is_capped_too(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant(epsilon=10.0, delta=1e-6)
    reserve(conn, grant, "a", make_cost(0.1, selection_delta=6e-7))
    with pytest.raises(BudgetRefused) as info:
        reserve(conn, grant, "b", make_cost(0.1, selection_delta=6e-7))
    assert "δ" in info.value.message and "4e-07" in info.value.message


def test_decimal_costs_add_up_exactly_and_the_cap_still_holds(db: Path | str) -> None:
    # ε = 0.1 is the binary 0.1000000000000000055…: charged as that, rounded up to
    # the next unit, 149 of 150 fitted in ε = 15 (issue 15). Charged as the decimal
    # it was written as, all 150 fit and the 151st does not.
    conn = store.connect(db)
    grant = make_grant(epsilon=15.0, ceiling=1.0)
    for i in range(150):
        reserve(conn, grant, f"j{i}", make_cost(0.1))
    with pytest.raises(BudgetRefused):
        reserve(conn, grant, "j150", make_cost(0.1))
    assert ledger.cost_units(make_cost(0.1))[0] == 10**8
    assert ledger.cost_units(make_cost(1 / 3))[0] == 333_333_334  # still rounded up


def test_a_query_may_ask_the_grants_whole_delta(db: Path | str) -> None:
    conn = store.connect(db)
    for definition in ("pure", "zcdp"):
        grant = make_grant(epsilon=10.0, delta=1e-6, ceiling=1.0)
        cost = cost_of(private_plan(definition=definition), 1.0, 1e-6, definition, grant)
        reserve(conn, grant, f"whole-{definition}", cost, dataset=f"d-{definition}")
        with pytest.raises(BudgetRefused):  # nothing is left of the δ
            reserve(conn, grant, f"more-{definition}", cost, dataset=f"d-{definition}")


def test_what_a_mechanism_spends_is_below_the_decimal_charged() -> None:
    # the ledger charges Fraction("0.1"); OpenDP's own map of the fitted noise must
    # not exceed it, though the float 0.1 handed to the fit is a hair above
    from sandbox.privacy.mechanisms import vector_noise

    cost = cost_of(make_plan(), 0.1)
    [m] = cost.measures
    spent = vector_noise(m.scale, True, True).map(int(m.sensitivity))
    assert Fraction(spent) <= Fraction("0.1")
    sel = cost_of(private_plan(), 0.3, 1e-6).measure("units")
    assert sel.threshold is not None and sel.delta == 1e-6


def test_zcdp_account_tracks_rho(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant(epsilon=1.0, delta=1e-5, ceiling=1.0)
    cap = rho_from_epsilon_delta(1.0, 0.5e-5)
    rho = cap / 2
    cost = make_cost(0.5, definition="zcdp", rho=rho, selection_delta=1e-6)
    reserve(conn, grant, "z1", cost, dataset="social_insurance")
    reserve(
        conn,
        grant,
        "z2",
        make_cost(0.5, definition="zcdp", rho=rho * 0.999),
        dataset="social_insurance",
    )
    b = ledger.balance(conn, grant, "social_insurance")
    assert b["unit"] == "rho" and b["total"] == pytest.approx(cap, abs=1e-9)
    assert b["delta_total"] == pytest.approx(0.5e-5)
    with pytest.raises(BudgetRefused) as info:
        reserve(
            conn,
            grant,
            "z3",
            make_cost(0.1, definition="zcdp", rho=rho * 0.01),
            dataset="social_insurance",
        )
    assert "ρ" in info.value.message
    with store.transaction(conn), pytest.raises(Conflict):  # one account, one definition
        ledger.reserve(
            conn, grant=grant, dataset="social_insurance", job_id="p", cost=make_cost(0.1)
        )


def test_zcdp_cap_is_opendps_conversion_of_the_grant() -> None:
    # the cap is the ρ whose OpenDP conversion at half the grant's δ is the grant's ε
    # (the same search as a query's ρ), not the classic formula's smaller ρ; queries
    # at the grant's own ceiling spend it exactly
    from sandbox.privacy.mechanisms import zcdp_epsilon

    grant = make_grant(epsilon=10.0, delta=1e-5, ceiling=10.0)
    cap_units, delta_units = ledger.grant_totals(grant, "zcdp")
    cap = cap_units / ledger.LOSS_UNITS
    assert zcdp_epsilon(cap, 0.5e-5) <= 10.0
    assert zcdp_epsilon(cap * (1 + 1e-8), 0.5e-5) > 10.0 - 1e-6
    classic = ((10.0 + 12.206) ** 0.5 - 12.206**0.5) ** 2  # ln(2e5) = 12.206
    assert cap > 1.1 * classic
    assert delta_units == 5 * 10**9  # half of δ = 1e-5, in 1e-15 units
    # a query at (ε, δ/2) of the grant, with no selection, costs the cap to the grain
    whole = cost_of(make_plan(definition="zcdp"), 10.0, 0.5e-5, "zcdp", grant)
    assert ledger.cost_units(whole)[0] in (cap_units, cap_units + 1)


def test_reserve_is_idempotent_per_job_and_needs_a_transaction(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant()
    reserve(conn, grant, "j", make_cost(1.0))
    reserve(conn, grant, "j", make_cost(1.0))
    assert ledger.balance(conn, grant, "population")["reserved"] == 1.0
    with pytest.raises(Conflict):
        reserve(conn, grant, "j", make_cost(2.0))
    with pytest.raises(RuntimeError):
        ledger.reserve(conn, grant=grant, dataset="population", job_id="k", cost=make_cost(1.0))


def test_fifty_threads_never_spend_more_than_the_cap(db: Path | str) -> None:
    store.connect(db).close()
    grant = make_grant(epsilon=20.0, ceiling=2.0)
    cost = make_cost(0.7)  # ⌊20 / 0.7⌋ = 28 of the 50 fit
    barrier = threading.Barrier(50)
    results: dict[int, str] = {}

    def job(i: int) -> None:
        conn = store.connect(db)
        try:
            barrier.wait()
            try:
                reserve(conn, grant, f"t{i}", cost)
            except BudgetRefused:
                results[i] = "refused"
                return
            with store.transaction(conn):
                ledger.charge(conn, f"t{i}")
                results[i] = "charged"
        finally:
            conn.close()

    threads = [threading.Thread(target=job, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    conn = store.connect(db)
    b = ledger.balance(conn, grant, "population")
    charged = sum(1 for v in results.values() if v == "charged")
    assert b["reserved"] == 0.0
    assert b["spent"] == pytest.approx(charged * 0.7)
    assert b["spent"] <= 20.0
    assert charged == 28 and b["spent"] <= 20.0
    assert list(results.values()).count("refused") == 22


CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from sandbox import ledger, store
    from tests.test_ledger import make_cost
    from tests.privacy.factories import make_grant

    conn = store.connect({db!r})
    grant = make_grant(epsilon=5.0, ceiling=2.0)
    mode = sys.argv[1]
    with store.transaction(conn):
        ledger.reserve(conn, grant=grant, dataset="population", job_id="crash", cost=make_cost(1.5))
    if mode == "after_charge":
        with store.transaction(conn):
            ledger.charge(conn, "crash")
    if mode == "inside_charge":
        tx = store.transaction(conn)
        tx.__enter__()  # the write lock, held until the kill
        ledger.charge(conn, "crash")  # not committed when the kill comes
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("mode", ["after_reserve", "inside_charge", "after_charge"])
def test_sigkill_between_reservation_and_charge_never_loses_or_doubles(
    db: Path | str, mode: str
) -> None:
    script = CHILD.format(root=str(ROOT), db=str(db))
    child = subprocess.Popen(
        [sys.executable, "-c", script, mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    conn = store.connect(db)  # "restart"
    grant = make_grant(epsilon=5.0, ceiling=2.0)
    b = ledger.balance(conn, grant, "population")
    if mode == "after_charge":
        assert (b["spent"], b["reserved"]) == (1.5, 0.0)
    else:  # the reservation survived the kill; an uncommitted charge rolled back
        assert (b["spent"], b["reserved"]) == (0.0, 1.5)
    with store.transaction(conn):
        done = ledger.recover(conn)
    assert done == {"charged": [] if mode == "after_charge" else ["crash"], "released": []}
    with store.transaction(conn):
        assert ledger.recover(conn) == {"charged": [], "released": []}
        ledger.charge(conn, "crash")  # the job's own late charge: still once
    b = ledger.balance(conn, grant, "population")
    assert (b["spent"], b["reserved"], b["left"]) == (1.5, 0.0, 3.5)


def test_recover_releases_only_jobs_known_not_started(db: Path | str) -> None:
    conn = store.connect(db)
    grant = make_grant()
    reserve(conn, grant, "queued", make_cost(1.0))
    reserve(conn, grant, "running", make_cost(1.0))
    with store.transaction(conn):
        done = ledger.recover(conn, not_started=["queued", "unknown"])
    assert done == {"charged": ["running"], "released": ["queued"]}
    b = ledger.balance(conn, grant, "population")
    assert (b["spent"], b["reserved"]) == (1.0, 0.0)
