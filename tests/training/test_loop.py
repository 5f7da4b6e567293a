"""The fine-tuning run end to end on a tiny BERT (outputs, early stopping, cancel, progress)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fitgate.errors import JobCancelled
from tests.conftest import keyword_rows, write_csv
from training import rundir
from training.arguments import TrainingArguments
from training.curves import load_curves
from training.encoding import Encoded
from training.loop import fine_tune
from training.modeling import load_classifier, load_tokenizer
from training.progress import Progress
from training.scoring import EvaluationConfig, score
from training.splits import load_splits
from training.tasks.single_label import SingleLabel

CPU = EvaluationConfig(batch_size=64, pad_id=0, device=torch.device("cpu"), autocast=None)


def _args(tiny_model_dir: Path, **overrides: object) -> TrainingArguments:
    values: dict[str, object] = dict(
        base_model=str(tiny_model_dir),
        learning_rate=5e-3,
        num_train_epochs=4,
        per_device_train_batch_size=16,
        train_eval_size=100,
        max_length=32,
    )
    return TrainingArguments.model_validate({**values, **overrides})


def test_run_learns_a_learnable_task_and_writes_the_run_directory(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    result = fine_tune(keyword_csv, tmp_path / "run", _args(tiny_model_dir))
    out = tmp_path / "run"
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "arguments.json",
        "curves.json",
        "learning_curves.png",
        "confusion_matrix.png",
        "report.json",
    ):
        assert (out / name).is_file(), name
    assert result.test is not None and result.test.macro_f1 > 0.9
    assert result.curves[0].step == 0  # the curve's own start is recorded
    assert result.curves[0].val_loss == pytest.approx(np.log(2), abs=0.3)
    report = json.loads((out / "report.json").read_text())
    assert {c["label"] for c in report["test"]["per_class"]} == {"ham", "spam"}


def test_the_run_directory_keeps_the_arguments_it_was_trained_with(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    args = _args(tiny_model_dir, num_train_epochs=1, weight_decay=0.05, long_epoch_eval_steps=250, seed=3)
    fine_tune(keyword_csv, tmp_path / "run", args)
    saved = json.loads((tmp_path / "run" / rundir.ARGUMENTS).read_text())
    assert saved == args.model_dump(mode="json")  # every field, defaults included
    assert (saved["weight_decay"], saved["long_epoch_eval_steps"], saved["seed"]) == (0.05, 250, 3)
    assert rundir.RunDirectory.open(tmp_path / "run").arguments == args


def test_curves_record_everything_diagnosis_needs(tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path) -> None:
    fine_tune(keyword_csv, tmp_path / "run", _args(tiny_model_dir, num_train_epochs=2))
    points, best_step = load_curves(tmp_path / "run" / "curves.json")
    assert [p.epoch for p in points] == [0.0, 1.0, 2.0]
    assert best_step in {p.step for p in points}
    trained = points[1:]
    assert all(p.train_loss is not None and p.samples_per_second for p in trained)
    assert all(0 <= p.train_macro_f1 <= 1 and 0 <= p.val_macro_f1 <= 1 for p in points)
    assert trained[0].learning_rate > trained[-1].learning_rate  # linear decay after warmup


def test_early_stopping_stops_after_patience_and_restores_the_best_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(0)
    noise = [(f"{' '.join(rng.choices('abcdefghij', k=6))} {i}", rng.choice(["x", "y"])) for i in range(300)]
    data = write_csv(tmp_path / "noise.csv", noise)  # labels carry no signal: validation F1 wanders
    args = _args(
        tiny_model_dir,
        num_train_epochs=30,
        early_stopping_patience=2,
        early_stopping_threshold=0.0,
        plateau_patience=None,  # the plain patience rule; the plateau rule has its own tests below
        test_size=0.0,
        validation_size=0.2,
    )
    result = fine_tune(data, tmp_path / "run", args)
    assert result.stopped_early and result.curves[-1].epoch < 30
    trained = result.curves[1:]
    best = min(trained, key=lambda p: (-p.val_macro_f1, p.val_loss))  # highest F1, then lowest loss
    assert result.best_step == best.step
    after_best = [p for p in trained if p.step > best.step]
    assert len(after_best) == 2  # exactly the patience
    # the saved model is the best checkpoint, not the last one
    splits, _ = load_splits(data, args)
    tokenizer = load_tokenizer(str(tmp_path / "run" / "model"))
    model = load_classifier(str(tmp_path / "run" / "model"), ["x", "y"], dropout=None, seed=0)
    ids = [tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in splits.validation.texts]
    targets = splits.validation.targets(["x", "y"])
    loss = SingleLabel().evaluation_loss(score(model, Encoded(ids, targets), CPU), targets)
    assert loss == pytest.approx(best.val_loss, abs=1e-4)


def test_without_best_restore_the_last_evaluation_is_exported(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    result = fine_tune(
        keyword_csv,
        tmp_path / "run",
        _args(tiny_model_dir, load_best_model_at_end=False, early_stopping_patience=None, num_train_epochs=2),
    )
    assert result.best_step == result.curves[-1].step


def test_cancel_stops_between_steps_and_leaves_only_the_curves_so_far(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    calls = iter(range(1000))
    with pytest.raises(JobCancelled, match="cancelled at step 3"):
        fine_tune(keyword_csv, tmp_path / "run", _args(tiny_model_dir), should_cancel=lambda: next(calls) >= 3)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["curves.json"], "no model, no report"


def test_the_curves_are_readable_while_the_run_trains_one_point_per_evaluation(
    tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path
) -> None:
    read_while_training: list[int] = []

    def watch(progress: Progress) -> None:
        if progress.phase == "training":
            read_while_training.append(len(load_curves(tmp_path / "run" / "curves.json")[0]))

    fine_tune(keyword_csv, tmp_path / "run", _args(tiny_model_dir, num_train_epochs=3), on_progress=watch)
    assert read_while_training[0] == 1, "the untrained start is there before the first step"
    assert read_while_training[-1] == 4 and read_while_training == sorted(read_while_training)


def test_progress_reports_phases_steps_and_eta(tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    fine_tune(keyword_csv, tmp_path / "run", _args(tiny_model_dir, num_train_epochs=1), on_progress=seen.append)
    phases = [p.phase for p in seen]
    assert phases[0] == "loading" and phases[-1] == "done"
    assert {"training", "calibrating", "saving"} <= set(phases)
    training = [p for p in seen if p.phase == "training"]
    assert [p.step for p in training] == list(range(1, len(training) + 1))
    assert training[-1].step == training[-1].total_steps and training[-1].eta_seconds == 0
    assert "val_macro_f1" in training[-1].metrics


def test_same_seed_gives_the_same_run(tiny_model_dir: Path, keyword_csv: Path, tmp_path: Path) -> None:
    args = _args(tiny_model_dir, num_train_epochs=1)
    first = fine_tune(keyword_csv, tmp_path / "a", args)
    second = fine_tune(keyword_csv, tmp_path / "b", args)
    assert [p.val_loss for p in first.curves] == [p.val_loss for p in second.curves]


def test_class_weights_are_on_for_imbalanced_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "imb.csv", keyword_rows(300, minority_share=0.1))
    result = fine_tune(data, tmp_path / "run", _args(tiny_model_dir, num_train_epochs=1))
    assert result.class_weights is not None
    ham, spam = result.class_weights  # labels are sorted: ham, spam
    assert spam > ham
