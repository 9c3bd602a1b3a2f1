"""Budget charts: series from audit events, and the SVG geometry."""

from __future__ import annotations

from datetime import UTC, datetime

from sandbox.web import charts


def _ev(action: str, subject: str, time: str, **details: object) -> dict[str, object]:
    return {"action": action, "subject": subject, "time": time, "details": details}


def test_budget_series_joins_reservations_and_charges() -> None:
    reserved = [
        _ev(
            "job.budget_reserved",
            "j-1",
            "2026-01-01T10:00:00Z",
            grant="g",
            dataset="d",
            epsilon=1.0,
            rho=None,
        ),
        _ev(
            "job.budget_reserved",
            "j-2",
            "2026-01-01T11:00:00Z",
            grant="g",
            dataset="d",
            epsilon=0.5,
            rho=None,
        ),
        _ev(
            "job.budget_reserved",
            "j-3",
            "2026-01-01T12:00:00Z",
            grant="g",
            dataset="z",
            epsilon=0.5,
            rho=0.02,
        ),
        _ev(
            "job.budget_reserved",
            "j-4",
            "2026-01-01T12:00:00Z",
            grant="g",
            dataset="d",
            epsilon=9.0,
            rho=None,
        ),  # reserved, never charged (refunded)
    ]
    charged = [
        _ev("budget.charged", "j-2", "2026-01-01T11:00:05Z", epsilon=0.5),
        _ev("budget.charged", "j-1", "2026-01-01T10:00:05Z", epsilon=1.0),
        _ev("budget.charged", "j-3", "2026-01-01T12:00:05Z", epsilon=0.5),
        _ev("budget.charged", "j-x", "2026-01-01T12:00:05Z", epsilon=3.0),  # unknown job
    ]
    series = charts.budget_series(reserved, charged)
    assert sorted(series) == [("g", "d"), ("g", "z")]
    assert [v for _, v in series[("g", "d")]] == [1.0, 0.5]  # oldest first
    assert series[("g", "z")][0][1] == 0.02  # zCDP accounts count ρ


def test_spent_chart_is_a_cumulative_step_under_the_ceiling() -> None:
    t0 = datetime(2026, 1, 1, 10, tzinfo=UTC)
    t1 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    chart = charts.spent_chart(
        [(t0, 2.0), (t1, 3.0)], total=10.0, now=datetime(2026, 1, 1, 14, tzinfo=UTC)
    )
    x0, y0, x1, y1 = chart.plot
    assert not chart.empty and chart.last == 5.0
    assert chart.total_y == y0  # the total is the top of the plot
    assert [d[0] for d in chart.dots] == [x0, round(x0 + (x1 - x0) / 2, 1)]
    height = y1 - y0
    assert [d[1] for d in chart.dots] == [round(y1 - height * 0.2, 1), round(y1 - height * 0.5, 1)]
    assert chart.path.startswith(f"M{x0},{y1}") and chart.path.endswith(
        f"L{x1},{chart.dots[-1][1]}"
    )
    assert [label for _, label in chart.y_ticks] == ["0", "5", "10"]


def test_spent_chart_without_charges_is_empty() -> None:
    chart = charts.spent_chart([], total=20.0)
    assert chart.empty and chart.path == "" and chart.total_y is not None
