"""The ONE place that turns exceptions into HTTP responses.

Every error the API returns, FastAPI's own 404/405/422 included, has the shape
``{"error": {"code", "message", "hint"[, extra safe fields]}}``. System failures are
logged by type only and shown as a generic message (plus the runner's category for
execution failures): no stack trace, no third-party text reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sandbox.errors import (
    GENERIC_FAILURE,
    AuthError,
    BadInput,
    ExecutionFailed,
    NotFound,
    RateLimited,
    SandboxError,
    SystemFailure,
)

log = logging.getLogger("sandbox.api")


def error_response(err: SandboxError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(err, AuthError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.details.get("retry_after", 60))
    body = err.to_dict()
    if isinstance(err, SystemFailure):
        # our own text, but a system detail all the same: clients get the generic message
        body = {"error": {"code": err.code, "message": GENERIC_FAILURE, "hint": ""}}
        if isinstance(err, ExecutionFailed):
            body["error"]["category"] = err.category
    return JSONResponse(body, status_code=err.http_status, headers=headers)


def _http_error(status: int, detail: Any) -> SandboxError:
    if status == 404:
        return NotFound("No such endpoint.", hint="See /openapi.json for the endpoints.")
    if status == 413:
        return BadInput("The request body is too large.", code="PAYLOAD_TOO_LARGE", http_status=413)
    if status == 401:
        return AuthError("No valid token was given.")
    message = detail if isinstance(detail, str) and detail else "The request is malformed."
    return BadInput(message, http_status=status if 400 <= status < 500 else 400)


# the methods a route may declare, in the order a 405's Allow lists them
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The methods the request's path answers, for a 405's ``Allow`` (RFC 9110 15.5.6).

    Starlette's own 405 names only the first route that matched the path, but one path
    is often several routes (GET and POST /v1/jobs): ask every route about each method."""
    routes = request.app.router.routes
    return ", ".join(
        m
        for m in METHODS
        if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)
    )


def _validation_error(exc: RequestValidationError) -> SandboxError:
    problems = []
    for e in exc.errors()[:10]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        problems.append({"field": ".".join(loc), "problem": str(e.get("msg", "invalid"))})
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        message = "The body is not valid JSON."
    elif problems:
        p = problems[0]
        message = f"{p['field'] or 'body'}: {p['problem']}."
    else:
        message = "The request is malformed."
    return BadInput(
        message,
        http_status=422,
        hint="See /openapi.json for the request schema.",
        details={"fields": problems},
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_sandbox_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SandboxError)
        if isinstance(exc, SystemFailure):
            log.error(
                "%s %s failed: %s [%s]",
                request.method,
                request.url.path,
                type(exc).__name__,
                exc.code,
            )
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return error_response(_http_error(exc.status_code, exc.detail))
        allow = allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        hint = f"This path accepts {allow}." if allow else ""
        response = error_response(
            BadInput("This method is not allowed here.", http_status=405, hint=hint)
        )
        response.headers["Allow"] = allow
        return response

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(_validation_error(exc))

    async def on_any_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(SystemFailure(GENERIC_FAILURE, code="INTERNAL"))

    app.add_exception_handler(SandboxError, on_sandbox_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_any_error)
