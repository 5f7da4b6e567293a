"""Calibration and the decision rule."""

from __future__ import annotations

import numpy as np

from training.evaluation import expected_calibration_error, fit_temperature, predict, softmax, tune_class_bias


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
    assert (predict(logits, 1.0, bias)[labels == 1] == 1).mean() > 0.8


def test_decision_rule_stays_plain_argmax_when_that_is_already_best() -> None:
    labels = np.array([0, 1] * 50)
    logits = np.stack([np.where(labels == 0, 3.0, -3.0), np.zeros(100)], axis=1)
    assert not tune_class_bias(logits, labels, 1.0, np.array([0.5, 0.5])).any()
