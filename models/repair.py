"""The repair loop: a blocked attempt is followed by one trained with the remedies for its verdict.

A job's directory holds one run directory per attempt (``attempt-1``, ``attempt-2``, ...) and
``attempts.json``, which says what each attempt changed and why, what the gate said of it, and
which attempt the job's files are read from. The gate's thresholds are the same for every
attempt; attempts are judged on validation only, and the test split is scored once, for the
attempt that is exported (docs/GATE.md says what choosing among a few attempts does to the
validation estimate).

A job taken up again (its worker died, or lost its lease) resumes its current attempt from
that attempt's last end-of-epoch checkpoint, with the arguments the checkpoint was trained
with; a job whose current attempt had not finished an epoch starts over from attempt 1.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fitgate.errors import GateBlocked
from fitgate.settings import Settings
from models.gate import Released, diagnose_and_record, release
from models.names import ModelName
from models.registry import Registry
from training.arguments import TrainingArguments
from training.base_models import BaseModels
from training.checkpoint import checkpoint_arguments
from training.diagnosis import Diagnosis
from training.loop import fine_tune, score_test_split
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.remedies import AuditEvidence, Change, remedy_for
from training.rundir import RunDirectory, RunResult, attempt_dir, read_attempts, write_attempts


@dataclass(frozen=True)
class Attempt:
    number: int
    reason: str | None  # why it ran: None for the first attempt, else the remedies it applies
    changes: list[dict[str, Any]]  # what it changed from the attempt before, each with its reason
    passed: bool
    verdicts: list[str]
    validation_macro_f1: float
    seconds: float
    remedy: dict[str, Any] | None  # what the policy decided after a blocked attempt

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Attempt:
        """An attempt as ``attempts.json`` records it."""
        return cls(**values)


@dataclass(frozen=True)
class JobVerdict:
    """Every attempt was blocked: the last diagnosis, every attempt, and why no further one ran.

    Has the shape of ``fitgate.errors.Verdict``, so it travels in ``GateBlocked``.
    """

    diagnosis: Diagnosis
    attempts: list[Attempt]
    stop_reason: str
    result: RunResult  # the last attempt's run (no test scores: the test split is scored only for an export)

    @property
    def passed(self) -> bool:
        return False

    def summary(self) -> str:
        lines = [self.diagnosis.summary()]
        if len(self.attempts) > 1:
            lines.append("attempts:")
            lines += [
                f"  {a.number}. {'; '.join(a.verdicts) or 'passed'}" + (f" (after: {a.reason})" if a.reason else "")
                for a in self.attempts
            ]
        lines.append(f"no further attempt: {self.stop_reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.diagnosis.to_dict(),
            "attempts": [a.to_dict() for a in self.attempts],
            "stop_reason": self.stop_reason,
        }


@dataclass(frozen=True)
class Repaired:
    """The exported attempt: its run (test scores included), the release, and every attempt before it."""

    result: RunResult
    released: Released
    attempts: list[Attempt]

    @property
    def exported_attempt(self) -> int:
        return self.attempts[-1].number


def attempts_for(args: TrainingArguments, settings: Settings) -> int:
    """Repair attempts a job may use: what it asks for, never more than the operator allows."""
    allowed = settings.remedy_max_attempts
    return allowed if args.remedy_attempts is None else min(args.remedy_attempts, allowed)


def audit_evidence(result: RunResult) -> AuditEvidence | None:
    audit = result.label_audit
    if not audit:
        return None
    return AuditEvidence(
        labels_unrelated=bool(audit["labels_unrelated"]),
        out_of_sample_macro_f1=float(audit["out_of_sample_macro_f1"]),
        baseline_macro_f1=float(audit["baseline_macro_f1"]),
        estimated_noise_share=float(audit["estimated_noise_share"]),
    )


def _remedy_reason(changes: list[Change]) -> str:
    return "; ".join(f"{c.argument} {c.before} -> {c.after} ({c.reason})" for c in changes)


def _tagged(on_progress: ProgressCallback, number: int, total: int, reason: str | None) -> ProgressCallback:
    """Progress that says which attempt reports it, and why that attempt runs.

    Once the attempt's run says it resumed, every later report of the attempt says so too
    (diagnosing, exporting, registering come from here, not from the run).
    """
    resumed_at_epoch: int | None = None

    def progress(progress: Progress) -> None:
        nonlocal resumed_at_epoch
        resumed_at_epoch = progress.resumed_at_epoch or resumed_at_epoch
        on_progress(
            replace(
                progress,
                attempt=number,
                attempts_allowed=total,
                attempt_reason=reason,
                resumed_at_epoch=resumed_at_epoch,
            )
        )

    return progress


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted job goes on: the attempt it was training, with what and why."""

    number: int
    attempts: list[Attempt]  # the attempts before it, finished
    args: TrainingArguments  # the ones its checkpoint was trained with
    reason: str | None
    changes: list[dict[str, Any]]


def resume_point(job_dir: Path, args: TrainingArguments, total: int) -> ResumePoint | None:
    """The attempt an interrupted job was training, if it had finished an epoch of it; else None (start over).

    ``attempts.json`` names the attempt being trained (``chosen``) and lists the finished ones
    before it; the attempt's own directory holds the checkpoint while it trains. A job stopped
    after its current attempt finished training (while it was judged or exported) has no
    checkpoint left, and starts over too. So does one whose arguments (``args``, the job's
    own) differ from the checkpoint's in a value no remedy changed: the server's base model
    was replaced, say.
    """
    recorded = read_attempts(job_dir)
    if recorded is None:
        return None
    number = int(recorded["chosen"])
    attempts = [Attempt.from_dict(a) for a in recorded["attempts"]]
    trained = checkpoint_arguments(attempt_dir(job_dir, number))
    if trained is None or number > total or [a.number for a in attempts] != list(range(1, number)):
        return None
    remedies = [a.remedy for a in attempts]
    if not all(r is not None and r["retry"] for r in remedies):  # each attempt before it was blocked, with a retry
        return None
    remedied = {c["argument"] for r in remedies if r is not None for c in r["changes"]}
    if any(getattr(trained, f) != getattr(args, f) for f in TrainingArguments.model_fields if f not in remedied):
        return None
    last = remedies[-1] if remedies else None
    changes: list[dict[str, Any]] = list(last["changes"]) if last else []
    reason = _remedy_reason([Change(**c) for c in changes]) if last else None
    return ResumePoint(number, attempts, trained, reason, changes)


def train_and_release(
    data_path: Path,
    job_dir: Path,
    args: TrainingArguments,
    name: ModelName,
    settings: Settings,
    registry: Registry,
    *,
    repair_attempts: int,
    promote: bool,
    validation_path: Path | None = None,
    test_path: Path | None = None,
    on_progress: ProgressCallback = ignore_progress,
    should_cancel: CancelCheck = never_cancelled,
    resume: bool = False,
) -> Repaired:
    """Train, judge and export; a blocked attempt is retried with its remedy up to ``repair_attempts`` times.

    With ``resume``, an interrupted job goes on with the attempt it was training, from that
    attempt's last checkpoint (:func:`resume_point`); without one it starts over.
    Raises ``GateBlocked`` carrying a :class:`JobVerdict` when no attempt passes.
    """
    base_models = BaseModels.from_settings(settings)
    attempts: list[Attempt] = []
    reason: str | None = None
    changes: list[dict[str, Any]] = []
    total = 1 + repair_attempts
    first = 1
    point = resume_point(job_dir, args, total) if resume else None
    if point is not None:
        first, attempts, args, reason, changes = point.number, point.attempts, point.args, point.reason, point.changes
    for number in range(first, total + 1):
        directory = attempt_dir(job_dir, number)
        resuming = point is not None and number == point.number
        if not resuming:
            shutil.rmtree(directory, ignore_errors=True)
        write_attempts(job_dir, [a.to_dict() for a in attempts], chosen=number)  # clients now read this attempt

        progress = _tagged(on_progress, number, total, reason)
        started = time.perf_counter()
        result = fine_tune(
            data_path,
            directory,
            args,
            validation_path=validation_path,
            test_path=test_path,
            on_progress=progress,
            should_cancel=should_cancel,
            score_test=False,
            resume=resuming,
            base_models=base_models,
        )
        progress(Progress("diagnosing"))
        diagnosis = diagnose_and_record(RunDirectory.open(directory), settings)
        remedy = None
        if diagnosis.passed:
            test = score_test_split(directory)
            released = release(directory, name, settings, registry, promote=promote, on_progress=progress)
        else:
            remedy = remedy_for(diagnosis, args, audit_evidence(result))
        attempts.append(
            Attempt(
                number=number,
                reason=reason,
                changes=changes,
                passed=diagnosis.passed,
                verdicts=list(diagnosis.blocking_verdicts),
                validation_macro_f1=result.validation.macro_f1,
                seconds=time.perf_counter() - started,
                remedy=remedy.to_dict() if remedy else None,
            )
        )
        write_attempts(job_dir, [a.to_dict() for a in attempts], chosen=number)
        if remedy is None:
            progress(Progress("done", metrics={"val_macro_f1": result.validation.macro_f1}))
            return Repaired(replace(result, test=test), released, attempts)
        if not remedy.retry or number == total:
            stop = (
                remedy.reason
                if not remedy.retry
                else (
                    f"the job may use {repair_attempts} repair attempt(s) (FITGATE_REMEDY_MAX_ATTEMPTS, or the "
                    f"remedy_attempts parameter); the next one would change: {_remedy_reason(remedy.changes)}"
                )
            )
            raise GateBlocked(JobVerdict(diagnosis, attempts, stop, result))
        assert remedy.arguments is not None  # retry is true
        args = remedy.arguments
        reason = _remedy_reason(remedy.changes)
        changes = [c.__dict__ for c in remedy.changes]
    raise AssertionError("unreachable: the last attempt returns or raises")
