"""Scoring a model in eval mode, the same at every evaluation and for the final scores, for either task.

:func:`score` returns logits; the task turns them into the curve's loss and macro-F1
(:meth:`training.tasks.base.Task.evaluation_loss`, :meth:`~training.tasks.base.Task.curve_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import PreTrainedModel

from training import batching
from training.curves import CurvePoint
from training.encoding import Encoded
from training.precision import mixed_precision
from training.tasks.base import Task
from training.windows import pool


@dataclass(frozen=True)
class EvaluationConfig:
    """How the model is scored, the same at every evaluation and for the final scores."""

    batch_size: int
    pad_id: int
    device: torch.device
    autocast: torch.dtype | None  # None: plain fp32
    pooling: str = "mean"  # how a text's windows' logits become its own (training/windows.py)


@torch.no_grad()
def score(model: PreTrainedModel, data: Encoded, config: EvaluationConfig) -> NDArray[np.float32]:
    """Logits in input order, one row per text (its windows pooled), in eval mode (the model is handed back in
    the mode it came in)."""
    was_training = model.training
    model.train(False)
    logits = np.zeros((len(data.ids), int(model.config.num_labels or 0)), dtype=np.float32)
    placeholders = [0] * len(data.ids)  # batches carry no targets here: the caller holds them, row for row
    batches = batching.evaluation_batches(data.ids, placeholders, batch_size=config.batch_size, pad_id=config.pad_id)
    for batch in batches:
        with mixed_precision(config.device, config.autocast):
            out = model(
                input_ids=batch.input_ids.to(config.device), attention_mask=batch.attention_mask.to(config.device)
            )
        logits[batch.indices] = out.logits.float().cpu().numpy()
    model.train(was_training)
    return logits if data.owners is None else pool(logits, data.owners, len(data), config.pooling)


def evaluate(
    model: PreTrainedModel,
    task: Task,
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
    val_logits = score(model, validation, config)
    sub_logits = score(model, train_subset, config)
    val_f1, val_accuracy = task.curve_scores(val_logits, validation.targets)
    train_f1, _ = task.curve_scores(sub_logits, train_subset.targets)
    return CurvePoint(
        step=step,
        epoch=epoch,
        train_loss=train_loss,
        train_eval_loss=task.evaluation_loss(sub_logits, train_subset.targets),
        train_macro_f1=train_f1,
        val_loss=task.evaluation_loss(val_logits, validation.targets),
        val_macro_f1=val_f1,
        val_accuracy=val_accuracy,
        learning_rate=learning_rate,
        samples_per_second=samples_per_second,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if config.device.type == "cuda" else None,
    )
