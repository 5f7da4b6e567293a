"""The repair loop: its budget, and where an interrupted job goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from fitgate.errors import JobCancelled
from fitgate.settings import Settings
from fitgate.spreadsheet import write_csv_for_people
from models import repair
from models.names import ModelName
from models.registry import Registry
from models.repair import Attempt, attempts_for, resume_point
from training.arguments import TrainingArguments
from training.audit import ISSUE_COLUMNS
from training.checkpoint import Checkpoint, LossWindow, RandomState, save_checkpoint
from training.progress import Progress
from training.remedies import Change, Remedy
from training.rundir import (
    CHECKPOINT,
    DROPPED_ROWS,
    LABEL_ISSUES,
    RunDirectory,
    RunResult,
    attempt_dir,
    read_attempts,
    write_attempts,
)


def test_a_request_can_lower_the_repair_budget_but_not_raise_it() -> None:
    settings = Settings(remedy_max_attempts=1)
    assert attempts_for(TrainingArguments(), settings) == 1
    assert attempts_for(TrainingArguments(remedy_attempts=0), settings) == 0
    assert attempts_for(TrainingArguments(remedy_attempts=3), settings) == 1
    assert attempts_for(TrainingArguments(remedy_attempts=2), Settings(remedy_max_attempts=0)) == 0


# --- resuming an interrupted job: the attempt it was training goes on from its checkpoint ---

JOB_ARGS = TrainingArguments(base_model="/models/minilm", learning_rate=2e-5)
SECOND_ARGS = JOB_ARGS.model_copy(update={"learning_rate": 1e-4})  # what attempt 1's remedy changed
LR_CHANGE = Change("learning_rate", 2e-5, 1e-4, "the run underfit")


def _first_attempt_blocked() -> Attempt:
    remedy = Remedy(["underfit"], SECOND_ARGS, [LR_CHANGE])
    return Attempt(1, None, [], False, ["underfit"], 0.4, 12.0, remedy.to_dict())


def _checkpoint(run_dir: Path, args: TrainingArguments) -> None:
    save_checkpoint(
        Checkpoint(
            arguments=args.model_dump(mode="json"),
            data_sha256={},
            epochs_completed=1,
            step=5,
            train_seconds=1.0,
            curves=[],
            best=None,
            evals_without_gain=0,
            best_weights=None,
            window=LossWindow(0.0, 0, 0, 0.0),
            model={"weight": torch.zeros(1)},
            optimizer={},
            scheduler={},
            scaler={},
            random=RandomState.capture(torch.Generator()),
        ),
        run_dir,
    )


def _job_interrupted_in_attempt_2(job_dir: Path, checkpoint_args: TrainingArguments | None) -> None:
    write_attempts(job_dir, [_first_attempt_blocked().to_dict()], chosen=2)
    attempt_dir(job_dir, 2).mkdir(parents=True)
    if checkpoint_args is not None:
        _checkpoint(attempt_dir(job_dir, 2), checkpoint_args)


class FineTuneCalls:
    """Stands in for fine_tune: records how each attempt would be trained, reports, then stops the job."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, data_path: Path, directory: Path, args: TrainingArguments, **kwargs: Any) -> RunResult:
        self.calls.append(
            {
                "directory": directory,
                "args": args,
                "resume": kwargs["resume"],
                "checkpoint": (directory / CHECKPOINT).is_file(),
            }
        )
        kwargs["on_progress"](Progress("training", step=6, resumed_at_epoch=2 if kwargs["resume"] else None))
        kwargs["on_progress"](Progress("calibrating"))
        raise JobCancelled("stopped by the test")


def _train(job_dir: Path, monkeypatch: pytest.MonkeyPatch, *, resume: bool) -> tuple[FineTuneCalls, list[Progress]]:
    fake = FineTuneCalls()
    monkeypatch.setattr(repair, "fine_tune", fake)
    seen: list[Progress] = []
    with pytest.raises(JobCancelled):
        repair.train_and_release(
            job_dir / "upload.csv",
            job_dir,
            JOB_ARGS,
            ModelName.parse("support/spam"),
            Settings(),
            cast(Registry, None),  # never reached: the job stops in training
            repair_attempts=2,
            promote=False,
            on_progress=seen.append,
            resume=resume,
        )
    return fake, seen


def test_an_interrupted_job_goes_on_with_the_attempt_it_was_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _job_interrupted_in_attempt_2(tmp_path, SECOND_ARGS)
    fake, seen = _train(tmp_path, monkeypatch, resume=True)
    assert fake.calls == [
        {"directory": attempt_dir(tmp_path, 2), "args": SECOND_ARGS, "resume": True, "checkpoint": True}
    ], "attempt 2, with its own arguments and its checkpoint kept"
    reason = "learning_rate 2e-05 -> 0.0001 (the run underfit)"
    assert [(p.attempt, p.attempts_allowed, p.attempt_reason) for p in seen] == [(2, 3, reason)] * 2
    assert [p.resumed_at_epoch for p in seen] == [2, 2], "every report after the resume says so"
    recorded = read_attempts(tmp_path)
    assert recorded is not None and recorded["chosen"] == 2
    assert recorded["attempts"] == [_first_attempt_blocked().to_dict()]


def test_the_resume_point_is_the_current_attempt_with_the_remedy_that_led_to_it(tmp_path: Path) -> None:
    _job_interrupted_in_attempt_2(tmp_path, SECOND_ARGS)
    point = resume_point(tmp_path, JOB_ARGS, total=3)
    assert point is not None
    assert (point.number, point.args, point.attempts) == (2, SECOND_ARGS, [_first_attempt_blocked()])
    assert point.changes == [LR_CHANGE.__dict__]
    assert point.reason == "learning_rate 2e-05 -> 0.0001 (the run underfit)"


@pytest.mark.parametrize(
    ("checkpoint_args", "why"),
    [
        pytest.param(None, "attempt 2 had not finished an epoch", id="no-checkpoint"),
        pytest.param(
            SECOND_ARGS.model_copy(update={"base_model": "/models/other"}),
            "the server's base model was replaced",
            id="other-base-model",
        ),
    ],
)
def test_a_job_without_a_checkpoint_of_its_own_arguments_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_args: TrainingArguments | None, why: str
) -> None:
    _job_interrupted_in_attempt_2(tmp_path, checkpoint_args)
    assert resume_point(tmp_path, JOB_ARGS, total=3) is None, why
    fake, _ = _train(tmp_path, monkeypatch, resume=True)
    assert fake.calls == [
        {"directory": attempt_dir(tmp_path, 1), "args": JOB_ARGS, "resume": False, "checkpoint": False}
    ]


def test_a_job_allowed_fewer_attempts_than_it_had_reached_starts_over(tmp_path: Path) -> None:
    _job_interrupted_in_attempt_2(tmp_path, SECOND_ARGS)
    assert resume_point(tmp_path, JOB_ARGS, total=1) is None  # the operator lowered FITGATE_REMEDY_MAX_ATTEMPTS


def test_without_resume_a_job_starts_over_whatever_its_directory_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _job_interrupted_in_attempt_2(tmp_path, SECOND_ARGS)
    fake, _ = _train(tmp_path, monkeypatch, resume=False)
    assert [(c["directory"], c["resume"]) for c in fake.calls] == [(attempt_dir(tmp_path, 1), False)]


# --- clean the data: which rows an attempt may leave out ---


def test_only_flagged_training_rows_are_left_out_and_never_over_half_a_class(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"label_names": ["ham", "spam"], "train_class_counts": [10, 4]}))
    issues = [
        ("5", "train", "win cash", "ham", "spam", "0.01"),
        ("9", "validation", "free prize", "ham", "spam", "0.02"),  # validation rows decide: never dropped
        ("12", "train", "see you", "spam", "ham", "0.03"),
        ("14", "train", "call mum", "spam", "ham", "0.04"),
        ("20", "train", "lunch later", "spam", "ham", "0.05"),  # a third spam row: over half of 4
        ("", "train", "no row number", "ham", "spam", "0.06"),  # built in memory: cannot be named, so not dropped
    ]
    write_csv_for_people(tmp_path / LABEL_ISSUES, ISSUE_COLUMNS, issues)
    rows = repair.flagged_training_rows(RunDirectory(tmp_path))
    assert [r["row"] for r in rows] == ["5", "12", "14"]


def test_an_attempt_that_keeps_the_clean_up_lists_the_same_rows(tmp_path: Path) -> None:
    """Attempt 3 keeps attempt 2's excluded rows: its list comes from attempt 2's, not from its own audit."""
    previous, current = tmp_path / "attempt-2", tmp_path / "attempt-3"
    previous.mkdir()
    current.mkdir()
    rows = [("5", "win cash", "ham", "spam", "0.01"), ("12", "see you", "spam", "ham", "0.03")]
    write_csv_for_people(previous / DROPPED_ROWS, repair.DROPPED_COLUMNS, rows)
    assert repair.write_dropped_rows(current, previous, [5, 12]) == 2
    assert (current / DROPPED_ROWS).read_text() == (previous / DROPPED_ROWS).read_text()
    assert repair.write_dropped_rows(current, previous, []) == 0
