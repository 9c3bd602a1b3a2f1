"""How the CLI shows budgets (``sandbox budget``, ``sandbox report``): amounts as the
ledger holds them, ρ with its ε-equivalent, and the queries left at a typical cost
(sandbox/display.py makes the numbers; this module lays them out in 80 columns)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandbox.display import fmt_amount, fmt_delta

UNITS = {"epsilon": "ε", "rho": "ρ"}

FOOTNOTE = (
    "≈ queries left: at the median cost of the account's last {n} jobs, or of one query "
    'at the grant\'s per-query ceiling ("ceiling") when it has none. ≈ ε: the ρ stated '
    "as ε by OpenDP's conversion at the account's δ."
)


DIGITS = 4  # significant digits of an amount in a table (the JSON has them all)


def _unit(row: Mapping[str, Any]) -> str:
    return UNITS.get(str(row.get("unit")), str(row.get("unit")))


def _amount(value: Any) -> str:
    return fmt_amount(value, digits=DIGITS)


def _eq(row: Mapping[str, Any], key: str) -> str:
    eq = (row.get("outlook") or {}).get("epsilon_equivalent") or {}
    value = eq.get(key)
    return f"\n≈ ε {fmt_amount(value, digits=3)}" if value is not None else ""


def account_cell(row: Mapping[str, Any], first: str) -> str:
    if first == "scenario":
        return f"{row.get('scenario') or '-'}\n  {row.get('dataset') or '-'}"
    return str(row.get("dataset") or "-")


def total_cell(row: Mapping[str, Any]) -> str:
    if row.get("total") is None:
        return "-"
    return f"{_unit(row)} {_amount(row.get('total'))}{_eq(row, 'total')}"


def spent_cell(row: Mapping[str, Any]) -> str:
    text = _amount(row.get("spent"))
    frac = row.get("fraction_spent")
    if frac is not None:
        text += f" ({frac:.0%})"
    if row.get("reserved"):
        text += f"\n+{_amount(row['reserved'])} reserved"
    return text + _eq(row, "spent")


def queries_cell(row: Mapping[str, Any]) -> str:
    out = row.get("outlook") or {}
    n, cost = out.get("queries_left"), out.get("typical_cost")
    if n is None or cost is None:
        return "-"
    at = "ceiling " if out.get("typical_from") == "ceiling" else ""
    return f"≈ {n:,}\nat {at}{_unit(row)} {fmt_amount(cost, digits=3)}"


def budget_rows(rows: Sequence[Mapping[str, Any]], first: str) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of a budget table; ``first`` is "scenario" (``sandbox budget``:
    one row per grant and dataset, the dataset under its scenario) or "dataset" (a
    report's group)."""
    head = "scenario / dataset" if first == "scenario" else first
    headers = [head, "budget", "spent", "left"]
    with_delta = any("delta_left" in r for r in rows)
    if with_delta:
        headers.append("δ left")
    headers.append("queries left")
    cells = []
    for r in rows:
        line = [account_cell(r, first), total_cell(r), spent_cell(r), _amount(r.get("left"))]
        if with_delta:
            line.append(fmt_delta(r.get("delta_left")))
        line.append(queries_cell(r))
        cells.append(line)
    return headers, cells


def budget_table(rows: Sequence[Mapping[str, Any]], *, first: str = "scenario") -> Any:
    from sandbox.cli.common import make_table

    headers, cells = budget_rows(rows, first)
    return make_table(headers, cells, keep=(headers[0], "queries left"))


def footnote() -> str:
    from sandbox.display import RECENT_JOBS

    return FOOTNOTE.format(n=RECENT_JOBS)
