"""Scores, calibration and the decision rule, computed from logits (pure numpy functions).

The exported model predicts ``argmax(logits / temperature + class_bias)`` and reports the
probabilities ``softmax(logits / temperature)``: the temperature calibrates confidences,
the bias moves the decision (a binary threshold, or a prior correction) without touching
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

ECE_BINS = 15
MIN_RULE_GAIN = 0.002  # a tuned decision rule must beat plain argmax by this much on validation


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(logits: np.ndarray, temperature: float, class_bias: np.ndarray) -> np.ndarray:
    return np.argmax(logits / temperature + class_bias, axis=1)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(f1_score(labels, predictions, labels=list(range(num_classes)), average="macro", zero_division=0))


def expected_calibration_error(probabilities: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> float:
    """ECE over equal-width confidence bins, for the predicted class."""
    confidence = probabilities[np.arange(len(predictions)), predictions]
    correct = (predictions == labels).astype(float)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, ECE_BINS - 1)
    ece = 0.0
    for b in range(ECE_BINS):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising validation negative log-likelihood (log-spaced search, 0.05..20)."""
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 400)):
        p = softmax(logits, float(t))[np.arange(len(labels)), labels]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def tune_class_bias(logits: np.ndarray, labels: np.ndarray, temperature: float, train_prior: np.ndarray) -> np.ndarray:
    """Decision rule tuned on validation macro-F1; zeros (plain argmax) unless it clearly helps.

    Binary: a threshold on the positive-class probability, expressed as a logit bias.
    Multi-class: prior correction ``-tau * log(prior)`` with tau chosen on a small grid.
    """
    k = logits.shape[1]
    zero = np.zeros(k)
    base = macro_f1(labels, predict(logits, temperature, zero), k)
    candidates: list[np.ndarray] = []
    if k == 2:
        p1 = softmax(logits, temperature)[:, 1]
        for t in np.unique(np.quantile(p1, np.linspace(0.01, 0.99, 199))):
            t = float(np.clip(t, 1e-6, 1 - 1e-6))
            candidates.append(np.array([0.0, -np.log(t / (1 - t))]))
    else:
        log_prior = np.log(np.clip(train_prior, 1e-12, None))
        for tau in (0.25, 0.5, 0.75, 1.0):
            bias = -tau * log_prior
            candidates.append(bias - bias.mean())
    best, best_score = zero, base + MIN_RULE_GAIN
    for bias in candidates:
        score = macro_f1(labels, predict(logits, temperature, bias), k)
        if score > best_score or (score == best_score and np.abs(bias).sum() < np.abs(best).sum()):
            best, best_score = bias, score
    return best


@dataclass(frozen=True)
class ClassScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class_table(labels: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> list[ClassScores]:
    p, r, f, s = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(label_names))), zero_division=0
    )
    return [ClassScores(name, float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i, name in enumerate(label_names)]


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(labels, predictions, labels=list(range(num_classes)))
