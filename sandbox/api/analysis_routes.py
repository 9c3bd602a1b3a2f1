"""The /v1/analysis-jobs endpoints (issue 18): an operator's Python script under a
scenario, its review detail, and its signed product. Handlers only unpack and call
the service (sandbox/service/analysis.py); docs/api.md and docs/analysis-jobs.md."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox.api import models as m
from sandbox.api import models_oversight as mo
from sandbox.api.deps import get_principal, get_service
from sandbox.api.limits import StrictJSONRoute
from sandbox.api.routes import ERRORS, REPLAY, IdempotencyKey, returns
from sandbox.jobs.analysis import MAX_FILES, MAX_SCRIPT_BYTES
from sandbox.service import Service, idempotency
from sandbox.service.analysis import DEFAULT_ENTRY
from sandbox.tokens import Principal

router = APIRouter(prefix="/v1", responses=ERRORS, route_class=StrictJSONRoute)

Svc = Depends(get_service)
Caller = Depends(get_principal)


class AnalysisJobRequest(BaseModel):
    """One script (``script``, run as ``main.py``) or a small folder (``files`` with
    ``entry``); UTF-8, at most 256 KiB together (SCRIPT_INVALID beyond)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scenario: str = Field(max_length=200, description="The scenario (应用场景) it is for.")
    script: str | None = Field(
        default=None, max_length=MAX_SCRIPT_BYTES, description="The script's text (one file)."
    )
    files: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_FILES,
        description="File name (a Python module name ending .py) -> text, for a folder.",
    )
    entry: str | None = Field(
        default=None, max_length=80, description="The file to run (with files; default main.py)."
    )

    @model_validator(mode="after")
    def _one_form(self) -> AnalysisJobRequest:
        if (self.script is None) == (self.files is None):
            raise ValueError("send either script or files")
        if self.script is not None and self.entry is not None:
            raise ValueError("entry goes with files")
        return self

    def script_files(self) -> tuple[dict[str, str], str]:
        if self.files is not None:
            return dict(self.files), self.entry or DEFAULT_ENTRY
        return {DEFAULT_ENTRY: self.script or ""}, DEFAULT_ENTRY


class AnalysisOutputFile(m.View):
    name: str
    format: str
    bytes: int
    sha256: str
    sdc: dict[str, Any] = {}


class AnalysisOutputView(m.View):
    uid: str
    type: str
    method: str
    status: str  # ACRO's verdict: pass, fail or review
    summary: str
    command: str
    exception: str  # the operator's exception request ("" if none)
    comments: list[str]
    checks: dict[str, str]
    files: list[AnalysisOutputFile]


class AnalysisDetail(m.View):
    entry: str
    files: dict[str, str]
    script_sha256: str
    tables: list[str]
    acro: dict[str, Any]  # ACRO's thresholds (policies/review.yaml acro:)
    acro_version: str | None
    outputs: list[AnalysisOutputView] | None  # None until shown (see docs/api.md)
    refused: list[dict[str, str]] | None
    selections: dict[str, list[str]] | None = None  # approving reviewer -> chosen output uids
    withheld_outputs: list[str] = []  # once released: the uids not released


class AnalysisJobView(m.JobView):
    analysis: AnalysisDetail


class AnalysisManifest(m.View):
    """What an analysis product's signature covers (sandbox/products_analysis.py)."""

    version: int
    kind: str
    product: str
    job: str
    operator: str
    scenario: str
    grant: str
    dataset: str
    grade: str
    script_sha256: str
    tables: list[str]
    acro_version: str
    acro_thresholds: dict[str, Any]
    privacy_loss: dict[str, Any]
    guarantee: str
    outputs: list[dict[str, Any]]  # the released outputs only
    withheld_outputs: list[str] = []  # uids the approving supervisors did not all choose
    selections: list[dict[str, Any]] = []  # {reviewer, outputs}: who chose what
    refused_custom_outputs: int
    reviewers: list[dict[str, Any]]
    times: dict[str, Any]
    result: dict[str, Any]


class AnalysisSignedManifest(m.View):
    manifest: AnalysisManifest
    signature: mo.Signature


SUBMITTED: dict[int | str, dict[str, Any]] = {
    **REPLAY,
    201: {"description": "The job, recorded and queued; held for review (`held: true`)."},
}


@router.post(
    "/analysis-jobs", tags=["analysis"], status_code=201, responses=SUBMITTED, **returns(m.JobView)
)
def submit_analysis(
    body: AnalysisJobRequest,
    request: Request,
    response: Response,
    idempotency_key: str | None = IdempotencyKey,  # read below: every one sent is checked
    p: Principal = Caller,
    svc: Service = Svc,
) -> dict[str, Any]:
    """Submit a Python script (operators with a grant that allows analysis jobs). It
    runs in the runner container on the grant's tables; only ACRO's checked outputs
    come back, and they always wait for supervisors' review. No budget is charged (no
    differential privacy). Until the supervisors decide, the operator sees the job
    held as `in_review` (`held: true`), whatever its run did and however long it took.
    Send an Idempotency-Key to make a retry safe, as for POST /v1/jobs."""
    files, entry = body.script_files()
    submission = svc.submit_analysis(
        p,
        scenario=body.scenario,
        files=files,
        entry=entry,
        idempotency_key=idempotency.parse_header(request.headers.getlist(idempotency.HEADER)),
    )
    if submission.replayed:
        response.status_code = 200
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return submission.job


@router.get("/analysis-jobs/{job_id}", tags=["analysis"], **returns(AnalysisJobView))
def get_analysis_job(job_id: str, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """The job, its script and (for supervisors once it waits for review, for the
    operator once released) ACRO's outputs with verdicts, checks and exception requests."""
    return svc.analysis_detail(p, job_id)


ZIP_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The product archive: the approved ACRO output files.",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get(
    "/analysis-jobs/{job_id}/product",
    tags=["analysis"],
    response_class=FileResponse,
    responses=ZIP_FILE,
)
def get_analysis_product(job_id: str, p: Principal = Caller, svc: Service = Svc) -> FileResponse:
    """The released product (result.zip); its signed manifest is at .../manifest."""
    path, media_type, name = svc.analysis_product_file(p, job_id)
    return FileResponse(
        path,
        media_type=media_type,
        filename=name,
        headers={"X-Jinyu-Manifest": f"/v1/analysis-jobs/{job_id}/manifest"},
    )


MANIFEST = returns(AnalysisSignedManifest)


@router.get("/analysis-jobs/{job_id}/manifest", tags=["analysis"], **MANIFEST)
def get_analysis_manifest(job_id: str, p: Principal = Caller, svc: Service = Svc) -> dict[str, Any]:
    """The signed manifest of a released analysis product: {manifest, signature}."""
    return svc.analysis_manifest(p, job_id)
