"""fitgate over HTTP: a BentoML service with a mounted FastAPI app.

BentoML runs the processes and gives ``/livez``, ``/readyz`` and ``/metrics``; the FastAPI
app carries fitgate's routes so that every route validates with pydantic and every error
leaves through one handler with one JSON shape. Handlers parse, authorize, call a plain
class, and shape the response; training and ONNX code live in ``training/`` and ``models/``.

    bentoml serve service.app:Fitgate --port 3000
"""

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from fitgate.errors import DiskFull, ModelNotFound, is_disk_full
from fitgate.settings import Settings
from models.gate import open_registry
from models.names import ModelName
from service.auth import Authenticator, Caller, Role
from service.errors import (
    BodyLimit,
    InvalidRequest,
    LineBreakInPath,
    PayloadTooLarge,
    error_responses,
    install_error_handlers,
)
from service.jobs import JobRunner, JobStore
from service.monitoring import PREDICT_LATENCY
from service.predictor import ModelPool
from training.arguments import parse_arguments
from training.loop import load_splits

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
import bentoml

log = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".txt")
SERVER_ONLY_ARGUMENTS = {"base_model"}  # a request must not point the server at arbitrary paths


# --- request and response shapes --------------------------------------------------------------


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to classify.")
    model: str | None = Field(None, description="team/name; default: the configured default model.")


class PredictionOut(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[PredictionOut]


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    """A job as a client sees it (``Job.public()``): never the server's paths."""

    model_config = ConfigDict(extra="allow")  # a field added to Job.public() reaches clients, not filtered out

    job_id: str
    model: str
    status: str = Field(description="queued, running, succeeded, blocked, failed or cancelled")
    created_at: float
    started_at: float | None
    ended_at: float | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    reason: str | None
    attempts: int
    arguments: dict[str, Any]


class JobReport(BaseModel):
    job_id: str
    diagnosis: dict[str, Any] | None = Field(description="null when the run ended before diagnosis")
    report: dict[str, Any]


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the version's summary: verdict, metrics, int8

    model: str
    version: str
    current: bool
    created_at: float


class PointerOut(BaseModel):
    model: str
    current: str = Field(description="the version now served")


PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "A PNG plot."}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's error responses: 401, 403 and 422 on every route (each authenticates and validates its
    request; declaring 422 also replaces FastAPI's default 422 schema, a shape fitgate never sends)."""
    return error_responses(401, 403, 422, *codes)


# --- the application ----------------------------------------------------------------------------


class Fitgate:
    """Everything one serving worker holds: settings, auth, registry, jobs and loaded models."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator(self.settings)
        self.registry = open_registry(self.settings)
        self.jobs = JobStore(self.settings.data_dir / "jobs.db", self.settings.sqlite_journal_mode)
        self.pool = ModelPool(self.registry, self.settings)
        self.runner: JobRunner | None = None

    def start_training(self) -> None:
        if not self.settings.training_enabled:
            return
        interrupted = self.jobs.recover_interrupted()
        if interrupted:
            log.warning("marked %d interrupted jobs as failed: %s", len(interrupted), interrupted)
        self.jobs.purge_uploads(self.settings.upload_retention_days)
        self.runner = JobRunner(self.jobs, self.settings)
        self.runner.start()


def create_app(core: Fitgate) -> FastAPI:
    app = FastAPI(title="fitgate", version="0.1.0")
    install_error_handlers(app)
    s = core.settings
    app.add_middleware(
        BodyLimit,
        limits={
            # multipart framing on top of the file; UTF-8 needs at most 4 bytes a character
            "/finetune": (s.max_upload_bytes + 64 * 1024, "FITGATE_MAX_UPLOAD_BYTES"),
            "/predict": (
                4 * s.max_chars_per_text * s.max_texts_per_request + 64 * 1024,
                "FITGATE_MAX_TEXTS_PER_REQUEST x FITGATE_MAX_CHARS_PER_TEXT",
            ),
        },
    )

    def caller_for(role: Role) -> Any:
        def dependency(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
            host = request.client.host if request.client else None
            return core.auth.authenticate(authorization, host, role)

        return Depends(dependency)

    @app.post("/predict", responses=errors(404, 413, 503))
    async def predict(body: PredictRequest, caller: Annotated[Caller, caller_for("predict")]) -> PredictResponse:
        if len(body.texts) > s.max_texts_per_request:
            raise InvalidRequest(
                f"{len(body.texts)} texts in one request; the limit is {s.max_texts_per_request} "
                "(FITGATE_MAX_TEXTS_PER_REQUEST): split the request"
            )
        for i, text in enumerate(body.texts):
            if len(text) > s.max_chars_per_text:
                raise InvalidRequest(
                    f"texts[{i}] has {len(text):,} characters; the limit is {s.max_chars_per_text:,} "
                    "(FITGATE_MAX_CHARS_PER_TEXT)"
                )
        name = ModelName.parse(body.model) if body.model else core.pool.default_model()
        core.auth.require_model_access(caller, name)
        started = time.perf_counter()
        model, answers = await core.pool.predict(name, body.texts)
        PREDICT_LATENCY.labels(str(name)).observe(time.perf_counter() - started)
        return PredictResponse(
            model=str(name),
            version=model.version,
            predictions=[PredictionOut(**a.__dict__) for a in answers],
        )

    @app.post("/finetune", status_code=202, responses=errors(413, 507))
    async def finetune(
        request: Request,
        file: Annotated[UploadFile, File(description="labelled CSV, TSV or JSONL")],
        model_name: Annotated[str, Form(description="team/name")],
        caller: Annotated[Caller, caller_for("finetune")],
        parameters: Annotated[str, Form(description="JSON object of training arguments")] = "{}",
    ) -> JobAccepted:
        name = ModelName.parse(model_name)
        core.auth.require_model_access(caller, name)
        try:
            raw = json.loads(parameters)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"parameters is not valid JSON ({exc.msg}); send a JSON object") from exc
        if not isinstance(raw, dict):
            raise InvalidRequest('parameters must be a JSON object such as {"num_train_epochs": 3}')
        if forbidden := SERVER_ONLY_ARGUMENTS & raw.keys():
            raise InvalidRequest(f"{sorted(forbidden)} are server settings, not request parameters")
        arguments = parse_arguments(raw).model_dump(exclude_defaults=True)
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise InvalidRequest(f"upload a .csv, .tsv or .jsonl file (got {file.filename!r})")
        job_id = core.jobs.new_id()
        folder = core.settings.data_dir / "uploads" / job_id
        folder.mkdir(parents=True)
        target = folder / f"data{suffix}"  # never the client's file name: nothing escapes the data directory
        try:
            size = 0
            with target.open("wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > core.settings.max_upload_bytes:
                        raise PayloadTooLarge(
                            f"upload exceeds {core.settings.max_upload_bytes:,} bytes (FITGATE_MAX_UPLOAD_BYTES)"
                        )
                    out.write(chunk)
            # bad data is refused now, with its specific message, not minutes later in a failed job
            await asyncio.to_thread(load_splits, target, parse_arguments(raw))
            job = core.jobs.create(job_id, name.team, str(name), arguments, target)
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)  # nothing is kept for a request that was refused
            if is_disk_full(exc):
                raise DiskFull(
                    "the server's disk is full, so the upload was not stored and no job was created; "
                    "retry later, and tell the operators (they must free space in FITGATE_DATA_DIR)"
                ) from exc
            raise
        return JobAccepted(job_id=job.id, status=job.status)

    def _own_job(job_id: str, caller: Caller) -> Any:
        job = core.jobs.get(job_id)
        if caller.team is not None and not caller.is_admin and job.team != caller.team:
            raise ModelNotFound(f"no job {job_id!r}; list your jobs with GET /jobs")  # do not reveal others' jobs
        return job

    @app.get("/jobs", responses=errors())
    async def list_jobs(caller: Annotated[Caller, caller_for("finetune")]) -> list[JobOut]:
        team = None if caller.is_admin or caller.team is None else caller.team
        return [JobOut(**j.public()) for j in core.jobs.for_team(team)]

    @app.get("/jobs/{job_id}", responses=errors(404))
    async def get_job(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        return JobOut(**_own_job(job_id, caller).public())

    @app.post("/jobs/{job_id}/cancel", responses=errors(404, 409))
    async def cancel_job(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        _own_job(job_id, caller)
        return JobOut(**core.jobs.request_cancel(job_id).public())

    @app.post("/jobs/{job_id}/retry", responses=errors(404, 409))
    async def retry_job(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        _own_job(job_id, caller)
        return JobOut(**core.jobs.retry(job_id).public())

    def _run_file(job_id: str, caller: Caller, name: str) -> Path:
        _own_job(job_id, caller)
        path = core.settings.data_dir / "runs" / job_id / name
        if not path.is_file():
            raise ModelNotFound(f"job {job_id} has no {name} yet; it is written when training ends")
        return path

    @app.get("/jobs/{job_id}/report", responses=errors(404))
    async def job_report(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> JobReport:
        report = json.loads(_run_file(job_id, caller, "report.json").read_text())
        diagnosis_path = core.settings.data_dir / "runs" / job_id / "diagnosis.json"
        diagnosis = json.loads(diagnosis_path.read_text()) if diagnosis_path.is_file() else None
        report.pop("output_dir", None)
        report.pop("base_model", None)
        return JobReport(job_id=job_id, diagnosis=diagnosis, report=report)

    @app.get("/jobs/{job_id}/learning_curves.png", response_class=FileResponse, responses=PNG_RESPONSE | errors(404))
    async def job_curves(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> FileResponse:
        return FileResponse(_run_file(job_id, caller, "learning_curves.png"), media_type="image/png")

    @app.get("/jobs/{job_id}/confusion_matrix.png", response_class=FileResponse, responses=PNG_RESPONSE | errors(404))
    async def job_confusion(job_id: str, caller: Annotated[Caller, caller_for("finetune")]) -> FileResponse:
        return FileResponse(_run_file(job_id, caller, "confusion_matrix.png"), media_type="image/png")

    @app.get("/models", responses=errors())
    async def list_models(caller: Annotated[Caller, caller_for("predict")]) -> list[ModelVersionOut]:
        return [
            ModelVersionOut(model=v.model, version=v.version, current=v.current, created_at=v.created_at, **v.summary)
            for v in core.registry.versions()
            if caller.team is None or caller.is_admin or v.model.startswith(f"{caller.team}/")
        ]

    @app.post("/models/{team}/{name}/promote", responses=errors(404))
    async def promote(
        team: str, name: str, body: PromoteRequest, caller: Annotated[Caller, caller_for("finetune")]
    ) -> PointerOut:
        model = ModelName.parse(f"{team}/{name}")
        core.auth.require_model_access(caller, model)
        core.registry.promote(model, body.version)
        return PointerOut(model=str(model), current=body.version)

    @app.post("/models/{team}/{name}/rollback", responses=errors(409))
    async def rollback(team: str, name: str, caller: Annotated[Caller, caller_for("finetune")]) -> PointerOut:
        model = ModelName.parse(f"{team}/{name}")
        core.auth.require_model_access(caller, model)
        return PointerOut(model=str(model), current=core.registry.rollback(model))

    return app


fitgate_core = Fitgate()
api = create_app(fitgate_core)


@bentoml.service(
    name="fitgate", workers=fitgate_core.settings.workers, http={"port": int(os.environ.get("FITGATE_PORT", "3000"))}
)
@bentoml.asgi_app(api, path="/")
class FitgateService:
    """BentoML's process model, health probes and /metrics around fitgate's FastAPI routes."""

    def __init__(self) -> None:
        # mounted apps get no lifespan events from BentoML, so the job runner starts here, once per worker
        fitgate_core.start_training()

    @bentoml.on_startup
    async def load_default_model(self) -> None:
        """Load the deployed model before the first request; /metrics then shows it from the start."""
        await fitgate_core.pool.start()


# mypy reads a decorated class as the class itself; @bentoml.service made it a bentoml.Service
cast("bentoml.Service[FitgateService]", FitgateService).add_asgi_middleware(LineBreakInPath)
