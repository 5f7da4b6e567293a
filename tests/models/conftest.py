"""Run directories made once per module by fine-tuning the tiny BERT: one healthy, one underfit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import keyword_rows, write_csv
from training.arguments import TrainingArguments
from training.loop import fine_tune


def _run(tmp: Path, base: Path, **overrides: object) -> Path:
    data = write_csv(tmp / "train.csv", keyword_rows(300))
    args = TrainingArguments(
        **{
            "base_model": str(base),
            "learning_rate": 5e-3,
            "num_train_epochs": 4,
            "train_eval_size": 100,
            "max_length": 32,
            **overrides,
        }  # type: ignore[arg-type]
    )
    fine_tune(data, tmp / "run", args)
    return tmp / "run"


@pytest.fixture(scope="session")
def healthy_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return _run(tmp_path_factory.mktemp("healthy"), tiny_model_dir)


@pytest.fixture(scope="session")
def underfit_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return _run(tmp_path_factory.mktemp("underfit"), tiny_model_dir, learning_rate=1e-7, num_train_epochs=1)
