"""The decision rule and calibrated probabilities, shared by training, export and serving (numpy only).

The exported model predicts ``argmax(logits / temperature + class_bias)`` and reports the
probabilities ``softmax(logits / temperature)``: the temperature calibrates confidences,
the bias moves the decision (a binary threshold, or a prior correction) without touching
them. A multi-label model reports ``sigmoid(logits / temperature)`` per label (a temperature
per label) and answers every label whose probability reaches its threshold, tuned per label on
validation. Serving imports this module, so it must stay free of torch and scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def softmax(logits: NDArray[np.floating], temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature``, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probabilities: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)  # numpy's stubs type this as Any
    return probabilities


def decide(logits: NDArray[np.floating], temperature: float, class_bias: ArrayLike) -> NDArray[np.intp]:
    """The class each row is answered with: ``argmax(logits / temperature + class_bias)``."""
    decided: NDArray[np.intp] = np.argmax(np.asarray(logits) / temperature + np.asarray(class_bias), axis=1)
    return decided


def sigmoid(logits: NDArray[np.floating], temperature: ArrayLike = 1.0) -> NDArray[np.float64]:
    """Element-wise logistic of ``logits / temperature`` (a temperature per label broadcasts over columns)."""
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    probabilities: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow
    return probabilities


def decide_labels(logits: NDArray[np.floating], temperature: ArrayLike, thresholds: ArrayLike) -> NDArray[np.bool_]:
    """The labels each row is answered with (multi-label): calibrated probability at or above the label's threshold."""
    decided: NDArray[np.bool_] = sigmoid(logits, temperature) >= np.asarray(thresholds, dtype=np.float64)
    return decided


@dataclass(frozen=True)
class DecisionRule:
    """What a model of either task applies to its logits, fitted on validation and shipped in its bundle.

    Single-label: ``temperature`` and ``class_bias``; the answer is one class index per row.
    Multi-label: ``label_temperatures`` and ``thresholds``; the answer is a boolean row per text.
    Training, export parity, the gate and serving all decide through this one object.
    """

    multi_label: bool = False
    temperature: float = 1.0
    class_bias: list[float] = field(default_factory=list)
    label_temperatures: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)

    def probabilities(self, logits: NDArray[np.floating]) -> NDArray[np.float64]:
        """Calibrated probabilities: a distribution per row (single-label), or one per label (multi-label)."""
        if self.multi_label:
            return sigmoid(logits, self.label_temperatures)
        return softmax(logits, self.temperature)

    def decide(self, logits: NDArray[np.floating]) -> NDArray[Any]:
        """Class index per row (single-label) or a boolean matrix rows x labels (multi-label)."""
        if self.multi_label:
            return decide_labels(logits, self.label_temperatures, self.thresholds)
        bias = self.class_bias or np.zeros(np.asarray(logits).shape[1])
        return decide(logits, self.temperature, bias)

    def confidence(self, logits: NDArray[np.floating]) -> NDArray[np.float64]:
        """How sure each row's answer is: the chosen class's probability; for multi-label the least sure of its
        label decisions (p for a label answered, 1 - p for one not): one doubtful label makes the answer doubtful."""
        probabilities = self.probabilities(logits)
        if self.multi_label:
            decided = self.decide(logits)
            sure: NDArray[np.float64] = np.where(decided, probabilities, 1.0 - probabilities).min(axis=1)
            return sure
        chosen = self.decide(logits)
        picked: NDArray[np.float64] = probabilities[np.arange(len(chosen)), chosen]
        return picked

    def answered_rate(self, logits: NDArray[np.floating]) -> NDArray[np.float64]:
        """Per class, the share of rows answered with it (multi-label: the predicted-positive rate per label)."""
        decided = self.decide(logits)
        if self.multi_label:
            rate: NDArray[np.float64] = decided.mean(axis=0)
            return rate
        k = np.asarray(logits).shape[1]
        return np.bincount(decided, minlength=k) / max(1, len(decided))

    def agreement(self, a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
        """Share of rows two sets of logits answer identically (every label alike, for multi-label)."""
        same = self.decide(a) == self.decide(b)
        return float((same.all(axis=1) if self.multi_label else same).mean())
