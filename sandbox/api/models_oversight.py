"""Response models of supervision: products and manifests, the audit log, reports and
alerts, and the admin's tokens (split from ``models.py``, whose three rules hold
here too)."""

from __future__ import annotations

from typing import Any

from sandbox.api.models import BudgetOutlook, Number, View

# --- products -----------------------------------------------------------------------


class Manifest(View):
    """What a product's signature covers; nested values are passed through untouched."""

    dataset: str
    dataset_versions: dict[str, Any]
    disclosure_control: dict[str, Any]
    accuracy: dict[str, Any] | None = None  # the ± columns: per output its method, typical ±
    grade: str
    grant: str
    job: str
    mechanisms: list[str]
    operator: str
    plan_digest: str
    privacy_loss: dict[str, Any]
    product: str
    query_sha256: str
    result: dict[str, Any]
    reviewers: list[dict[str, Any]]
    scenario: str
    times: dict[str, Any]
    version: int


class ProductTable(View):
    """A product in the json format: the released table, one object per row."""

    columns: list[str]
    rows: list[dict[str, Any]]


class Signature(View):
    algorithm: str
    key_id: str
    value: str


class SignedManifest(View):
    manifest: Manifest
    signature: Signature


# --- audit and reports --------------------------------------------------------------


class AuditEventView(View):
    seq: int
    time: str
    actor: str
    role: str
    action: str
    subject: str
    scenario: str | None
    details: dict[str, Any]
    leaf_hash: str
    chain_hash: str


class Problem(View):
    kind: str
    message: str
    seq: int | None = None
    tree_size: int | None = None
    other_seq: int | None = None


class VerifyReport(View):
    ok: bool
    entries: int
    first_seq: int
    last_seq: int
    checkpoints: int
    roots_checked: int
    signed_size: int
    key_id: str
    problem: Problem | None
    warnings: list[str]
    unsigned_entries: int


class ReportFilters(View):
    operator: str | None
    scenario: str | None


class ReportBudget(View):
    """Budget per dataset: from the audit log, or the ledger (``source``) when a grant
    is known."""

    dataset: str
    unit: str
    spent: Number
    delta_spent: Number
    source: str
    grant: str | None = None
    total: Number | None = None
    left: Number | None = None
    reserved: Number | None = None
    fraction_spent: Number | None = None
    delta_total: Number | None = None
    outlook: BudgetOutlook | None = None


class ReportGroup(View):
    operator: str
    scenario: str | None
    jobs: dict[str, int]
    refusals_by_code: dict[str, int]
    failures_by_category: dict[str, int]
    budget: list[ReportBudget]
    datasets: list[str]
    products_released: list[str]
    downloads: int
    reviews: dict[str, int]


class Alert(View):
    """A pattern worth a supervisor's look; which facts it has depends on ``kind``
    (sandbox/reports.py): the jobs behind it, or the dataset and fraction spent."""

    operator: str
    scenario: str | None
    kind: str
    count: int | None = None
    jobs: list[str] | None = None
    codes: dict[str, int] | None = None  # refusal_streak
    digest: str | None = None  # query_burst
    categories: dict[str, int] | None = None  # resource_limit, failure_burst, plan_mismatch
    shape: str | None = None  # filter_sweep
    dataset: str | None = None  # budget_nearly_exhausted
    fraction_spent: Number | None = None
    message: str


class Report(View):
    generated_at: str
    filters: ReportFilters
    entries: int
    groups: list[ReportGroup]
    alerts: list[Alert]
    rules: dict[str, Any]


# --- admin --------------------------------------------------------------------------


class ReloadResult(View):
    grants: int
    operators: int


class TokenRecord(View):
    """A token's record; never the secret."""

    id: str
    role: str
    subject: str
    label: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class IssuedToken(TokenRecord):
    """The secret is in this answer only."""

    token: str
