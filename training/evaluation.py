"""Scores and calibration computed from logits: pure numpy, so the serving path may import them.

The decision rule and the calibrated probabilities themselves live in :mod:`training.decision`;
this module fits them (temperature, class bias) and scores what they decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from training.decision import decide, sigmoid, softmax

ECE_BINS = 15  # the usual equal-width binning (Guo et al. 2017); only the reported ECE depends on it
MIN_RULE_GAIN = 0.002  # a tuned decision rule must beat plain argmax by this much on validation
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))  # log-spaced: fine near 1, wide range
PRIOR_CORRECTION_STRENGTHS = (0.25, 0.5, 0.75, 1.0)  # tau of -tau * log(prior); a small grid resists overfitting


def confusion(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> NDArray[np.intp]:
    """Counts with the true class per row and the predicted class per column."""
    flat = np.asarray(labels, dtype=np.intp) * num_classes + np.asarray(predictions, dtype=np.intp)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all ``num_classes`` classes; 0 for a class never seen nor predicted.

    Equals scikit-learn's ``f1_score(average="macro", zero_division=0, labels=range(k))``, at a
    fraction of its cost: the gate's bootstrap calls it thousands of times.
    """
    cm = confusion(labels, predictions, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(num_classes), where=denom > 0)))


def expected_calibration_error(
    probabilities: NDArray[np.floating], predictions: NDArray[np.integer], labels: NDArray[np.integer]
) -> float:
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


def fit_temperature(logits: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """Temperature minimising validation negative log-likelihood over :data:`TEMPERATURE_GRID`."""
    best_t, best_nll = 1.0, np.inf
    for t in TEMPERATURE_GRID:
        p = softmax(logits, float(t))[np.arange(len(labels)), labels]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def tune_class_bias(
    logits: NDArray[np.floating], labels: NDArray[np.integer], temperature: float, train_prior: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Decision rule tuned on validation macro-F1; zeros (plain argmax) unless it clearly helps.

    Binary: a threshold on the positive-class probability, expressed as a logit bias.
    Multi-class: prior correction ``-tau * log(prior)`` with tau chosen on a small grid.
    """
    k = logits.shape[1]
    zero = np.zeros(k)
    base = macro_f1(labels, decide(logits, temperature, zero), k)
    candidates: list[NDArray[np.float64]] = []
    if k == 2:
        p1 = softmax(logits, temperature)[:, 1]
        for t in np.unique(np.quantile(p1, np.linspace(0.01, 0.99, 199))):
            t = float(np.clip(t, 1e-6, 1 - 1e-6))
            candidates.append(np.array([0.0, -np.log(t / (1 - t))]))
    else:
        log_prior = np.log(np.clip(train_prior, 1e-12, None))
        for tau in PRIOR_CORRECTION_STRENGTHS:
            bias = -tau * log_prior
            candidates.append(bias - bias.mean())
    best, best_score = zero, base + MIN_RULE_GAIN
    for bias in candidates:
        score = macro_f1(labels, decide(logits, temperature, bias), k)
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


def per_class_table(labels: ArrayLike, predictions: ArrayLike, label_names: list[str]) -> list[ClassScores]:
    """Precision, recall, F1 and support per class; 0 where a ratio is undefined (as scikit-learn's zero_division=0)."""
    k = len(label_names)
    cm = confusion(labels, predictions, k)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, predicted + support, out=np.zeros(k), where=predicted + support > 0)
    return [
        ClassScores(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(label_names)
    ]


# --- multi-label: a 0/1 target matrix (rows x labels) and a boolean decision matrix ---------------

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)  # candidate per-label thresholds
MIN_THRESHOLD_SUPPORT = 5  # positive validation rows a label needs for a threshold of its own


def label_f1(targets: NDArray[np.integer], decided: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Per-label F1 (0 where a label is neither present nor predicted, as zero_division=0)."""
    t = np.asarray(targets, dtype=bool)
    tp = (t & decided).sum(axis=0).astype(np.float64)
    denom = t.sum(axis=0) + decided.sum(axis=0)
    f1: NDArray[np.float64] = np.divide(2 * tp, denom, out=np.zeros(t.shape[1]), where=denom > 0)
    return f1


def label_macro_f1(targets: NDArray[np.integer], decided: NDArray[np.bool_]) -> float:
    """Unweighted mean of the per-label F1 over every label (scikit-learn's macro average, zero_division=0)."""
    return float(label_f1(targets, decided).mean())


def label_micro_f1(targets: NDArray[np.integer], decided: NDArray[np.bool_]) -> float:
    t = np.asarray(targets, dtype=bool)
    tp = float((t & decided).sum())
    denom = float(t.sum() + decided.sum())
    return 2 * tp / denom if denom else 0.0


def fit_label_temperatures(logits: NDArray[np.floating], targets: NDArray[np.integer]) -> NDArray[np.float64]:
    """Per-label temperature minimising validation log-loss; labels with too few positives (or negatives)
    share one temperature fitted on all labels together, since a handful of rows would fit noise."""
    t = np.asarray(targets, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)

    def nll(columns: NDArray[np.float64], labels: NDArray[np.float64], temperature: float) -> float:
        p = np.clip(sigmoid(columns, temperature), 1e-12, 1 - 1e-12)
        return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())

    grid = TEMPERATURE_GRID[::4]  # 100 points: the per-label fits multiply the cost by the label count
    shared = float(min(grid, key=lambda temp: nll(z, t, float(temp))))
    temperatures = np.full(z.shape[1], shared)
    for j in range(z.shape[1]):
        positives = int(t[:, j].sum())
        if min(positives, len(t) - positives) >= MIN_THRESHOLD_SUPPORT:
            temperatures[j] = float(min(grid, key=lambda temp: nll(z[:, j], t[:, j], float(temp))))
    return temperatures


def tune_label_thresholds(probabilities: NDArray[np.floating], targets: NDArray[np.integer]) -> NDArray[np.float64]:
    """Per-label thresholds tuned on validation F1 (rule tuned on validation, applied at serving).

    One shared threshold maximises macro-F1 over all labels; a label with at least
    :data:`MIN_THRESHOLD_SUPPORT` positive validation rows gets its own where that beats the shared
    one by :data:`MIN_RULE_GAIN` (rarer labels keep the shared one: a few rows would overfit it).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(targets, dtype=bool)
    shared = max(THRESHOLD_GRID, key=lambda th: (label_macro_f1(t, p >= th), -abs(th - 0.5)))
    thresholds = np.full(p.shape[1], float(shared))
    support = t.sum(axis=0)
    for j in np.flatnonzero(support >= MIN_THRESHOLD_SUPPORT):
        column = np.stack([p[:, j] >= th for th in THRESHOLD_GRID], axis=1)
        f1 = label_f1(np.repeat(t[:, [j]], len(THRESHOLD_GRID), axis=1), column)
        base = float(label_f1(t[:, [j]], p[:, [j]] >= shared)[0])
        best = int(np.argmax(f1))
        if f1[best] > base + MIN_RULE_GAIN:
            thresholds[j] = float(THRESHOLD_GRID[best])
    return thresholds


def label_calibration_errors(probabilities: NDArray[np.floating], targets: NDArray[np.integer]) -> NDArray[np.float64]:
    """Per-label ECE: equal-width bins of the label's probability against how often the label is present."""
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    errors = np.zeros(p.shape[1])
    for j in range(p.shape[1]):
        bins = np.clip(np.digitize(p[:, j], edges[1:-1]), 0, ECE_BINS - 1)
        for b in np.unique(bins):
            mask = bins == b
            errors[j] += mask.mean() * abs(t[mask, j].mean() - p[mask, j].mean())
    return errors


def per_label_table(
    targets: NDArray[np.integer], decided: NDArray[np.bool_], label_names: list[str]
) -> list[ClassScores]:
    """Precision, recall, F1 and support (positive rows) per label."""
    t = np.asarray(targets, dtype=bool)
    tp = (t & decided).sum(axis=0).astype(np.float64)
    predicted, support = decided.sum(axis=0), t.sum(axis=0)
    k = len(label_names)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = label_f1(t, decided)
    return [
        ClassScores(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(label_names)
    ]


def decided_macro_f1(targets: NDArray[np.integer], decided: NDArray[Any], num_classes: int) -> float:
    """Macro-F1 of either task's answers: class indices (single-label) or a 0/1 matrix (multi-label)."""
    if np.asarray(targets).ndim == 2:
        return label_macro_f1(targets, decided)
    return macro_f1(targets, decided, num_classes)
