"""The repair loop: a blocked attempt is followed by the one the remedy search (training/remedies.py) picks.

A job's directory holds one run directory per attempt (``attempt-1``, ``attempt-2``, ...) and
``attempts.json``, which says what each attempt saw, changed and why, what the gate said of it,
and which attempt the job's files are read from. The gate's thresholds are the same for every
attempt; attempts are judged on validation only, and the test split is scored once, for the
attempt that is exported: the passing attempt with the highest validation macro-F1 (docs/GATE.md
says what choosing among a few attempts does to the validation estimate).

An attempt that trains without the rows the label audit flagged (the clean-the-data remedy)
lists them in its ``dropped_rows.csv``: row number, text, given and suggested label.

A job taken up again (its worker died, or lost its lease) resumes its current attempt from
that attempt's last end-of-epoch checkpoint, with the arguments the checkpoint was trained
with; a job whose current attempt had not finished an epoch starts over from attempt 1.
"""

from __future__ import annotations

import csv
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fitgate.errors import GateBlocked, RunDirectoryError
from fitgate.settings import Settings
from fitgate.spreadsheet import write_csv_for_people
from models.gate import Released, diagnose_and_record, release
from models.names import ModelName
from models.registry import Registry
from training.arguments import TrainingArguments
from training.audit import LABEL_SET_SEPARATOR
from training.base_models import BaseModels
from training.checkpoint import checkpoint_arguments
from training.diagnosis import Diagnosis
from training.loop import fine_tune, score_test_split
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.remedies import (
    MAX_DROPPED_SHARE_OF_CLASS,
    AuditEvidence,
    Change,
    Tried,
    more_examples_advice,
    next_attempt,
)
from training.rundir import (
    DROPPED_ROWS,
    LABEL_ISSUES,
    RunDirectory,
    RunResult,
    attempt_dir,
    load_result,
    read_attempts,
    write_attempts,
)


@dataclass(frozen=True)
class Attempt:
    number: int
    reason: str | None  # why it ran: None for the first attempt, else the remedies it applies
    changes: list[dict[str, Any]]  # what it changed from the attempt before, each with its reason
    passed: bool
    verdicts: list[str]
    validation_macro_f1: float
    seconds: float
    remedy: dict[str, Any] | None  # what the search decided after this attempt (None: it was exported at once)
    rows_dropped: int = 0  # training rows left out by the clean-the-data remedy (listed in its dropped_rows.csv)

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
    """The chosen attempt: its run (test scores included), its release (None without export), every attempt."""

    result: RunResult
    released: Released | None
    attempts: list[Attempt]
    chosen: int

    @property
    def exported_attempt(self) -> int:
        return self.chosen


def attempts_for(args: TrainingArguments, settings: Settings) -> int:
    """Repair attempts a job may use: what it asks for, never more than the operator allows."""
    allowed = settings.remedy_max_attempts
    return allowed if args.remedy_attempts is None else min(args.remedy_attempts, allowed)


DROPPED_COLUMNS = ["row", "text", "given_label", "suggested_label", "quality_score"]


def flagged_training_rows(run: RunDirectory) -> list[dict[str, str]]:
    """The training rows the attempt's label audit flagged, most doubtful first, as label_issues.csv lists them.

    At most ``MAX_DROPPED_SHARE_OF_CLASS`` of any class's training rows: the clean-up never empties a class.
    """
    path = run.path / LABEL_ISSUES
    if not path.is_file():
        return []
    report = run.report
    counts = dict(zip(report["label_names"], report["train_class_counts"], strict=True))
    taken: dict[str, int] = {}
    rows = []
    multi_label = run.multi_label
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # a multi-label row counts against each of its labels (none: it cannot empty a label)
            labels = (
                [x for x in row["given_label"].split(LABEL_SET_SEPARATOR) if x] if multi_label else [row["given_label"]]
            )
            if row["split"] != "train" or not row["row"] or any(label not in counts for label in labels):
                continue
            if any(taken.get(label, 0) + 1 > MAX_DROPPED_SHARE_OF_CLASS * counts[label] for label in labels):
                continue
            for label in labels:
                taken[label] = taken.get(label, 0) + 1
            rows.append(row)
    return rows


def audit_evidence(run: RunDirectory) -> AuditEvidence | None:
    audit = run.report.get("label_audit")
    if not audit:
        return None
    training = int(audit.get("training_rows") or 0)
    return AuditEvidence(
        labels_unrelated=bool(audit["labels_unrelated"]),
        out_of_sample_macro_f1=float(audit["out_of_sample_macro_f1"]),
        baseline_macro_f1=float(audit["baseline_macro_f1"]),
        estimated_noise_share=float(audit["estimated_noise_share"]),
        flagged_training_share=int(audit.get("flagged_training_rows") or 0) / training if training else 0.0,
        droppable_rows=tuple(int(r["row"]) for r in flagged_training_rows(run)),
    )


def write_dropped_rows(run_dir: Path, previous: Path, excluded: list[int]) -> int:
    """List, in an attempt that trained without flagged rows, the rows it left out.

    They come from the attempt before it: its list, when it left out the same rows (the clean-up
    is kept by later attempts), else its label audit, which flagged them.
    """
    if not excluded:
        return 0
    wanted = set(excluded)
    if (previous / DROPPED_ROWS).is_file():
        with (previous / DROPPED_ROWS).open(newline="", encoding="utf-8") as f:
            candidates = list(csv.DictReader(f))
    else:
        candidates = flagged_training_rows(RunDirectory.open(previous))
    rows = [r for r in candidates if int(r["row"]) in wanted]
    write_csv_for_people(run_dir / DROPPED_ROWS, DROPPED_COLUMNS, ([r[c] for c in DROPPED_COLUMNS] for r in rows))
    return len(rows)


def _tried(run: RunDirectory, diagnosis: Diagnosis) -> Tried:
    return Tried(
        arguments=run.arguments,
        verdicts=list(diagnosis.blocking_verdicts),
        validation_macro_f1=float(run.report["validation"]["macro_f1"]),
        audit=audit_evidence(run),
        imbalance=_imbalance(run.report["train_class_counts"]),
    )


def _imbalance(counts: list[int]) -> float:
    seen = [c for c in counts if c > 0]
    return max(seen) / min(seen) if seen else 1.0


def _history(job_dir: Path, attempts: list[Attempt], args: TrainingArguments) -> list[Tried]:
    """The search's view of finished attempts, read back from their run directories (a resumed job)."""
    history = []
    for attempt in attempts:
        try:
            run = RunDirectory.open(attempt_dir(job_dir, attempt.number))
            history.append(
                Tried(
                    run.arguments,
                    attempt.verdicts,
                    attempt.validation_macro_f1,
                    audit_evidence(run),
                    _imbalance(run.report["train_class_counts"]),
                )
            )
        except RunDirectoryError:  # its directory is gone: what attempts.json says, with the job's arguments
            history.append(Tried(args, attempt.verdicts, attempt.validation_macro_f1))
    return history


def _remedy_reason(changes: list[Change]) -> str:
    return "; ".join(
        f"{c['argument']} {c['before']} -> {c['after']} ({c['reason']})" for c in (ch.to_dict() for ch in changes)
    )


def _more_examples(run: RunDirectory) -> str:
    """What more data would do for the thin classes, when the search stops without a pass."""
    report = run.report
    per_class = {row["label"]: row for row in report["validation"]["per_class"]}
    names = report["label_names"]
    return more_examples_advice(
        names,
        list(report["train_class_counts"]),
        [float(per_class.get(n, {}).get("f1", 0.0)) for n in names],
    )


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
    registry: Registry | None,
    *,
    repair_attempts: int,
    promote: bool,
    validation_path: Path | None = None,
    test_path: Path | None = None,
    on_progress: ProgressCallback = ignore_progress,
    should_cancel: CancelCheck = never_cancelled,
    resume: bool = False,
    export: bool = True,
) -> Repaired:
    """Train and judge; let the remedy search pick further attempts up to ``repair_attempts``; export the best.

    The exported attempt is the passing one with the highest validation macro-F1. Without
    ``export`` (the CLI's ``--no-export``) the same attempts run and the chosen one is scored on
    test, but nothing is exported or registered. With ``resume``, an interrupted job goes on with
    the attempt it was training, from that attempt's last checkpoint (:func:`resume_point`);
    without one it starts over. Raises ``GateBlocked`` carrying a :class:`JobVerdict` when no
    attempt passes.
    """
    base_models = BaseModels.from_settings(settings)
    user_args = args
    attempts: list[Attempt] = []
    history: list[Tried] = []
    diagnoses: dict[int, Diagnosis] = {}
    results: dict[int, RunResult] = {}
    reason: str | None = None
    changes: list[dict[str, Any]] = []
    total = 1 + repair_attempts
    first = 1
    point = resume_point(job_dir, args, total) if resume else None
    if point is not None:
        first, attempts, args, reason, changes = point.number, point.attempts, point.args, point.reason, point.changes
        history = _history(job_dir, attempts, user_args)
    stop = ""
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
        results[number] = result
        dropped = write_dropped_rows(directory, attempt_dir(job_dir, number - 1), args.excluded_training_rows)
        progress(Progress("diagnosing"))
        run = RunDirectory.open(directory)
        diagnosis = diagnose_and_record(run, settings)
        diagnoses[number] = diagnosis
        history.append(_tried(run, diagnosis))
        remedy = next_attempt(history, user_args, settings.remedy_clean_min_flagged_share)
        attempts.append(
            Attempt(
                number=number,
                reason=reason,
                changes=changes,
                passed=diagnosis.passed,
                verdicts=list(diagnosis.blocking_verdicts),
                validation_macro_f1=history[-1].validation_macro_f1,
                seconds=time.perf_counter() - started,
                remedy=remedy.to_dict() if remedy.retry or not diagnosis.passed else None,
                rows_dropped=dropped,
            )
        )
        write_attempts(job_dir, [a.to_dict() for a in attempts], chosen=number)
        if not remedy.retry or number == total:
            stop = (
                remedy.reason
                if not remedy.retry
                else (
                    f"the job may use {repair_attempts} repair attempt(s) (FITGATE_REMEDY_MAX_ATTEMPTS, or the "
                    f"remedy_attempts parameter); the next one would change: {_remedy_reason(remedy.changes)}"
                )
            )
            break
        assert remedy.arguments is not None  # retry is true
        args = remedy.arguments
        reason = _remedy_reason(remedy.changes)
        changes = [c.to_dict() for c in remedy.changes]

    passing = [a for a in attempts if a.passed]
    if not passing:
        last = RunDirectory.open(attempt_dir(job_dir, attempts[-1].number))
        advice = _more_examples(last)
        raise GateBlocked(
            JobVerdict(diagnoses[attempts[-1].number], attempts, stop + (f"; {advice}" if advice else ""), result)
        )
    chosen = max(passing, key=lambda a: a.validation_macro_f1)
    write_attempts(job_dir, [a.to_dict() for a in attempts], chosen=chosen.number)
    directory = attempt_dir(job_dir, chosen.number)
    progress = _tagged(on_progress, chosen.number, total, chosen.reason)
    test = score_test_split(directory)
    released = (
        release(directory, name, settings, registry, promote=promote, on_progress=progress)
        if export and registry is not None
        else None
    )
    chosen_result = results.get(chosen.number) or load_result(
        directory
    )  # read back for a resumed job's earlier attempt
    progress(Progress("done", metrics={"val_macro_f1": chosen.validation_macro_f1}))
    return Repaired(replace(chosen_result, test=test or chosen_result.test), released, attempts, chosen.number)
