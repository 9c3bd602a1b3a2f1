"""How numbers, budgets and review reasons are shown: one set of rules for the CLI,
the console and the reports (docs/console.md, "Numbers").

- A noisy value is rounded to the precision its 95% half-width supports
  (``round_step``): to the largest power of ten at most a third of the ± (± 120 → tens,
  ± 0.3 → one decimal). Rounding then moves a value by at most a sixth of its ±, and no
  digit is printed that the noise has already made meaningless.
- A ledger amount (ε, ρ) is printed as the decimal the ledger holds (integer units of
  10⁻⁹), to at most six significant digits: ``14.7``, never ``14.700000001``; δ in
  short scientific notation (``5e-6``).
- A ρ-zCDP budget is shown in ρ, with its ε-equivalent (OpenDP's own conversion at
  the account's δ) and an estimate of the queries left at a typical cost
  (``budget_outlook``).
- Why a job waits for review (``review_reasons``): the facts, as codes with their
  parameters; the CLI and the console turn them into sentences.

Pure presentation: no I/O, no rules of the sandbox's own (``review_reasons`` is told
the grade's approvals by its caller).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

__all__ = [
    "RECENT_JOBS",
    "budget_outlook",
    "fmt_amount",
    "fmt_delta",
    "fmt_estimate",
    "fmt_half_width",
    "review_reasons",
    "review_sentence",
    "round_step",
    "round_to_interval",
]

LEDGER_DECIMALS = 9  # the ledger counts ε and ρ in units of 10⁻⁹ (sandbox/ledger.py)
AMOUNT_DIGITS = 6
RECENT_JOBS = 10  # a typical cost is the median of the account's last this many jobs


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def round_step(half_width: Any, *, integer: bool = False) -> Decimal | None:
    """The rounding step a ± supports: the largest power of ten ≤ half_width / 3, and
    at least 1 for an ``integer`` value (None for no positive finite half-width)."""
    hw = _finite(half_width)
    if hw is None or hw <= 0:
        return None
    step = Decimal(1).scaleb((Decimal(repr(hw)) / 3).adjusted())
    return max(step, Decimal(1)) if integer else step


def round_to_interval(value: Any, half_width: Any) -> Any:
    """``value`` rounded to ``round_step(half_width)`` (whole for an int); an int when
    the step is ≥ 1. Anything that is not a finite number, or has no ±, is returned as
    it is."""
    v = _finite(value)
    step = round_step(half_width, integer=isinstance(value, int))
    if v is None or step is None:
        return value
    rounded = (Decimal(repr(v)) / step).quantize(Decimal(1), ROUND_HALF_EVEN) * step
    if step >= 1:
        return int(rounded)
    return float(rounded)


def _decimals(step: Decimal | None) -> int:
    return 0 if step is None or step >= 1 else -step.as_tuple().exponent  # type: ignore[operator]


def fmt_estimate(
    value: Any, half_width: Any, *, thousands: bool = True, integer: bool | None = None
) -> str:
    """A noisy value as text, rounded to the precision its ± supports (never to a
    fraction for an ``integer`` value: by default, an int)."""
    v = _finite(value)
    if v is None:
        return "-" if value is None else str(value)
    whole = isinstance(value, int) if integer is None else integer
    step = round_step(half_width, integer=whole)
    if step is None:
        return _plain_number(v, thousands)
    rounded = (Decimal(repr(v)) / step).quantize(Decimal(1), ROUND_HALF_EVEN) * step
    sep = "," if thousands else ""
    return f"{float(rounded):{sep}.{_decimals(step)}f}"


def fmt_half_width(half_width: Any, *, thousands: bool = True, integer: bool = False) -> str:
    """A 95% half-width, to the same step as the value it goes with."""
    return fmt_estimate(half_width, half_width, thousands=thousands, integer=integer)


def _plain_number(v: float, thousands: bool) -> str:
    sep = "," if thousands else ""
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):{sep}d}"
    return f"{v:{sep}.6g}" if abs(v) < 1e6 else f"{v:{sep}.0f}"


def fmt_amount(value: Any, *, digits: int = AMOUNT_DIGITS) -> str:
    """A ledger amount (ε or ρ): the decimal at the ledger's unit (10⁻⁹), at most
    ``digits`` significant digits, no trailing zeros, never scientific."""
    v = _finite(value)
    if v is None:
        return "-" if value is None else str(value)
    d = Decimal(repr(v)).quantize(Decimal(1).scaleb(-LEDGER_DECIMALS), ROUND_HALF_EVEN)
    if d == 0:
        return "0"
    exponent = max(d.adjusted() - digits + 1, -LEDGER_DECIMALS)
    d = d.quantize(Decimal(1).scaleb(exponent), ROUND_HALF_EVEN)
    text = f"{d:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def fmt_delta(value: Any) -> str:
    """δ: 0, or short scientific notation (``5e-6``, ``1.2e-7``)."""
    v = _finite(value)
    if v is None:
        return "-" if value is None else str(value)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1:
        return fmt_amount(v, digits=3)
    mantissa, _, exponent = f"{v:.2e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


# --- budgets -------------------------------------------------------------------------


def _epsilon_of(rho: float, delta: float) -> float | None:
    """OpenDP's ε for ρ-zCDP at δ (None when it cannot be stated)."""
    if rho <= 0:
        return 0.0
    if not 0 < delta < 1:
        return None
    from sandbox.privacy.mechanisms import zcdp_epsilon

    try:
        return zcdp_epsilon(rho, delta)
    except Exception:  # noqa: BLE001 - a display falls back to ρ alone
        return None


def _ceiling_cost(unit: str, ceiling_epsilon: float | None, grant_delta: float | None) -> Any:
    """What a query at the grant's per-query ceiling costs the account (ρ for zCDP at
    the default δ a query gets: a tenth of the grant's)."""
    if ceiling_epsilon is None or ceiling_epsilon <= 0:
        return None
    if unit != "rho":
        return ceiling_epsilon
    if grant_delta is None or not 0 < grant_delta < 1:
        return None
    from sandbox.privacy import DEFAULT_DELTA_SHARE, rho_from_epsilon_delta

    return rho_from_epsilon_delta(ceiling_epsilon, grant_delta / DEFAULT_DELTA_SHARE)


def budget_outlook(
    row: Mapping[str, Any],
    recent_costs: Iterable[float],
    *,
    ceiling_epsilon: float | None,
    grant_delta: float | None,
) -> dict[str, Any]:
    """What a budget row means in queries (and, for ρ, in ε).

    ``row`` is a ledger balance (unit, total, spent, reserved, left, delta_total);
    ``recent_costs`` the costs (in the row's unit) of the account's latest jobs, newest
    first. The typical cost is their median (at most ``RECENT_JOBS`` of them), else a
    query at the grant's per-query ceiling. For ρ the ε-equivalents use OpenDP's
    conversion at the account's δ (``delta_total``: the half of the grant's δ the
    ledger keeps for stating ρ as (ε, δ))."""
    unit = str(row.get("unit") or "epsilon")
    costs = [c for c in (_finite(x) for x in recent_costs) if c is not None and c > 0]
    costs = costs[:RECENT_JOBS]
    typical: float | None
    if costs:
        typical, source = float(statistics.median(costs)), "recent_jobs"
    else:
        typical, source = _ceiling_cost(unit, ceiling_epsilon, grant_delta), "ceiling"
    left = _finite(row.get("left")) or 0.0
    out: dict[str, Any] = {
        "typical_cost": typical,
        "typical_from": source if typical is not None else None,
        "recent_jobs": len(costs),
        "queries_left": math.floor(left / typical + 1e-9) if typical else None,
    }
    if unit == "rho":
        delta = _finite(row.get("delta_total")) or 0.0
        total = _epsilon_of(_finite(row.get("total")) or 0.0, delta)
        used = (_finite(row.get("spent")) or 0.0) + (_finite(row.get("reserved")) or 0.0)
        spent = _epsilon_of(used, delta)
        out["epsilon_equivalent"] = (
            {"total": total, "spent": spent, "delta": delta}
            if total is not None and spent is not None
            else None
        )
    return out


def job_loss(job: Mapping[str, Any]) -> float | None:
    """A job's cost in its account's unit: ρ for zCDP, else ε (None without a cost)."""
    cost = job.get("cost")
    if not isinstance(cost, Mapping):
        return None
    if cost.get("definition") == "zcdp" or cost.get("rho") is not None:
        return _finite(cost.get("rho"))
    return _finite(cost.get("epsilon"))


def loss_share(part: Any, job: Mapping[str, Any]) -> float | None:
    """``part`` (a measure's ε or ρ) as a fraction of the job's, in the job's unit."""
    total = job_loss(job)
    p = _finite(part)
    if total is None or p is None or total <= 0:
        return None
    return p / total


def recent_costs(jobs: Iterable[Mapping[str, Any]], grant: str, dataset: str) -> list[float]:
    """The costs of the jobs on one account (grant × dataset), in the given order."""
    out = []
    for j in jobs:
        if j.get("grant") == grant and j.get("dataset") == dataset:
            c = job_loss(j)
            if c is not None and c > 0:
                out.append(c)
    return out


# --- review --------------------------------------------------------------------------


def review_reasons(
    *, grade: str | None, grade_approvals: int, flags: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Why a job needs supervisor approval: its dataset's grade, a near-duplicate of an
    earlier job of the same operator, or another flag. Each reason is a code with its
    facts; none of them depends on the data (a flag about the cells is not a reason: it
    never makes a job wait, and an operator sees it only once released)."""
    reasons: list[dict[str, Any]] = []
    if grade_approvals > 0:
        reasons.append({"code": "grade", "grade": grade, "approvals": grade_approvals})
    for f in flags:
        if f.get("code") == "near_duplicate":
            jobs = [str(j) for j in f.get("jobs") or []]
            reasons.append({"code": "near_duplicate", "jobs": jobs})
    return reasons


def _join(items: Sequence[str]) -> str:
    return ", ".join(items)


REASON_TEXT = {
    "grade": "data of grade {grade} is released only after {approvals} supervisor approval(s)",
    "near_duplicate": "an earlier job of the same operator ({jobs}) has the same plan or "
    "differs only in constants, so the two results could be differenced",
}


def review_sentence(job: Mapping[str, Any]) -> str | None:
    """One English sentence: what a job in review waits for, and why (None otherwise)."""
    if job.get("state") != "in_review":
        return None
    have, need = int(job.get("approvals") or 0), int(job.get("required_approvals") or 0)
    text = f"Waiting for review: {have} of {need} supervisor approval(s)"
    parts = []
    for r in job.get("review_reasons") or []:
        template = REASON_TEXT.get(str(r.get("code")))
        if template is None:
            continue
        facts = {k: _join(v) if isinstance(v, list) else v for k, v in r.items()}
        parts.append(template.format(**facts))
    if parts:
        text += ", because " + "; and ".join(parts)
    return text + "."
