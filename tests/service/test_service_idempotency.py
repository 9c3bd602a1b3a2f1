"""Idempotent submissions in the service: a key makes one job and one reservation, however
often (or however concurrently) the submission is repeated."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from service_helpers import HUAXIN, JINSHU, LI, SQL

from sandbox.errors import BadInput, Conflict, Forbidden, RateLimited, Refused
from sandbox.service import Service, ratelimit
from sandbox.service.idempotency import check_key, header_value, parse_header

SCENARIO = "employment-income"
ENTERPRISE_SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"


def ledger_rows(svc: Service) -> list[dict[str, Any]]:
    rows = svc.conn().execute("SELECT job_id, state FROM ledger_entries ORDER BY created_at")
    return [dict(r) for r in rows]


def test_the_same_key_twice_is_one_job_and_one_reservation(svc: Service) -> None:
    first = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-1")
    assert not first.replayed and first.job["state"] == "budget_reserved"
    assert first.job["idempotency_key"] == "k-1"
    # the same request (δ left out both times: it asks for the default δ, which is
    # not the same request as an explicit δ = 0)
    again = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-1")
    assert again.replayed and again.job["id"] == first.job["id"]
    assert [j["id"] for j in svc.list_jobs(JINSHU)] == [first.job["id"]]
    assert ledger_rows(svc) == [{"job_id": first.job["id"], "state": "reserved"}]
    assert svc.budget(JINSHU)[0]["reserved"] == pytest.approx(0.5)
    submitted = svc.audit_search(LI, action="job.submitted")
    assert [e["subject"] for e in submitted] == [first.job["id"]]


def test_no_key_is_a_new_job_each_time(svc: Service) -> None:
    a = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5)
    b = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5)
    assert a.job["id"] != b.job["id"] and not a.replayed and not b.replayed
    assert a.job["idempotency_key"] is None
    assert len(ledger_rows(svc)) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"sql": SQL.replace("COUNT(*) AS n", "COUNT(*) AS people")},
        {"epsilon": 0.6},
        {"delta": 1e-7},
        {"weights": {"n": 1.0}},
        {"scenario": "pension-contributions"},
    ],
)
def test_the_key_with_another_request_is_refused_and_records_nothing(
    svc: Service, change: dict[str, Any]
) -> None:
    first = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-2")
    request: dict[str, Any] = {"sql": SQL, "scenario": SCENARIO, "epsilon": 0.5, **change}
    with pytest.raises(Conflict) as info:
        svc.submit(JINSHU, idempotency_key="k-2", **request)
    assert info.value.code == "IDEMPOTENCY_KEY_REUSED" and info.value.http_status == 409
    assert info.value.details == {"job": first.job["id"]}
    assert "k-2" not in info.value.message
    assert len(svc.list_jobs(JINSHU)) == 1 and len(ledger_rows(svc)) == 1


def test_keys_are_each_operators_own(svc: Service) -> None:
    mine = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="shared")
    theirs = svc.submit(
        HUAXIN, sql=ENTERPRISE_SQL, scenario="sme-credit", epsilon=0.5, idempotency_key="shared"
    )
    assert not theirs.replayed and theirs.job["id"] != mine.job["id"]
    assert theirs.job["operator"] == "op-huaxin"
    # nor does another operator's key reveal anything: the same body is a new job too
    assert [j["id"] for j in svc.list_jobs(HUAXIN)] == [theirs.job["id"]]
    with pytest.raises(Forbidden):  # supervisors submit nothing, key or not
        svc.submit(LI, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="shared")


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "tab\there", "new\nline", "\x7f"])
def test_bad_keys_are_refused_before_anything_is_recorded(svc: Service, key: str) -> None:
    with pytest.raises(BadInput) as info:
        svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key=key)
    assert info.value.code == "INVALID_IDEMPOTENCY_KEY"
    assert svc.list_jobs(JINSHU) == []


def test_key_rules_and_the_header_form() -> None:
    assert check_key(None) is None
    assert check_key("x" * 128) == "x" * 128
    assert check_key(" spaced key ~!") == " spaced key ~!"
    assert parse_header([]) is None
    assert parse_header(["plain-key"]) == "plain-key"
    assert parse_header(['"quoted"']) == "quoted"
    assert parse_header(['"a \\"b\\" \\\\c"']) == 'a "b" \\c'
    for tricky in ("plain", 'with "quotes"', "back\\slash", "x" * 128):
        assert parse_header([header_value(tricky)]) == tricky
    for bad in (['"a"b"'], ['"a\\b"'], ['""'], [""], ["a", "b"], ['"' + "x" * 129 + '"']):
        with pytest.raises(BadInput) as info:
            parse_header(bad)
        assert info.value.code == "INVALID_IDEMPOTENCY_KEY"


def test_a_refused_submission_replays_as_the_refused_job(svc: Service) -> None:
    bad = "SELECT name, COUNT(*) AS n FROM persons GROUP BY name"
    with pytest.raises(Refused) as info:
        svc.submit(JINSHU, sql=bad, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-3")
    job_id = info.value.details["job"]
    again = svc.submit(JINSHU, sql=bad, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-3")
    assert again.replayed and again.job["id"] == job_id and again.job["state"] == "refused"
    assert ledger_rows(svc) == []


def test_a_replay_is_not_held_back_by_the_active_jobs_cap(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_ACTIVE_JOBS", 1)
    first = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-4")
    with pytest.raises(RateLimited):  # a new job would be a second active one
        svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-5")
    again = svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="k-4")
    assert again.replayed and again.job["id"] == first.job["id"]


def test_concurrent_submissions_with_one_key_make_one_job(svc: Service) -> None:
    """Threads, each on its own SQLite connection, race past the first look-up; the
    UNIQUE index lets one INSERT through and the others find its job."""
    n = 6
    barrier = threading.Barrier(n)
    answers: list[Any] = []
    errors: list[BaseException] = []

    def submit() -> None:
        barrier.wait()
        try:
            answers.append(
                svc.submit(JINSHU, sql=SQL, scenario=SCENARIO, epsilon=0.5, idempotency_key="race")
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len({a.job["id"] for a in answers}) == 1 and len(answers) == n
    assert sorted(a.replayed for a in answers) == [False] + [True] * (n - 1)
    assert len(svc.list_jobs(JINSHU)) == 1
    assert len(ledger_rows(svc)) == 1
