"""The per-token request rate limit."""

from __future__ import annotations

import pytest
from service_helpers import JINSHU, SQL

from sandbox.errors import RateLimited
from sandbox.service import RateLimiter, Service
from sandbox.service.ratelimit import TimeBudget
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

# a second token of the same operator
JINSHU_2 = Principal(Role.OPERATOR, "op-jinshu", "t9")


def test_rate_limiter_window():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.hit("a")
    limiter.hit("a")
    with pytest.raises(RateLimited):
        limiter.hit("a")
    limiter.hit("b")
    now[0] = 60.0
    limiter.hit("a")


def test_time_budget_counts_seconds_in_a_sliding_minute():
    now = [0.0]
    budget = TimeBudget(1.0, clock=lambda: now[0])
    with budget.spend("a"):
        now[0] += 0.6
    with budget.spend("a"):  # 0.6 s used: still under 1 s, so this one may start
        now[0] += 0.6
    with pytest.raises(RateLimited) as exc, budget.spend("a"):
        pass
    assert exc.value.code == "COMPILE_BUDGET_EXCEEDED"
    assert exc.value.details["retry_after"] >= 1
    with budget.spend("b"):  # per key
        pass
    now[0] += 60.0
    with budget.spend("a"):  # the minute has passed
        pass


# a query that is legal and slow to compile (a CASE bucket of many branches)
SLOW_SQL = (
    "SELECT CASE "
    + " ".join(f"WHEN age < {i} THEN '{i}'" for i in range(400))
    + " END AS b, COUNT(*) AS n FROM persons GROUP BY b"
)


def test_explain_is_rate_limited_on_its_own(settings: Settings) -> None:
    svc = Service(settings.replace(executor="local", explain_per_minute=2))
    try:
        for _ in range(2):
            svc.explain(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
        with pytest.raises(RateLimited) as exc:
            svc.explain(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
        assert exc.value.code == "RATE_LIMITED"
        # another token is not affected
        svc.explain(JINSHU_2, sql=SQL, scenario="employment-income", epsilon=0.5)
    finally:
        svc.stop()


def test_compile_time_is_bounded_per_token_for_explain_and_submit(settings: Settings) -> None:
    svc = Service(settings.replace(executor="local", compile_seconds_per_minute=0.05))
    try:
        svc.explain(JINSHU, sql=SLOW_SQL, scenario="employment-income", epsilon=0.5)
        with pytest.raises(RateLimited) as exc:
            svc.explain(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
        assert exc.value.code == "COMPILE_BUDGET_EXCEEDED"
        before = len(svc.list_jobs(JINSHU))
        with pytest.raises(RateLimited):
            svc.submit_job(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
        assert len(svc.list_jobs(JINSHU)) == before  # refused before anything is recorded
    finally:
        svc.stop()
