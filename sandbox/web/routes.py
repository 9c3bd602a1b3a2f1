"""The supervisor console: server-rendered pages under /console over the one Service.

Pages (docs/console.md describes each):

- ``/console/signin``: a token signs in (supervisor or operator); ``/console/signout``.
- supervisors: ``/console/review`` (the queue), ``/console/jobs/{id}`` (what would be
  released, the operator's history, approve/reject with a reason), ``/console/jobs``,
  ``/console/budgets`` (per grant: spent over time, outcomes, refusals, alerts),
  ``/console/audit`` (searchable timeline, verification, last signed checkpoint).
- operators: ``/console/my`` (own jobs, budgets, products) and ``/console/my/jobs/{id}``
  (with download links once released).

Handlers only unpack the request, call Service methods and render a template; every
rule (roles, ownership, reasons, states) is the Service's. Every POST checks the
session's CSRF token first; a role that may not see a page gets a 403 page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from sandbox.errors import AuthError, BadInput, NotFound, SandboxError
from sandbox.service import Service
from sandbox.web import analysis, charts, i18n, session
from sandbox.web.context import (
    CONSOLE_ROLES,
    OPERATOR,
    SUPERVISOR,
    Ctx,
    home_for,
    manifest_download,
    page,
    redirect,
    safe_next,
)
from sandbox.web.render import budget_bar, event_text, grant_expired, released_table

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
MAX_REASON = 2000
AUDIT_ACTIONS = (
    "job.submitted",
    "job.refused",
    "job.in_review",
    "job.released",
    "job.rejected",
    "job.failed",
    "review.approved",
    "review.rejected",
    "budget.charged",
    "product.released",
    "product.downloaded",
    "token.issued",
    "token.revoked",
    "auth.failed",
)

router = APIRouter(include_in_schema=False)
router.include_router(analysis.router)  # an analysis job's figures (issue 18)

__all__ = ["create_router", "router"]


def create_router(service: Service | None = None) -> APIRouter:
    """The console's router (the Service comes from ``app.state.service``)."""
    return router


# --- entry, sign-in, language, static ---------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    return redirect("/console")


@router.get("/console")
def consolehome_for(request: Request) -> Response:
    def build(ctx: Ctx) -> Response:
        p = ctx.signed_in()
        if p is None or p.role not in CONSOLE_ROLES:
            return redirect("/console/signin")
        return redirect(home_for(p))

    return page(request, None, build)


@router.get("/console/signin")
def signin_form(request: Request, next: str = "") -> Response:
    def build(ctx: Ctx) -> Response:
        p = ctx.signed_in()
        if p is not None and p.role in CONSOLE_ROLES:
            return redirect(home_for(p))
        if ctx.session is None:
            ctx.new_session(None)
        return ctx.render("signin.html", next=safe_next(next), error=None)

    return page(request, None, build)


@router.post("/console/signin")
def signin(
    request: Request, token: str = Form(""), csrf: str = Form(""), next: str = Form("")
) -> Response:
    def build(ctx: Ctx) -> Response:
        session.check_csrf(ctx.session, csrf)
        client = request.client.host if request.client else ""
        try:
            p = ctx.svc.authenticate(token.strip(), client=client)
        except AuthError:
            return ctx.render(
                "signin.html", status=401, next=safe_next(next), error="signin.invalid"
            )
        if p.role not in CONSOLE_ROLES:
            return ctx.render(
                "signin.html", status=403, next=safe_next(next), error="signin.wrong_role"
            )
        s = ctx.new_session(p)  # a fresh id once signed in
        s.flash("ok", "flash.signed_in", name=p.name)
        target = safe_next(next)
        return redirect(target if target != "/console" else home_for(p))

    return page(request, None, build)


@router.post("/console/signout")
def signout(request: Request, csrf: str = Form("")) -> Response:
    def build(ctx: Ctx) -> Response:
        session.check_csrf(ctx.session, csrf)
        if ctx.session is not None:
            ctx.store.delete(ctx.session)
        ctx.session = None
        ctx.clear_session = True
        return redirect("/console/signin")

    return page(request, None, build)


@router.get("/console/lang/{locale}")
def switch_language(request: Request, locale: str, next: str = "") -> Response:
    """The language switch: remembers the choice in a cookie and goes back."""
    response = redirect(safe_next(next))
    if locale in i18n.LOCALES:
        response.set_cookie(
            i18n.COOKIE,
            locale,
            max_age=365 * 86400,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    """The console's own CSS, JavaScript and images (no CDN)."""
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES:
        return Response(status_code=404)
    if not path.is_file():
        return Response(status_code=404)
    return FileResponse(
        path,
        media_type=STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# --- supervisors -------------------------------------------------------------------


@router.get("/console/review")
def review_queue(request: Request) -> Response:
    def build(ctx: Ctx) -> Response:
        queue = ctx.svc.review_queue(ctx.principal)
        return ctx.render("review.html", queue=queue)

    return page(request, SUPERVISOR, build)


@router.get("/console/jobs")
def jobs_list(request: Request, state: str = "", operator: str = "") -> Response:
    def build(ctx: Ctx) -> Response:
        found = ctx.svc.list_jobs(
            ctx.principal, state=state or None, operator=operator or None, limit=300
        )
        operators = sorted({g.operator for g in ctx.svc.grants.grants})
        return ctx.render(
            "jobs.html",
            jobs=found,
            state=state,
            operator=operator,
            states=[s.value for s in _states()],
            operators=operators,
        )

    return page(request, SUPERVISOR, build)


def _states() -> list[Any]:
    from sandbox.jobs import State

    return list(State)


def _account(ctx: Ctx, job: dict[str, Any]) -> dict[str, Any] | None:
    """The budget row (grant × dataset) a job is charged to, as the caller may see it."""
    p = ctx.principal
    operator = job["operator"] if p.role.value == "supervisor" else None
    for row in ctx.svc.budget(p, operator=operator):
        if row["grant"] == job.get("grant") and row["dataset"] == job.get("dataset"):
            return row
    return None


def _job_page(ctx: Ctx, job_id: str, *, status: int = 200, error: str | None = None) -> Response:
    p = ctx.principal
    job = ctx.svc.get_job(p, job_id)
    if job.get("kind") == "analysis":  # its own page: ACRO's outputs (sandbox/web/analysis.py)
        return analysis.analysis_page(ctx, job_id, status=status, error=error)
    history = [
        j
        for j in ctx.svc.list_jobs(p, operator=job["operator"], limit=300)
        if j["dataset"] == job["dataset"] and j["id"] != job["id"]
    ]
    reviewers = {d["reviewer"] for d in job.get("decisions", [])}
    may_decide = (
        job["state"] == "in_review" and p.name not in reviewers and job["operator"] != p.name
    )
    return ctx.render(
        "job.html",
        status=status,
        account=_account(ctx, job),
        active_nav="/console/review" if job["state"] == "in_review" else "/console/jobs",
        job=job,
        released=released_table(job),
        history=history,
        may_decide=may_decide,
        decided=p.name in reviewers,
        error=error,
    )


@router.get("/console/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    return page(request, SUPERVISOR, lambda ctx: _job_page(ctx, job_id))


@router.post("/console/jobs/{job_id}/decision")
def decide(
    request: Request,
    job_id: str,
    csrf: str = Form(""),
    decision: str = Form(""),
    reason: str = Form(""),
    choose_outputs: str = Form(""),
    outputs: list[str] = Form([]),
) -> Response:
    """A decision; an analysis job's page sends ``choose_outputs`` and a checkbox per
    output (``outputs``): an approval releases the ticked ones (all ticked by default)."""

    def build(ctx: Ctx) -> Response:
        session.check_csrf(ctx.session, csrf)
        if decision not in ("approve", "reject"):
            raise BadInput("The decision must be 'approve' or 'reject'.")
        text = reason.strip()
        if not text:
            return _job_page(ctx, job_id, status=422, error="review.reason_required")
        if len(text) > MAX_REASON:
            return _job_page(ctx, job_id, status=422, error="review.reason_too_long")
        chosen = list(outputs) if choose_outputs and decision == "approve" else None
        if chosen == []:
            return _job_page(ctx, job_id, status=422, error="analysis.none_chosen")
        try:
            out = ctx.svc.decide(
                ctx.principal, job_id, decision=decision, reason=text, outputs=chosen
            )
        except SandboxError as exc:
            if exc.http_status >= 500:
                raise
            key = f"error.{exc.code}"
            return _job_page(
                ctx, job_id, status=exc.http_status, error=key if ctx.t.has(key) else exc.message
            )
        assert ctx.session is not None
        ctx.session.flash("ok", f"flash.outcome.{out['outcome']}", job=job_id)
        return redirect("/console/review")

    return page(request, SUPERVISOR, build)


@router.get("/console/budgets")
def budgets(request: Request, operator: str = "") -> Response:
    def build(ctx: Ctx) -> Response:
        p = ctx.principal
        rows = ctx.svc.budget(p, operator=operator or None)
        try:
            report: dict[str, Any] | None = ctx.svc.reports(p, operator=operator or None)
        except NotFound:
            report = None
        reserved = ctx.svc.audit_search(p, action="job.budget_reserved", limit=1000)
        charged = ctx.svc.audit_search(p, action="budget.charged", limit=1000)
        series = charts.budget_series(reserved, charged)
        groups = {(g["operator"], g["scenario"]): g for g in (report or {}).get("groups", [])}
        cards = []
        for row in rows:
            total = float(row["total"]) if row.get("total") else None
            cards.append(
                {
                    **row,
                    "chart": charts.spent_chart(
                        series.get((row["grant"], row["dataset"]), []), total=total
                    ),
                    "bar": budget_bar(row),
                    "group": groups.get((row["operator"], row["scenario"])),
                    "expired": grant_expired(row),
                }
            )
        operators = sorted({g.operator for g in ctx.svc.grants.grants})
        return ctx.render(
            "budgets.html",
            cards=cards,
            alerts=(report or {}).get("alerts", []),
            reports_available=report is not None,
            operator=operator,
            operators=operators,
        )

    return page(request, SUPERVISOR, build)


@router.get("/console/audit")
def audit_page(
    request: Request, action: str = "", actor: str = "", q: str = "", limit: int = 200
) -> Response:
    def build(ctx: Ctx) -> Response:
        from sandbox import audit

        p = ctx.principal
        limit_n = max(1, min(limit, 1000))
        found = ctx.svc.audit_search(
            p,
            action=action.strip() or None,
            actor=actor.strip() or None,
            limit=1000 if q.strip() else limit_n,
        )
        needle = q.strip().lower()
        if needle:
            found = [e for e in found if needle in event_text(e)][:limit_n]
        verify = ctx.svc.audit_verify(p)  # role-checked: supervisors and admins
        cps = audit.checkpoints(ctx.svc.conn())
        return ctx.render(
            "audit.html",
            events=found,
            verify=verify,
            checkpoint=cps[-1] if cps else None,
            action=action,
            actor=actor,
            q=q,
            limit=limit_n,
            actions=AUDIT_ACTIONS,
        )

    return page(request, SUPERVISOR, build)


# --- operators ---------------------------------------------------------------------


@router.get("/console/my")
def my_view(request: Request) -> Response:
    def build(ctx: Ctx) -> Response:
        p = ctx.principal
        found = ctx.svc.list_jobs(p, limit=300)
        rows = ctx.svc.budget(p)
        for row in rows:
            row["bar"] = budget_bar(row)
            row["expired"] = grant_expired(row)
        return ctx.render(
            "my.html",
            jobs=found,
            budgets=rows,
            products=[j for j in found if j["state"] == "released"],
            grants=ctx.svc.grants_view(p),
        )

    return page(request, OPERATOR, build)


@router.get("/console/my/jobs/{job_id}")
def my_job(request: Request, job_id: str) -> Response:
    def build(ctx: Ctx) -> Response:
        job = ctx.svc.get_job(ctx.principal, job_id)
        return ctx.render(
            "my_job.html",
            job=job,
            formats=["csv", "json", "parquet"],
            account=_account(ctx, job),
            released=released_table(job),  # released jobs only (views.job_view)
        )

    return page(request, OPERATOR, build)


@router.get("/console/my/jobs/{job_id}/product.{fmt}")
def my_product(request: Request, job_id: str, fmt: str) -> Response:
    def build(ctx: Ctx) -> Response:
        if fmt not in ("csv", "json", "parquet"):
            raise NotFound("No such format.", hint="csv, json or parquet.")
        path, media_type, name = ctx.svc.product_file(ctx.principal, job_id, fmt)
        return FileResponse(path, media_type=media_type, filename=name)

    return page(request, OPERATOR, build)


@router.get("/console/my/jobs/{job_id}/manifest.json")
def my_manifest(request: Request, job_id: str) -> Response:
    def build(ctx: Ctx) -> Response:
        manifest = ctx.svc.product_manifest(ctx.principal, job_id)
        return manifest_download(manifest, f"{job_id}.manifest.json")

    return page(request, OPERATOR, build)
