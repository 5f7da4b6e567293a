"""The fine-tuning run end to end on a tiny BERT (outputs, early stopping, cancel, progress), and its helpers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fitgate.errors import ArgumentsError, DeviceUnavailable, TrainingCancelled
from tests.conftest import keyword_rows, write_csv
from training import rundir
from training.arguments import TrainingArguments
from training.curves import CurvePoint, load_curves
from training.loop import (
    CheckpointSelector,
    Encoded,
    EvaluationConfig,
    evaluate,
    fine_tune,
    is_better,
    minority_classes,
    pick_device,
    plan_schedule,
    score,
)
from training.modeling import load_classifier, load_tokenizer
from training.progress import Progress
from training.splits import load_splits

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
    labels = [["x", "y"].index(x) for x in splits.validation.labels]
    _, loss = score(model, Encoded(ids, labels), CPU)
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
    with pytest.raises(TrainingCancelled, match="cancelled at step 3"):
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


def _point(step: int, val_f1: float, val_loss: float) -> CurvePoint:
    return CurvePoint(step, step / 10, 0.5, 0.5, 0.9, val_loss, val_f1, val_f1, 1e-4, None, None)


def test_the_best_checkpoint_is_the_highest_f1_then_the_lowest_loss() -> None:
    first_perfect = _point(10, 1.0, 0.68)
    assert is_better(_point(20, 1.0, 0.30), first_perfect, threshold=0.0)  # same F1, the model kept learning
    assert not is_better(_point(20, 1.0, 0.70), first_perfect, threshold=0.0)
    assert not is_better(_point(20, 0.99, 0.10), first_perfect, threshold=0.0)  # F1 decides first
    assert is_better(_point(20, 0.9, 0.9), _point(10, 0.8, 0.1), threshold=0.0)


def test_selection_breaks_ties_by_loss_and_stops_after_patience_evaluations_without_gain() -> None:
    model = torch.nn.Linear(2, 2)
    selector = CheckpointSelector(patience=2, threshold=0.01)
    assert selector.offer(_point(10, 0.80, 0.50), model)  # the first trained checkpoint always counts
    torch.nn.init.ones_(model.weight)
    assert selector.offer(_point(20, 0.80, 0.40), model)  # same F1, lower loss: kept
    torch.nn.init.zeros_(model.weight)
    assert not selector.offer(_point(30, 0.805, 0.60), model)  # an F1 gain below the threshold, at a worse loss
    assert not selector.should_stop
    assert not selector.offer(_point(40, 0.70, 0.30), model)
    assert selector.should_stop and selector.evals_without_gain == 2
    assert selector.restore_best(model).step == 20
    assert torch.equal(model.weight, torch.ones(2, 2))  # the weights kept at step 20, not the last ones


def test_a_gain_resets_the_patience_count() -> None:
    selector = CheckpointSelector(patience=2, threshold=0.0)
    model = torch.nn.Linear(2, 2)
    for step, f1 in ((10, 0.5), (20, 0.4), (30, 0.6), (40, 0.5)):
        selector.offer(_point(step, f1, 0.5), model)
    assert not selector.should_stop and selector.evals_without_gain == 1


def test_on_a_flattened_curve_one_evaluation_without_gain_ends_the_run() -> None:
    model = torch.nn.Linear(2, 2)
    selector = CheckpointSelector(patience=2, threshold=0.001, plateau_patience=1, plateau_gain=0.005)
    for step, f1 in ((10, 0.90), (20, 0.95), (30, 0.953)):  # the last gain, 0.003, is below 0.005
        assert selector.offer(_point(step, f1, 0.5), model)
    assert selector.best_gain == pytest.approx(0.003) and selector.on_plateau
    assert not selector.offer(_point(40, 0.951, 0.5), model)
    assert selector.should_stop and selector.evals_without_gain == 1


def test_a_curve_still_climbing_keeps_the_full_patience() -> None:
    model = torch.nn.Linear(2, 2)
    selector = CheckpointSelector(patience=2, threshold=0.001, plateau_patience=1, plateau_gain=0.005)
    for step, f1 in ((10, 0.70), (20, 0.80), (30, 0.79)):
        selector.offer(_point(step, f1, 0.5), model)
    assert selector.best_gain == pytest.approx(0.10) and not selector.on_plateau
    assert not selector.should_stop  # one evaluation without gain after a 10-point gain: wait for the second
    selector.offer(_point(40, 0.78, 0.5), model)
    assert selector.should_stop


def test_a_resumed_selection_judges_the_plateau_from_the_curve_so_far() -> None:
    model = torch.nn.Linear(2, 2)
    points = [_point(0, 0.1, 2.0), _point(10, 0.90, 0.5), _point(20, 0.902, 0.4), _point(30, 0.90, 0.5)]
    whole = CheckpointSelector(patience=2, threshold=0.001, plateau_patience=1, plateau_gain=0.005)
    for p in points[1:]:
        whole.offer(p, model)
    resumed = CheckpointSelector(patience=2, threshold=0.001, plateau_patience=1, plateau_gain=0.005)
    resumed.resume(whole.best, whole.evals_without_gain, whole.best_weights, points)
    assert resumed.best_gain == whole.best_gain == pytest.approx(0.002)
    assert resumed.should_stop == whole.should_stop is True


def test_without_patience_the_run_never_stops_early() -> None:
    selector = CheckpointSelector(patience=None, threshold=0.0)
    model = torch.nn.Linear(2, 2)
    for step in range(1, 20):
        selector.offer(_point(step * 10, 0.5 - step / 100, 0.5), model)
    assert not selector.should_stop


def test_evaluate_scores_validation_and_the_training_subset_in_eval_mode(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["ham", "spam"], dropout=0.5, seed=0)
    model.train()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    texts, labels = zip(*keyword_rows(40), strict=True)
    data = Encoded([tokenizer(t)["input_ids"] for t in texts], [["ham", "spam"].index(x) for x in labels])
    point = evaluate(model, data, data.subset([0, 1, 2]), CPU, step=7, epoch=0.5, learning_rate=1e-3)
    again = evaluate(model, data, data.subset([0, 1, 2]), CPU, step=7, epoch=0.5, learning_rate=1e-3)
    assert point == again  # dropout is off while scoring, so scores are repeatable
    assert model.training  # and the model is handed back in training mode
    logits, loss = score(model, data, CPU)
    assert point.val_loss == loss and logits.shape == (40, 2)
    assert point.val_accuracy == float((logits.argmax(1) == np.array(data.labels)).mean())
    assert (point.step, point.epoch, point.learning_rate, point.train_loss) == (7, 0.5, 1e-3, None)
    assert point.peak_gpu_memory_mb is None  # on CPU


def test_requesting_cuda_without_a_gpu_names_the_argument_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"device is 'cuda'.*no CUDA device.*'auto'.*'cpu'") as raised:
        pick_device("cuda")
    assert isinstance(raised.value, ArgumentsError) and raised.value.status_code == 422
    assert pick_device("auto") == torch.device("cpu")


def test_long_epochs_are_evaluated_several_times_and_short_ones_once(tiny_model_dir: Path) -> None:
    args = _args(tiny_model_dir, per_device_train_batch_size=1, long_epoch_steps=100, long_epoch_eval_steps=40)
    assert plan_schedule(100, args).eval_every == 100  # an epoch of exactly long_epoch_steps is short
    assert plan_schedule(101, args).eval_every == 40
    assert plan_schedule(101, _args(tiny_model_dir, per_device_train_batch_size=1, eval_steps=7)).eval_every == 7


def test_augmentation_targets_classes_below_the_share_of_the_largest() -> None:
    counts = np.array([100, 49, 50, 10])
    assert minority_classes(counts, 0.5) == {1, 3}
    assert minority_classes(counts, 0.05) == frozenset()
