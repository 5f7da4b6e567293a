"""The per-model batcher: merges concurrent requests, keeps answers in order, retires cleanly."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from fitgate.errors import InvalidRequest
from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from models.runtime import OnnxClassifier, Prediction
from service.predictor import Batcher, LoadedModel, _Pending


class _EchoPredictions:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def answers(self) -> list[Prediction]:
        return [Prediction(label=t, confidence=1.0, probabilities={t: 1.0}, truncated=False) for t in self.texts]


class CountingClassifier:
    """Stands in for ONNX Runtime only to count calls; answers echo the text so order is checkable."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def predict(self, texts: list[str]) -> _EchoPredictions:
        self.calls.append(texts)
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return _EchoPredictions(texts)


class RecordingMonitor:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[Any] = []
        self.fail = fail

    def observe(self, batch: Any) -> None:
        if self.fail:
            raise ValueError("monitor broke")
        self.batches.append(batch)


def _model(classifier: Any, monitor: Any = None) -> LoadedModel:
    return LoadedModel(ModelName.parse("t/m"), "v1", classifier, monitor or RecordingMonitor())


async def _ask(model: LoadedModel, texts: list[str]) -> list[str]:
    future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
    await model.queue.put(_Pending(texts, future))
    return [p.label for p in await future]


def test_concurrent_requests_share_one_call_and_get_their_own_answers() -> None:
    async def scenario() -> None:
        classifier = CountingClassifier()
        model = _model(classifier)
        task = asyncio.create_task(Batcher(max_size=64, max_wait_ms=20).run(model))
        answers = await asyncio.gather(*(_ask(model, [f"t{i}", f"u{i}"]) for i in range(10)))
        assert answers == [[f"t{i}", f"u{i}"] for i in range(10)]
        assert len(classifier.calls) < 10  # merged
        task.cancel()

    asyncio.run(scenario())


def test_every_batch_is_observed_by_the_monitor() -> None:
    async def scenario() -> None:
        monitor = RecordingMonitor()
        model = _model(CountingClassifier(), monitor)
        task = asyncio.create_task(Batcher(max_size=64, max_wait_ms=20).run(model))
        await asyncio.gather(*(_ask(model, [f"t{i}"]) for i in range(6)))
        assert sorted(t for batch in monitor.batches for t in batch.texts) == sorted(f"t{i}" for i in range(6))
        task.cancel()

    asyncio.run(scenario())


def test_a_broken_monitor_never_costs_a_prediction() -> None:
    async def scenario() -> None:
        model = _model(CountingClassifier(), RecordingMonitor(fail=True))
        task = asyncio.create_task(Batcher(max_size=1, max_wait_ms=0).run(model))
        assert await _ask(model, ["still answered"]) == ["still answered"]
        task.cancel()

    asyncio.run(scenario())


def test_batches_never_exceed_the_size_limit_by_more_than_one_request() -> None:
    async def scenario() -> None:
        classifier = CountingClassifier()
        model = _model(classifier)
        task = asyncio.create_task(Batcher(max_size=4, max_wait_ms=20).run(model))
        await asyncio.gather(*(_ask(model, [f"t{i}"]) for i in range(12)))
        assert all(len(call) <= 4 for call in classifier.calls)
        task.cancel()

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_requests_and_the_batcher_keeps_serving() -> None:
    async def scenario() -> None:
        model = _model(CountingClassifier(fail_on="bad"))
        task = asyncio.create_task(Batcher(max_size=1, max_wait_ms=0).run(model))
        with pytest.raises(RuntimeError, match="boom"):
            await _ask(model, ["bad"])
        assert await _ask(model, ["good"]) == ["good"]
        task.cancel()

    asyncio.run(scenario())


def test_retirement_answers_everything_queued_before_it_then_stops() -> None:
    async def scenario() -> None:
        model = _model(CountingClassifier())
        pending = [asyncio.create_task(_ask(model, [f"t{i}"])) for i in range(5)]
        await asyncio.sleep(0)  # let them queue
        model.queue.put_nowait(None)
        await Batcher(max_size=2, max_wait_ms=5).run(model)  # returns once retired
        assert [await p for p in pending] == [[f"t{i}"] for i in range(5)]

    asyncio.run(scenario())


class MeetingClassifier(CountingClassifier):
    """Each call waits (up to 5 s) until ``parties`` calls are inside at once: only concurrent calls get through."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=5)

    def predict(self, texts: list[str]) -> _EchoPredictions:
        self.barrier.wait()
        return super().predict(texts)


def test_with_two_inference_threads_two_batches_run_at_once() -> None:
    async def scenario() -> None:
        classifier = MeetingClassifier(parties=2)
        model = _model(classifier)
        task = asyncio.create_task(Batcher(max_size=1, max_wait_ms=0, concurrency=2).run(model))
        assert await asyncio.gather(_ask(model, ["a"]), _ask(model, ["b"])) == [["a"], ["b"]]
        task.cancel()

    asyncio.run(scenario())


class GatedClassifier(CountingClassifier):
    """The first call holds until ``release`` is set, so that requests queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def predict(self, texts: list[str]) -> _EchoPredictions:
        if not self.calls:
            self.started.set()
            self.release.wait(5)
        return super().predict(texts)


def test_requests_that_queue_while_the_model_is_busy_go_in_one_batch_without_a_wait() -> None:
    async def scenario() -> None:
        classifier = GatedClassifier()
        model = _model(classifier)
        task = asyncio.create_task(Batcher(max_size=64, max_wait_ms=0).run(model))
        first = asyncio.create_task(_ask(model, ["first"]))
        await asyncio.to_thread(classifier.started.wait, 5)
        queued = [asyncio.create_task(_ask(model, [f"q{i}"])) for i in range(3)]
        await asyncio.sleep(0.05)
        classifier.release.set()
        assert await first == ["first"] and [await q for q in queued] == [["q0"], ["q1"], ["q2"]]
        assert classifier.calls == [["first"], ["q0", "q1", "q2"]]
        task.cancel()

    asyncio.run(scenario())


def test_retirement_waits_for_the_batches_still_running() -> None:
    async def scenario() -> None:
        classifier = MeetingClassifier(parties=2)
        model = _model(classifier)
        pending = [asyncio.create_task(_ask(model, [t])) for t in ("a", "b")]
        await asyncio.sleep(0)
        model.queue.put_nowait(None)
        await Batcher(max_size=1, max_wait_ms=0, concurrency=2).run(model)
        assert all(p.done() for p in pending) and [p.result() for p in pending] == [["a"], ["b"]]

    asyncio.run(scenario())


def test_a_request_the_tokenizer_cannot_read_fails_alone_and_every_other_request_is_answered(
    healthy_run: Path, tmp_path: Path
) -> None:
    """A lone surrogate slipped past the door (the door refuses it: tests/service/test_hostile.py) fails its
    own request with a 422, never the merged batch it shared with other clients' requests."""
    settings = Settings(data_dir=tmp_path / "data")
    registry = open_registry(settings)
    release(healthy_run, ModelName.parse("t/m"), settings, registry, promote=True)
    classifier = OnnxClassifier(registry.bundle_path(ModelName.parse("t/m")))
    classifier.load()

    async def scenario() -> None:
        model = _model(classifier)
        task = asyncio.create_task(Batcher(max_size=64, max_wait_ms=50).run(model))
        requests = [["a poisoned \ud800 text"] if i % 4 == 1 else [f"valid text {i}", "another"] for i in range(12)]
        answers = await asyncio.gather(*(_ask(model, texts) for texts in requests), return_exceptions=True)
        for texts, answer in zip(requests, answers, strict=True):
            if "\ud800" in texts[0]:
                assert isinstance(answer, InvalidRequest) and "tokenizer cannot read" in answer.message
            else:
                assert isinstance(answer, list) and len(answer) == 2
        task.cancel()

    asyncio.run(scenario())
