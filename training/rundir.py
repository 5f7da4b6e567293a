"""Reading a finished run directory back: what diagnosis and export need, typed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fitgate.errors import FitgateError
from training.arguments import TrainingArguments
from training.curves import CurvePoint, load_curves
from training.data import LabelledData, read_labelled_file
from training.evaluation import predict

REQUIRED = ("report.json", "curves.json", "arguments.json", "validation.csv", "validation_logits.npy", "model")


class RunDirectoryError(FitgateError):
    status_code = 422


@dataclass(frozen=True)
class RunDirectory:
    path: Path

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        missing = [name for name in REQUIRED if not (path / name).exists()]
        if missing:
            raise RunDirectoryError(
                f"{path} is not a complete fitgate run directory (missing {missing}); run `fitgate finetune` first"
            )
        return cls(path)

    @cached_property
    def report(self) -> dict[str, Any]:
        return json.loads((self.path / "report.json").read_text())

    @cached_property
    def arguments(self) -> TrainingArguments:
        return TrainingArguments.model_validate_json((self.path / "arguments.json").read_text())

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def label_names(self) -> list[str]:
        return list(self.report["label_names"])

    @property
    def temperature(self) -> float:
        return float(self.report["temperature"])

    @property
    def class_bias(self) -> np.ndarray:
        return np.array(self.report["class_bias"], dtype=np.float64)

    @cached_property
    def curves(self) -> tuple[list[CurvePoint], int]:
        return load_curves(self.path / "curves.json")

    @cached_property
    def validation(self) -> LabelledData:
        return read_labelled_file(self.path / "validation.csv", max_text_chars=10**9)[0]

    @cached_property
    def validation_labels(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[label] for label in self.validation.labels])

    @cached_property
    def validation_logits(self) -> np.ndarray:
        return np.load(self.path / "validation_logits.npy")

    @property
    def validation_predictions(self) -> np.ndarray:
        """What the exported model would answer: temperature and decision rule applied."""
        return predict(self.validation_logits, self.temperature, self.class_bias)

    @property
    def train_labels(self) -> np.ndarray:
        counts = self.report["train_class_counts"]
        return np.repeat(np.arange(len(counts)), counts)
