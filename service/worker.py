"""One job in its own process: ``python -m service.worker JOB_ID GENERATION [--resume]``.

A batch job is scored by ``service/batches.py``; the rest of this module runs a fine-tune.

A crash or out-of-memory here ends this process only; the service marks the job failed.
The worker records its own outcome and exits 0 whenever it could. Every write names the
lease generation its trainer holds; when another trainer took the job over, the write is
refused (``LeaseLost``) and this process stops without recording anything. With
``--resume`` (a takeover) the run continues from its last completed epoch. With
FITGATE_TRAINING_MEMORY_MB set, the process limits its own address space first, so a run
that needs too much memory fails here with a reason the user can act on, instead of the
kernel's OOM killer choosing a victim (possibly the server).
"""

from __future__ import annotations

import logging
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fitgate.errors import (
    DiskFull,
    FitgateError,
    GateBlocked,
    JobCancelled,
    LeaseLost,
    ModelLoadError,
    OutOfMemory,
    OutOfResources,
    is_disk_full,
    is_out_of_memory,
)
from fitgate.settings import Settings
from models.names import ModelName
from models.registry import open_registry
from models.repair import JobVerdict, attempts_for, train_and_release
from service.batches import run_batch_job
from service.jobs import JobStore
from training.arguments import parse_arguments
from training.checkpoint import remove_checkpoint
from training.progress import Progress
from training.rundir import RunDirectory

log = logging.getLogger("fitgate.worker")
PROGRESS_EVERY_SECONDS = 1.0
OUT_OF_MEMORY = (
    "the training process ran out of memory; retry with a smaller max_length, per_device_train_batch_size "
    "or per_device_eval_batch_size, or ask the operators for more memory (FITGATE_TRAINING_MEMORY_MB)"
)
DISK_FULL_IN_TRAINING = (
    "the server's disk is full: the trained model could not be saved, and nothing was deployed; "
    "the operators must free space (FITGATE_DATA_DIR), then retry the job"
)


class _Reporter:
    """Stores progress at most once a second and remembers whether a cancel was requested."""

    def __init__(self, store: JobStore, job_id: str, generation: int) -> None:
        self.store, self.job_id, self.generation = store, job_id, generation
        self.cancelled = False
        self.phase = "starting"  # the last phase reported: where an unexpected failure stopped the job
        self._last = 0.0
        self._trained: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        self.phase = progress.phase
        if progress.phase == "training":
            self._trained = progress
            if now - self._last < PROGRESS_EVERY_SECONDS:
                return
        elif self._trained is not None and self._trained.attempt == progress.attempt:
            # the phases after training (calibrating ... registering, done) keep where training ended
            trained = self._trained
            progress = replace(
                progress,
                epoch=trained.epoch,
                step=trained.step,
                total_steps=trained.total_steps,
                metrics=progress.metrics or trained.metrics,
                resumed_at_epoch=trained.resumed_at_epoch,
            )
        self._last = now
        self.cancelled = self.store.update_progress(self.job_id, asdict(progress), self.generation)

    def should_cancel(self) -> bool:
        return self.cancelled


def run_job(job_id: str, settings: Settings, generation: int, *, resume: bool = False) -> None:
    """Train, judge and release one job, recording its outcome under lease ``generation``."""
    store = JobStore.open(settings)
    job = store.get(job_id)
    run_dir = settings.run_dir(job_id)
    reporter = _Reporter(store, job_id, generation)

    def finish(status: str, *, reason: str | None = None, result: dict[str, Any] | None = None) -> None:
        if not store.finish(job_id, status, reason=reason, result=result, generation=generation):
            log.warning("job %s: not recorded as %s, another trainer holds it now", job_id, status)
            return
        for attempt in run_dir.glob("attempt-*"):  # a job that ended resumes nothing: a retry starts over
            remove_checkpoint(attempt)

    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # a retry never shows the previous attempt's report
    try:
        args = parse_arguments(job.arguments)  # base_model: the name chosen at the door, from this server's catalogue
        with _out_of_resources_named():
            repaired = train_and_release(
                Path(job.upload),
                run_dir,
                args,
                ModelName.parse(job.model_name),
                settings,
                open_registry(settings),
                repair_attempts=attempts_for(args, settings),
                promote=settings.auto_promote,
                on_progress=reporter,
                should_cancel=reporter.should_cancel,
                resume=resume,
            )
        result, released = repaired.result, repaired.released
        assert released is not None  # a job always exports
        finish("succeeded", result={
            "version": released.version,
            "promoted": released.promoted,
            "diagnosis": released.diagnosis.to_dict(),
            "metrics": {"validation_macro_f1": result.validation.macro_f1,
                        "test_macro_f1": result.test.macro_f1 if result.test else None},
            "exported_attempt": repaired.exported_attempt,
            "attempts": [a.to_dict() for a in repaired.attempts],
            "label_audit": _audit_summary(result.label_audit, job_id),
        })  # fmt: skip
    except GateBlocked as exc:
        verdict = exc.diagnosis
        blocked: dict[str, Any] = {"diagnosis": verdict.to_dict()}
        if isinstance(verdict, JobVerdict):
            blocked = {
                "diagnosis": verdict.diagnosis.to_dict(),
                "attempts": [a.to_dict() for a in verdict.attempts],
                "stop_reason": verdict.stop_reason,
                "label_audit": _audit_summary(RunDirectory.open(run_dir).report.get("label_audit"), job_id),
            }
        finish("blocked", reason=exc.message, result=blocked)
    except JobCancelled as exc:
        finish("cancelled", reason=exc.message)
    except LeaseLost as exc:
        log.warning("job %s: %s; this process stops and records nothing", job_id, exc.message)
    except FitgateError as exc:
        if exc.user_facing and not isinstance(exc, ModelLoadError):
            if isinstance(exc, OutOfResources):  # written for the user, but the operators need the cause too
                log.error("job %s failed: %s", job_id, exc.message, exc_info=exc.__cause__)
            finish("failed", reason=exc.message)
        else:  # server-side detail (paths, library errors; the server's base model) stays in the log
            log.error("job %s failed: %s", job_id, exc.message, exc_info=exc.__cause__)
            finish(
                "failed",
                reason=f"{type(exc).__name__}: a server-side step failed; the operators can read the worker log",
            )
    except Exception as exc:
        log.exception("job %s failed unexpectedly", job_id)
        finish("failed", reason=unexpected_failure(type(exc).__name__, reporter.phase))


def unexpected_failure(error: str, phase: str) -> str:
    """A job's reason for an error fitgate did not foresee: where it stopped and what the user can do."""
    return (
        f"the job stopped in its {phase!r} phase on an unexpected error ({error}) that fitgate's checks of the "
        "upload and the parameters did not foresee; retry it once (POST /jobs/{id}/retry), and if it fails again "
        "report it with the job id: the operators find the cause in the worker log"
    )


def _audit_summary(audit: dict[str, Any] | None, job_id: str) -> dict[str, Any] | None:
    """The label audit as a job's result shows it: the estimated noise, per class, and where the rows are."""
    if not audit:
        return None
    return {
        "flagged": audit["flagged"],
        "rows_audited": audit["rows_audited"],
        "estimated_noise_share": audit["estimated_noise_share"],
        "noise_share_by_class": audit["noise_share_by_class"],
        "labels_unrelated": audit["labels_unrelated"],
        # the simple classifier the gate's baseline check compares the model with, on the validation rows
        "simple_validation_macro_f1": audit.get("simple_validation_macro_f1"),
        "download": f"GET /jobs/{job_id}/label_issues.csv",
    }


@contextmanager
def _out_of_resources_named() -> Iterator[None]:
    """Turn PyTorch's, NumPy's and the OS's memory and disk failures into errors that say so."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, OutOfResources):
            raise
        if is_out_of_memory(exc):
            raise OutOfMemory(OUT_OF_MEMORY) from exc
        if is_disk_full(exc):
            raise DiskFull(DISK_FULL_IN_TRAINING) from exc
        raise


def limit_memory(megabytes: int | None) -> None:
    """Cap this process's address space, so allocations beyond it fail instead of exhausting the machine."""
    if megabytes is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = megabytes * 2**20 if hard == resource.RLIM_INFINITY else min(megabytes * 2**20, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    log.info("training process address space limited to %d MiB", limit // 2**20)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    limit_memory(settings.training_memory_mb)
    job_id, generation, *flags = sys.argv[1:]
    store = JobStore.open(settings)
    job = store.get(job_id)
    if job.kind == "batch":
        run_batch_job(job, store, settings, int(generation))
    else:
        run_job(job_id, settings, int(generation), resume="--resume" in flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
