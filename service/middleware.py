"""ASGI middlewares around every route: request body limits, unroutable paths, security headers."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fitgate.errors import PayloadTooLarge
from service.http_errors import error_body


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


class SecurityHeaders:
    """ASGI middleware: the same security headers (CSP first) on every response the app sends."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in self.headers if k not in present),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)
