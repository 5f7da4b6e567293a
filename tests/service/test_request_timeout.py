"""BentoML's request timeout, as fitgate installs it: 504 when no response starts in time, no timer left behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.request_timeout import install

install()

SCOPE = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _serve(app: Any, timeout: float) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await TimeoutMiddleware(app, timeout=timeout)(SCOPE, _receive, send)
    return sent


async def _answers(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


def test_a_request_answered_in_time_leaves_no_timer_behind() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        before = _live_timers(loop)
        for _ in range(100):
            sent = await _serve(_answers, timeout=3600)
            assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert _live_timers(loop) == before  # BentoML's own kept 100 timers of an hour each

    asyncio.run(scenario())


def test_a_response_that_does_not_start_in_time_is_a_504_with_the_usual_error_body() -> None:
    cancelled = asyncio.Event()

    async def hangs(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    async def scenario() -> None:
        sent = await asyncio.wait_for(_serve(hangs, timeout=0.05), timeout=10)
        assert sent[0]["status"] == 504
        body = json.loads(sent[1]["body"])
        assert body["error"]["type"] == "Timeout" and "0.05 s" in body["error"]["message"]
        assert cancelled.is_set()  # the stuck handler was stopped, not left running

    asyncio.run(scenario())


def test_a_handler_that_fails_before_answering_fails_at_once_not_after_the_timeout() -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("handler broke")

    async def scenario() -> None:
        try:
            await asyncio.wait_for(_serve(fails, timeout=3600), timeout=5)
        except RuntimeError as exc:
            assert str(exc) == "handler broke"
        else:
            raise AssertionError("the handler's error was swallowed")

    asyncio.run(scenario())


def test_a_response_that_started_in_time_may_take_longer_to_finish() -> None:
    async def streams(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"late but started"})

    async def scenario() -> None:
        sent = await _serve(streams, timeout=0.05)
        assert sent[0]["status"] == 200 and sent[1]["body"] == b"late but started"

    asyncio.run(scenario())
