"""Per-request plumbing of the console: the caller's session and language, role
checks, rendering, and the one place that turns refusals into HTML pages.

``page(request, roles, build)`` runs every page: it finds the session, checks the
role (a signed-out caller is sent to the sign-in form, a wrong role gets a 403 page),
calls ``build(ctx)``, renders any refusal as an error page with its code, and adds
the security headers and the session cookie. Nothing here is a business rule.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sandbox.errors import GENERIC_FAILURE, Forbidden, NotFound, SandboxError, SystemFailure
from sandbox.service import Service
from sandbox.tokens import Principal, Role
from sandbox.web import i18n, session
from sandbox.web.render import ENV
from sandbox.web.session import Session, SessionStore

log = logging.getLogger("sandbox.web")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SUPERVISOR = (Role.SUPERVISOR,)
OPERATOR = (Role.OPERATOR,)
CONSOLE_ROLES = (Role.SUPERVISOR, Role.OPERATOR)

_state_lock = threading.Lock()


class SignInRequired(Exception):
    """No live signed-in session: the page redirects to the sign-in form."""


@dataclass
class Ctx:
    request: Request
    svc: Service
    t: i18n.Translator
    store: SessionStore
    session: Session | None
    new_sid: str | None = None
    clear_session: bool = False

    @property
    def principal(self) -> Principal:
        if self.session is None or self.session.principal is None:
            raise SignInRequired()
        return self.session.principal

    def require(self, roles: tuple[Role, ...]) -> Principal:
        """The signed-in caller if its role may see this page (403 otherwise)."""
        p = self.signed_in()
        if p is None:
            raise SignInRequired()
        if p.role not in roles:
            raise Forbidden(
                f"The {p.role.value} role may not see this page.",
                hint="Sign in with a token of the right role.",
            )
        return p

    def signed_in(self) -> Principal | None:
        """The caller, if the session is signed in and its token is still live."""
        if self.session is None or self.session.principal is None:
            return None
        p = self.session.principal
        if not token_live(self.svc, p):
            self.store.delete(self.session)
            self.session = None
            self.clear_session = True
            return None
        return p

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        p = self.session.principal if self.session is not None else None
        here = self.request.url.path
        if self.request.url.query:
            here += "?" + self.request.url.query
        context = {
            "t": self.t,
            "locale": self.t.locale,
            "principal": p,
            "role": p.role.value if p is not None else None,
            "csrf": self.session.csrf if self.session is not None else "",
            "path": self.request.url.path,
            "lang_href": f"/console/lang/{self.t.other}?next={quote(here, safe='')}",
            "flashes": self.session.pop_flashes() if self.session is not None else [],
            "nav": nav_for(p),
            "active_nav": active_nav(nav_for(p), self.request.url.path),
            **values,
        }
        html = ENV.get_template(template).render(context)
        return HTMLResponse(html, status_code=status)

    def new_session(self, principal: Principal | None) -> Session:
        if self.session is not None:
            self.store.delete(self.session)
        self.new_sid, self.session = self.store.create(principal)
        self.clear_session = False
        return self.session


def nav_for(p: Principal | None) -> list[tuple[str, str]]:
    if p is None:
        return []
    if p.role == Role.SUPERVISOR:
        return [
            ("/console/review", "nav.review"),
            ("/console/jobs", "nav.jobs"),
            ("/console/budgets", "nav.budgets"),
            ("/console/audit", "nav.audit"),
        ]
    return [("/console/my", "nav.my")]


def active_nav(nav: list[tuple[str, str]], path: str) -> str:
    """The nav entry the page belongs to (the longest matching prefix)."""
    found = [href for href, _ in nav if path == href or path.startswith(href + "/")]
    return max(found, key=len) if found else ""


def token_live(svc: Service, p: Principal) -> bool:
    from sandbox import tokens

    try:
        return session.token_is_live(tokens.get_token(svc.conn(), p.token_id))
    except NotFound:
        return False


def session_store(request: Request) -> SessionStore:
    state = request.app.state
    with _state_lock:
        store = getattr(state, "console_sessions", None)
        if store is None:
            store = SessionStore()
            state.console_sessions = store
    return store


def make_ctx(request: Request) -> Ctx:
    locale = i18n.negotiate(
        request.headers.get("accept-language"), request.cookies.get(i18n.COOKIE)
    )
    store = session_store(request)
    return Ctx(
        request=request,
        svc=request.app.state.service,
        t=i18n.Translator(locale),
        store=store,
        session=store.get(request.cookies.get(session.COOKIE)),
    )


def finish(ctx: Ctx, response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if ctx.new_sid is not None and ctx.session is not None:
        session.set_cookie(response, ctx.request, ctx.new_sid, ctx.session)
    elif ctx.clear_session:
        session.clear_cookie(response, ctx.request)
    return response


def error_page(ctx: Ctx, exc: SandboxError) -> HTMLResponse:
    if isinstance(exc, SystemFailure):
        exc = SystemFailure(GENERIC_FAILURE, code=exc.code if exc.code != "INTERNAL" else None)
    return ctx.render(
        "error.html",
        status=exc.http_status,
        code=exc.code,
        message=exc.message,
        hint=exc.hint,
    )


def manifest_download(manifest: dict[str, Any], filename: str) -> Response:
    """A product's signed manifest {manifest, signature} as a JSON attachment."""
    body = json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8")
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def page(
    request: Request, roles: tuple[Role, ...] | None, build: Callable[[Ctx], Response]
) -> Response:
    """Run one page: role check, build, and the same error handling for every page."""
    ctx = make_ctx(request)
    try:
        if roles is not None:
            ctx.require(roles)
        response = build(ctx)
    except SignInRequired:
        here = request.url.path
        response = redirect("/console/signin?next=" + quote(here, safe=""))
    except SandboxError as exc:
        response = error_page(ctx, exc)
    except Exception as exc:  # noqa: BLE001 - never a stack trace to a browser
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        response = error_page(ctx, SystemFailure(GENERIC_FAILURE, code="INTERNAL"))
    return finish(ctx, response)


def safe_next(target: str | None) -> str:
    """Only local console paths (no open redirect)."""
    if (
        target
        and target.startswith("/console")
        and not target.startswith("//")
        and "\\" not in target
    ):
        return target
    return "/console"


def home_for(p: Principal) -> str:
    return "/console/review" if p.role == Role.SUPERVISOR else "/console/my"
