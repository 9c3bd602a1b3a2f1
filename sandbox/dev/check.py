"""``sandbox dev check``: compile a query as the server would, and report as a linter does."""

from __future__ import annotations

from typing import Any

from sandbox.catalog import Catalog
from sandbox.dev.context import DevContext, parse_header, resolve_target
from sandbox.grants import Grant, find_grant

# ------------------------------------------------------------------ dev check


def _all_datasets_grant(catalog: Catalog, operator: str) -> Grant:
    """A grant of every grantable dataset, for checking a query with no scenario: it
    finds syntax and catalogue errors, not grant errors."""
    return Grant.model_validate(
        {
            "id": "dev-check",
            "operator": operator,
            "scenario": {"id": "dev-check", "purpose": "local syntax and catalogue check"},
            "datasets": [d.id for d in catalog.datasets if d.grantable],
            "budget": {"epsilon": 1.0, "delta": 0.0, "max_epsilon_per_query": 1.0},
            "valid_from": "2000-01-01T00:00:00Z",
            "valid_until": "2999-01-01T00:00:00Z",
        }
    )


def check_query(
    sql: str,
    ctx: DevContext,
    *,
    operator: str | None = None,
    scenario: str | None = None,
) -> dict[str, Any]:
    """Compile as the server would; return a summary. Raises the compiler's refusal.

    Without a scenario (and none in the header) the query is checked against every
    grantable dataset: syntax and catalogue errors are found, grant errors are not.
    """
    from sandbox.compiler import compile_query

    header = parse_header(sql)
    sc = scenario or header.get("scenario")
    if sc:
        op, sc = resolve_target(ctx, header, operator=operator, scenario=sc)
        grant = find_grant(ctx.grants, op, sc)
    else:
        op = operator or header.get("operator") or ctx.operator or "dev"
        grant = _all_datasets_grant(ctx.catalog, op)
    plan = compile_query(sql, catalog=ctx.catalog, grant=grant)
    return {
        "ok": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id if sc else None,
        "dataset": plan.dataset,
        "plan_digest": plan.digest(),
        "outputs": [{"name": o.name, "kind": o.kind} for o in plan.outputs],
        "private_keys": plan.private_keys,
        "notes": list(plan.notes),
    }


def diagnostic(path: str, exc: BaseException) -> dict[str, Any]:
    """One error as a diagnostic: file, line, column, code, message, hint."""
    from sandbox.errors import public_error

    err = public_error(exc)
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "col", None) or 1
    return {
        "file": path,
        "line": int(line),
        "col": int(col),
        "code": err.code,
        "message": err.message,
        "hint": err.hint,
        "severity": "error",
    }


def format_diagnostic(d: dict[str, Any], fmt: str) -> str:
    """``text``: ``file:line:col: CODE message``; ``gcc``: ``file:line:col: error: message
    [CODE]`` (what editors' and CI problem matchers parse)."""
    loc = f"{d['file']}:{d['line']}:{d['col']}"
    message = " ".join(str(d["message"]).split())
    if fmt == "gcc":
        return f"{loc}: error: {message} [{d['code']}]"
    return f"{loc}: {d['code']} {message}"
