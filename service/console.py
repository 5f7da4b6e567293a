"""The web console and the API docs: static pages served by the service itself, nothing from elsewhere.

Why static pages and a little JavaScript, not server-rendered HTML with htmx: the console signs
in with the same bearer token as the API, kept in the browser's sessionStorage (no cookie, so no
CSRF to defend), and a browser sends a bearer header only on requests a script makes. So every
page is a fixed shell whose script calls the JSON API that curl users call, with the caller's
token: the console can do nothing the API would not let that token do, and there is no second,
HTML rendering of each answer to keep in step. The scripts build the DOM with ``textContent``
only (``service/console/assets/console.js``), which makes every user-supplied text — labels,
file names, model names, rows — inert. The one library is uPlot (MIT, vendored with its licence
under ``assets/vendor/uplot``) for the live learning curves: 50 kB, canvas, no dependencies.

The API docs (``/docs``) are Swagger UI from the copy BentoML ships inside its wheel (so it is
installed with the service and never fetched from a CDN), started by a script file rather than
an inline one, under the same Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).parent / "console"
SWAGGER_UI_DIR = Path(str(files("bentoml._internal.server") / "static_content"))  # Swagger UI 5, Apache-2.0

# No inline script, no other origin. Images may be blob: URLs (plots fetched with the token) and
# data: URLs (Swagger UI's icons); nothing may frame the console.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

PAGES = {
    "/": "index.html",
    "/console/jobs/{job_id}": "job.html",
    "/console/models": "models.html",
    "/docs": "docs.html",
}


def add_console(app: FastAPI) -> None:
    """The console's pages, its assets and the API docs, on the app that serves the API."""

    def page(file_name: str) -> Callable[[], Awaitable[FileResponse]]:
        async def serve() -> FileResponse:
            return FileResponse(CONSOLE_DIR / file_name, media_type="text/html", headers={"cache-control": "no-cache"})

        return serve

    for path, file_name in PAGES.items():
        app.add_api_route(path, page(file_name), methods=["GET"], include_in_schema=False)
    app.mount("/console/assets", StaticFiles(directory=CONSOLE_DIR / "assets"), name="console-assets")
    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
