"""The one place where errors become HTTP responses.

Every error body has the same shape: ``{"error": {"type": ..., "message": ...}}``, and the
OpenAPI schema declares it (``error_responses``) for every status a route can answer with.
No stack trace ever reaches a client; unexpected errors are logged with one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fitgate.errors import FitgateError

log = logging.getLogger(__name__)

_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's detail, which names nothing


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


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's class, e.g. InvalidRequest or Unauthorized.")
    message: str = Field(description="What was expected, what was found and what to do.")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    401: "Missing or invalid API token.",
    403: "The token lacks the role, or its team does not own the model or job.",
    404: "No such model, version, job or job file.",
    409: "The model or job is in a state that does not allow this.",
    413: "The request body is over the configured size limit.",
    422: "The request is invalid: the message names the field and the problem.",
    503: "No model is deployed yet, or the named model has no promoted version.",
    507: "The server is out of disk space; nothing was stored. Retry later; operators must free space.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with, all with the one error body."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    return ErrorBody(error=ErrorDetail(type=kind, message=message)).model_dump()


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
        if exc.status_code == 400:
            # FastAPI's and Starlette's answer to a body they cannot decode (bytes that are not UTF-8, broken
            # multipart framing): the same client mistake as a body that is not JSON, so the same 422
            reason = "" if exc.detail == _UNPARSABLE_BODY else f" ({exc.detail})"
            return JSONResponse(
                error_body(
                    "InvalidRequest",
                    f"the request body could not be parsed{reason}: send UTF-8 encoded JSON, "
                    "or a multipart/form-data upload to POST /finetune",
                ),
                status_code=422,
            )
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


class LineBreakInPath:
    """ASGI middleware around the whole BentoML app: a URL path with a line break (%0A) gets the usual JSON 422.

    BentoML mounts fitgate's routes with a Starlette ``Mount`` whose pattern (``.*``) stops at a line break,
    so such a request never reached fitgate's handlers and got the outer router's plain-text 404 instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\n" in scope["path"]:
            invalid = error_body(
                "InvalidRequest", "the URL path contains a line break (%0A); no route, model name or job id does"
            )
            await JSONResponse(invalid, status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)
