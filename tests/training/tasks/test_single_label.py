"""Single-label scoring and evaluation on a tiny BERT, and which classes count as minority."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.conftest import keyword_rows
from training.encoding import Encoded
from training.modeling import load_classifier, load_tokenizer
from training.scoring import EvaluationConfig, evaluate, score
from training.tasks.single_label import SingleLabel, minority_classes

CPU = EvaluationConfig(batch_size=64, pad_id=0, device=torch.device("cpu"), autocast=None)


def test_evaluate_scores_validation_and_the_training_subset_in_eval_mode(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["ham", "spam"], dropout=0.5, seed=0)
    model.train()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    texts, labels = zip(*keyword_rows(40), strict=True)
    targets = np.array([["ham", "spam"].index(x) for x in labels])
    data = Encoded([tokenizer(t)["input_ids"] for t in texts], targets)
    task = SingleLabel()
    point = evaluate(model, task, data, data.subset([0, 1, 2]), CPU, step=7, epoch=0.5, learning_rate=1e-3)
    again = evaluate(model, task, data, data.subset([0, 1, 2]), CPU, step=7, epoch=0.5, learning_rate=1e-3)
    assert point == again  # dropout is off while scoring, so scores are repeatable
    assert model.training  # and the model is handed back in training mode
    logits = score(model, data, CPU)
    assert point.val_loss == task.evaluation_loss(logits, targets) and logits.shape == (40, 2)
    assert point.val_accuracy == float((logits.argmax(1) == targets).mean())
    assert (point.step, point.epoch, point.learning_rate, point.train_loss) == (7, 0.5, 1e-3, None)
    assert point.peak_gpu_memory_mb is None  # on CPU


def test_augmentation_targets_classes_below_the_share_of_the_largest() -> None:
    counts = np.array([100, 49, 50, 10])
    assert minority_classes(counts, 0.5) == {1, 3}
    assert minority_classes(counts, 0.05) == frozenset()
