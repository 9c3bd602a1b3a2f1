"""How the console shows things: the Jinja2 environment, number and time formats, and
the shapes the templates draw (the released table with its accuracy, budget bars).

Pure presentation: no Service calls, no rules of its own (a value is marked wide by
``review.is_wide``, the wide_interval flag's rule). Templates escape everything
(autoescape); a field a record lacks renders as nothing (ChainableUndefined) rather
than failing the page.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

from sandbox import display
from sandbox.review import is_wide

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


# the audit verifier's warnings (English, for the CLI) as message keys of the console's
# catalogues, so a zh-CN page shows them in Chinese; an unknown one is shown as it is
_AUDIT_WARNINGS = (
    ("there is no signed checkpoint", "audit.warn_no_checkpoint"),
    ("after the last signed checkpoint", "audit.warn_unsigned_tail"),
    ("public key inside the export itself", "audit.warn_export_key"),
)


def audit_warning(text: str, verify: Any) -> tuple[str | None, dict[str, Any]]:
    """(message key, its parameters) for one of the verifier's warnings, or (None, {})."""
    get = verify.get if isinstance(verify, dict) else (lambda k, d=None: getattr(verify, k, d))
    for needle, key in _AUDIT_WARNINGS:
        if needle in str(text):
            last, signed = get("last_seq", 0) or 0, get("signed_size", 0) or 0
            n = get("unsigned_entries", 0) or max(0, last - signed)
            return key, {"n": n, "first": signed + 1, "last": last}
    return None, {}


__all__ = [
    "ENV",
    "budget_bar",
    "event_text",
    "fmt_estimate",
    "fmt_halfwidth",
    "fmt_loss",
    "fmt_num",
    "fmt_pct",
    "fmt_short",
    "fmt_when",
    "fmt_when_short",
    "grant_expired",
    "released_table",
    "sql_excerpt",
]


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(["html"]),
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, loss=fmt_loss, when=fmt_when, short=fmt_short)
    # noisy values to the precision their ± supports, shares of a job's budget, percents
    env.filters.update(estimate=fmt_estimate, halfwidth=fmt_halfwidth, pct=fmt_pct)
    env.filters["audit_warning"] = audit_warning
    env.filters["share_of"] = display.loss_share
    env.filters["job_loss"] = display.job_loss
    env.filters["whenshort"] = fmt_when_short
    env.filters["sql_excerpt"] = sql_excerpt
    return env


def fmt_num(value: Any, digits: int | None = None) -> str:
    """A number for people: thousands separated, floats to a sensible precision."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:,.{digits}f}"
        if value != value or value in (float("inf"), float("-inf")):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def fmt_loss(value: Any) -> str:
    """ε, δ or ρ: the decimal the ledger holds to four significant digits, δ-sized
    amounts in short scientific notation (sandbox/display.py)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return display.fmt_delta(value)
    return display.fmt_amount(value, digits=4)


def fmt_estimate(value: Any, half_width: Any = None) -> str:
    """A noisy value rounded to the precision its ± supports; without one, ``num``."""
    pair = (value, half_width)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
    return display.fmt_estimate(value, half_width) if numbers and half_width else fmt_num(value)


def fmt_halfwidth(half_width: Any, value: Any = None) -> str:
    """A ± to the step of the value it goes with (whole for a count)."""
    if not isinstance(half_width, int | float) or isinstance(half_width, bool):
        return fmt_num(half_width)
    return display.fmt_half_width(half_width, integer=isinstance(value, int))


def fmt_pct(fraction: Any) -> str:
    """A fraction as a percent, with the decimals a small one needs."""
    if not isinstance(fraction, int | float) or isinstance(fraction, bool):
        return "—"
    pct = 100 * fraction
    if pct == 0 or abs(pct) >= 10:
        return f"{pct:.0f}%"
    return f"{pct:.1f}%" if abs(pct) >= 1 else f"{pct:.2g}%"


def fmt_when(value: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if not value:
        return "—"
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_when_short(value: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' (UTC), for tables."""
    text = fmt_when(value)
    return text[:16] if text.endswith(" UTC") else text


def fmt_short(value: Any, n: int = 12) -> str:
    text = str(value or "")
    return text if len(text) <= n else text[:n] + "…"


def sql_excerpt(sql: str, n: int = 160) -> str:
    """The SQL without comment lines, on one line, cut at n characters."""
    lines = [ln for ln in str(sql).splitlines() if not ln.strip().startswith("--")]
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    return text if len(text) <= n else text[: n - 1] + "…"


ENV = _env()


def grant_expired(row: dict[str, Any]) -> bool:
    until = row.get("valid_until")
    if not until:
        return False
    return datetime.fromisoformat(str(until).replace("Z", "+00:00")) <= datetime.now(UTC)


def budget_bar(row: dict[str, Any], width: int = 240) -> dict[str, float]:
    total = float(row.get("total") or 0.0)
    if total <= 0:
        return {"spent": 0.0, "reserved": 0.0, "width": float(width), "pct": 0.0}
    spent = min(1.0, float(row.get("spent") or 0.0) / total)
    reserved = min(1.0 - spent, float(row.get("reserved") or 0.0) / total)
    return {
        "spent": round(spent * width, 1),
        "reserved": round(reserved * width, 1),
        "width": float(width),
        "pct": round(100 * (spent + reserved), 1),
    }


def event_text(e: dict[str, Any]) -> str:
    fields = [e.get(k) or "" for k in ("actor", "role", "action", "subject", "scenario")]
    return (
        " ".join(map(str, fields)) + " " + json.dumps(e.get("details"), ensure_ascii=False)
    ).lower()


def released_table(job: dict[str, Any]) -> dict[str, Any] | None:
    """What would be (or was) released, row by row: each number with the ± it is
    released with (``pm95``: its 95% half-width rounded outward, rounding included; a
    quantile's in rank). Never an interval: one centred on the unrounded noisy value
    would undo rounding."""
    preview = job.get("preview")
    if not preview:
        return None
    accuracy = job.get("accuracy") or {}
    columns = [c for c in preview["columns"] if c != "suppressed"]
    rows = []
    for i, r in enumerate(preview["rows"]):
        cells = []
        for c in columns:
            value = r.get(c)
            acc = accuracy.get(c)
            cell_acc = acc[i] if isinstance(acc, list) and i < len(acc) else None
            info = cell_acc if isinstance(cell_acc, dict) else {}
            pm = info.get("pm95")
            cells.append(
                {
                    "column": c,
                    "value": value,
                    "measure": acc is not None,
                    "pm": pm if isinstance(pm, int | float) else None,
                    "rank": info.get("pm95_unit") == "rank",
                    "unbounded": bool(info.get("unbounded")),
                    "derived": bool(info.get("derived")),
                    "wide": is_wide(value, info),
                }
            )
        rows.append({"cells": cells, "suppressed": bool(r.get("suppressed"))})
    return {
        "columns": columns,
        "measures": [c for c in columns if c in accuracy],
        "rows": rows,
        "total_rows": preview.get("total_rows", len(rows)),
        "shown": len(rows),
    }
