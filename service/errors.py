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
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return JSONResponse(error_body(type(exc).__name__, exc.message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("InvalidRequest", _validation_message(exc)), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body("HTTPError", str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("InternalError", "an unexpected error occurred; it has been logged"), status_code=500
        )
