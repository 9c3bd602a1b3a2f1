"""The /v1 endpoints. Each handler only unpacks the request and calls the service."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from sandbox.api import models as m
from sandbox.api import models_oversight as mo
from sandbox.api.deps import get_principal, get_service
from sandbox.api.limits import StrictJSONRoute
from sandbox.service import Service, idempotency
from sandbox.tokens import Principal

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": m.ErrorBody, "description": text}
    for status, text in (
        (400, "Refused or malformed"),
        (401, "No valid token"),
        (403, "The role may not do this"),
        (404, "Not found (or not yours)"),
        (409, "Wrong state, no budget, or an idempotency key reused for another request"),
        (413, "Body too large"),
        (422, "Invalid fields"),
        (429, "Rate limited"),
    )
}

router = APIRouter(prefix="/v1", responses=ERRORS, route_class=StrictJSONRoute)

Svc = Depends(get_service)
Caller = Depends(get_principal)
Format = Literal["csv", "parquet", "json"]


def returns(model: Any) -> dict[str, Any]:
    """A route's response model; fields a view leaves out stay out (sandbox/api/models.py)."""
    return {"response_model": model, "response_model_exclude_unset": True}


class _Body(BaseModel):
    # strict: "0.5" and true are not numbers (lax pydantic made true ε = 1)
    model_config = ConfigDict(extra="forbid", strict=True)


DELTA_HELP = (
    "δ (default, the same for explain and submit: 0 when the query needs none, else a "
    "tenth of the grant's δ; see docs/privacy.md)."
)


class ExplainRequest(_Body):
    sql: str = Field(max_length=100_000, description="The SQL aggregate query.")
    scenario: str = Field(max_length=200, description="The scenario (应用场景) it is for.")
    epsilon: float | None = Field(default=None, description="ε (default: the per-query ceiling).")
    delta: float | None = Field(default=None, description=DELTA_HELP)
    weights: dict[str, float] | None = Field(default=None, description="Budget split per output.")


class SubmitRequest(_Body):
    sql: str = Field(max_length=100_000, description="The SQL aggregate query.")
    scenario: str = Field(max_length=200, description="The scenario (应用场景) it is for.")
    epsilon: float = Field(description="ε to spend on this query.")
    delta: float | None = Field(default=None, description=DELTA_HELP)
    weights: dict[str, float] | None = Field(default=None, description="Budget split per output.")


class DecisionRequest(_Body):
    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=2000, description="Why (required).")
    outputs: list[Annotated[str, Field(max_length=80)]] | None = Field(
        default=None,
        max_length=200,
        description="An analysis job's approval only: the uids of the outputs to release "
        "(default all). Released are the outputs every approving supervisor chose.",
    )


class TokenRequest(_Body):
    role: Literal["operator", "supervisor", "admin"]
    subject: str = Field(max_length=200, description="Operator id, or the person's name.")
    expires_in: str | None = Field(default=None, max_length=20, description="e.g. 30d, 12h.")


@router.get("/health", tags=["meta"], **returns(m.Health))
def health(svc: Service = Svc) -> dict[str, Any]:
    """Liveness; needs no token."""
    from sandbox import __version__

    return {"status": "ok", "version": __version__, "executor": svc.settings.executor}


@router.get("/keys/products", tags=["products"], response_class=PlainTextResponse)
def products_public_key(svc: Service = Svc) -> str:
    """The bureau's public key that verifies product manifests (PEM); needs no token."""
    return svc.products_public_key()


@router.get("/catalog", tags=["catalogue"], **returns(m.CatalogView))
def catalog(p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """The catalogue: schema and policy, never rows. Operators see their granted datasets."""
    return svc.catalog_view(p)


@router.get("/grants", tags=["catalogue"], **returns(list[m.GrantView]))
def grants(p: Principal = Caller, svc: Service = Svc) -> list[dict[str, Any]]:
    """Grants: an operator's own, or all for supervisors and admins."""
    return svc.grants_view(p)


@router.post("/explain", tags=["jobs"], **returns(m.Explanation))
def explain(body: ExplainRequest, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Compile a query and show its privacy cost and expected accuracy; reads no data."""
    return svc.explain(
        p,
        sql=body.sql,
        scenario=body.scenario,
        epsilon=body.epsilon,
        delta=body.delta,
        weights=body.weights,
    )


REPLAY: dict[int | str, dict[str, Any]] = {
    200: {
        "model": m.JobView,
        "description": "A replay: the job an earlier request with this Idempotency-Key made, "
        "as it stands now; nothing was recorded or reserved again.",
        "headers": {
            idempotency.REPLAYED_HEADER: {
                "description": "`true`: this answer is a replay.",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    },
    201: {"description": "The job, recorded, compiled and its budget reserved."},
}
IdempotencyKey = Header(
    default=None,
    alias=idempotency.HEADER,
    description="Makes the submission safe to retry (draft-ietf-httpapi-idempotency-key-header)"
    ': 1 to 128 printable ASCII characters, as a quoted string (`"KEY"`) or bare. A retry '
    "with the same key and body answers 200 with the same job and reserves nothing; with "
    "another body, 409 IDEMPOTENCY_KEY_REUSED. Keys are the operator's own and never expire.",
)


@router.post("/jobs", tags=["jobs"], status_code=201, responses=REPLAY, **returns(m.JobView))
def submit(
    body: SubmitRequest,
    request: Request,
    response: Response,
    idempotency_key: str | None = IdempotencyKey,  # read below: every one sent is checked
    p: Principal = Caller,
    svc: Service = Svc,
) -> dict[str, Any]:
    """Submit a query (operators only). It is compiled and its budget reserved now, and it
    runs in the background; poll GET /v1/jobs/{id}. Send an Idempotency-Key to make a
    retry safe: the same key again never makes a second job nor a second charge."""
    submission = svc.submit(
        p,
        sql=body.sql,
        scenario=body.scenario,
        epsilon=body.epsilon,
        delta=body.delta,
        weights=body.weights,
        idempotency_key=idempotency.parse_header(request.headers.getlist(idempotency.HEADER)),
    )
    if submission.replayed:
        response.status_code = 200
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return submission.job


@router.get("/jobs", tags=["jobs"], **returns(list[m.JobView]))
def list_jobs(
    state: str | None = Query(default=None, max_length=40),
    operator: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=1_000_000),
    p: Principal = Caller,
    svc: Service = Svc,
) -> list[dict[str, Any]]:
    """Jobs, newest first: an operator's own, or everyone's for supervisors."""
    return svc.list_jobs(p, state=state, operator=operator, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", tags=["jobs"], **returns(m.JobView))
def get_job(job_id: str, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """One job with its transitions and review decisions."""
    return svc.get_job(p, job_id)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], **returns(m.JobView))
def cancel_job(job_id: str, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Cancel an unfinished job; budget is returned only if it never ran."""
    return svc.cancel_job(p, job_id)


PRODUCT_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The product file, in the format asked for.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": mo.ProductTable.model_json_schema()},
        },
    }
}


@router.get(
    "/jobs/{job_id}/product", tags=["products"], response_class=FileResponse, responses=PRODUCT_FILE
)
def get_product(
    job_id: str, format: Format = Query(default="csv"), p: Principal = Caller, svc: Service = Svc
) -> FileResponse:
    """The released result file; its signed manifest is at /v1/products/{id}/manifest."""
    path, media_type, name = svc.product_file(p, job_id, format)
    return FileResponse(
        path,
        media_type=media_type,
        filename=name,
        headers={"X-Jinyu-Manifest": f"/v1/products/{job_id}/manifest?format={format}"},
    )


@router.get("/products/{product_id}/manifest", tags=["products"], **returns(mo.SignedManifest))
def get_manifest(
    product_id: str,
    format: Format = Query(default="csv"),
    p: Principal = Caller,
    svc: Service = Svc,
) -> dict[str, Any]:
    """The signed manifest (certificate) of one product file: {manifest, signature}."""
    return svc.product_manifest(p, product_id, format)


@router.get("/budget", tags=["budget"], **returns(list[m.BudgetRow]))
def budget(
    operator: str | None = Query(default=None, max_length=200),
    p: Principal = Caller,
    svc: Service = Svc,
) -> list[dict[str, Any]]:
    """Privacy budget per grant and dataset: an operator's own, or any for supervisors."""
    return svc.budget(p, operator=operator)


@router.get("/review", tags=["review"], **returns(list[m.ReviewItem]))
def review_queue(p: Principal = Caller, svc: Service = Svc) -> list[dict[str, Any]]:
    """Jobs waiting for a supervisor's decision (supervisors only)."""
    return svc.review_queue(p)


@router.post("/review/{job_id}", tags=["review"], **returns(m.DecisionOutcome))
def decide(
    job_id: str, body: DecisionRequest, p: Principal = Caller, svc: Service = Svc
) -> dict[str, Any]:
    """Approve or reject a job in review, with a reason (supervisors only). Approving
    an analysis job may choose its ``outputs`` to release (OUTPUT_SELECTION_INVALID for
    an unknown uid, none, a SQL job, a rejection, or a job without outputs)."""
    return svc.decide(p, job_id, decision=body.decision, reason=body.reason, outputs=body.outputs)


@router.get("/audit", tags=["audit"], **returns(list[mo.AuditEventView]))
def audit_search(
    action: str | None = Query(default=None, max_length=100),
    actor: str | None = Query(default=None, max_length=200),
    since: str | None = Query(default=None, max_length=40),
    limit: int = Query(default=100, ge=1, le=1000),
    p: Principal = Caller,
    svc: Service = Svc,
) -> list[dict[str, Any]]:
    """Audit events, newest first (supervisors and admins)."""
    return svc.audit_search(p, action=action, actor=actor, since=since, limit=limit)


@router.get("/audit/verify", tags=["audit"], **returns(mo.VerifyReport))
def audit_verify(p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Recompute the audit log's hashes and check every signed checkpoint."""
    return svc.audit_verify(p)


@router.get("/reports", tags=["audit"], **returns(mo.Report))
def reports(
    operator: str | None = Query(default=None, max_length=200),
    scenario: str | None = Query(default=None, max_length=200),
    p: Principal = Caller,
    svc: Service = Svc,
) -> dict[str, Any]:
    """The supervision report per operator and scenario, with alerts (supervisors)."""
    return svc.reports(p, operator=operator, scenario=scenario)


@router.post("/admin/grants/reload", tags=["admin"], **returns(mo.ReloadResult))
def reload_grants(p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Re-read grants.yaml (admins)."""
    return svc.reload_grants(p)


@router.get("/admin/tokens", tags=["admin"], **returns(list[mo.TokenRecord]))
def list_tokens(p: Principal = Caller, svc: Service = Svc) -> list[dict[str, Any]]:
    """Every token's record, never the secret (admins)."""
    return svc.list_tokens(p)


@router.post("/admin/tokens", tags=["admin"], status_code=201, **returns(mo.IssuedToken))
def create_token(body: TokenRequest, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Issue a token; the secret is in this response only (admins)."""
    return svc.create_token(p, role=body.role, subject=body.subject, expires_in=body.expires_in)


@router.post("/admin/tokens/{token_id}/revoke", tags=["admin"], **returns(mo.TokenRecord))
def revoke_token(token_id: str, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """Revoke a token (admins)."""
    return svc.revoke_token(p, token_id)
