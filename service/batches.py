"""Batch jobs in the service: a POST /batch request becomes a queued job, and a job's process scores its file.

At the door, everything a user can get wrong is refused with what to do, before anything is kept:
the format (by suffix), the size (FITGATE_MAX_BATCH_BYTES), the model and version (the version is
pinned now: a promotion during the job does not change its answers), and the columns. The file is
then scored by ``batch/run.py`` in the job's own process, under the same lease as a fine-tune.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from batch.files import FORMATS, Format, choose_columns, file_format, read_columns
from batch.run import OUTPUT_SUFFIX, BatchPlan, BatchProgress, run_batch
from fitgate.errors import (
    DiskFull,
    FitgateError,
    InvalidRequest,
    JobCancelled,
    LeaseLost,
    ModelNotFound,
    PayloadTooLarge,
    is_disk_full,
)
from fitgate.json_input import load_json
from fitgate.settings import Settings
from models.names import ModelName
from models.registry import Registry, open_registry
from models.runtime import OnnxClassifier
from service.jobs import Job, JobStore

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_SECONDS = 1.0
PARTS = "parts"


class BatchOptions(BaseModel):
    """The ``parameters`` of a batch job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_column: str | None = Field(None, description="The column holding the texts; default: as for training.")
    id_column: str | None = Field(
        None, description="A column carried into the output beside each row's number; default: id, if present."
    )
    output_format: Format | None = Field(None, description="csv, tsv, jsonl or parquet; default: the input's.")


def batch_output(folder: Path, fmt: Format) -> tuple[Path, Path]:
    """Where a batch job in ``folder`` writes its joined output, and its parts while it runs."""
    return folder / f"output{OUTPUT_SUFFIX[fmt]}", folder / PARTS


def parse_options(parameters: str, settings: Settings) -> BatchOptions:
    raw = load_json(parameters, "parameters", InvalidRequest, settings.json_limits())
    if not isinstance(raw, dict):
        raise InvalidRequest('parameters must be a JSON object such as {"text_column": "body"}')
    try:
        return BatchOptions(**raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"batch parameters: {problems} (allowed: {', '.join(BatchOptions.model_fields)}; "
                             f"output_format one of {', '.join(sorted(set(FORMATS.values())))})") from exc  # fmt: skip


class BatchIntake:
    def __init__(self, settings: Settings, jobs: JobStore, registry: Registry) -> None:
        self.settings, self.jobs, self.registry = settings, jobs, registry

    async def accept(self, file: UploadFile, model: str, version: str | None, parameters: str) -> Job:
        """Check, store and queue a batch job; a refusal keeps nothing."""
        options = parse_options(parameters, self.settings)
        fmt = file_format(file.filename or "")
        name = ModelName.parse(model)
        pinned = version or self.registry.current(name)
        if pinned is None:
            detail = (
                "has no promoted version: name one with version" if self.registry.versions(name) else "does not exist"
            )
            raise ModelNotFound(f"model {name} {detail}; GET /models lists the deployed models and versions")
        self.registry.bundle_path(name, pinned)  # 404 naming the version when it does not exist
        job_id = self.jobs.new_id()
        folder = self.settings.upload_dir(job_id)
        folder.mkdir(parents=True)
        target = folder / f"input{Path(file.filename or '').suffix.lower()}"
        try:
            await self._store(file, target)
            found = await asyncio.to_thread(read_columns, target, fmt)
            columns = choose_columns(found, options.text_column, options.id_column)
            arguments = {
                "version": pinned, "input_format": fmt, "output_format": options.output_format or fmt,
                "text_column": columns.text, "id_column": columns.id, "file_name": Path(file.filename or "").name,
            }  # fmt: skip
            return self.jobs.create(
                job_id, name.team, str(name), arguments, target, max_active=self.settings.max_jobs_per_team,
                kind="batch",
            )  # fmt: skip
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if is_disk_full(exc):
                raise DiskFull(
                    "the server's disk is full, so the file was not stored and no job was created; retry later, "
                    "and tell the operators (they must free space in FITGATE_DATA_DIR)"
                ) from exc
            raise

    async def _store(self, file: UploadFile, target: Path) -> None:
        limit = self.settings.max_batch_bytes
        size = 0
        with target.open("wb") as out:
            while chunk := await file.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the file exceeds {limit:,} bytes (FITGATE_MAX_BATCH_BYTES): split it, or score it with "
                        "`fitgate predict FILE --model NAME --out OUT` on a machine that holds the model"
                    )
                out.write(chunk)


def run_batch_job(job: Job, store: JobStore, settings: Settings, generation: int) -> None:
    """Score a batch job's file with its pinned version, recording progress and the outcome under ``generation``.

    Always resumes: the parts of an earlier run of this job (a killed worker, a cancel then retry) are kept."""
    args = job.arguments
    output_format: Format = args["output_format"]
    destination, parts = batch_output(settings.run_dir(job.id), output_format)
    plan = BatchPlan(
        source=Path(job.upload), source_format=args["input_format"],
        columns=choose_columns(read_columns(Path(job.upload), args["input_format"]), args["text_column"],
                               args["id_column"]),
        output_format=output_format, destination=destination, parts_dir=parts,
        chunk_rows=settings.batch_chunk_rows, max_chars=settings.max_chars_per_text,
    )  # fmt: skip

    last, cancelled = 0.0, False

    def report(progress: BatchProgress) -> bool:
        """Store progress at most once a second (and every change of phase); the cancel flag comes with it."""
        nonlocal last, cancelled
        now = time.monotonic()
        if progress.phase == "scoring" and now - last < PROGRESS_EVERY_SECONDS:
            return cancelled
        last = now
        cancelled = store.update_progress(job.id, progress.__dict__, generation)
        return cancelled

    def finish(status: str, *, reason: str | None = None, result: dict[str, Any] | None = None) -> None:
        if not store.finish(job.id, status, reason=reason, result=result, generation=generation):
            log.warning("batch job %s: not recorded as %s, another trainer holds it now", job.id, status)

    try:
        classifier = OnnxClassifier(open_registry(settings).bundle_path(ModelName.parse(job.model_name),
                                                                        args["version"]))  # fmt: skip
        classifier.load()
        result = run_batch(plan, classifier, report)
        finish("succeeded", result={**result, "version": args["version"],
                                    "download": f"GET /jobs/{job.id}/output"})  # fmt: skip
    except JobCancelled as exc:
        finish("cancelled", reason=exc.message)
    except LeaseLost as exc:
        log.warning("batch job %s: %s; this process stops and records nothing", job.id, exc.message)
    except FitgateError as exc:
        log.error("batch job %s failed: %s", job.id, exc.message, exc_info=exc.__cause__)
        finish("failed", reason=exc.message if exc.user_facing else
               f"{type(exc).__name__}: a server-side step failed; the operators can read the worker log")  # fmt: skip
    except Exception as exc:
        log.exception("batch job %s failed unexpectedly", job.id)
        if is_disk_full(exc):
            finish("failed", reason="the server's disk is full: the operators must free space (FITGATE_DATA_DIR), "
                                    "then retry the job; the rows scored so far are kept")  # fmt: skip
        else:
            finish("failed", reason=f"the batch job stopped on an unexpected error ({type(exc).__name__}); retry it "
                                    "(POST /jobs/{id}/retry resumes where it stopped), and report the job id if it "
                                    "fails again")  # fmt: skip
