"""Splits: stratified, seeded, leak-free, and consistent with given validation/test files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fitgate.errors import DataError
from tests.conftest import write_csv
from training.arguments import TrainingArguments
from training.data import LabelledData
from training.splits import load_splits, remove_overlap, split_data


def _data(counts: dict[str, int], duplicates: int = 0) -> LabelledData:
    texts, labels = [], []
    for label, n in counts.items():
        for i in range(n):
            texts.append(f"{label} example {i % (n - duplicates) if duplicates else i}")
            labels.append(label)
    return LabelledData(texts, labels)


def test_split_is_stratified_80_10_10() -> None:
    splits = split_data(_data({"ham": 900, "spam": 100}), validation_size=0.1, test_size=0.1, seed=0)
    assert splits.test is not None
    assert Counter(splits.validation.labels) == {"ham": 90, "spam": 10}
    assert Counter(splits.test.labels) == {"ham": 90, "spam": 10}
    assert Counter(splits.train.labels) == {"ham": 720, "spam": 80}


def test_same_seed_same_split_other_seed_other_split() -> None:
    data = _data({"a": 50, "b": 50})
    first = split_data(data, validation_size=0.1, test_size=0.1, seed=1)
    assert first == split_data(data, validation_size=0.1, test_size=0.1, seed=1)
    assert first.validation.texts != split_data(data, validation_size=0.1, test_size=0.1, seed=2).validation.texts


def test_duplicate_texts_never_straddle_two_splits() -> None:
    data = _data({"a": 200, "b": 200}, duplicates=100)  # every text appears twice
    splits = split_data(data, validation_size=0.1, test_size=0.1, seed=0)
    assert splits.test is not None
    train, val, test = set(splits.train.texts), set(splits.validation.texts), set(splits.test.texts)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 400


def test_every_class_reaches_every_split_even_when_tiny() -> None:
    splits = split_data(_data({"big": 500, "tiny": 3}), validation_size=0.1, test_size=0.1, seed=0)
    assert splits.test is not None
    for part in (splits.train, splits.validation, splits.test):
        assert "tiny" in part.labels


def test_class_too_small_to_split_is_named_with_its_count() -> None:
    with pytest.raises(DataError, match=r"'rare' has 2.*needs at least 3"):
        split_data(_data({"common": 100, "rare": 2}), validation_size=0.1, test_size=0.1, seed=0)


def test_without_test_split_two_examples_per_class_suffice() -> None:
    splits = split_data(_data({"common": 100, "rare": 2}), validation_size=0.1, test_size=0.0, seed=0)
    assert splits.test is None
    assert splits.validation.labels.count("rare") == 1


def test_rows_also_in_a_given_validation_file_are_removed_from_training() -> None:
    train = LabelledData(["a", "b", "c"], ["x", "y", "x"])
    cleaned, dropped = remove_overlap(train, [LabelledData(["b"], ["y"])])
    assert (cleaned.texts, dropped) == (["a", "c"], 1)


def _args(**values: object) -> TrainingArguments:
    return TrainingArguments.model_validate(values)


def test_a_label_only_in_the_validation_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [(f"text {i}", "ham" if i % 2 else "spam") for i in range(40)])
    validation = write_csv(tmp_path / "val.csv", [("hello", "ham"), ("win", "spam"), ("where is it", "lost")])
    with pytest.raises(DataError, match=r"\['lost'\] appear in the validation/test data but never in training"):
        load_splits(train, _args(), validation_path=validation)


def test_a_given_validation_file_replaces_the_carved_split_and_leaves_training(tmp_path: Path) -> None:
    rows = [(f"text {i}", "ham" if i % 2 else "spam") for i in range(40)]
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "val.csv", [rows[0], ("other", "ham")])
    splits, report = load_splits(train, _args(test_size=0.0), validation_path=validation)
    assert splits.validation.texts == ["text 0", "other"]
    assert "text 0" not in splits.train.texts and len(splits.train) == 39
    assert splits.test is None and report.rows_kept == 40


def test_full_width_and_half_width_copies_of_a_text_never_straddle_two_splits() -> None:
    texts = [f"评论ＮＯ{i}" for i in range(60)] + [f"评论NO{i}" for i in range(60)]
    data = LabelledData(texts, ["正面" if i % 60 % 2 else "负面" for i in range(120)])
    splits = split_data(data, validation_size=0.2, test_size=0.2, seed=0)
    parts = (splits.train, splits.validation, splits.test)
    keys = [{text.replace("ＮＯ", "NO") for text in part.texts} for part in parts]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    held_out = LabelledData(["评论NO1"], ["正面"])
    kept, dropped = remove_overlap(LabelledData(["评论ＮＯ1", "评论NO2"], ["正面", "负面"]), [held_out])
    assert dropped == 1 and kept.texts == ["评论NO2"]


def test_excluded_rows_leave_training_only_and_the_report_counts_them(tmp_path: Path) -> None:
    """The clean-the-data remedy: the split is the one the attempt before it judged on; only training shrinks."""
    rows = [(f"text number {i} " + ("good" if i % 2 else "bad"), "pos" if i % 2 else "neg") for i in range(200)]
    path = write_csv(tmp_path / "data.csv", rows)
    plain, _ = load_splits(path, TrainingArguments())
    excluded = plain.train.rows[:7] + plain.validation.rows[:3]  # validation row numbers are ignored
    cleaned, report = load_splits(path, TrainingArguments(excluded_training_rows=excluded))
    assert report.training_rows_left_out == 7
    assert cleaned.train.rows == plain.train.rows[7:]
    assert cleaned.validation.rows == plain.validation.rows
    assert plain.test is not None and cleaned.test is not None and cleaned.test.rows == plain.test.rows


def _multi_label(rows: list[tuple[str, str]]) -> LabelledData:
    return LabelledData([t for t, _ in rows], [y for _, y in rows], multi_label=True)


def test_multi_label_rows_are_dealt_by_their_rarest_label_and_a_label_too_rare_to_share_stays_in_training() -> None:
    rows = [(f"common {i}", "common") for i in range(60)] + [(f"both {i}", "common;rare") for i in range(20)]
    rows += [("the only one", "common;singleton")]
    splits = split_data(_multi_label(rows), validation_size=0.1, test_size=0.1, seed=0)
    assert "singleton" in splits.train.label_names() and "singleton" not in splits.validation.label_names()
    assert "rare" in splits.validation.label_names() and splits.test is not None and "rare" in splits.test.label_names()
    assert splits.train.multi_label and splits.validation.multi_label


def test_the_report_names_multi_label_labels_too_rare_to_learn_or_validate(tmp_path: Path) -> None:
    rows = [(f"common text {i}", "common") for i in range(200)] + [(f"rare text {i}", "rare;common") for i in range(3)]
    path = write_csv(tmp_path / "data.csv", rows)
    _, report = load_splits(path, _args())
    assert report.task == "multi_label"
    assert report.labels_not_learnable == ["rare"] and report.labels_not_validated == ["rare"]


def test_a_multi_label_label_only_in_the_validation_file_is_a_data_error(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [(f"text {i}", "a;b" if i % 2 else "a") for i in range(40)])
    validation = write_csv(tmp_path / "val.csv", [("hello", "a"), ("where", "a;lost")])
    with pytest.raises(DataError, match=r"\['lost'\] appear in the validation/test data but never in training"):
        load_splits(train, _args(), validation_path=validation)


def test_a_multi_label_file_too_small_to_hold_out_any_row_is_a_data_error() -> None:
    data = _multi_label([("card charged twice", "billing;bug"), ("app crashes", "bug"), ("refund", "billing")])
    with pytest.raises(DataError, match="too few texts per label to hold out validation and test rows"):
        split_data(data, validation_size=0.1, test_size=0.1, seed=0)
