"""The decision rule and calibrated probabilities, shared by training, export and serving (numpy only).

The exported model predicts ``argmax(logits / temperature + class_bias)`` and reports the
probabilities ``softmax(logits / temperature)``: the temperature calibrates confidences,
the bias moves the decision (a binary threshold, or a prior correction) without touching
them. Serving imports this module, so it must stay free of torch and scikit-learn.
"""

from __future__ import annotations

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
