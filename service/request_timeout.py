"""BentoML's request timeout, fixed: its timer is cancelled when the request ends.

BentoML 1.4's ``TimeoutMiddleware`` (``traffic.timeout``, 60 s by default: a 504 when a response
has not started in time) schedules a timer per request and never cancels it, so a timer and a future
per request stay alive for the full timeout: at 1,500 requests/s (health probes included), ~90,000 of
each at any time, which Python's full garbage collections scan on the event loop thread (the p99 tail,
docs/BENCHMARKS.md §4). ``install()`` swaps in the same behaviour with the timer cancelled when the
request ends.
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from service.http_errors import error_body


async def _call(self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    def expire() -> None:
        if not started.done():
            started.set_result(False)

    timer = loop.call_later(self.timeout, expire)

    async def tracking_send(message: Message) -> None:
        if not started.done():
            started.set_result(True)
        await send(message)

    app = asyncio.ensure_future(self.app(scope, receive, tracking_send))
    try:
        await asyncio.wait({started, app}, return_when=asyncio.FIRST_COMPLETED)
        if started.done() and not started.result() and app.cancel():
            timed_out = error_body(
                "Timeout", f"the request was not answered within {self.timeout:g} s (BentoML traffic.timeout)"
            )
            await JSONResponse(timed_out, status_code=504)(scope, receive, send)
            return
        await app
    finally:
        timer.cancel()
        if not started.done():
            started.cancel()


def install() -> None:
    """Replace BentoML's ``TimeoutMiddleware.__call__`` (before the service builds its ASGI app)."""
    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
