"""The predict path: current model versions, hot swap, and a per-model micro-batcher.

Each worker keeps the current version of every model it has served loaded. A refresh
task reads the registry pointers every ``model_refresh_seconds``; a newly promoted
version is loaded and verified completely before it replaces the old one, so a request
is always answered by one complete version, and in-flight requests finish on the one
they started with.

Concurrent requests for one model are merged into one ONNX Runtime call (up to
``batch_max_size`` texts, waiting at most ``batch_max_wait_ms``); inside the call texts are
sorted by length so each sub-batch is padded only to its own longest text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
from dataclasses import dataclass, field

from fitgate.errors import ModelNotFound, NoModelDeployed
from fitgate.settings import Settings
from models.names import ModelName
from models.registry import Registry
from models.runtime import OnnxClassifier, Prediction
from service.monitoring import MODELS_LOADED, ModelMonitor, record_current_versions

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[list[Prediction]]


@dataclass
class LoadedModel:
    name: ModelName
    version: str
    classifier: OnnxClassifier
    monitor: ModelMonitor
    queue: asyncio.Queue[_Pending | None] = field(default_factory=asyncio.Queue)  # None: retire after the rest
    task: asyncio.Task[None] | None = None


class Batcher:
    """Runs one model's queued requests in merged batches on a worker thread."""

    def __init__(self, max_size: int, max_wait_ms: float) -> None:
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000

    async def run(self, model: LoadedModel) -> None:
        """Serve the queue until the retirement marker, answering everything queued before it."""
        retiring = False
        while not retiring:
            first = await model.queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first.texts)
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while size < self.max_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(model.queue.get(), timeout)
                except TimeoutError:
                    break
                if item is None:
                    retiring = True
                    break
                batch.append(item)
                size += len(item.texts)
            texts = [t for item in batch for t in item.texts]
            try:
                answers = await asyncio.to_thread(_classify_and_observe, model, texts)
            except Exception as exc:  # one failed batch fails its requests, never the batcher
                log.exception("prediction failed for %s:%s", model.name, model.version)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(answers[start : start + len(item.texts)])
                start += len(item.texts)


def release_freed_memory() -> None:
    """Collect the retired version, then ask glibc to hand freed pages back to the OS.

    Without this, every promotion left its old ONNX Runtime session's memory in the allocator's
    free lists: resident memory grew by about the size of a loaded model per promotion.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _classify_and_observe(model: LoadedModel, texts: list[str]) -> list[Prediction]:
    predictions = model.classifier.predict(texts)
    try:
        model.monitor.observe(predictions)
    except Exception:  # monitoring never costs a prediction
        log.exception("monitoring failed for %s:%s", model.name, model.version)
    return predictions.answers()


class ModelPool:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.batcher = Batcher(settings.batch_max_size, settings.batch_max_wait_ms)
        self._loaded: dict[ModelName, LoadedModel] = {}
        self._locks: dict[ModelName, asyncio.Lock] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._current: dict[str, str] = {}
        self._trial: tuple[tuple[ModelName, str], OnnxClassifier] | None = None
        self._trial_lock = asyncio.Lock()

    def default_model(self) -> ModelName:
        if self.settings.default_model:
            return ModelName.parse(self.settings.default_model)
        latest = self.registry.latest_promoted()
        if latest is None:
            raise NoModelDeployed(
                "no model is deployed yet: upload labelled data to POST /finetune (see the README), "
                "and predict once its job has succeeded"
            )
        return latest

    async def start(self) -> None:
        """Load the default model (when one is deployed) before the first request, and watch the registry."""
        await self._load_default()
        self._ensure_refresher()

    async def _load_default(self) -> None:
        """Load the model /predict answers by default, so its first request finds it warm and /metrics shows it."""
        try:
            await self.get(self.default_model())
        except (NoModelDeployed, ModelNotFound) as exc:
            log.info("default model not loaded: %s", exc.message)
        except Exception:
            log.exception("could not load the default model; the refresher tries again, /predict on demand")

    def _monitor(self, name: ModelName, version: str, classifier: OnnxClassifier) -> ModelMonitor:
        return ModelMonitor(str(name), version, classifier.spec, classifier.served_graph, self.settings)

    async def _load(self, name: ModelName, version: str) -> LoadedModel:
        path = self.registry.bundle_path(name, version)
        classifier = OnnxClassifier(path)
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

    async def predict_version(self, name: ModelName, version: str, texts: list[str]) -> list[Prediction]:
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
                    classifier = OnnxClassifier(self.registry.bundle_path(name, version))
                    await asyncio.to_thread(classifier.load)
                    trial = self._trial = ((name, version), classifier)
        predictions = await asyncio.to_thread(trial[1].predict, texts)
        return predictions.answers()

    async def predict(self, name: ModelName, texts: list[str]) -> tuple[LoadedModel, list[Prediction]]:
        # no await between reading the current model and queueing on it: a swap cannot slip in between,
        # so nothing is ever queued behind an old version's retirement marker
        model = await self.get(name)
        future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        await model.queue.put(_Pending(texts, future))
        return model, await future

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_refresh_seconds)
            try:
                current = await asyncio.to_thread(self.registry.current_versions)
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
                await asyncio.to_thread(release_freed_memory)
