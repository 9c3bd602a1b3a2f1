"""The job states and the moves allowed between them (the machine; no I/O).

``records.transition`` is the ONE function that makes a move; it checks it against
``ALLOWED`` here.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    SUBMITTED = "submitted"
    COMPILED = "compiled"
    BUDGET_RESERVED = "budget_reserved"
    RUNNING = "running"
    NOISED = "noised"
    IN_REVIEW = "in_review"
    RELEASED = "released"
    REJECTED = "rejected"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = State
ALLOWED: dict[State | None, frozenset[State]] = {
    None: frozenset({S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.COMPILED, S.REFUSED, S.FAILED, S.CANCELLED}),
    S.COMPILED: frozenset({S.BUDGET_RESERVED, S.REFUSED, S.FAILED, S.CANCELLED}),
    S.BUDGET_RESERVED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    # an analysis job (sandbox.jobs.analysis) has no noise: running → in_review
    S.RUNNING: frozenset({S.NOISED, S.IN_REVIEW, S.FAILED, S.CANCELLED}),
    S.NOISED: frozenset({S.IN_REVIEW, S.RELEASED, S.FAILED, S.CANCELLED}),
    S.IN_REVIEW: frozenset({S.RELEASED, S.REJECTED, S.FAILED, S.CANCELLED}),
    S.RELEASED: frozenset(),
    S.REJECTED: frozenset(),
    S.REFUSED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in ALLOWED.items() if s is not None and not nxt)
# a job in these states has read no data: its reservation is returned if it ends
BEFORE_RUNNING = frozenset({S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED})
# an analysis job (sandbox.jobs.analysis) is HELD in these states: until a supervisor
# decides, its operator sees it as ``in_review`` (``SHOWN_HELD``), whatever its run did
# and however long it took (docs/analysis-jobs.md, "Held until the decision")
HELD = frozenset({S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED, S.RUNNING, S.IN_REVIEW})
SHOWN_HELD = S.IN_REVIEW
# the moves an operator is shown of an analysis job: never when its run started or
# ended (the run's length can depend on the data), only submission and the decision
HIDDEN_MOVES = frozenset({S.RUNNING, S.NOISED, S.IN_REVIEW})
