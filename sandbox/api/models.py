"""Response models: the shape of every /v1 answer, published in /openapi.json (those
of products, the audit log, reports and the admin are in ``models_oversight.py``).

They describe the view dicts the service builds (sandbox/service/views.py, core.py) as
they are; a model never reshapes one. Three rules keep that true:

- ``extra="allow"``: a field a view gains before its model names it passes through,
  never dropped (tests/api/test_models.py fails until the model names it);
- a field a view only sometimes has gets a default, and the routes serialise with
  ``exclude_unset``, so an absent field stays absent (never an invented null);
- a number that may be an int or a float is ``Number`` (a float field would turn 1
  into 1.0, and a signed manifest re-serialised so would no longer verify). Times are
  the ISO 8601 strings as written.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Number = int | float


class View(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- errors -------------------------------------------------------------------------


class ErrorDetail(View):
    code: str
    message: str
    hint: str = ""


class ErrorBody(BaseModel):
    """The one error shape."""

    error: ErrorDetail


# --- meta and catalogue -------------------------------------------------------------


class Health(View):
    status: str
    version: str
    executor: str


class ColumnView(View):
    name: str
    type: str
    description: str
    uses: list[str]
    bounds: list[Number] | None
    keys: str | None
    null_rate: Number
    synthetic: dict[str, Any] | None


class TableView(View):
    name: str
    description: str
    file: str
    rows_per_unit: int | None
    lookup_key: str | None
    columns: list[ColumnView]


class Sharing(View):
    attribute: str
    reason: str


class PrivacyPolicy(View):
    definition: str
    delta_allowed: bool
    max_groups_per_unit: int
    max_units: int


class DatasetView(View):
    id: str
    title: str
    owner: str
    description: str
    version: str
    grade: str
    sharing: Sharing
    privacy_unit: str | None
    privacy: PrivacyPolicy
    tables: list[TableView]


class CatalogView(View):
    datasets: list[DatasetView]
    key_sets: dict[str, list[Any]]


class ScenarioRef(View):
    id: str
    purpose: str


class GrantBudget(View):
    epsilon: Number
    delta: Number
    max_epsilon_per_query: Number


class GrantView(View):
    id: str
    operator: str
    scenario: ScenarioRef
    datasets: list[str]
    columns: dict[str, list[str]]
    budget: GrantBudget
    valid_from: str
    valid_until: str


# --- cost, accuracy, budget ---------------------------------------------------------


class MeasureCost(View):
    name: str
    kind: str
    mechanism: str
    share: Number
    sensitivity: Number
    scale: Number
    integer: bool
    selection: bool
    delta: Number
    threshold: int | None
    score_den: int | None


class Cost(View):
    epsilon: Number
    delta: Number
    rho: Number | None
    definition: str
    selection_delta: Number
    epsilon_equivalent: Number | None
    requested_epsilon: Number
    requested_delta: Number
    measures: list[MeasureCost]
    max_units: int | None = None


class AccuracyPart(View):
    """One noisy measure a derived output is computed from: its 95% half-width and its
    half-width at the output's Bonferroni level (``confidence_split``)."""

    measure: str
    kind: str
    scale: Number
    accuracy_95: Number | None
    accuracy_split: Number | None = None


class OutputAccuracy(View):
    """What explain says of one output; the optional fields depend on its kind."""

    name: str
    kind: str
    measures: list[str]
    mechanism: str
    scale: Number | None
    accuracy_95: Number | None
    epsilon_or_rho: Number | None = None
    threshold: int | None = None
    candidates: int | None = None
    candidate_spacing: Number | None = None
    rank_error_95: Number | None = None
    components: list[AccuracyPart] | None = None
    statement: str | None = None
    method: str | None = None  # direct, propagated (derived outputs) or rank (quantiles)
    confidence_split: Number | None = None  # derived: each component's level
    pm95_rule: str | None = None  # derived: how the per-cell ± follows from the components


class CellAccuracy(View):
    """The accuracy of one released cell: ``pm95`` is the ± it is released with (the
    95% half-width rounded outward, rounding included); ``pm95_unit`` is ``value`` or,
    for a quantile, ``rank`` (rows). ``accuracy_95`` (direct outputs only) is the
    half-width of the noise before rounding; ``unbounded``: no finite ± exists."""

    scale: Number | None
    accuracy_95: Number | None = None
    pm95: Number | None = None
    pm95_unit: str | None = None
    method: str | None = None
    unbounded: bool | None = None
    derived: bool | None = None
    candidate_spacing: Number | None = None
    rank_error_95: Number | None = None
    statement: str | None = None


class Balance(View):
    """What is left of a grant's budget on one dataset (``unit`` ε or ρ, and δ)."""

    grant: str
    dataset: str
    unit: str
    total: Number
    spent: Number
    reserved: Number
    left: Number
    delta_total: Number
    delta_spent: Number
    delta_reserved: Number
    delta_left: Number


class EpsilonEquivalent(View):
    """A ρ budget stated as ε by OpenDP's conversion at the account's ``delta``."""

    total: Number
    spent: Number
    delta: Number


class BudgetOutlook(View):
    """What a budget means in queries: the typical cost (the median of the account's
    last jobs, ``recent_jobs`` of them, or a query at the per-query ceiling), the
    queries left at it, and for ρ the ε-equivalent (sandbox/display.py)."""

    typical_cost: Number | None
    typical_from: str | None
    recent_jobs: int
    queries_left: int | None
    epsilon_equivalent: EpsilonEquivalent | None = None


class BudgetRow(Balance):
    operator: str
    scenario: str
    valid_until: str
    max_epsilon_per_query: Number
    outlook: BudgetOutlook


class Explanation(View):
    scenario: str
    grant: str
    dataset: str
    grade: str
    plan_digest: str
    required_approvals: int
    cost: Cost
    outputs: list[OutputAccuracy]
    notes: list[str]
    budget: Balance


# --- jobs ---------------------------------------------------------------------------


class JobError(View):
    """Why a job was refused or failed; a supervisor also sees the incident's facts."""

    code: str
    message: str
    hint: str
    category: str | None = None
    incident: str | None = None
    diagnosis: dict[str, Any] | None = None


class Flag(View):
    """Why a job is held for review (``rows``, ``jobs``: the facts behind some codes)."""

    code: str
    message: str
    rows: int | None = None
    jobs: list[str] | None = None
    columns: list[str] | None = None  # wide_interval: the columns with a ± above |value|


class ReviewReason(View):
    """Why a job needs approval: ``grade`` (its dataset's grade needs ``approvals``) or
    ``near_duplicate`` (of the operator's earlier ``jobs``)."""

    code: str
    grade: str | None = None
    approvals: int | None = None
    jobs: list[str] | None = None


class DisclosureControl(View):
    """Empty until the job is checked (and, for an operator, until it is released)."""

    min_count: int | None = None
    round_base: int | None = None
    suppressed_rows: int | None = None


class Transition(View):
    from_state: str | None
    to_state: str
    actor: str
    at: str


class ReviewDecision(View):
    reviewer: str
    decision: str
    reason: str
    decided_at: str


class Preview(View):
    """The noisy result a reviewer judges (its first rows)."""

    columns: list[str]
    rows: list[dict[str, Any]]
    total_rows: int


class ProductLink(View):
    id: str
    formats: list[str]
    href: str
    manifest: str


class JobView(View):
    """A job as the caller may see it: ``transitions`` and a supervisor's ``preview`` in
    the one-job answer only, ``product`` once released."""

    id: str
    state: str
    operator: str
    scenario: str
    grant: str | None
    dataset: str | None
    grade: str | None
    sql: str
    sql_sha256: str
    plan_digest: str | None
    epsilon: Number
    delta: Number
    cost: Cost | None
    flags: list[Flag]
    disclosure_control: DisclosureControl
    mechanisms: list[str] | None
    accuracy: dict[str, list[CellAccuracy | None]] | None  # None: a suppressed cell
    rows: int | None
    required_approvals: int | None
    created_at: str
    updated_at: str
    finished_at: str | None
    idempotency_key: str | None  # the Idempotency-Key it was submitted with
    kind: str  # "sql", or "analysis" (an operator's script, docs/analysis-jobs.md)
    error: JobError | None
    transitions: list[Transition] | None = None
    decisions: list[ReviewDecision]
    approvals: int
    review_reasons: list[ReviewReason] | None = None  # when it needs approval
    preview: Preview | None = None
    product: ProductLink | None = None
    # operators, analysis jobs: held for review until the supervisors decide (shown as
    # in_review whatever the run did; docs/analysis-jobs.md)
    held: bool | None = None


class ReviewAnalysis(View):
    """An analysis job in the queue: its entry file, how many files, outputs, and
    outputs ACRO flagged (verdict fail or review)."""

    entry: str
    files: int
    outputs: int
    flagged: int


class ReviewItem(JobView):
    you_decided: bool
    may_decide: bool
    analysis: ReviewAnalysis | None = None  # analysis jobs only (kind "analysis")


class DecisionOutcome(View):
    outcome: str
    job: JobView
