"""What a task owns, so that the loop, the gate, the exporter and the server are written once.

A task is what the label column means: one class per text (:mod:`training.tasks.single_label`)
or any number of labels per text (:mod:`training.tasks.multi_label`). It owns what differs between
them: the targets' shape, the head's problem type, the loss and its imbalance handling, the
evaluation loss and curve scores, the calibration and decision rule fitted on validation (a
``training.decision.DecisionRule``, which the export and the torch-free server apply), and the final
scores. Everything else (data, tokenizing, optimizer, schedule, selection, checkpoints, the run
directory) is shared and never asks which task it serves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from training.arguments import TrainingArguments
from training.decision import DecisionRule
from training.rundir import SplitScores

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, batch targets) -> scalar training loss


class Task(ABC):
    """The single-label / multi-label difference, behind one interface (see the module docstring)."""

    name: str  # single_label or multi_label: recorded in the run's report and the bundle
    problem_type: str  # the Hugging Face config's problem_type of the head

    @abstractmethod
    def class_counts(self, targets: NDArray[np.intp], num_labels: int) -> NDArray[np.intp]:
        """Training examples per class (single-label) or positive rows per label (multi-label)."""

    @abstractmethod
    def loss(
        self, counts: NDArray[np.intp], rows: int, args: TrainingArguments, device: torch.device
    ) -> tuple[Loss, list[float] | None]:
        """The training loss with the imbalance handling ``args`` ask for, and its weights (for the report)."""

    @abstractmethod
    def batch_targets(self, targets: NDArray[np.intp]) -> torch.Tensor:
        """A batch's targets as the loss takes them."""

    @abstractmethod
    def evaluation_loss(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> float:
        """The plain loss of the learning curves: unweighted, unsmoothed."""

    @abstractmethod
    def curve_scores(self, logits: NDArray[np.float32], targets: NDArray[np.intp]) -> tuple[float, float]:
        """Macro-F1 and accuracy of the untuned rule (argmax; probability 0.5): a curve point's scores."""

    @abstractmethod
    def calibrate(
        self, logits: NDArray[np.float32], targets: NDArray[np.intp], counts: NDArray[np.intp], args: TrainingArguments
    ) -> DecisionRule:
        """The calibration and decision rule fitted on validation: what the exported model applies."""

    @abstractmethod
    def scores(
        self, rule: DecisionRule, logits: NDArray[np.float32], targets: NDArray[np.intp], label_names: list[str]
    ) -> SplitScores:
        """The final scores of the model under ``rule`` on one split."""

    def initialize_head(self, model: torch.nn.Module, counts: NDArray[np.intp], rows: int) -> None:  # noqa: B027
        """Set the new head's starting point from the training labels (the default: leave it as initialized)."""

    def minority_classes(self, counts: NDArray[np.intp], share_of_largest: float) -> frozenset[int]:
        """Classes whose training rows random augmentation may target (none for a task that cannot tell)."""
        return frozenset()

    def sampling_classes(self, targets: NDArray[np.intp]) -> list[int]:
        """The class per row that the balanced sampler and augmentation read (0 everywhere: no classes)."""
        return [0] * len(targets)


def task_named(name: str) -> Task:
    """The task of a run's report or bundle (``single_label`` for those written before tasks existed)."""
    from training.tasks.multi_label import MultiLabel
    from training.tasks.single_label import SingleLabel

    return MultiLabel() if name == "multi_label" else SingleLabel()
