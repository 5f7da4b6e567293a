"""Any number of labels per text: a sigmoid per label, BCE with per-label positive weights, per-label
temperatures and thresholds tuned on validation, and per-label scores.

The sigmoid and the thresholds the exported model applies are :mod:`training.decision`'s, so the
torch-free server answers as the validation scores here were computed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from training import evaluation
from training.arguments import TrainingArguments
from training.decision import DecisionRule, sigmoid
from training.rundir import SplitScores
from training.tasks.base import Loss, Task

MAX_POSITIVE_WEIGHT = 10.0  # cap of a rare label's positive weight: beyond it the loss chases a handful of rows
MAX_INVERSE_POSITIVE_WEIGHT = 100.0  # class_weighting "inverse" (the repair's stronger dose): the full ratio, capped


def positive_weights(counts: NDArray[np.intp], rows: int, inverse: bool = False) -> NDArray[np.float64]:
    """Per-label weight of a positive in BCE: the square root of negatives per positive, from 1 up to the cap.

    The full ratio (thousands for a label on five rows) makes a rare label's few positives dominate
    every batch; its square root still lifts recall where a label is rare, and the threshold tuned
    on validation takes care of the rest. ``inverse`` (class_weighting "inverse", the repair's dose
    for a label the model never answers) is the full ratio, capped at :data:`MAX_INVERSE_POSITIVE_WEIGHT`.
    """
    positives = np.maximum(counts.astype(np.float64), 1.0)
    ratio = (rows - positives) / positives
    if inverse:
        return np.clip(ratio, 1.0, MAX_INVERSE_POSITIVE_WEIGHT)
    return np.clip(np.sqrt(ratio), 1.0, MAX_POSITIVE_WEIGHT)


class MultiLabel(Task):
    name = "multi_label"
    problem_type = "multi_label_classification"

    def class_counts(self, targets: NDArray[np.intp], num_labels: int) -> NDArray[np.intp]:
        counts: NDArray[np.intp] = targets.sum(axis=0).astype(np.intp)
        return counts

    def loss(
        self, counts: NDArray[np.intp], rows: int, args: TrainingArguments, device: torch.device
    ) -> tuple[Loss, list[float] | None]:
        weighting = args.class_weighting
        weights = positive_weights(counts, rows, inverse=weighting == "inverse") if weighting != "none" else None
        pos_weight = torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None

        def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight)

        return bce, weights.tolist() if weights is not None else None

    def initialize_head(self, model: torch.nn.Module, counts: NDArray[np.intp], rows: int) -> None:
        """Start each label's bias at the log-odds of its training prior (Lin et al. 2017, the focal-loss paper's
        prior initialization), so the first steps learn the texts instead of pushing 90 labels from 0.5 down to
        their few percent; a linear head the model does not expose as ``classifier`` is left as it is."""
        head = getattr(model, "classifier", None)
        if not isinstance(head, torch.nn.Linear) or head.bias is None:
            return
        prior = np.clip(counts / max(rows, 1), 1e-4, 1 - 1e-4)
        with torch.no_grad():
            head.bias.copy_(torch.from_numpy(np.log(prior / (1 - prior))).to(head.bias))

    def batch_targets(self, targets: NDArray[np.intp]) -> torch.Tensor:
        return torch.from_numpy(targets.astype(np.float32))

    def evaluation_loss(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> float:
        return float(
            F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.float32)))
        )

    def curve_scores(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> tuple[float, float]:
        decided = logits >= 0.0  # probability 0.5
        return evaluation.label_macro_f1(targets, decided), float((decided == targets.astype(bool)).all(axis=1).mean())

    def calibrate(
        self, logits: NDArray[np.float32], targets: NDArray[np.intp], counts: NDArray[np.intp], args: TrainingArguments
    ) -> DecisionRule:
        """Per-label temperatures, then per-label thresholds on the calibrated probabilities."""
        k = logits.shape[1]
        temperatures = evaluation.fit_label_temperatures(logits, targets) if args.calibrate else np.ones(k)
        thresholds = (
            evaluation.tune_label_thresholds(sigmoid(logits, temperatures), targets)
            if args.tune_decision_rule
            else np.full(k, 0.5)
        )
        return DecisionRule(multi_label=True, label_temperatures=temperatures.tolist(), thresholds=thresholds.tolist())

    def scores(
        self, rule: DecisionRule, logits: NDArray[np.float32], targets: NDArray[np.intp], label_names: list[str]
    ) -> SplitScores:
        decided = rule.decide(logits)
        present = targets.astype(bool)
        before = evaluation.label_calibration_errors(sigmoid(logits), targets)
        after = evaluation.label_calibration_errors(rule.probabilities(logits), targets)
        return SplitScores(
            macro_f1=evaluation.label_macro_f1(targets, decided),
            accuracy=float((decided == present).all(axis=1).mean()),  # subset accuracy: every label right
            ece_before_calibration=float(before.mean()),
            ece_after_calibration=float(after.mean()),
            per_class=evaluation.per_label_table(targets, decided, label_names),
            confusion=[],
            micro_f1=evaluation.label_micro_f1(targets, decided),
            hamming_loss=float((decided != present).mean()),
            ece_per_label=[float(e) for e in after],
        )
