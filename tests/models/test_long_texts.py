"""Texts longer than the window are read as the data calls for, the same way from training to the served bundle."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from fitgate.settings import Settings
from models.export import build_bundle
from models.runtime import OnnxClassifier
from tests.conftest import keyword_rows, write_csv
from training.arguments import TrainingArguments
from training.diagnosis import diagnose_run
from training.loop import fine_tune
from training.rundir import RunDirectory

FILLER = ["the", "meeting", "notes", "were", "filed", "under", "the", "usual", "folder", "for", "the", "quarter"]


def long_rows(n: int) -> list[tuple[str, str]]:
    """The keyword texts behind a long preamble: the words that decide the label come last (as a review's verdict)."""
    rng = random.Random(1)
    return [(" ".join(rng.choices(FILLER, k=40)) + " " + text, label) for text, label in keyword_rows(n, seed=4)]


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("long")
    args = TrainingArguments(base_model=str(tiny_model_dir), learning_rate=5e-3, num_train_epochs=3,
                             train_eval_size=100, max_length=24, long_text_stride=4)  # fmt: skip
    fine_tune(write_csv(tmp / "train.csv", long_rows(240)), tmp / "run", args)
    return tmp / "run"


def test_a_data_set_of_long_texts_is_read_in_chunks_and_the_report_says_why(chunked_run: Path) -> None:
    run = RunDirectory.open(chunked_run)
    long_texts = run.report["data_report"]["long_texts"]
    assert long_texts["long_texts"] == "chunks" and long_texts["chosen_by"] == "data"
    assert long_texts["share_over_window"] == 1.0 and long_texts["median_tokens_over"] > 20
    assert long_texts["training_windows"] > 2 * run.report["data_report"]["rows_kept"] * 0.8  # several per text
    assert run.windowing.mode == "chunks" and run.windowing.pooling == "mean"


def test_the_served_bundle_reads_long_texts_in_the_windows_training_read(chunked_run: Path, tmp_path: Path) -> None:
    run = RunDirectory.open(chunked_run)
    settings = Settings(data_dir=tmp_path / "data")
    bundle = tmp_path / "bundle"
    build_bundle(run, diagnose_run(run, settings), bundle, settings)  # the export, whatever the gate would say
    classifier = OnnxClassifier(bundle, precision="fp32", threads=1)
    classifier.load()
    spec = classifier.spec
    assert (spec.long_texts, spec.long_text_stride, spec.max_length) == ("chunks", 4, 24)
    assert spec.parity["argmax_agreement"] >= 0.999  # window by window
    texts = [text for text, _ in long_rows(6)]
    whole = classifier.predict(texts)
    assert all(whole.truncated) and all(t > 24 for t in whole.input_tokens)  # cut into windows, not dropped
    one_by_one = np.vstack([classifier.predict([t]).probabilities for t in texts])
    assert np.allclose(whole.probabilities, one_by_one, atol=1e-5)  # a text's windows are pooled, never mixed
