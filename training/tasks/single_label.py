"""One label per text: softmax over the classes, cross-entropy with class weights (imbalance handling),
a temperature and a decision bias fitted on validation, and per-class scores.

The softmax and the decision rule the exported model applies are :mod:`training.decision`'s: the
torch-free inference worker imports them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from training import evaluation, losses
from training.arguments import TrainingArguments
from training.decision import DecisionRule, softmax
from training.rundir import SplitScores
from training.tasks.base import Loss, Task


@dataclass(frozen=True)
class Objective:
    """The training loss: class weights (already on the device), label smoothing, focal or not."""

    weights: torch.Tensor | None
    label_smoothing: float
    focal_gamma: float | None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return losses.classification_loss(
            logits, labels, weights=self.weights, label_smoothing=self.label_smoothing, focal_gamma=self.focal_gamma
        )


def minority_classes(counts: NDArray[np.integer], share_of_largest: float) -> frozenset[int]:
    """Classes with fewer training examples than ``share_of_largest`` times the largest class's."""
    return frozenset(int(c) for c in np.flatnonzero(counts < share_of_largest * counts.max()))


class SingleLabel(Task):
    name = "single_label"
    problem_type = "single_label_classification"

    def class_counts(self, targets: NDArray[np.intp], num_labels: int) -> NDArray[np.intp]:
        return np.bincount(targets, minlength=num_labels)

    def loss(
        self, counts: NDArray[np.intp], rows: int, args: TrainingArguments, device: torch.device
    ) -> tuple[Loss, list[float] | None]:
        weights = losses.class_weights(counts.tolist(), args.class_weighting, args.effective_number_beta)
        objective = Objective(
            weights=weights.to(device) if weights is not None else None,
            label_smoothing=args.label_smoothing_factor,
            focal_gamma=args.focal_gamma if args.loss == "focal" else None,
        )
        return objective, weights.tolist() if weights is not None else None

    def batch_targets(self, targets: NDArray[np.intp]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.int64))

    def evaluation_loss(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> float:
        return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(np.asarray(targets, np.int64))))

    def curve_scores(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> tuple[float, float]:
        predicted = logits.argmax(1)
        return evaluation.macro_f1(targets, predicted, logits.shape[1]), float((predicted == targets).mean())

    def calibrate(
        self, logits: NDArray[np.float32], targets: NDArray[np.intp], counts: NDArray[np.intp], args: TrainingArguments
    ) -> DecisionRule:
        """Fit the temperature, then the decision rule under it (each only when its argument asks for it)."""
        temperature = evaluation.fit_temperature(logits, targets) if args.calibrate else 1.0
        bias = (
            evaluation.tune_class_bias(logits, targets, temperature, counts / counts.sum())
            if args.tune_decision_rule
            else np.zeros(len(counts))
        )
        return DecisionRule(temperature=temperature, class_bias=[float(b) for b in bias])

    def scores(
        self, rule: DecisionRule, logits: NDArray[np.float32], targets: NDArray[np.intp], label_names: list[str]
    ) -> SplitScores:
        k = len(label_names)
        raw = logits.argmax(axis=1)
        decided = rule.decide(logits)
        return SplitScores(
            macro_f1=evaluation.macro_f1(targets, decided, k),
            accuracy=float((decided == targets).mean()),
            ece_before_calibration=evaluation.expected_calibration_error(softmax(logits), raw, targets),
            ece_after_calibration=evaluation.expected_calibration_error(rule.probabilities(logits), decided, targets),
            per_class=evaluation.per_class_table(targets, decided, label_names),
            confusion=evaluation.confusion(targets, decided, k).tolist(),
        )

    def minority_classes(self, counts: NDArray[np.intp], share_of_largest: float) -> frozenset[int]:
        return minority_classes(counts, share_of_largest)

    def sampling_classes(self, targets: NDArray[np.intp]) -> list[int]:
        classes: list[int] = targets.tolist()
        return classes
