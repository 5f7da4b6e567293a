"""Class weights and losses, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import class_weights, classification_loss


def test_inverse_frequency_weights_average_one_over_examples() -> None:
    w = class_weights([90, 10], "inverse")
    assert w is not None
    # raw 1/90 and 1/10, scaled so that 90*w0 + 10*w1 == 100
    assert w.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])


def test_effective_number_weights_follow_cui_et_al() -> None:
    beta = 0.99
    w = class_weights([90, 10], "effective", beta)
    assert w is not None
    raw = [(1 - beta) / (1 - beta**n) for n in (90, 10)]
    scale = 100 / (90 * raw[0] + 10 * raw[1])
    assert w.tolist() == pytest.approx([raw[0] * scale, raw[1] * scale])
    # tempered: less extreme than inverse frequency
    assert w[1] / w[0] < 9


def test_auto_weights_only_imbalanced_data() -> None:
    assert class_weights([100, 95], "auto") is None
    assert class_weights([100, 20], "auto") is not None


def test_weighted_cross_entropy_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([0.5, 2.0])
    nll = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.e / (1 + math.e)), math.log(2)]
    expected = (0.5 * nll[0] + 2.0 * nll[1] + 2.0 * nll[2]) / (0.5 + 2.0 + 2.0)
    loss = classification_loss(logits, labels, weights=weights, label_smoothing=0.0, focal_gamma=None)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    unweighted = classification_loss(logits, labels, weights=None, label_smoothing=0.0, focal_gamma=None)
    assert unweighted.item() == pytest.approx(sum(nll) / 3, rel=1e-6)


def test_focal_loss_down_weights_easy_examples() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # first is easy, second is hard
    labels = torch.tensor([0, 0])
    p = torch.softmax(logits, dim=1)[:, 0]
    expected = (-((1 - p) ** 2) * p.log()).mean()
    loss = classification_loss(logits, labels, weights=None, label_smoothing=0.0, focal_gamma=2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = classification_loss(logits, labels, weights=None, label_smoothing=0.0, focal_gamma=0.0)
    assert loss.item() < plain.item()
