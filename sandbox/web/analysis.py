"""The console's review page of an analysis job (issue 18; docs/console.md).

``/console/jobs/{id}`` of an analysis job (``routes._job_page`` hands it here) shows
a supervisor each ACRO output (a table from ACRO's CSV as an HTML table, its flagged
cells marked; a figure as an image from ``/console/jobs/{id}/outputs/{name}``),
ACRO's verdict and per-check results and its summary (the reasons), the operator's
exception request and comments, the script (escaped, in ``<pre>``), refused custom
outputs; approve or reject posts to the same ``/console/jobs/{id}/decision`` as any
job (two supervisors for important data: the Service's rule), with a checkbox per
output (all ticked; an approval releases the ticked ones, and only the outputs every
approving supervisor ticked are released; the page says who withheld which).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from sandbox.errors import NotFound
from sandbox.web.context import (
    OPERATOR,
    SECURITY_HEADERS,
    SUPERVISOR,
    Ctx,
    manifest_download,
    page,
)

router = APIRouter(include_in_schema=False)

__all__ = ["analysis_page", "router"]


def _flagged(item: dict[str, Any]) -> set[tuple[int, int]]:
    """(row, column) of cells a failing ACRO check named, in the CSV's data cells (the
    first column of ACRO's CSV is the table's index)."""
    cells: set[tuple[int, int]] = set()
    for positions in ((item.get("sdc") or {}).get("cells") or {}).values():
        for pos in positions if isinstance(positions, list) else []:
            if isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, int) for x in pos):
                cells.add((pos[0], pos[1] + 1))
    return cells


def shown_outputs(ctx: Ctx, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Each output with what the page draws for each of its files, and the approving
    supervisors who did not choose to release it (``withheld_by``)."""
    out = []
    chosen = job["analysis"].get("selections") or {}
    for output in job["analysis"]["outputs"] or []:
        files = []
        for item in output["files"]:
            if item["format"] == "csv":
                table = ctx.svc.analysis_table(ctx.principal, job["id"], item["name"])
                flagged = _flagged(item)
                rows = [
                    [{"value": v, "flagged": (r, c) in flagged} for c, v in enumerate(row)]
                    for r, row in enumerate(table["rows"])
                ]
                files.append({**item, "table": {**table, "rows": rows}})
            else:
                files.append({**item, "src": f"/console/jobs/{job['id']}/outputs/{item['name']}"})
        withheld_by = sorted(who for who, uids in chosen.items() if output["uid"] not in uids)
        out.append({**output, "shown": files, "withheld_by": withheld_by})
    return out


def analysis_page(
    ctx: Ctx, job_id: str, *, status: int = 200, error: str | None = None
) -> Response:
    p = ctx.principal
    job = ctx.svc.analysis_detail(p, job_id)
    reviewers = {d["reviewer"] for d in job.get("decisions", [])}
    may_decide = (
        job["state"] == "in_review" and p.name not in reviewers and job["operator"] != p.name
    )
    return ctx.render(
        "analysis_job.html",
        status=status,
        active_nav="/console/review" if job["state"] == "in_review" else "/console/jobs",
        job=job,
        outputs=shown_outputs(ctx, job),
        may_decide=may_decide,
        decided=p.name in reviewers,
        error=error,
    )


@router.get("/console/jobs/{job_id}/outputs/{name}")
def output_file(request: Request, job_id: str, name: str) -> Response:
    """A figure of an analysis job under review (PNG), for the page's <img>."""

    def build(ctx: Ctx) -> Response:
        if not name.endswith(".png"):
            raise NotFound("Only figures are served here.")
        data, media_type = ctx.svc.analysis_output(ctx.principal, job_id, name)
        return Response(
            data,
            media_type=media_type,
            headers={**SECURITY_HEADERS, "Content-Disposition": "inline"},
        )

    return page(request, SUPERVISOR, build)


@router.get("/console/my/jobs/{job_id}/analysis.zip")
def my_analysis_product(request: Request, job_id: str) -> Response:
    """An operator's released analysis product (downloads are audited)."""

    def build(ctx: Ctx) -> Response:
        path, media_type, name = ctx.svc.analysis_product_file(ctx.principal, job_id)
        return FileResponse(path, media_type=media_type, filename=name)

    return page(request, OPERATOR, build)


@router.get("/console/my/jobs/{job_id}/analysis.manifest.json")
def my_analysis_manifest(request: Request, job_id: str) -> Response:
    """Its signed manifest {manifest, signature} (`sandbox product verify` checks it)."""

    def build(ctx: Ctx) -> Response:
        manifest = ctx.svc.analysis_manifest(ctx.principal, job_id)
        return manifest_download(manifest, f"{job_id}.zip.manifest.json")

    return page(request, OPERATOR, build)
