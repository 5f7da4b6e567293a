"""Scores, calibration and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from training import evaluation
from training.decision import decide, softmax
from training.evaluation import (
    confusion,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    per_class_table,
    tune_class_bias,
)


def _random_predictions(seed: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions over k classes where some classes are never true and some never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.3)))
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    predictions[predictions == k - 1] = 0  # the last class is never predicted
    labels[labels == 1] = 0  # and class 1 never occurs
    return labels, predictions


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_equals_scikit_learn_including_absent_classes(seed: int) -> None:
    k = 2 + seed % 7
    labels, predictions = _random_predictions(seed, k, n=5 + 13 * seed)
    expected = f1_score(labels, predictions, labels=list(range(k)), average="macro", zero_division=0)
    assert macro_f1(labels, predictions, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_per_class_scores_and_confusion_equal_scikit_learn(seed: int) -> None:
    k = 3 + seed
    labels, predictions = _random_predictions(seed, k, n=200)
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=list(range(k)), zero_division=0)
    table = per_class_table(labels, predictions, [f"c{i}" for i in range(k)])
    assert [c.precision for c in table] == pytest.approx(p.tolist(), abs=1e-12)
    assert [c.recall for c in table] == pytest.approx(r.tolist(), abs=1e-12)
    assert [c.f1 for c in table] == pytest.approx(f.tolist(), abs=1e-12)
    assert [c.support for c in table] == s.tolist()
    assert confusion(labels, predictions, k).tolist() == confusion_matrix(labels, predictions, labels=range(k)).tolist()


def test_temperature_scaling_recovers_a_known_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, labels)
    assert 2.6 < t < 3.4
    before = expected_calibration_error(softmax(overconfident), overconfident.argmax(1), labels)
    after = expected_calibration_error(softmax(overconfident, t), overconfident.argmax(1), labels)
    assert after < before / 2


def test_binary_threshold_is_moved_when_it_helps_the_minority_class() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 900 + [1] * 100)
    # the minority class scores higher than the majority but rarely crosses 0.5
    margin = np.where(labels == 1, rng.normal(-0.5, 0.5, 1000), rng.normal(-3, 0.5, 1000))
    logits = np.stack([np.zeros(1000), margin], axis=1)
    bias = tune_class_bias(logits, labels, 1.0, np.array([0.9, 0.1]))
    assert bias[1] > 0
    assert (decide(logits, 1.0, bias)[labels == 1] == 1).mean() > 0.8


def test_decision_rule_stays_plain_argmax_when_that_is_already_best() -> None:
    labels = np.array([0, 1] * 50)
    logits = np.stack([np.where(labels == 0, 3.0, -3.0), np.zeros(100)], axis=1)
    assert not tune_class_bias(logits, labels, 1.0, np.array([0.5, 0.5])).any()


# --- multi-label --------------------------------------------------------------------------------


def test_label_f1_micro_and_macro_equal_scikit_learns() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.0, 0.2]).astype(np.intp)
    decided = rng.random((200, 6)) < 0.2
    assert evaluation.label_macro_f1(targets, decided) == pytest.approx(
        f1_score(targets, decided, average="macro", zero_division=0)
    )
    assert evaluation.label_micro_f1(targets, decided) == pytest.approx(
        f1_score(targets, decided, average="micro", zero_division=0)
    )


def test_per_label_thresholds_move_only_where_a_label_has_the_support_and_the_gain() -> None:
    rng = np.random.default_rng(1)
    n = 400
    targets = np.zeros((n, 3), dtype=np.intp)
    targets[:, 0] = rng.random(n) < 0.3
    targets[:, 1] = rng.random(n) < 0.3
    targets[:3, 2] = 1  # too few positives for a threshold of its own
    probabilities = np.full((n, 3), 0.05)
    probabilities[:, 0] = np.where(targets[:, 0] == 1, 0.8, 0.6)  # separable only above 0.6
    probabilities[:, 1] = np.where(targets[:, 1] == 1, 0.3, 0.1)  # separable only below 0.3
    thresholds = evaluation.tune_label_thresholds(probabilities, targets)
    decided = probabilities >= thresholds
    assert evaluation.label_f1(targets[:, :2], decided[:, :2]) == pytest.approx([1.0, 1.0])
    assert 0.6 < thresholds[0] <= 0.8 and 0.1 < thresholds[1] <= 0.3
    assert thresholds[2] in (thresholds[0], thresholds[1])  # the shared threshold: three rows would overfit one


def test_label_temperatures_sharpen_under_confident_logits() -> None:
    rng = np.random.default_rng(2)
    targets = (rng.random((1000, 2)) < 0.4).astype(np.intp)
    logits = np.where(targets == 1, 0.5, -0.5) + rng.normal(0, 0.05, targets.shape)  # right, but timid
    temperatures = evaluation.fit_label_temperatures(logits, targets)
    assert (temperatures < 0.5).all()


def test_label_calibration_error_is_zero_for_frequencies_that_match_and_large_when_they_do_not() -> None:
    targets = np.array([[1], [0], [1], [0]])
    assert evaluation.label_calibration_errors(np.full((4, 1), 0.5), targets)[0] == pytest.approx(0.0)
    assert evaluation.label_calibration_errors(np.full((4, 1), 0.95), targets)[0] == pytest.approx(0.45)
