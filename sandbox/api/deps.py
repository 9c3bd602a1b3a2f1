"""Request dependencies: the service and the authenticated caller."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandbox.service import Service
from sandbox.tokens import Principal

bearer = HTTPBearer(auto_error=False, description="A token from `sandbox token create`.")


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def get_principal(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    """The caller (401 if the token is missing, unknown, expired or revoked; 429 if the
    token made too many requests this minute)."""
    svc = get_service(request)
    token = creds.credentials if creds is not None else None
    client = request.client.host if request.client else ""
    principal = svc.authenticate(token, client=client)
    request.state.principal = principal
    return principal
