"""The repair loop: a blocked attempt is followed by one trained with the remedies for its verdict.

A job's directory holds one run directory per attempt (``attempt-1``, ``attempt-2``, ...) and
``attempts.json``, which says what each attempt changed and why, what the gate said of it, and
which attempt the job's files are read from. The gate's thresholds are the same for every
attempt; attempts are judged on validation only, and the test split is scored once, for the
attempt that is exported (docs/GATE.md says what choosing among a few attempts does to the
validation estimate).
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
from training.diagnosis import Diagnosis
from training.loop import fine_tune, score_test_split
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.remedies import AuditEvidence, Remedy, remedy_for
from training.rundir import RunDirectory, RunResult, attempt_dir, write_attempts


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


def _remedy_reason(remedy: Remedy) -> str:
    return "; ".join(f"{c.argument} {c.before} -> {c.after} ({c.reason})" for c in remedy.changes)


def _tagged(on_progress: ProgressCallback, number: int, total: int, reason: str | None) -> ProgressCallback:
    """Progress that says which attempt reports it, and why that attempt runs."""

    def progress(progress: Progress) -> None:
        on_progress(replace(progress, attempt=number, attempts_allowed=total, attempt_reason=reason))

    return progress


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
) -> Repaired:
    """Train, judge and export; a blocked attempt is retried with its remedy up to ``repair_attempts`` times.

    Raises ``GateBlocked`` carrying a :class:`JobVerdict` when no attempt passes.
    """
    attempts: list[Attempt] = []
    reason: str | None = None
    changes: list[dict[str, Any]] = []
    total = 1 + repair_attempts
    for number in range(1, total + 1):
        directory = attempt_dir(job_dir, number)
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
                    f"remedy_attempts parameter); the next one would change: {_remedy_reason(remedy)}"
                )
            )
            raise GateBlocked(JobVerdict(diagnosis, attempts, stop, result))
        assert remedy.arguments is not None  # retry is true
        args = remedy.arguments
        reason = _remedy_reason(remedy)
        changes = [c.__dict__ for c in remedy.changes]
    raise AssertionError("unreachable: the last attempt returns or raises")
