"""The supervisor console (server-rendered pages under /console); see docs/console.md.

``create_app`` includes ``create_router(service)``; the heavy imports (Jinja2, the
service) happen only then, so importing ``sandbox.web`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["create_router"]


def create_router(service: Any = None) -> APIRouter:
    """The console's APIRouter (pages read the Service from ``app.state.service``)."""
    from sandbox.web.routes import create_router as make

    return make(service)
