"""The one place where fitgate's errors (``fitgate/errors.py``) become HTTP responses.

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

from fitgate.errors import FitgateError

log = logging.getLogger(__name__)

_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's detail, which names nothing


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
    429: "The team has as many fine-tune jobs queued or running as it may; wait for one to end, or cancel one.",
    503: "No model is deployed yet, or the named model has no promoted version.",
    507: "The server is out of disk space; nothing was stored. Retry later; operators must free space.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with, all with the one error body."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of an error response (also sent by the middlewares, which answer before any route)."""
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
        if not exc.user_facing:  # server-side detail (paths, library errors) stays in the log
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message, exc_info=exc.__cause__)
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
