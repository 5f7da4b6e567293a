"""Class weights and losses for imbalanced data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IMBALANCE_RATIO_FOR_WEIGHTS = 1.5  # "auto" weighting starts when the largest class is this much larger


def class_weights(counts: Sequence[int], method: str, beta: float = 0.999) -> torch.Tensor | None:
    """Per-class loss weights, scaled so the average weight over training examples is 1.

    ``inverse``: 1/n_k. ``effective``: (1 - beta) / (1 - beta**n_k), the "effective number
    of samples" of Cui et al. (2019), which tempers inverse frequency for large classes.
    ``auto`` picks ``effective`` when the data is imbalanced, else no weights.
    """
    n = torch.tensor(list(counts), dtype=torch.float64)
    if method == "auto":
        method = "effective" if n.max() / n.min() > IMBALANCE_RATIO_FOR_WEIGHTS else "none"
    if method == "none":
        return None
    if method == "inverse":
        raw = 1.0 / n
    elif method == "effective":
        raw = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    else:
        raise ValueError(f"unknown class weighting {method!r}")
    return (raw * n.sum() / (raw * n).sum()).float()


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    weights: torch.Tensor | None,
    label_smoothing: float,
    focal_gamma: float | None,
) -> torch.Tensor:
    """Weighted cross-entropy with label smoothing, or weighted focal loss when ``focal_gamma`` is set.

    The weighted mean divides by the summed weights of the batch, as PyTorch's
    ``cross_entropy`` does, so a batch's loss does not depend on its class mix.
    """
    logits = logits.float()
    if focal_gamma is None:
        return F.cross_entropy(logits, labels, weight=weights, label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    per_example = -((1.0 - log_p.exp()) ** focal_gamma) * log_p
    if weights is None:
        return per_example.mean()
    w = weights[labels]
    return (w * per_example).sum() / w.sum()
