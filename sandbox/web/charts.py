"""Server-rendered charts: budget spent over time, drawn as inline SVG by the templates.

The series come from audit events the service returns (``job.budget_reserved`` names
a job's grant, dataset and loss; ``budget.charged`` says when it was charged for
good), so the chart reads only metadata: never data, never aggregates. This module
turns them into points and SVG coordinates; the template draws them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WIDTH = 560
HEIGHT = 170
PAD_LEFT = 44
PAD_RIGHT = 12
PAD_TOP = 12
PAD_BOTTOM = 26

__all__ = ["Chart", "budget_series", "spent_chart"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def budget_series(
    reserved: list[dict[str, Any]], charged: list[dict[str, Any]]
) -> dict[tuple[str, str], list[tuple[datetime, float]]]:
    """Per (grant, dataset): (time, loss) of each charge, oldest first.

    ``reserved`` are ``job.budget_reserved`` events (details: grant, dataset, epsilon,
    rho); ``charged`` are ``budget.charged`` events (subject: the job). The loss is ρ
    for zCDP accounts, else ε, as the ledger counts it."""
    what: dict[str, tuple[str, str, float, float | None]] = {}
    for ev in reserved:
        d = ev.get("details") or {}
        grant, dataset = d.get("grant"), d.get("dataset")
        if isinstance(grant, str) and isinstance(dataset, str):
            rho = d.get("rho")
            what[str(ev.get("subject"))] = (
                grant,
                dataset,
                float(d.get("epsilon") or 0.0),
                float(rho) if isinstance(rho, int | float) else None,
            )
    out: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
    for ev in charged:
        found = what.get(str(ev.get("subject")))
        if found is None:
            continue
        grant, dataset, eps, rho = found
        out[(grant, dataset)].append((_time(str(ev["time"])), rho if rho is not None else eps))
    for points in out.values():
        points.sort(key=lambda p: p[0])
    return dict(out)


@dataclass
class Chart:
    """SVG geometry of one cumulative step chart."""

    width: int = WIDTH
    height: int = HEIGHT
    path: str = ""
    area: str = ""
    dots: list[tuple[float, float]] = field(default_factory=list)
    total_y: float | None = None
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    plot: tuple[int, int, int, int] = (PAD_LEFT, PAD_TOP, WIDTH - PAD_RIGHT, HEIGHT - PAD_BOTTOM)
    empty: bool = True
    last: float = 0.0


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.0f}"


def spent_chart(
    points: list[tuple[datetime, float]], *, total: float | None, now: datetime | None = None
) -> Chart:
    """A cumulative step line of the loss charged over time, with the total as a ceiling."""
    now = now or datetime.now(UTC)
    chart = Chart()
    x0, y0, x1, y1 = chart.plot
    if not points:
        chart.y_ticks = [(float(y1), "0")]
        if total:
            chart.total_y = float(y0)
            chart.y_ticks.append((float(y0), _fmt(total)))
        return chart
    start = points[0][0]
    end = max(now, points[-1][0])
    span = max((end - start).total_seconds(), 1.0)
    cumulative = 0.0
    steps: list[tuple[datetime, float]] = []
    for when, loss in points:
        cumulative += loss
        steps.append((when, cumulative))
    top = max(cumulative, total or 0.0) or 1.0

    def x(when: datetime) -> float:
        return round(x0 + (x1 - x0) * (when - start).total_seconds() / span, 1)

    def y(value: float) -> float:
        return round(y1 - (y1 - y0) * value / top, 1)

    parts = [f"M{x0},{y1}"]
    prev = 0.0
    for when, value in steps:
        parts.append(f"L{x(when)},{y(prev)}")
        parts.append(f"L{x(when)},{y(value)}")
        chart.dots.append((x(when), y(value)))
        prev = value
    parts.append(f"L{x1},{y(prev)}")
    chart.path = " ".join(parts)
    chart.area = chart.path + f" L{x1},{y1} Z"
    chart.empty = False
    chart.last = cumulative
    if total:
        chart.total_y = y(total)
    chart.y_ticks = [(y(0.0), "0"), (y(top / 2), _fmt(top / 2)), (y(top), _fmt(top))]
    chart.x_ticks = [
        (float(x0), start.strftime("%Y-%m-%d %H:%M")),
        (float(x1), end.strftime("%Y-%m-%d %H:%M")),
    ]
    return chart
