"""Request-body limits: the size (enforced before any handler reads the body) and
strict JSON (``StrictJSONRoute``: no duplicate keys, no NaN, bounded nesting)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox import strictjson
from sandbox.api.errors import error_response
from sandbox.errors import BadInput


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail="The request body is too large.")


def _too_large(limit: int) -> Any:
    return error_response(
        BadInput(
            "The request body is too large.",
            code="PAYLOAD_TOO_LARGE",
            http_status=413,
            hint=f"The limit is {limit} bytes.",
        )
    )


class BodySizeLimit:
    """413 when Content-Length, or the bytes actually received, pass ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await _too_large(self.max_bytes)(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except BodyTooLarge:
            if not started:
                await _too_large(self.max_bytes)(scope, receive, send)


def check_json_body(body: bytes) -> None:
    """Refuse a body that JSON parsers could read two ways: duplicate keys (the last
    would win here), NaN/Infinity, or nesting deeper than any request needs. Text that
    is not JSON at all is left to FastAPI, which reports it as BAD_REQUEST."""
    try:
        strictjson.loads(body)
    except strictjson.JSONRefused as exc:
        if exc.reason == "duplicate_key":
            raise BadInput(
                f"The key {exc.key!r} appears twice in one JSON object.",
                code="DUPLICATE_KEY",
                http_status=422,
                hint="Send each field once.",
            ) from exc
        if exc.reason == "too_deep":
            raise BadInput(
                f"The body nests deeper than {strictjson.MAX_DEPTH} levels.",
                http_status=422,
                hint="See /openapi.json for the request schema.",
            ) from exc
        if "JSON number" in str(exc):
            raise BadInput(
                "The body is not valid JSON (NaN and Infinity are not JSON numbers).",
                http_status=422,
                hint="Send finite numbers.",
            ) from exc


class StrictJSONRoute(APIRoute):
    """An API route that checks its JSON body with ``check_json_body`` first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            body = await request.body()  # cached: FastAPI reads the same bytes after us
            if body:
                check_json_body(body)
            return await original(request)

        return handler
