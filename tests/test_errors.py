"""One error shape, stable codes, and nothing but our own text shown."""

from __future__ import annotations

import pytest

from sandbox.errors import (
    CATEGORIES,
    CODES,
    GENERIC_FAILURE,
    BudgetRefused,
    ExecutionFailed,
    QueryRefused,
    Refused,
    SandboxError,
    SystemFailure,
    public_error,
)


def test_error_shape_is_code_message_hint() -> None:
    err = QueryRefused("UNKNOWN_TABLE", "No table 'x'.", hint="See the catalogue.", line=1, col=15)
    assert err.to_dict() == {
        "error": {
            "code": "UNKNOWN_TABLE",
            "message": "No table 'x'.",
            "hint": "See the catalogue.",
            "line": 1,
            "col": 15,
        }
    }
    assert err.exit_code == 2 and err.http_status == 400


def test_unknown_codes_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Refused("x", code="NOT_A_CODE")


def test_refusals_exit_2_and_failures_exit_1() -> None:
    assert BudgetRefused("no").exit_code == 2 and BudgetRefused("no").http_status == 409
    assert SystemFailure("x").exit_code == 1


def test_execution_failures_carry_only_a_category() -> None:
    err = ExecutionFailed("memory")
    assert err.to_dict()["error"]["category"] == "memory"
    assert CATEGORIES["memory"] in err.message
    # an unknown category (never trusted from outside) becomes engine_error
    assert ExecutionFailed("Could not convert 'secret'").category == "engine_error"
    assert "secret" not in str(ExecutionFailed("Could not convert 'secret'").to_dict())


def test_foreign_exceptions_are_shown_generically() -> None:
    shown = public_error(RuntimeError("Conversion Error: could not convert 'Zhang San'"))
    assert shown.message == GENERIC_FAILURE
    assert "Zhang" not in str(shown.to_dict())
    ours = Refused("Budget left: 0.5", code="BUDGET_EXHAUSTED")
    assert public_error(ours) is ours


def test_every_code_is_documented() -> None:
    for code, meaning in CODES.items():
        assert code.isupper() and meaning.endswith("."), code
    assert issubclass(QueryRefused, SandboxError)


def test_docs_errors_md_is_generated_from_codes() -> None:
    from pathlib import Path

    from sandbox.cli.reference import errors_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
    assert doc.read_text(encoding="utf-8") == errors_markdown(), "run: sandbox errors --markdown"
