"""The decision rule both tasks ship: what training scored is what the exported model answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.decision import DecisionRule, sigmoid, softmax


def test_a_single_label_rule_answers_the_biased_argmax_and_reports_softmax() -> None:
    logits = np.array([[2.0, 1.9], [0.0, 3.0]])
    rule = DecisionRule(temperature=2.0, class_bias=[0.0, 0.2])
    assert rule.decide(logits).tolist() == [1, 1]
    assert rule.probabilities(logits) == pytest.approx(softmax(logits, 2.0))
    assert rule.confidence(logits) == pytest.approx(softmax(logits, 2.0)[:, 1])


def test_a_multi_label_rule_answers_every_label_at_or_above_its_threshold() -> None:
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, -3.0, -3.0]])
    rule = DecisionRule(multi_label=True, label_temperatures=[1.0, 1.0, 2.0], thresholds=[0.5, 0.2, 0.5])
    probabilities = rule.probabilities(logits)
    assert probabilities == pytest.approx(sigmoid(logits, [1.0, 1.0, 2.0]))
    assert rule.decide(logits).tolist() == [[True, True, True], [False, False, False]]  # sigmoid(-1) = 0.27 >= 0.2
    # the least sure decision: row 0's second label, answered at 0.27; row 1's labels, each left out at 1 - 0.05
    assert rule.confidence(logits).tolist() == pytest.approx([sigmoid(np.array(-1.0)), 1 - sigmoid(np.array(-1.5))])
    assert rule.answered_rate(logits).tolist() == [0.5, 0.5, 0.5]


def test_agreement_of_a_multi_label_rule_needs_every_label_alike() -> None:
    rule = DecisionRule(multi_label=True, label_temperatures=[1.0, 1.0], thresholds=[0.5, 0.5])
    a = np.array([[1.0, 1.0], [1.0, -1.0]])
    b = np.array([[1.0, -1.0], [1.0, -1.0]])
    assert rule.agreement(a, b) == 0.5


def test_sigmoid_is_stable_for_extreme_logits() -> None:
    assert sigmoid(np.array([[-1000.0, 0.0, 1000.0]])).tolist() == [[0.0, 0.5, 1.0]]
