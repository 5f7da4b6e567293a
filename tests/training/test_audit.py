"""The label audit: out-of-sample probabilities and cleanlab find the rows whose labels were planted wrong,
say where they are in the upload, and tell labels that do not depend on the text from noisy ones."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import keyword_rows, shared_dataset
from training.audit import ISSUE_COLUMNS, audit_run, sentence_embeddings
from training.data import LabelledData, read_labelled_file
from training.modeling import default_base_model


def _planted(rows: list[tuple[str, str]], flips: int, seed: int) -> tuple[LabelledData, LabelledData, set[int]]:
    """Train/validation parts with ``flips`` labels swapped; returns the swapped rows' upload row numbers."""
    rng = random.Random(seed)
    classes = sorted({y for _, y in rows})
    flipped = set(rng.sample(range(len(rows)), flips))
    labels = [rng.choice([c for c in classes if c != y]) if i in flipped else y for i, (_, y) in enumerate(rows)]
    numbers = [i + 2 for i in range(len(rows))]  # the header is row 1
    cut = int(len(rows) * 0.8)
    texts = [t for t, _ in rows]
    train = LabelledData(texts[:cut], labels[:cut], numbers[:cut])
    validation = LabelledData(texts[cut:], labels[cut:], numbers[cut:])
    return train, validation, {i + 2 for i in flipped}


def _flagged_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_planted_label_errors_are_flagged_with_their_upload_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, validation, planted = _planted(keyword_rows(300), flips=15, seed=0)
    audit = audit_run(str(tiny_model_dir), train, validation, ["ham", "spam"], tmp_path / "issues.csv", seed=0)
    listed = _flagged_rows(tmp_path / "issues.csv")
    assert list(listed[0]) == ISSUE_COLUMNS
    flagged = {int(r["row"]) for r in listed}
    assert len(flagged & planted) >= 10, f"found {len(flagged & planted)} of 15 planted errors"
    assert len(flagged & planted) / len(flagged) >= 0.7, "most flagged rows are planted errors"
    for r in listed:
        if int(r["row"]) in planted:
            assert r["suggested_label"] != r["given_label"]
    assert not audit.labels_unrelated and audit.flagged == len(listed)
    assert sum(audit.noise_share_by_class.values()) > 0


def test_labels_that_do_not_depend_on_the_text_are_called_unrelated(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = keyword_rows(300)
    labels = [y for _, y in rows]
    random.Random(1).shuffle(labels)
    train = LabelledData([t for t, _ in rows[:240]], labels[:240])
    validation = LabelledData([t for t, _ in rows[240:]], labels[240:])
    audit = audit_run(str(tiny_model_dir), train, validation, ["ham", "spam"], tmp_path / "issues.csv", seed=0)
    assert audit.labels_unrelated
    assert audit.out_of_sample_macro_f1 < audit.baseline_macro_f1 + 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embeddings_on_the_training_gpu_match_the_cpu_ones(tiny_model_dir: Path) -> None:
    texts = [t for t, _ in keyword_rows(100)]
    on_cpu = sentence_embeddings(str(tiny_model_dir), texts)
    on_gpu = sentence_embeddings(str(tiny_model_dir), texts, device="cuda")
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.slow
def test_minilm_finds_planted_errors_in_real_sms(tmp_path: Path) -> None:
    """The bundled MiniLM on 1,500 real sms_spam rows with 75 labels flipped (bench/label_audit.py measures more)."""
    data = read_labelled_file(shared_dataset("sms_spam/sms_spam.csv"))[0]
    rows = list(zip(data.texts[:1500], data.labels[:1500], strict=True))
    train, validation, planted = _planted(rows, flips=75, seed=2)
    labels = sorted({y for _, y in rows})
    audit_run(default_base_model(), train, validation, labels, tmp_path / "issues.csv", seed=0)
    flagged = {int(r["row"]) for r in _flagged_rows(tmp_path / "issues.csv")}
    found = len(flagged & planted)
    assert found >= 0.7 * len(planted), f"found {found} of {len(planted)} planted errors"
    assert found >= 0.7 * len(flagged), f"{found} of the {len(flagged)} flagged rows were planted"


def test_the_gates_simple_classifier_learns_from_the_training_rows_only() -> None:
    """A validation file larger than training must not lend the baseline rows the fine-tuned model never saw:
    the training rows of both classes look alike, so only a fit that peeked at validation can score 1.0."""
    from training.audit import simple_classifier_macro_f1

    features = np.array([[1.0, 0.0]] * 20 + [[1.0, 0.0]] * 20 + [[0.0, 1.0]] * 20)
    labels = np.array([0] * 10 + [1] * 10 + [0] * 20 + [1] * 20)  # validation: class 1 is the second feature
    trained_on = np.array([True] * 20 + [False] * 40)
    only_training = simple_classifier_macro_f1(features, labels, trained_on, ~trained_on, 2)
    peeking = simple_classifier_macro_f1(features, labels, np.ones(60, dtype=bool), ~trained_on, 2)
    assert only_training is not None and peeking == 1.0 and only_training < 0.7
