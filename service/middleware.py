"""ASGI middlewares around every route: request body limits, unroutable paths, security headers."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount
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


class UnknownPaths:
    """ASGI middleware around the whole BentoML app: a path no route serves gets the usual JSON error.

    BentoML answers a path that neither it nor the mounted fitgate app routes with a plain-text 404 without
    fitgate's security headers; and its mount pattern (``.*``) stops at a line break, so a path with %0A never
    reached fitgate's handlers. Both now get fitgate's JSON error body and headers: 404, or 422 for a line break.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], headers: dict[str, str]) -> None:
        self.app = app
        self.routes = routes
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif "\n" in scope["path"]:
            invalid = error_body(
                "InvalidRequest", "the URL path contains a line break (%0A); no route, model name or job id does"
            )
            await JSONResponse(invalid, status_code=422, headers=self.headers)(scope, receive, send)
        elif route_template(self.routes, scope) == UNMATCHED_ROUTE:
            unknown = error_body(
                "NotFound", f"no route {scope['path'][:200]!r}; the API's routes are listed at /docs (or /openapi.json)"
            )
            await JSONResponse(unknown, status_code=404, headers=self.headers)(scope, receive, send)
        else:
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


UNMATCHED_ROUTE = "/{unmatched}"
BENTOML_PATHS = frozenset({"/", "/livez", "/healthz", "/readyz", "/metrics", "/schema.json", "/docs.json"})
BENTOML_PREFIXES = ("/assets/", "/static_content/")  # the files of BentoML's index page at /


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The route a request goes to, as its template (``/jobs/{job_id}``): a bounded set of values.

    fitgate's routes by their templates, BentoML's own paths as they are, everything else one value.
    """
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            template: str = getattr(route, "path", UNMATCHED_ROUTE)
            return f"{template}/{{path}}" if isinstance(route, Mount) else template
    path: str = scope["path"]
    if path in BENTOML_PATHS:
        return path
    prefix = next((p for p in BENTOML_PREFIXES if path.startswith(p)), None)
    return f"{prefix}{{path}}" if prefix else UNMATCHED_ROUTE
