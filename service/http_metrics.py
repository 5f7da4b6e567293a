"""BentoML's HTTP traffic metrics, labelled by route template instead of by raw path.

BentoML's metrics middleware, the outermost of its app, labels every request with ``scope["path"]``:
every made-up path (and every job id) became a new label value, and ``/metrics`` grew without bound
(500 made-up paths: 0.6 -> 2.8 MB). No setting changes that, and fitgate's own middlewares run inside
it, so ``install()`` replaces the class BentoML instantiates (BentoML imports it from ``instruments``
when it builds the app, after fitgate's service module ran): the subclass hands BentoML a copy of the
scope whose path is the route template, and gives the app inside it the real path back.
tests/service/test_monitoring.py fails if a BentoML upgrade stops reading the class from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware import route_template

REAL_PATH = "fitgate.real_path"  # the request's path, kept in the scope while metrics see its route template


def install(routes: Sequence[BaseRoute]) -> None:
    """Label BentoML's HTTP metrics by the templates of ``routes`` (before the service builds its ASGI app)."""
    from bentoml._internal.server.http import instruments

    base: Any = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "labels_by_route", False):
        return

    class RealPath:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if REAL_PATH in scope:
                scope = {**scope, "path": scope[REAL_PATH]}
                del scope[REAL_PATH]
            await self.app(scope, receive, send)

    class RouteLabelledTrafficMetrics(base):  # type: ignore[misc]
        labels_by_route = True

        def __init__(self, app: ASGIApp, **options: Any) -> None:
            super().__init__(RealPath(app), **options)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                scope = {**scope, "path": route_template(routes, scope), REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics  # type: ignore[misc,assignment]
