"""Hostile ε, δ and weights; concurrent submissions against the cap."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sec_helpers import Client

SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"
SQL2 = "SELECT sex, COUNT(*) AS n, SUM(monthly_income) AS s FROM persons GROUP BY sex"
SCENARIO = "employment-income"


def _raw(sec: Client, path: str, body: str) -> Any:
    return sec.post(path, "op-jinshu", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/explain"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epsilon", "NaN"),
        ("epsilon", '"NaN"'),
        ("epsilon", "Infinity"),
        ("epsilon", "1e309"),
        ("epsilon", '"-inf"'),
        ("delta", "NaN"),
        ("delta", "1e309"),
    ],
)
def test_non_finite_epsilon_or_delta_is_refused_not_a_500(
    sec: Client, path: str, field: str, value: str
) -> None:
    other = '"delta": 0' if field == "epsilon" else '"epsilon": 1'
    body = f'{{"sql": "{SQL}", "scenario": "{SCENARIO}", "{field}": {value}, {other}}}'
    r = _raw(sec, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["code"] in {"INVALID_EPSILON", "INVALID_DELTA", "BAD_REQUEST"}
    # nothing was reserved
    budget = sec.get("/v1/budget", "op-jinshu").json()
    assert all(b["reserved"] == 0 and b["spent"] == 0 for b in budget)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/explain"])
def test_huge_equal_weights_split_evenly_not_a_500(sec: Client, path: str) -> None:
    body = {"sql": SQL2, "scenario": SCENARIO, "epsilon": 1.0, "weights": {"n": 1e308, "s": 1e308}}
    r = sec.post(path, "op-jinshu", json=body)  # their sum overflows to inf
    assert r.status_code in (200, 201), (r.status_code, r.text)
    shares = sorted(m["share"] for m in r.json()["cost"]["measures"])
    assert shares == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/explain"])
def test_weights_that_starve_an_output_are_refused_not_a_500(sec: Client, path: str) -> None:
    body = {"sql": SQL2, "scenario": SCENARIO, "epsilon": 1.0, "weights": {"n": 5e-324, "s": 1e308}}
    r = sec.post(path, "op-jinshu", json=body)  # one share underflows to 0
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "INVALID_WEIGHTS"


def test_concurrent_submissions_never_pass_the_cap(sec: Client) -> None:
    # g-jinshu-employment: ε 20 in all, at most 2 per query -> at most 10 jobs of ε = 2
    sec.token("op-jinshu")
    results: list[int] = []
    lock = threading.Lock()

    def submit() -> None:
        r = sec.post(
            "/v1/jobs", "op-jinshu", json={"sql": SQL, "scenario": SCENARIO, "epsilon": 2.0}
        )
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results.count(201) == 10, results
    assert sorted(set(results)) == [201, 409], results
    row = next(b for b in sec.get("/v1/budget", "op-jinshu").json() if b["dataset"] == "population")
    assert row["spent"] + row["reserved"] <= row["total"] + 1e-9
    assert row["left"] == 0


def test_delta_on_public_keys_is_not_charged(sec: Client) -> None:
    r = sec.post(
        "/v1/jobs",
        "op-jinshu",
        json={"sql": SQL, "scenario": SCENARIO, "epsilon": 1.0, "delta": 0.5},
    )
    # pure ε dataset, public keys: no δ is spent (or the request is refused)
    assert r.status_code in (201, 400), r.text
    row = next(b for b in sec.get("/v1/budget", "op-jinshu").json() if b["dataset"] == "population")
    assert row["delta_spent"] + row["delta_reserved"] <= row["delta_total"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/explain"])
def test_delta_above_the_grant_cannot_buy_rho_past_the_per_query_ceiling(
    sec: Client, path: str
) -> None:
    # social_insurance is ρ-zCDP: for the same ε = 1 (the per-query ceiling) δ = 0.99
    # bought ρ ≈ 0.82, more than half the grant's whole ρ budget (≈ 1.49) in one query
    body = {
        "sql": "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex",
        "scenario": "pension-contributions",
        "epsilon": 1.0,
        "delta": 0.99,
    }
    r = sec.post(path, "op-jinshu", json=body)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"]["code"] == "DELTA_ABOVE_GRANT"
    row = next(
        b for b in sec.get("/v1/budget", "op-jinshu").json() if b["dataset"] == "social_insurance"
    )
    assert row["spent"] == 0 and row["reserved"] == 0
    # at the grant's δ the same query is accepted, at a ρ near the ceiling's
    ok = sec.post(path, "op-jinshu", json={**body, "delta": 1e-5})
    assert ok.status_code in (200, 201), ok.text[:300]
    assert ok.json()["cost"]["rho"] < 0.05


def test_an_operator_cannot_queue_jobs_without_bound(sec_settings) -> None:  # type: ignore[no-untyped-def]
    from sandbox.service import MAX_ACTIVE_JOBS, Service, issue_token
    from sandbox.tokens import authenticate

    svc = Service(sec_settings)  # not started: submitted jobs wait in budget_reserved
    try:
        op = authenticate(
            svc.conn(), issue_token(svc, role="operator", subject="op-jinshu")["token"]
        )
        other = authenticate(
            svc.conn(), issue_token(svc, role="operator", subject="op-huaxin")["token"]
        )
        for _ in range(MAX_ACTIVE_JOBS):
            job = svc.submit_job(op, sql=SQL, scenario=SCENARIO, epsilon=1e-6)
            assert job["state"] == "budget_reserved"
        from sandbox.errors import RateLimited

        with pytest.raises(RateLimited) as caught:
            svc.submit_job(op, sql=SQL, scenario=SCENARIO, epsilon=1e-6)
        assert caught.value.code == "TOO_MANY_JOBS" and caught.value.http_status == 429
        # another operator is not affected
        job = svc.submit_job(
            other,
            sql="SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry",
            scenario="sme-credit",
            epsilon=1e-6,
        )
        assert job["state"] == "budget_reserved"
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("sql", "scenario"),
    [
        (SQL2, SCENARIO),
        ("SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex", "pension-contributions"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/explain"])
def test_vanishing_epsilon_is_refused_not_a_500(
    sec: Client, path: str, sql: str, scenario: str
) -> None:
    for tiny in (5e-324, 1e-300, 1e-12):
        body = {"sql": sql, "scenario": scenario, "epsilon": tiny, "delta": 1e-6}
        r = sec.post(path, "op-jinshu", json=body)
        assert r.status_code == 400, (tiny, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "INVALID_EPSILON"
    ok = sec.post(
        "/v1/explain",
        "op-jinshu",
        json={"sql": sql, "scenario": scenario, "epsilon": 1e-9, "delta": 1e-6},
    )
    assert ok.status_code == 200, ok.text[:200]


def test_a_tiny_epsilon_on_a_zcdp_dataset_does_not_tie_up_a_worker(sec: Client) -> None:
    # the discrete Gaussian's exact accuracy took seconds per 10⁷ of scale: a scale of
    # 7e7 held a request thread for ~20 s, larger ones for hours. (With OpenDP's tight
    # ρ → (ε, δ) conversion a tiny ε alone no longer gives such a scale: at ε ≈ 0 the
    # guarantee rests on δ, so δ is tiny too; scale ≈ 4e8.)
    import time

    body = {
        "sql": "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex",
        "scenario": "pension-contributions",
        "epsilon": 1e-9,
        "delta": 1e-9,
    }
    began = time.monotonic()
    r = sec.post("/v1/explain", "op-jinshu", json=body)
    assert r.status_code == 200, r.text[:200]
    assert time.monotonic() - began < 5.0
    scale = next(o for o in r.json()["outputs"] if o["name"] == "n")
    assert scale["accuracy_95"] > 1e8  # about 1.96 × the scale
