"""Every error the sandbox raises, in one place.

The tree::

    SandboxError                      base; has .code, .message, .hint, .exit_code
    ├── Refused                       the request was refused (exit 2, HTTP 4xx);
    │   │                             message and hint are safe to show an operator
    │   ├── QueryRefused              the compiler refused the SQL (HTTP 400)
    │   ├── PolicyInvalid             a policy file is wrong (HTTP 400)
    │   ├── BudgetRefused             ε/δ invalid or the budget does not fit (HTTP 409/400)
    │   ├── AuthError                 no or bad credentials (HTTP 401)
    │   ├── Forbidden                 wrong role (HTTP 403)
    │   ├── NotFound                  no such thing, or not yours (HTTP 404)
    │   ├── Conflict                  the thing is in the wrong state (HTTP 409)
    │   ├── BadInput                  malformed request (HTTP 400/413/422)
    │   └── RateLimited               too many requests (HTTP 429)
    └── SystemFailure                 the system failed (exit 1, HTTP 5xx); shown to
        │                             operators only as a generic message
        ├── ExecutionFailed           the run failed; .category is one of
        │                             CATEGORIES (never an engine message)
        └── DockerUnavailable         no Docker engine or no runner image

Rules:
- A message is text we wrote. It never contains a value read from data, nor a
  third-party exception's text (DuckDB quotes cell values in its messages).
  Translate third-party exceptions where they are raised: ``raise X(...) from exc``.
- Codes are stable; ``CODES`` lists every one with its meaning. docs/errors.md is
  generated from it (``sandbox errors``).
"""

from __future__ import annotations

from typing import Any, ClassVar

# Every stable error code and what it means. Keep in sync with the raises.
CODES: dict[str, str] = {
    # analysis jobs (sandbox.jobs.analysis)
    "ANALYSIS_NOT_GRANTED": "The grant does not allow analysis jobs (operators' scripts).",
    "SCRIPT_INVALID": "The analysis script is empty, too large, or has a file name refused.",
    "ANALYSIS_UNAVAILABLE": "This server runs no analysis jobs (they need the Docker executor).",
    # compiler
    "EMPTY_QUERY": "The SQL text is empty.",
    "QUERY_TOO_LARGE": "The SQL text is longer than the limit.",
    "QUERY_TOO_DEEP": "The SQL expression nesting is deeper than the limit.",
    "PARSE_ERROR": "The SQL could not be parsed.",
    "MULTIPLE_STATEMENTS": "More than one statement was sent.",
    "NOT_SELECT": "Only SELECT queries are accepted (no DDL, DML, COPY, ATTACH, PRAGMA, SET).",
    "TABLE_FUNCTION": "Table functions and file paths (read_csv, glob …) are refused.",
    "UNKNOWN_TABLE": "The table is not in the catalogue.",
    "UNKNOWN_COLUMN": "The column is not in the catalogue.",
    "TABLE_NOT_GRANTED": "The table's dataset is not in the operator's grant for this scenario.",
    "COLUMN_NOT_ALLOWED": "The column may not be used this way (see its uses in the catalogue).",
    "IDENTIFIER_EXPOSED": "An identifier column appears in output, GROUP BY or WHERE.",
    "NO_AGGREGATE": "The query outputs rows, not aggregates.",
    "UNSUPPORTED_AGGREGATE": "The aggregate function is not supported.",
    "UNBOUNDED_COLUMN": "The aggregated column has no declared bounds.",
    "UNSUPPORTED_EXPRESSION": "The expression is not supported in this place.",
    "UNSUPPORTED_JOIN": "The JOIN is not on the privacy unit or a declared lookup key.",
    "UNSUPPORTED_GROUP_KEY": "The GROUP BY key is not a group column or a simple derivation.",
    "WINDOW_FUNCTION": "Window functions are refused in operator queries.",
    "SUBQUERY": "A subquery or CTE other than a row-level view or a per-unit pre-aggregation.",
    "UNSUPPORTED_CLAUSE": "The clause is not supported.",
    "MULTIPLE_DATASETS": "The query reads more than one private dataset.",
    "UNSUPPORTED_FUNCTION": "The scalar function is not supported.",
    "INVALID_CHARACTER": "The SQL contains an invisible or control character.",
    "LOOKUP_ONLY": "The query reads only public lookup tables (no private dataset).",
    # policy and grants
    "POLICY_INVALID": "A policy file does not validate.",
    "GRANT_FORBIDDEN": "Core data and data marked not shared cannot be granted.",
    "NO_GRANT": "The operator has no grant for this scenario.",
    "GRANT_EXPIRED": "The grant is outside its validity window.",
    "UNKNOWN_SCENARIO": "The scenario is not known.",
    "UNKNOWN_OPERATOR": "The operator is not known.",
    # privacy and budget
    "INVALID_EPSILON": "ε must be a finite number greater than zero.",
    "INVALID_DELTA": "δ must be a finite number in [0, 1).",
    "EPSILON_ABOVE_CEILING": "ε is above the grant's per-query ceiling.",
    "DELTA_NOT_ALLOWED": "The dataset's policy allows no δ.",
    "DELTA_ABOVE_GRANT": "δ is above the grant's total δ.",
    "DELTA_REQUIRED": "Private group keys need δ > 0 for partition selection.",
    "BUDGET_EXHAUSTED": "The request does not fit in what is left of the budget.",
    "INVALID_WEIGHTS": "Budget weights must be positive and one per output.",
    # control plane
    "UNAUTHENTICATED": "No valid token was given.",
    "FORBIDDEN": "The role may not do this.",
    "WRONG_OPERATOR": "The token is not the named operator's (`submit --operator`).",
    "NOT_FOUND": "No such object (or it is not yours).",
    "INVALID_STATE": "The object is not in a state that allows this.",
    "BAD_REQUEST": "The request is malformed.",
    "DUPLICATE_KEY": "A key appears twice in one JSON object of the request body.",
    "PAYLOAD_TOO_LARGE": "The request body is too large.",
    "RATE_LIMITED": "Too many requests; wait and retry.",
    "TOO_MANY_JOBS": "The operator has too many jobs waiting or running; wait for some.",
    "COMPILE_BUDGET_EXCEEDED": "The token used its query-compilation time for this minute.",
    "INVALID_IDEMPOTENCY_KEY": "The Idempotency-Key is not 1 to 128 printable ASCII characters.",
    "IDEMPOTENCY_KEY_REUSED": "The Idempotency-Key was already used for a different submission.",
    "SELF_REVIEW": "A reviewer may not review a job they submitted, nor review it twice.",
    "REASON_REQUIRED": "A review decision needs a reason.",
    "OUTPUT_SELECTION_INVALID": "The outputs chosen for release are unknown or none, or "
    "cannot be chosen (a SQL job, a rejection, a job without outputs, or nothing left "
    "with the other approvals' choices).",
    "CSRF_FAILED": "The form's CSRF token is missing or wrong.",
    "LOCAL_DATA_NOT_SYNTHETIC": "The local executor only reads synthetic data.",
    "SYNTHETIC_DATA_REFUSED": "The sandbox refuses data marked synthetic.",
    "JOB_INTERRUPTED": "The server stopped while the job was running; its charge is kept.",
    # system
    "INTERNAL": "The system failed; the incident is logged.",
    "EXECUTION_FAILED": "The query failed inside the runner (see the category).",
    "DOCKER_UNAVAILABLE": "No Docker engine or runner image is available.",
    "OUT_NOT_IN_RAM": "The Docker executor cannot keep exact results in RAM; it refuses to start.",
    "AUDIT_INVALID": "The audit log does not verify.",
    "PRODUCT_INVALID": "The data product does not verify.",
}

# What may come out of the runner when a job fails: categories, never messages.
CATEGORIES: dict[str, str] = {
    "timeout": "the query ran past its wall-clock limit and was killed",
    "memory": "the query hit the memory limit",
    "plan_mismatch": "the runner was given, or returned, something that is not the Plan's",
    "engine_error": "the SQL engine failed (the engine's message is withheld)",
    "output_too_large": "the output cap is below even an empty result (a larger result is cut)",
    "output_invalid": "the result file was missing, a symlink, or unreadable",
    "resource_limit": "the query hit a process, file-size or scratch limit",
    "data_missing": "a dataset file named by the Plan is missing",
    "script_error": "an analysis script raised or exited non-zero (its message and output "
    "are withheld)",
    "cancelled": "the job was cancelled",
    "release_timeout": "noising the result on the host ran past its time limit",
    "data_invalid": "a table breaks its catalogue declaration (a unit with several rows "
    "where one is declared, or more units than its dataset's max_units); the bureau is told",
}


class SandboxError(Exception):
    """Base of every sandbox error."""

    code: str = "INTERNAL"
    exit_code: ClassVar[int] = 1
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str = "",
        http_status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if self.code not in CODES:
            raise ValueError(f"unknown error code {self.code!r}; add it to CODES")
        self.message = message
        self.hint = hint
        if http_status is not None:
            self.http_status = http_status
        # details: structured, safe fields (numbers we computed, names from policy)
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The one error shape: {"error": {"code", "message", "hint"[, ...details]}}."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        body.update(self.details)
        return {"error": body}


class Refused(SandboxError):
    """The request was refused; safe to show the operator."""

    exit_code = 2
    http_status = 400


class QueryRefused(Refused):
    """The compiler refused the query. ``line``/``col`` locate the offending part."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: str = "",
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        details: dict[str, Any] = {}
        if line is not None:
            details["line"] = line
        if col is not None:
            details["col"] = col
        super().__init__(message, code=code, hint=hint, details=details)
        self.line = line
        self.col = col


class PolicyInvalid(Refused):
    code = "POLICY_INVALID"


class BudgetRefused(Refused):
    code = "BUDGET_EXHAUSTED"
    http_status = 409


class AuthError(Refused):
    code = "UNAUTHENTICATED"
    http_status = 401


class Forbidden(Refused):
    code = "FORBIDDEN"
    http_status = 403


class NotFound(Refused):
    code = "NOT_FOUND"
    http_status = 404


class Conflict(Refused):
    code = "INVALID_STATE"
    http_status = 409


class BadInput(Refused):
    code = "BAD_REQUEST"
    http_status = 400


class RateLimited(Refused):
    code = "RATE_LIMITED"
    http_status = 429


class SystemFailure(SandboxError):
    """The system failed. Operators see only a generic message."""

    exit_code = 1
    http_status = 500


class ExecutionFailed(SystemFailure):
    """The runner failed. Only the category crosses the container boundary."""

    code = "EXECUTION_FAILED"

    def __init__(self, category: str, *, hint: str = "") -> None:
        if category not in CATEGORIES:
            category = "engine_error"
        self.category = category
        super().__init__(
            f"The query failed: {CATEGORIES[category]}.",
            hint=hint,
            details={"category": category},
        )


class DockerUnavailable(SystemFailure):
    code = "DOCKER_UNAVAILABLE"
    http_status = 503


GENERIC_FAILURE = "The system failed; the incident is logged."


def public_error(exc: BaseException) -> SandboxError:
    """What may be shown for any exception: ours as it is, anything else generic."""
    if isinstance(exc, SandboxError):
        return exc
    return SystemFailure(GENERIC_FAILURE, code="INTERNAL")
