"""The one place where errors become HTTP responses.

Every error body has the same shape: ``{"error": {"type": ..., "message": ...}}``.
No stack trace ever reaches a client; unexpected errors are logged with one.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fitgate.errors import FitgateError

log = logging.getLogger(__name__)


class Unauthorized(FitgateError):
    status_code = 401


class Forbidden(FitgateError):
    status_code = 403


class PayloadTooLarge(FitgateError):
    status_code = 413


class NoModelDeployed(FitgateError):
    status_code = 503


class InvalidRequest(FitgateError):
    status_code = 422


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": kind, "message": message}}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts[:10])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FitgateError)
    async def _fitgate(request: Request, exc: FitgateError) -> JSONResponse:
        message = exc.message
        if exc.status_code == 500:  # server-side detail (paths, library errors) stays in the log
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
            message = "the server could not complete this request; the error has been logged for the operators"
        return JSONResponse(error_body(type(exc).__name__, message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("InvalidRequest", _validation_message(exc)), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return JSONResponse(
                error_body(
                    "PayloadTooLarge",
                    "request body too large: uploads are limited by "
                    "FITGATE_MAX_UPLOAD_BYTES, predict requests by the text count and length limits",
                ),
                status_code=413,
            )
        return JSONResponse(error_body("HTTPError", str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("InternalError", "an unexpected error occurred; it has been logged"), status_code=500
        )


class BodyLimit:
    """ASGI middleware: stop reading a request body past a per-path limit, as it streams in.

    On overflow it answers 413 with the usual JSON error at once and stops the app from
    reading further (whatever the app then tries to send is dropped), so neither memory
    nor disk ever holds more than the limit.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, tuple[int, str]]) -> None:
        self.app = app
        self.limits = limits  # path -> (bytes, the setting that sets it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.limits:
            await self.app(scope, receive, send)
            return
        limit, setting = self.limits[scope["path"]]
        received = 0
        responded = False

        async def guarded_send(message: Message) -> None:
            if not responded:
                await send(message)

        async def counting_receive() -> Message:
            nonlocal received, responded
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit and not responded:
                responded = True
                too_large = error_body("PayloadTooLarge", f"request body exceeds {limit:,} bytes ({setting})")
                await JSONResponse(too_large, status_code=413)(scope, receive, send)
                raise PayloadTooLarge(too_large["error"]["message"])
            return message

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not responded:
                raise
