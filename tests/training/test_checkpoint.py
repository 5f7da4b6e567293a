"""Resuming an interrupted run: the end-of-epoch checkpoint, and a resumed run ending as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fitgate.errors import JobCancelled
from tests.conftest import save_random_bert, write_csv
from training.arguments import TrainingArguments
from training.checkpoint import RandomState, checkpoint_arguments, load_checkpoint
from training.curves import load_curves
from training.loop import fine_tune
from training.modeling import default_base_model
from training.progress import Progress
from training.rundir import CHECKPOINT, RunResult

STEPS_PER_EPOCH = 15  # 300 keyword rows: 240 train at batch size 16


def _args(tiny_model_dir: Path, **overrides: object) -> TrainingArguments:
    values: dict[str, object] = dict(
        base_model=str(tiny_model_dir),
        learning_rate=5e-3,
        num_train_epochs=4,
        per_device_train_batch_size=16,
        train_eval_size=100,
        max_length=32,
        early_stopping_patience=None,  # every run trains all its epochs: the curves compare point for point
        load_best_model_at_end=True,
        seed=7,
    )
    return TrainingArguments.model_validate({**values, **overrides})


class CancelAfter:
    """A should_cancel that says yes once the run reported ``step``: the worker died there."""

    def __init__(self, seen: list[Progress], step: int) -> None:
        self.seen, self.step = seen, step

    def __call__(self) -> bool:
        return any(p.step >= self.step for p in self.seen if p.phase == "training")


def _interrupt_after(step: int) -> tuple[list[Progress], CancelAfter]:
    """The progress list to report into, and a cancel check that stops the run once it reported ``step``."""
    seen: list[Progress] = []
    return seen, CancelAfter(seen, step)


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="evaluated-every-epoch"),
        # the checkpoint at step 30 holds a loss window of two steps (since the evaluation at 28); the
        # generator balances classes and augments too
        pytest.param({"eval_steps": 7, "sampler": "balanced", "augment": True}, id="evaluated-mid-epoch"),
    ],
)
def test_a_run_resumed_after_an_interruption_ends_as_the_uninterrupted_run(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path, overrides: dict[str, object]
) -> None:
    args = _args(tiny_model_dir, **overrides)
    whole = fine_tune(keyword_csv, tmp_path / "whole", args)

    run = tmp_path / "interrupted"
    seen, cancel = _interrupt_after(2 * STEPS_PER_EPOCH + 13)  # during epoch 3 (after its evaluation at step 42)
    with pytest.raises(JobCancelled):
        fine_tune(keyword_csv, run, args, on_progress=seen.append, should_cancel=cancel)
    resumed_progress: list[Progress] = []
    resumed = fine_tune(keyword_csv, run, args, on_progress=resumed_progress.append, resume=True)

    assert resumed.best_step == whole.best_step
    assert resumed.validation.macro_f1 == pytest.approx(whole.validation.macro_f1, abs=1e-6)
    _assert_same_curves(resumed, whole)
    assert load_curves(run / "curves.json")[0] == resumed.curves  # one continuous run, as clients read it
    assert [p.resumed_at_epoch for p in resumed_progress[1:]] == [3] * (len(resumed_progress) - 1)
    assert resumed_progress[1].step == 2 * STEPS_PER_EPOCH  # it goes on from the end of epoch 2
    assert [p.step for p in resumed_progress if p.phase == "training"][1] == 2 * STEPS_PER_EPOCH + 1
    assert CHECKPOINT not in _files(run), "a finished run keeps no checkpoint"
    assert resumed.train_seconds > 0


def _assert_same_curves(resumed: RunResult, whole: RunResult) -> None:
    assert [p.step for p in resumed.curves] == [p.step for p in whole.curves]
    for got, want in zip(resumed.curves, whole.curves, strict=True):
        assert got.val_loss == pytest.approx(want.val_loss, abs=1e-6), got.step
        assert got.val_macro_f1 == pytest.approx(want.val_macro_f1, abs=1e-6), got.step
        assert got.train_eval_loss == pytest.approx(want.train_eval_loss, abs=1e-6), got.step
        assert (got.train_loss is None) == (want.train_loss is None), got.step
        assert got.train_loss == pytest.approx(want.train_loss, abs=1e-6), got.step
        assert got.learning_rate == pytest.approx(want.learning_rate, rel=1e-9), got.step


@pytest.fixture(scope="module")
def seeded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with weights set by a seed, not by whichever tests drew from torch's generator before."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seeded-bert")
    return save_random_bert(path, default_base_model(), num_hidden_layers=2, intermediate_size=64)


def test_the_best_checkpoint_and_the_patience_count_survive_an_interruption(
    seeded_model_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(0)
    noise = [(f"{' '.join(rng.choices('abcdefghij', k=6))} {i}", rng.choice(["x", "y"])) for i in range(300)]
    data = write_csv(tmp_path / "noise.csv", noise)  # labels carry no signal: the first trained point stays best
    args = _args(
        seeded_model_dir,
        eval_steps=7,
        early_stopping_patience=4,
        early_stopping_threshold=0.0,
        test_size=0.0,
        validation_size=0.2,
        seed=1,
    )
    whole = fine_tune(data, tmp_path / "whole", args)
    checkpointed = [p for p in whole.curves if 0 < p.step <= 2 * STEPS_PER_EPOCH]
    # the scenario (step 7 is best, 14, 21 and 28 bring no gain, 35 stops the run): the best point and some
    # evaluations without gain precede the checkpoint at step 30, and the run stops after it
    assert whole.best_step < checkpointed[-1].step < 2 * STEPS_PER_EPOCH < whole.curves[-1].step, "another seed"
    assert whole.stopped_early and whole.curves[-1].step < args.num_train_epochs * STEPS_PER_EPOCH

    seen, cancel = _interrupt_after(2 * STEPS_PER_EPOCH + 3)
    with pytest.raises(JobCancelled):
        fine_tune(data, tmp_path / "run", args, on_progress=seen.append, should_cancel=cancel)
    resumed = fine_tune(data, tmp_path / "run", args, resume=True)
    assert (resumed.best_step, resumed.stopped_early) == (whole.best_step, True)
    assert resumed.curves[-1].step == whole.curves[-1].step  # the patience count went on, not from zero
    assert resumed.validation.macro_f1 == pytest.approx(whole.validation.macro_f1, abs=1e-6)
    assert resumed.temperature == pytest.approx(whole.temperature, abs=1e-6)  # fitted on the restored best weights


def test_each_finished_epoch_replaces_the_one_checkpoint_and_no_temporary_file_stays(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    listings: dict[int, list[str]] = {}
    epochs: dict[int, int] = {}

    def watch(progress: Progress) -> None:
        if progress.phase == "training" and progress.step % STEPS_PER_EPOCH == 1:  # the first step of an epoch
            listings[progress.step] = _files(run)
            checkpoint = load_checkpoint(run)
            epochs[progress.step] = checkpoint.epochs_completed if checkpoint else 0

    fine_tune(keyword_csv, run, _args(tiny_model_dir, num_train_epochs=3), on_progress=watch)
    assert epochs == {1: 0, 16: 1, 31: 2}
    assert listings[1] == ["curves.json"]
    assert listings[16] == listings[31] == [CHECKPOINT, "curves.json"]
    assert CHECKPOINT not in _files(run)  # and after the last epoch none is written: the run saved itself


def test_the_checkpoint_holds_the_arguments_it_was_trained_with(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    args = _args(tiny_model_dir, weight_decay=0.05)
    seen, cancel = _interrupt_after(STEPS_PER_EPOCH + 2)
    with pytest.raises(JobCancelled):
        fine_tune(keyword_csv, tmp_path / "run", args, on_progress=seen.append, should_cancel=cancel)
    assert checkpoint_arguments(tmp_path / "run") == args
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint is not None
    assert (checkpoint.epochs_completed, checkpoint.step) == (1, STEPS_PER_EPOCH)
    assert [p.step for p in checkpoint.curves] == [0, STEPS_PER_EPOCH]
    assert checkpoint.best_weights is not None and checkpoint.best == checkpoint.curves[1]
    assert checkpoint.optimizer["state"], "AdamW's moments are kept"


def test_resume_without_a_checkpoint_trains_from_the_start(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    args = _args(tiny_model_dir, num_train_epochs=1)
    fresh = fine_tune(keyword_csv, tmp_path / "fresh", args)
    seen: list[Progress] = []
    resumed = fine_tune(keyword_csv, tmp_path / "never-started", args, on_progress=seen.append, resume=True)
    assert [p.val_loss for p in resumed.curves] == [p.val_loss for p in fresh.curves]
    assert all(p.resumed_at_epoch is None for p in seen)


def test_a_checkpoint_of_other_arguments_is_not_resumed(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    seen, cancel = _interrupt_after(STEPS_PER_EPOCH + 2)
    with pytest.raises(JobCancelled):
        fine_tune(keyword_csv, run, _args(tiny_model_dir), on_progress=seen.append, should_cancel=cancel)
    progress: list[Progress] = []
    result = fine_tune(
        keyword_csv, run, _args(tiny_model_dir, num_train_epochs=1), on_progress=progress.append, resume=True
    )
    assert [p.step for p in result.curves] == [0, STEPS_PER_EPOCH]  # trained from the start
    assert all(p.resumed_at_epoch is None for p in progress)


def test_a_run_that_does_not_resume_removes_the_checkpoint_it_finds(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    seen, cancel = _interrupt_after(STEPS_PER_EPOCH + 2)
    with pytest.raises(JobCancelled):
        fine_tune(keyword_csv, run, _args(tiny_model_dir), on_progress=seen.append, should_cancel=cancel)
    assert CHECKPOINT in _files(run)
    with pytest.raises(JobCancelled):  # a restart, stopped again before its first epoch ended
        fine_tune(keyword_csv, run, _args(tiny_model_dir), should_cancel=lambda: True)
    assert _files(run) == ["curves.json"]


def test_an_unreadable_checkpoint_means_starting_over(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"half a checkpoint")
    assert load_checkpoint(tmp_path) is None
    assert checkpoint_arguments(tmp_path) is None
    assert load_checkpoint(tmp_path / "no-run-here") is None


def test_restored_random_state_draws_the_same_numbers_from_every_generator() -> None:
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    saved = RandomState.capture(generator)

    def draw() -> tuple[list[float], list[float], float, float]:
        return (
            torch.rand(3, generator=generator).tolist(),
            torch.rand(3).tolist(),
            float(np.random.rand()),
            random.random(),
        )

    first = draw()
    draw()  # the generators move on, as the rest of an interrupted epoch would
    saved.restore(generator)
    assert draw() == first
