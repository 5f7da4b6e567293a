"""One label per text: the loss, the scoring and evaluation, and the calibration fitted on validation.

The softmax and the decision rule the exported model applies are :mod:`training.decision`'s: the
torch-free inference worker imports them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from transformers import PreTrainedModel

from training import batching, evaluation, losses
from training.arguments import TrainingArguments
from training.curves import CurvePoint
from training.decision import decide, softmax
from training.encoding import Encoded
from training.precision import mixed_precision
from training.rundir import SplitScores

# --- loss -----------------------------------------------------------------------------------


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


# --- evaluation helper ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationConfig:
    """How the model is scored, the same at every evaluation and for the final scores."""

    batch_size: int
    pad_id: int
    device: torch.device
    autocast: torch.dtype | None  # None: plain fp32


@torch.no_grad()
def score(model: PreTrainedModel, data: Encoded, config: EvaluationConfig) -> tuple[NDArray[np.float32], float]:
    """Logits in input order and the plain (unweighted, unsmoothed) cross-entropy, in eval mode."""
    was_training = model.training
    model.train(False)
    logits = np.zeros((len(data), int(model.config.num_labels or 0)), dtype=np.float32)
    batches = batching.evaluation_batches(data.ids, data.labels, batch_size=config.batch_size, pad_id=config.pad_id)
    for batch in batches:
        with mixed_precision(config.device, config.autocast):
            out = model(
                input_ids=batch.input_ids.to(config.device), attention_mask=batch.attention_mask.to(config.device)
            )
        logits[batch.indices] = out.logits.float().cpu().numpy()
    model.train(was_training)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.tensor(data.labels)).item()
    return logits, loss


def evaluate(
    model: PreTrainedModel,
    validation: Encoded,
    train_subset: Encoded,
    config: EvaluationConfig,
    *,
    step: int,
    epoch: float,
    learning_rate: float,
    train_loss: float | None = None,
    samples_per_second: float | None = None,
) -> CurvePoint:
    """One point of the learning curves: validation and the training subset, both scored in eval mode."""
    val_logits, val_loss = score(model, validation, config)
    sub_logits, sub_loss = score(model, train_subset, config)
    val_labels = np.array(validation.labels)
    k = val_logits.shape[1]
    return CurvePoint(
        step=step,
        epoch=epoch,
        train_loss=train_loss,
        train_eval_loss=sub_loss,
        train_macro_f1=evaluation.macro_f1(np.array(train_subset.labels), sub_logits.argmax(1), k),
        val_loss=val_loss,
        val_macro_f1=evaluation.macro_f1(val_labels, val_logits.argmax(1), k),
        val_accuracy=float((val_logits.argmax(1) == val_labels).mean()),
        learning_rate=learning_rate,
        samples_per_second=samples_per_second,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if config.device.type == "cuda" else None,
    )


# --- calibration and final scores --------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The temperature and decision bias fitted on validation: what the exported model applies."""

    temperature: float
    class_bias: NDArray[np.float64]

    def scores(self, logits: NDArray[np.float32], labels: NDArray[np.intp], label_names: list[str]) -> SplitScores:
        k = len(label_names)
        raw_pred = logits.argmax(axis=1)
        pred = decide(logits, self.temperature, self.class_bias)
        return SplitScores(
            macro_f1=evaluation.macro_f1(labels, pred, k),
            accuracy=float((pred == labels).mean()),
            ece_before_calibration=evaluation.expected_calibration_error(softmax(logits), raw_pred, labels),
            ece_after_calibration=evaluation.expected_calibration_error(
                softmax(logits, self.temperature), pred, labels
            ),
            per_class=evaluation.per_class_table(labels, pred, label_names),
            confusion=evaluation.confusion(labels, pred, k).tolist(),
        )


def calibrate(
    logits: NDArray[np.float32], labels: NDArray[np.intp], train_counts: NDArray[np.intp], args: TrainingArguments
) -> Calibration:
    """Fit the temperature, then the decision rule under it (each only when its argument asks for it)."""
    temperature = evaluation.fit_temperature(logits, labels) if args.calibrate else 1.0
    bias = (
        evaluation.tune_class_bias(logits, labels, temperature, train_counts / train_counts.sum())
        if args.tune_decision_rule
        else np.zeros(len(train_counts))
    )
    return Calibration(temperature, bias)
