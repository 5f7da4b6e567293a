"""fitgate over HTTP: a BentoML service with a mounted FastAPI app.

BentoML runs the processes and gives ``/livez``, ``/readyz`` and ``/metrics``; the FastAPI
app carries fitgate's routes so that every route validates with pydantic and every error
leaves through one handler with one JSON shape. Handlers parse, authorize, call a plain
class (``service/core.py`` and what it holds), and shape the response; training and ONNX
code live in ``training/`` and ``models/``. Nothing here imports torch: an inference replica
loads ONNX Runtime, the tokenizer and numpy only (tests/service/test_footprint.py).

    bentoml serve service.app:FitgateService --port 3000
"""

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from fitgate.errors import InvalidRequest, JobConflict, JobNotFound, ModelNotFound, RunDirectoryError
from fitgate.settings import Settings
from fitgate.texts import unreadable_reason
from models.names import ModelName
from models.runtime import Answer, LabelsPrediction
from service.auth import Caller, Role
from service.batches import batch_output as batch_output_paths
from service.console import SECURITY_HEADERS, add_console
from service.core import Fitgate
from service.http_errors import error_responses, install_error_handlers
from service.http_metrics import install as label_http_metrics_by_route
from service.middleware import BodyLimit, SecurityHeaders, UnknownPaths
from service.monitoring import PREDICT_LATENCY
from service.request_timeout import install as cancel_request_timers
from training import rundir
from training.arguments import TrainingArguments

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
import bentoml

log = logging.getLogger(__name__)


# --- request and response shapes --------------------------------------------------------------


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to classify.")
    model: str | None = Field(None, description="team/name; default: the configured default model.")
    version: str | None = Field(
        None,
        max_length=64,
        description="A version of the model other than the one served, to try it before promoting it; "
        "its predictions are not monitored. Default: the served version.",
    )


class PredictionOut(BaseModel):
    """A single-label model's answer: the class, its calibrated probability, and every class's."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


class LabelsPredictionOut(BaseModel):
    """A multi-label model's answer: every label whose calibrated probability reached its threshold (tuned per
    label on validation; maybe none), and every label's probability."""

    labels: list[str]
    confidence: float = Field(description="The least sure of the text's label decisions (p answered, 1 - p not).")
    probabilities: dict[str, float]
    truncated: bool


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[PredictionOut | LabelsPredictionOut]


def _answers_out(answers: list[Answer]) -> list[PredictionOut | LabelsPredictionOut]:
    return [
        LabelsPredictionOut(**a.__dict__) if isinstance(a, LabelsPrediction) else PredictionOut(**a.__dict__)
        for a in answers
    ]


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


class CallerOut(BaseModel):
    mode: Literal["tokens", "loopback"] = Field(
        description="tokens: callers sign in with a token; loopback: no tokens are configured, and "
        "fine-tuning and model changes are accepted from this machine only"
    )
    team: str | None = Field(description="the token's team; null for an anonymous loopback caller")
    roles: list[str]
    predict_needs_token: bool = Field(
        description="whether /predict, GET /models and drift refuse callers without a token (false: open to "
        "anyone who can reach the service, for every team's models)"
    )


class UploadCheck(BaseModel):
    """What fitgate read from a file, and whether it would train on it (``POST /finetune/validate``)."""

    model_config = ConfigDict(extra="allow")  # the data report: rows, class counts, duplicates, splits

    file_name: str
    accepted: bool
    refusal: dict[str, str] | None = Field(description="why the file would be refused: type and message")
    columns: list[str] = Field(description="every column found; empty when the file could not be read as a table")
    base_model: dict[str, Any] | None = Field(
        None,
        description="the base model chosen for the text (name, chosen_by, reason) and how each candidate read it: "
        "unknown word pieces, texts mostly unknown, pieces per word, single letters, scripts, examples",
    )


class JobCurves(BaseModel):
    job_id: str
    attempt: int = Field(description="the attempt these curves belong to (the running one while the job trains)")
    best_step: int | None = Field(description="the step of the best checkpoint so far")
    points: list[dict[str, Any]] = Field(description="one point per evaluation, as in curves.json")


class ModelDrift(BaseModel):
    model: str
    version: str | None = Field(description="the version this worker serves; null if it has not loaded the model")
    detectors: dict[str, dict[str, Any]] = Field(
        description="per detector: statistic, threshold, detected, alarms, predictions_seen (this worker's "
        "view; Prometheus aggregates every worker)"
    )


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


OUTPUT_MEDIA_TYPES = {"csv": "text/csv", "tsv": "text/tab-separated-values", "jsonl": "application/x-ndjson",
                      "parquet": "application/vnd.apache.parquet"}  # fmt: skip
OUTPUT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {media: {} for media in OUTPUT_MEDIA_TYPES.values()},
          "description": "The scored file, in the job's output format."}
}  # fmt: skip
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "A PNG plot."}}
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "A CSV file with a header row."}
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's error responses: 401, 403 and 422 on every route (each authenticates and validates its
    request; declaring 422 also replaces FastAPI's default 422 schema, a shape fitgate never sends)."""
    return error_responses(401, 403, 422, *codes)


# --- the application ----------------------------------------------------------------------------


def fitgate_of(request: Request) -> Fitgate:
    """The worker's state, attached to the app by ``attach`` (by the BentoML service, or by a test)."""
    return cast(Fitgate, request.app.state.fitgate)


def attach(app: FastAPI, fitgate: Fitgate) -> FastAPI:
    app.state.fitgate = fitgate
    return app


State = Annotated[Fitgate, Depends(fitgate_of)]


def create_app(settings: Settings) -> FastAPI:
    """The routes and middlewares; the state they serve is attached per worker with ``attach``."""
    # FastAPI's own /docs and /redoc load their scripts from a CDN: the console serves its own (service/console.py)
    app = FastAPI(title="fitgate", version="0.1.0", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    upload_limit = (settings.max_upload_bytes + 64 * 1024, "FITGATE_MAX_UPLOAD_BYTES")
    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS)
    app.add_middleware(
        BodyLimit,
        limits={
            # multipart framing on top of the file; UTF-8 needs at most 4 bytes a character
            "/finetune": upload_limit,
            "/finetune/validate": upload_limit,
            "/batch": (settings.max_batch_bytes + 64 * 1024, "FITGATE_MAX_BATCH_BYTES"),
            "/predict": (
                4 * settings.max_chars_per_text * settings.max_texts_per_request + 64 * 1024,
                "FITGATE_MAX_TEXTS_PER_REQUEST x FITGATE_MAX_CHARS_PER_TEXT",
            ),
        },
    )

    def caller_for(role: Role) -> Any:
        def dependency(
            request: Request, fitgate: State, authorization: Annotated[str | None, Header()] = None
        ) -> Caller:
            host = request.client.host if request.client else None
            return fitgate.auth.authenticate(authorization, host, role)

        return Depends(dependency)

    @app.post("/predict", responses=errors(404, 413, 503))
    async def predict(
        body: PredictRequest, fitgate: State, caller: Annotated[Caller, caller_for("predict")]
    ) -> PredictResponse:
        limits = fitgate.settings
        if len(body.texts) > limits.max_texts_per_request:
            raise InvalidRequest(
                f"{len(body.texts)} texts in one request; the limit is {limits.max_texts_per_request} "
                "(FITGATE_MAX_TEXTS_PER_REQUEST): split the request"
            )
        for i, text in enumerate(body.texts):
            if len(text) > limits.max_chars_per_text:
                raise InvalidRequest(
                    f"texts[{i}] has {len(text):,} characters; the limit is {limits.max_chars_per_text:,} "
                    "(FITGATE_MAX_CHARS_PER_TEXT)"
                )
            if reason := unreadable_reason(text):
                raise InvalidRequest(f"texts[{i}] {reason}")
        name = ModelName.parse(body.model) if body.model else await fitgate.pool.default_model()
        fitgate.auth.require_model_access(caller, name)
        served = fitgate.pool.loaded(name)
        # a pinned version is answered by that version: the one this worker serves, else as a trial (this worker
        # may still serve the previous current version for up to model_refresh_seconds after a promotion)
        if body.version is not None and (served is None or body.version != served.version):
            answers = await fitgate.pool.predict_version(name, body.version, body.texts)
            return PredictResponse(model=str(name), version=body.version, predictions=_answers_out(answers))
        started = time.perf_counter()
        model, answers = await fitgate.pool.predict(name, body.texts)
        PREDICT_LATENCY.labels(str(name)).observe(time.perf_counter() - started)
        return PredictResponse(
            model=str(name),
            version=model.version,
            predictions=_answers_out(answers),
        )

    @app.get("/whoami", responses=error_responses(401))
    async def whoami(
        request: Request, fitgate: State, authorization: Annotated[str | None, Header()] = None
    ) -> CallerOut:
        """Who the token (or, with no tokens configured, this address) is, and what it may do."""
        caller = fitgate.auth.identify(authorization, request.client.host if request.client else None)
        return CallerOut(
            mode="loopback" if caller.loopback_only_mode else "tokens",
            team=caller.team,
            roles=sorted(caller.roles),
            predict_needs_token=fitgate.auth.predict_needs_token,
        )

    @app.post("/finetune", status_code=202, responses=errors(413, 429, 507))
    async def finetune(
        file: Annotated[UploadFile, File(description="labelled CSV, TSV or JSONL")],
        model_name: Annotated[str, Form(description="team/name")],
        fitgate: State,
        caller: Annotated[Caller, caller_for("finetune")],
        parameters: Annotated[str, Form(description="JSON object of training arguments")] = "{}",
    ) -> JobAccepted:
        name = ModelName.parse(model_name)
        fitgate.auth.require_model_access(caller, name)
        job = await fitgate.uploads.accept(file, name, parameters)
        return JobAccepted(job_id=job.id, status=job.status)

    @app.post("/batch", status_code=202, responses=errors(404, 413, 429, 507))
    async def batch(
        file: Annotated[
            UploadFile, File(description="the texts to score: CSV, TSV, JSONL or Parquet, any number of rows")
        ],
        model: Annotated[str, Form(description="team/name")],
        fitgate: State,
        caller: Annotated[Caller, caller_for("finetune")],
        version: Annotated[
            str | None, Form(max_length=64, description="default: the current version, pinned now")
        ] = None,
        parameters: Annotated[str, Form(description="JSON object: text_column, id_column, output_format")] = "{}",
    ) -> JobAccepted:
        """Score a whole file with one version of a model, as a job on the trainers: streamed in chunks,
        resumed where it stopped if its worker dies, followed with GET /jobs/{id}, cancelled with
        POST /jobs/{id}/cancel; the result is downloaded from GET /jobs/{id}/output."""
        fitgate.auth.require_model_access(caller, ModelName.parse(model))
        job = await fitgate.batches.accept(file, model, version, parameters)
        return JobAccepted(job_id=job.id, status=job.status)

    @app.get("/jobs/{job_id}/output", response_class=FileResponse, responses=OUTPUT_RESPONSE | errors(404, 409))
    async def batch_output(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> FileResponse:
        """A succeeded batch job's scored file: every input row, in order, with its answer or its problem."""
        job = fitgate.job_for(job_id, caller)
        if job.kind != "batch":
            raise JobNotFound(f"job {job_id} is a fine-tune; only batch jobs (POST /batch) have an output file")
        if job.status != "succeeded":
            done = (job.progress or {}).get("rows_done")
            raise JobConflict(
                f"job {job_id} is {job.status}"
                + (f" ({done:,} rows scored so far)" if done else "")
                + "; its output can be downloaded once it has succeeded"
                + ("" if job.status in ("queued", "running") else ": POST /jobs/{id}/retry resumes it")
            )
        fmt = job.arguments["output_format"]
        path, _ = batch_output_paths(fitgate.settings.run_dir(job_id), fmt)
        if not path.is_file():
            raise JobNotFound(f"the output of job {job_id} is no longer kept; send the file again")
        stem = Path(job.arguments.get("file_name") or "input").stem
        return FileResponse(path, media_type=OUTPUT_MEDIA_TYPES[fmt], filename=f"{stem}-scored{path.suffix}")

    @app.post("/finetune/validate", responses=errors(413))
    async def validate_upload(
        file: Annotated[UploadFile, File(description="labelled CSV, TSV or JSONL")],
        fitgate: State,
        caller: Annotated[Caller, caller_for("finetune")],
        parameters: Annotated[str, Form(description="JSON object of training arguments")] = "{}",
    ) -> UploadCheck:
        """A dry run of POST /finetune: the columns, class counts, empty, duplicate and conflicting rows and the
        split sizes fitgate would train with, or the refusal it would answer with. Nothing is stored."""
        return UploadCheck(**await fitgate.uploads.inspect(file, parameters))

    @app.get("/finetune/arguments")
    async def training_arguments(fitgate: State) -> dict[str, dict[str, Any]]:
        """Every training argument a request may set: default, description and limits (JSON Schema)."""
        properties: dict[str, dict[str, Any]] = TrainingArguments.model_json_schema()["properties"]
        base_models = fitgate.uploads.base_models
        properties["base_model"] = {
            "enum": base_models.names(),
            "default": None,
            "description": "The base model to fine-tune, by name; unset: the first that reads the text ("
            + "; ".join(f"{card.name}: {card.description}" for card in base_models.cards.values())
            + ")",
        }
        return properties

    @app.get("/jobs", responses=errors())
    async def list_jobs(fitgate: State, caller: Annotated[Caller, caller_for("finetune")]) -> list[JobOut]:
        team = None if caller.is_admin or caller.team is None else caller.team
        return [JobOut(**j.public()) for j in fitgate.jobs.for_team(team)]

    @app.get("/jobs/{job_id}", responses=errors(404))
    async def get_job(job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        return JobOut(**fitgate.job_for(job_id, caller).public())

    @app.post("/jobs/{job_id}/cancel", responses=errors(404, 409))
    async def cancel_job(job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        fitgate.job_for(job_id, caller)
        return JobOut(**fitgate.jobs.request_cancel(job_id).public())

    @app.post("/jobs/{job_id}/retry", responses=errors(404, 409, 429))
    async def retry_job(job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]) -> JobOut:
        fitgate.job_for(job_id, caller)
        return JobOut(**fitgate.jobs.retry(job_id, fitgate.settings.max_jobs_per_team).public())

    def run_file(fitgate: Fitgate, job_id: str, caller: Caller, name: str, media_type: str) -> FileResponse:
        """A file of the job's run (its chosen attempt's, when it was repaired)."""
        fitgate.job_for(job_id, caller)
        path = rundir.resolve(fitgate.settings.run_dir(job_id)) / name
        if not path.is_file():
            raise JobNotFound(f"job {job_id} has no {name} yet; it is written when training ends")
        return FileResponse(path, media_type=media_type)

    @app.get("/jobs/{job_id}/report", responses=errors(404))
    async def job_report(job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]) -> JobReport:
        fitgate.job_for(job_id, caller)
        try:
            report, diagnosis = rundir.read_public_report(fitgate.settings.run_dir(job_id))
        except RunDirectoryError as exc:
            raise JobNotFound(f"job {job_id} has no report yet; it is written when training ends") from exc
        return JobReport(job_id=job_id, diagnosis=diagnosis, report=report)

    @app.get("/jobs/{job_id}/curves", responses=errors(404))
    async def job_curves_so_far(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> JobCurves:
        """The learning curves as they are drawn: a point per evaluation so far (the running attempt's)."""
        fitgate.job_for(job_id, caller)
        curves = await asyncio.to_thread(rundir.read_live_curves, fitgate.settings.run_dir(job_id))
        if curves is None:
            raise JobNotFound(f"job {job_id} has no curve points yet; the first is written when training starts")
        return JobCurves(job_id=job_id, **curves)

    @app.get("/jobs/{job_id}/learning_curves.png", response_class=FileResponse, responses=PNG_RESPONSE | errors(404))
    async def job_curves(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> FileResponse:
        return run_file(fitgate, job_id, caller, rundir.LEARNING_CURVES_PNG, "image/png")

    @app.get("/jobs/{job_id}/confusion_matrix.png", response_class=FileResponse, responses=PNG_RESPONSE | errors(404))
    async def job_confusion(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> FileResponse:
        return run_file(fitgate, job_id, caller, rundir.CONFUSION_PNG, "image/png")

    @app.get("/jobs/{job_id}/label_issues.csv", response_class=FileResponse, responses=CSV_RESPONSE | errors(404))
    async def job_label_issues(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> FileResponse:
        """The rows whose labels look wrong (row number in the upload, text, given and suggested label, quality)."""
        return run_file(fitgate, job_id, caller, rundir.LABEL_ISSUES, "text/csv")

    @app.get("/jobs/{job_id}/dropped_rows.csv", response_class=FileResponse, responses=CSV_RESPONSE | errors(404))
    async def job_dropped_rows(
        job_id: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> FileResponse:
        """The training rows an attempt left out because the label audit doubted their labels (row number in the
        upload, text, given and suggested label, quality); 404 when no attempt left any out."""
        fitgate.job_for(job_id, caller)
        path = rundir.dropped_rows_file(fitgate.settings.run_dir(job_id))
        if not path.is_file():
            raise JobNotFound(f"job {job_id} left no training rows out: no attempt cleaned its data")
        return FileResponse(path, media_type="text/csv")

    @app.get("/models", responses=errors())
    async def list_models(fitgate: State, caller: Annotated[Caller, caller_for("predict")]) -> list[ModelVersionOut]:
        return [
            ModelVersionOut(model=v.model, version=v.version, current=v.current, created_at=v.created_at, **v.summary)
            for v in fitgate.registry.versions()
            if caller.team is None or caller.is_admin or v.model.startswith(f"{caller.team}/")
        ]

    @app.get("/models/{team}/{name}/drift", responses=errors(404))
    async def model_drift(
        team: str, name: str, fitgate: State, caller: Annotated[Caller, caller_for("predict")]
    ) -> ModelDrift:
        """The drift detectors of the served version now, as this worker sees them."""
        model = ModelName.parse(f"{team}/{name}")
        fitgate.auth.require_model_access(caller, model)
        if not fitgate.registry.versions(model):
            raise ModelNotFound(f"no model named {model}; GET /models lists the deployed ones")
        loaded = fitgate.pool.loaded(model)
        return ModelDrift(
            model=str(model),
            version=loaded.version if loaded else None,
            detectors=loaded.monitor.drift_state() if loaded else {},
        )

    @app.post("/models/{team}/{name}/promote", responses=errors(404))
    async def promote(
        team: str, name: str, body: PromoteRequest, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> PointerOut:
        model = ModelName.parse(f"{team}/{name}")
        fitgate.auth.require_model_access(caller, model)
        fitgate.registry.promote(model, body.version)
        fitgate.pool.forget_latest()
        return PointerOut(model=str(model), current=body.version)

    @app.post("/models/{team}/{name}/rollback", responses=errors(409))
    async def rollback(
        team: str, name: str, fitgate: State, caller: Annotated[Caller, caller_for("finetune")]
    ) -> PointerOut:
        model = ModelName.parse(f"{team}/{name}")
        fitgate.auth.require_model_access(caller, model)
        current = fitgate.registry.rollback(model)
        fitgate.pool.forget_latest()
        return PointerOut(model=str(model), current=current)

    add_console(app)
    return app


# Read at import: BentoML needs the worker count when the service class is declared. The state
# (databases, registry, models) is built per worker process, in FitgateService.__init__.
SETTINGS = Settings()
api = create_app(SETTINGS)
cancel_request_timers()
label_http_metrics_by_route(api.routes)


@bentoml.service(name="fitgate", workers=SETTINGS.workers, http={"port": int(os.environ.get("FITGATE_PORT", "3000"))})
@bentoml.asgi_app(api, path="/")
class FitgateService:
    """BentoML's process model, health probes and /metrics around fitgate's FastAPI routes."""

    def __init__(self) -> None:
        self.fitgate = Fitgate(SETTINGS)
        attach(api, self.fitgate)
        # mounted apps get no lifespan events from BentoML, so the job runner starts here, once per worker
        self.fitgate.start_training()

    @bentoml.on_startup
    async def load_default_model(self) -> None:
        """Load the deployed model before the first request; /metrics then shows it from the start."""
        await self.fitgate.pool.start()


# mypy reads a decorated class as the class itself; @bentoml.service made it a bentoml.Service
cast("bentoml.Service[FitgateService]", FitgateService).add_asgi_middleware(
    UnknownPaths, routes=api.routes, headers=SECURITY_HEADERS
)
