"""The upload intake: a /finetune request becomes a queued job, or a refusal that keeps nothing.

The upload is streamed to disk (never held in memory), its training arguments are validated
once, and its data is read and split exactly as training will read it, so a bad file is refused
now with its specific message instead of minutes later in a failed job.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile

from fitgate.devices import cuda_device_count
from fitgate.errors import (
    ArgumentsError,
    DataError,
    DeviceUnavailable,
    DiskFull,
    InvalidRequest,
    PayloadTooLarge,
    is_disk_full,
)
from fitgate.json_input import DEFAULT_LIMITS, JsonLimits, load_json
from fitgate.settings import Settings
from models.names import ModelName
from service.jobs import Job, JobStore
from training.arguments import TrainingArguments, parse_arguments, plan_schedule
from training.base_models import BaseModels, choose_base_model
from training.data import parse_table
from training.splits import load_splits
from training.windows import Windowing, choose

UPLOAD_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".txt")
CHUNK_BYTES = 1 << 20


def parse_parameters(parameters: str, limits: JsonLimits = DEFAULT_LIMITS) -> TrainingArguments:
    """The ``parameters`` form field (a JSON object of training arguments), validated once."""
    raw = load_json(parameters, "parameters", InvalidRequest, limits)
    if not isinstance(raw, dict):
        raise InvalidRequest('parameters must be a JSON object such as {"num_train_epochs": 3}')
    return parse_arguments(raw)


class UploadIntake:
    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.base_models = BaseModels.from_settings(settings)

    def arguments(self, parameters: str) -> TrainingArguments:
        """The request's training arguments; ``base_model`` must name a model of this server, never a path."""
        args = parse_parameters(parameters, self.settings.json_limits())
        if args.base_model is not None:
            self.base_models.card(args.base_model)  # a name of this catalogue, or a 422 listing them
        self.check_device(args)
        return args

    def check_device(self, args: TrainingArguments) -> None:
        """Refuse ``device: cuda`` on a server that trains here without a GPU (a trainer elsewhere checks its own)."""
        if args.device == "cuda" and self.settings.training_enabled and cuda_device_count() == 0:
            raise DeviceUnavailable(
                "the training argument device is 'cuda', but this server has no CUDA device: "
                "send device 'auto' (uses a GPU when the server has one) or 'cpu'"
            )

    def check_length(self, args: TrainingArguments, train_rows: int) -> None:
        """Refuse a run that would plan more optimizer steps than a job may take (FITGATE_MAX_JOB_STEPS)."""
        planned, limit = plan_schedule(train_rows, args).total_steps, self.settings.max_job_steps
        if planned > limit:
            source = (
                "max_steps"
                if args.max_steps
                else (
                    f"{args.num_train_epochs} epochs of {math.ceil(train_rows / args.per_device_train_batch_size):,} "
                    f"batches ({train_rows:,} training rows, batch size {args.per_device_train_batch_size})"
                )
            )
            raise ArgumentsError(
                f"this run would take {planned:,} optimizer steps ({source}), more than the {limit:,} a job may take "
                "(FITGATE_MAX_JOB_STEPS): ask for fewer steps or epochs, or a larger per_device_train_batch_size"
            )

    def _suffix(self, file: UploadFile) -> str:
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise InvalidRequest(f"upload a .csv, .tsv or .jsonl file (got {file.filename!r})")
        return suffix

    async def inspect(self, file: UploadFile, parameters: str) -> dict[str, Any]:
        """A dry run of ``accept``: what fitgate reads from the file and whether it would train on it.

        The parameters must be valid (422 otherwise: the request is wrong); a file fitgate would
        refuse is a normal answer here (``accepted: false`` with the refusal's message), with the
        columns found so far, so the user can pick other columns and ask again. Nothing is kept.
        """
        args = self.arguments(parameters)
        suffix = self._suffix(file)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".dry-run-", dir=self.settings.data_dir) as folder:
            target = Path(folder) / f"data{suffix}"
            await self._store(file, target)
            return await asyncio.to_thread(
                _inspect_file, target, args, file.filename or target.name, self.check_length, self.base_models
            )

    async def accept(self, file: UploadFile, name: ModelName, parameters: str) -> Job:
        """Validate, store and queue; on any refusal the stored upload is removed again."""
        args = self.arguments(parameters)
        suffix = self._suffix(file)
        job_id = self.jobs.new_id()
        folder = self.settings.upload_dir(job_id)
        folder.mkdir(parents=True)
        target = folder / f"data{suffix}"  # never the client's file name: nothing escapes the data directory
        try:
            await self._store(file, target)
            splits, _ = await asyncio.to_thread(load_splits, target, args)
            self.check_length(args, len(splits.train))
            choice = await asyncio.to_thread(choose_base_model, splits.train.texts, args.base_model, self.base_models)
            return self.jobs.create(
                job_id,
                name.team,
                str(name),
                args.model_copy(update={"base_model": choice.name}).model_dump(exclude_defaults=True),
                target,
                max_active=self.settings.max_jobs_per_team,
            )
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)  # nothing is kept for a request that was refused
            if is_disk_full(exc):
                raise DiskFull(
                    "the server's disk is full, so the upload was not stored and no job was created; "
                    "retry later, and tell the operators (they must free space in FITGATE_DATA_DIR)"
                ) from exc
            raise

    async def _store(self, file: UploadFile, target: Path) -> None:
        limit = self.settings.max_upload_bytes
        size = 0
        with target.open("wb") as out:
            while chunk := await file.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"upload exceeds {limit:,} bytes (FITGATE_MAX_UPLOAD_BYTES)")
                out.write(chunk)


def _inspect_file(
    path: Path,
    args: TrainingArguments,
    file_name: str,
    check_length: Callable[[TrainingArguments, int], None],
    base_models: BaseModels,
) -> dict[str, Any]:
    """Read and split ``path`` exactly as training will; a refusal becomes part of the answer."""
    answer: dict[str, Any] = {"file_name": file_name, "columns": [], "accepted": False, "refusal": None}
    try:
        answer["columns"] = parse_table(path.read_bytes(), path.suffix.lower())[1]
        splits, report = load_splits(path, args)
        check_length(args, len(splits.train))
        choice = choose_base_model(splits.train.texts, args.base_model, base_models)
    except (DataError, ArgumentsError) as exc:
        answer["refusal"] = {"type": type(exc).__name__, "message": exc.message}
        return answer
    return answer | {
        "accepted": True,
        "text_column": report.text_column,
        "label_column": report.label_column,
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "empty_texts_dropped": report.empty_texts_dropped,
        "duplicate_texts": report.duplicate_texts,
        "conflicting_texts": report.conflicting_texts,
        "conflicting_examples": report.conflicting_examples,
        "class_counts": report.class_counts,
        "task": report.task,
        "label_cardinality": report.label_cardinality,
        "rows_without_labels": report.rows_without_labels,
        "label_co_occurrence": report.label_co_occurrence,
        "labels_not_learnable": report.labels_not_learnable,
        "labels_not_validated": report.labels_not_validated,
        "long_texts": _long_texts(splits.train.texts, args, choice.path),
        "base_model": choice.to_dict(),
        "splits": {
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test) if splits.test else 0,
        },
    }


def _long_texts(texts: list[str], args: TrainingArguments, base_model: Path) -> dict[str, object]:
    """How many training texts the chosen base model's window cuts, by how much, and how they would be read."""
    from training.batching import encode
    from training.modeling import load_tokenizer

    lengths = encode(load_tokenizer(str(base_model)), texts, Windowing("truncate", args.max_length)).tokens
    return choose(args.long_texts, lengths, args.max_length)[1]
