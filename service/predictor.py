"""The predict path: current model versions, hot swap, and a per-model micro-batcher.

Each worker keeps the current version of every model it has served loaded. A refresh
task reads the registry pointers every ``model_refresh_seconds``; a newly promoted
version is loaded and verified completely before it replaces the old one, so a request
is always answered by one complete version, and in-flight requests finish on the one
they started with.

Concurrent requests for one model are merged into ONNX Runtime calls (up to ``batch_max_size``
texts; ``inference_threads`` calls at once, each on its share of the cores); inside a call texts
are sorted by length so each sub-batch is padded only to its own longest text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fitgate.devices import usable_cpus
from fitgate.errors import FitgateError, ModelNotFound, NoModelDeployed
from fitgate.settings import Settings
from models.names import ModelName
from models.registry import Registry
from models.runtime import Answer, OnnxClassifier, providers
from service.monitoring import MODELS_LOADED, ModelMonitor, record_current_versions, record_inference

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[list[Answer]]


@dataclass
class LoadedModel:
    name: ModelName
    version: str
    classifier: OnnxClassifier
    monitor: ModelMonitor
    queue: asyncio.Queue[_Pending | None] = field(default_factory=asyncio.Queue)  # None: retire after the rest
    task: asyncio.Task[None] | None = None


class Batcher:
    """Runs one model's queued requests in merged batches, up to ``concurrency`` batches at once on worker threads.

    A batch starts as soon as an inference thread is free and holds what queued meanwhile (up to
    ``max_size`` texts, then waiting up to ``max_wait_ms`` for more): under load the batches grow by
    themselves, and a lone request never waits for company.
    """

    def __init__(self, max_size: int, max_wait_ms: float, concurrency: int = 1) -> None:
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000
        self.concurrency = concurrency

    async def run(self, model: LoadedModel) -> None:
        """Serve the queue until the retirement marker; return once everything queued before it is answered."""
        free = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()
        retiring = False
        try:
            while not retiring:
                await free.acquire()
                first = await model.queue.get()
                if first is None:
                    free.release()
                    break
                batch, retiring = await self._gather(model, first)
                task = asyncio.create_task(_answer(model, batch))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: free.release())
        finally:
            if running:
                await asyncio.wait(set(running))

    async def _gather(self, model: LoadedModel, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` and what is queued behind it, up to the size limit; True when the retirement marker came."""
        batch, size = [first], len(first.texts)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_size:
            if model.queue.empty():
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(model.queue.get(), timeout)
                except TimeoutError:
                    break
            else:
                item = model.queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.texts)
        return batch, False


async def _answer(model: LoadedModel, batch: list[_Pending]) -> None:
    """One ONNX Runtime call for the batch; each request gets its own slice.

    When the merged call fails, each request is run again on its own, so a request that cannot be
    read (or that breaks inference) fails alone with its own error and every other one is answered:
    one client's bad text never costs another client's prediction.
    """
    texts = [t for item in batch for t in item.texts]
    try:
        answers = await asyncio.to_thread(_classify_and_observe, model, texts)
    except Exception as exc:
        if len(batch) == 1:
            _fail(model, batch[0], exc)
            return
        for item in batch:  # one at a time: the culprit fails alone
            try:
                _settle(item, await asyncio.to_thread(_classify_and_observe, model, item.texts))
            except Exception as alone:
                _fail(model, item, alone)
        return
    start = 0
    for item in batch:
        _settle(item, answers[start : start + len(item.texts)])
        start += len(item.texts)


def _settle(item: _Pending, answers: list[Answer]) -> None:
    if not item.future.done():  # a request whose client went away has a cancelled future
        item.future.set_result(answers)


def _fail(model: LoadedModel, item: _Pending, exc: Exception) -> None:
    if not isinstance(exc, FitgateError) or not exc.user_facing:  # the client's own mistake is not logged as a fault
        log.error("prediction failed for %s:%s", model.name, model.version, exc_info=exc)
    if not item.future.done():
        item.future.set_exception(exc)


def settle_heap() -> None:
    """Collect what is garbage, then move every live object out of the garbage collector's sight (``gc.freeze``).

    A loaded worker holds a large, permanent heap (the libraries, the models, their drift references);
    every full collection scanned all of it on the event loop thread, stalling every request in flight
    (the p99 tail at concurrency 32, docs/BENCHMARKS.md §4). Also
    asks glibc to hand freed pages back to the OS: without it, every promotion left its old ONNX Runtime
    session's memory in the allocator's free lists, and resident memory grew by about the size of a
    loaded model per promotion.
    """
    gc.unfreeze()  # a retired version's objects, frozen with the rest, must become collectable again
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _classify_and_observe(model: LoadedModel, texts: list[str]) -> list[Answer]:
    started = time.perf_counter()
    predictions = model.classifier.predict(texts)
    try:
        record_inference(str(model.name), len(texts), time.perf_counter() - started)
        model.monitor.observe(predictions)
    except Exception:  # monitoring never costs a prediction
        log.exception("monitoring failed for %s:%s", model.name, model.version)
    return predictions.answers()


class ModelPool:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        # one-core calls side by side: each worker's share of the CPUs, one call per core by default
        share = max(1, usable_cpus() // settings.workers)
        self.inference_threads = settings.inference_threads or share
        self.threads_per_call = max(1, share // self.inference_threads)
        on_gpu = providers()[0] == "CUDAExecutionProvider"
        batch_size = settings.batch_max_size or (64 if on_gpu else 8)
        self.batcher = Batcher(batch_size, settings.batch_max_wait_ms, self.inference_threads)
        self._loaded: dict[ModelName, LoadedModel] = {}
        self._locks: dict[ModelName, asyncio.Lock] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._current: dict[str, str] = {}
        self._trial: tuple[tuple[ModelName, str], OnnxClassifier] | None = None
        self._trial_lock = asyncio.Lock()
        self._latest: ModelName | None = None  # the latest promoted model, as the refresher last read it

    async def default_model(self) -> ModelName:
        """What /predict answers when no model is named: the configured one, else the latest promoted.

        The latest promoted is read from the registry once and then kept fresh by the refresher (every
        ``model_refresh_seconds``, like the versions), not queried per request: a database round trip on
        the event loop cost more CPU than the request's HTTP handling.
        """
        if self.settings.default_model:
            return ModelName.parse(self.settings.default_model)
        if self._latest is None:
            self._latest = await asyncio.to_thread(self.registry.latest_promoted)
        if self._latest is None:
            raise NoModelDeployed(
                "no model is deployed yet: upload labelled data to POST /finetune (see the README), "
                "and predict once its job has succeeded"
            )
        return self._latest

    def forget_latest(self) -> None:
        """A pointer moved in this worker (promote, rollback): read the latest promoted model again."""
        self._latest = None

    async def start(self) -> None:
        """Load the default model (when one is deployed) before the first request, and watch the registry."""
        await self._load_default()
        settle_heap()
        self._ensure_refresher()

    async def _load_default(self) -> None:
        """Load the model /predict answers by default, so its first request finds it warm and /metrics shows it."""
        try:
            await self.get(await self.default_model())
        except (NoModelDeployed, ModelNotFound) as exc:
            log.info("default model not loaded: %s", exc.message)
        except Exception:
            log.exception("could not load the default model; the refresher tries again, /predict on demand")

    def _classifier(self, bundle: Path) -> OnnxClassifier:
        """A served bundle: its share of the cores per call, idle threads not spinning (``session_options``)."""
        return OnnxClassifier(bundle, threads=self.threads_per_call, spinning=False)

    def _monitor(self, name: ModelName, version: str, classifier: OnnxClassifier) -> ModelMonitor:
        return ModelMonitor(str(name), version, classifier.spec, classifier.served_graph, self.settings)

    async def _load(self, name: ModelName, version: str) -> LoadedModel:
        path = self.registry.bundle_path(name, version)
        classifier = self._classifier(path)
        await asyncio.to_thread(classifier.load)  # verifies checksums before anything is served
        monitor = await asyncio.to_thread(self._monitor, name, version, classifier)
        model = LoadedModel(name, version, classifier, monitor)
        model.task = asyncio.create_task(self.batcher.run(model))
        return model

    async def get(self, name: ModelName) -> LoadedModel:
        model = self._loaded.get(name)
        if model is not None:
            return model
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._loaded:
                return self._loaded[name]
            version = await asyncio.to_thread(self.registry.current, name)
            if version is None:
                if not await asyncio.to_thread(self.registry.versions, name):
                    raise ModelNotFound(f"no model named {name}; GET /models lists the deployed ones")
                raise NoModelDeployed(f"model {name} has no promoted version; promote one first")
            self._loaded[name] = await self._load(name, version)
            MODELS_LOADED.set(len(self._loaded))
            self._ensure_refresher()
            return self._loaded[name]

    def loaded(self, name: ModelName) -> LoadedModel | None:
        """The version of ``name`` this worker serves, if it has loaded one."""
        return self._loaded.get(name)

    async def predict_version(self, name: ModelName, version: str, texts: list[str]) -> list[Answer]:
        """Answer with a version that is not the one served (trying a candidate before promoting it).

        Loaded on demand and kept (one per worker, the last one asked for); its predictions feed no
        metrics and no drift detector, which watch the served traffic only.
        """
        trial = self._trial
        if trial is None or trial[0] != (name, version):
            async with self._trial_lock:
                trial = self._trial
                if trial is None or trial[0] != (name, version):
                    self._trial = None
                    classifier = self._classifier(self.registry.bundle_path(name, version))
                    await asyncio.to_thread(classifier.load)
                    trial = self._trial = ((name, version), classifier)
        predictions = await asyncio.to_thread(trial[1].predict, texts)
        return predictions.answers()

    async def predict(self, name: ModelName, texts: list[str]) -> tuple[LoadedModel, list[Answer]]:
        # no await between reading the current model and queueing on it: a swap cannot slip in between,
        # so nothing is ever queued behind an old version's retirement marker
        model = await self.get(name)
        # a request longer than a batch is queued in batch-sized pieces: the inference threads share it
        step = self.batcher.max_size
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[Answer]]] = []
        for start in range(0, len(texts), step):
            futures.append(loop.create_future())
            model.queue.put_nowait(_Pending(texts[start : start + step], futures[-1]))
        pieces = await asyncio.gather(*futures)
        return model, [answer for piece in pieces for answer in piece]

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_refresh_seconds)
            try:
                current = await asyncio.to_thread(self.registry.current_versions)
                self._latest = await asyncio.to_thread(self.registry.latest_promoted)
            except Exception:
                log.exception("could not read the registry; still serving the loaded versions")
                continue
            record_current_versions(current, self._current)
            self._current = current
            if not self._loaded and current:
                await self._load_default()  # a first model promoted since start, or a startup load that failed
            for name, model in list(self._loaded.items()):
                version = current.get(str(name))
                if not version or version == model.version:
                    continue
                try:
                    replacement = await self._load(name, version)
                except Exception:
                    log.exception("could not load %s:%s; still serving version %s", name, version, model.version)
                    continue
                self._loaded[name] = replacement  # one assignment: requests see old or new, never half
                model.queue.put_nowait(None)  # the old version answers what it holds, then stops
                model.monitor.retire()
                log.info("%s: now serving version %s (was %s)", name, version, model.version)
                if model.task is not None:
                    await asyncio.wait({model.task}, timeout=30)  # its last queued requests, answered
                del model
                await asyncio.to_thread(settle_heap)
