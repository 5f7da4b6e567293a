"""Which checkpoint a run keeps (highest validation F1, then lowest loss) and when it stops early."""

from __future__ import annotations

import pytest
import torch

from training.curves import CurvePoint
from training.selection import CheckpointSelector, is_better


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
