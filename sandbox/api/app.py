"""The FastAPI application: ``create_app(settings) -> FastAPI``.

The app holds one ``Service`` (``app.state.service``) that every route calls; the job
worker starts and stops with the app. Extra routers (the supervisor console under
sandbox/web/) are included with ``create_app(settings, extra_routers=[...])``, or by
``sandbox.web`` itself defining ``create_router(service) -> APIRouter``; they should
call the same service methods.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from sandbox.api.analysis_routes import router as analysis_router
from sandbox.api.errors import install_error_handlers
from sandbox.api.limits import BodySizeLimit
from sandbox.api.routes import router
from sandbox.service import Service
from sandbox.settings import Settings

log = logging.getLogger("sandbox.api")


def create_app(
    settings: Settings,
    *,
    service: Service | None = None,
    extra_routers: Iterable[APIRouter] = (),
    include_console: bool = True,
) -> FastAPI:
    """The REST API (and, when present, the browser console) over one Service."""
    svc = service if service is not None else Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    from sandbox import __version__

    app = FastAPI(
        title="Jinyu (晋域) public-data sandbox",
        version=__version__,
        description="Data usable but not visible: submit SQL aggregate queries, receive "
        "differentially private, reviewed, signed data products. Errors have one shape: "
        '{"error": {"code", "message", "hint"}}.',
        lifespan=lifespan,
        openapi_url="/openapi.json",
        # FastAPI's /docs and /redoc pages load scripts from a CDN; on the console's
        # origin such a script could drive a signed-in supervisor's session
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = svc
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(analysis_router)  # /v1/analysis-jobs (issue 18)
    # --- extra faces: the browser console mounts here ---------------------------
    for extra in extra_routers:
        app.include_router(extra)
    if include_console:
        _include_console(app, svc)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def _include_console(app: FastAPI, svc: Service) -> None:
    """Include the web console's router (``sandbox.web.create_router``)."""
    import sandbox.web as web

    app.include_router(web.create_router(svc))
