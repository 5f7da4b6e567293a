"""Stratified, seeded train/validation/test splits that never let a duplicate text leak.

Identical texts (``fitgate.texts.same_text_key``: full-width and half-width forms alike) form one
group and go to one split together; groups are dealt per class (by the group's majority label) so
every split keeps the class mix.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from fitgate.errors import DataError
from fitgate.texts import same_text_key
from training.arguments import TrainingArguments
from training.data import DataReport, LabelledData, read_labelled_file

log = logging.getLogger(__name__)

MIN_PER_SPLIT = 1  # each class needs at least this many examples in validation and test


@dataclass(frozen=True)
class Splits:
    train: LabelledData
    validation: LabelledData
    test: LabelledData | None


def _subset(data: LabelledData, indices: list[int]) -> LabelledData:
    return data.subset(sorted(indices))


def _stratum(data: LabelledData, members: list[int], frequency: Counter[str]) -> str:
    """The class a group of identical texts is dealt by: its majority label, or for multi-label rows the
    rarest label they carry ("" for none), so that rare labels reach validation whenever they can."""
    if not data.multi_label:
        return Counter(data.labels[i] for i in members).most_common(1)[0][0]
    labels = {label for i in members for label in data.label_set(i)}
    return min(labels, key=lambda label: (frequency[label], label)) if labels else ""


def split_data(data: LabelledData, *, validation_size: float, test_size: float, seed: int) -> Splits:
    """Split into train/validation/test (test may be empty when ``test_size`` is 0)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(data.texts):
        groups[same_text_key(text)].append(i)
    frequency = Counter(label for i in range(len(data)) for label in data.label_set(i))
    groups_by_class: dict[str, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        groups_by_class[_stratum(data, members, frequency)].append(members)

    held_out_parts = [size for size in (validation_size, test_size) if size > 0]
    needed = 1 + MIN_PER_SPLIT * len(held_out_parts)
    too_small = {label: len(g) for label, g in groups_by_class.items() if len(g) < needed}
    if too_small and not data.multi_label:  # multi-label: such labels stay in training, unvalidated (reported)
        shown = ", ".join(f"{label!r} has {n}" for label, n in sorted(too_small.items(), key=lambda kv: kv[1])[:5])
        raise DataError(
            f"{len(too_small)} classes have too few distinct examples to split ({shown}); each class needs at least "
            f"{needed} (training plus {MIN_PER_SPLIT} per held-out split): add examples or remove those classes"
        )

    rng = random.Random(seed)
    train: list[int] = []
    validation: list[int] = []
    test: list[int] = []
    for label in sorted(groups_by_class):
        class_groups = groups_by_class[label]
        rng.shuffle(class_groups)
        total = sum(len(g) for g in class_groups)
        if len(class_groups) < needed:  # a multi-label stratum too small to share: all of it trains
            train.extend(i for g in class_groups for i in g)
            continue
        targets = [
            (bucket, max(MIN_PER_SPLIT, round(total * size)) if size > 0 else 0)
            for bucket, size in ((validation, validation_size), (test, test_size))
        ]
        cursor = 0
        for bucket, target in targets:
            taken = 0
            # always leave at least one group for training
            while taken < target and cursor < len(class_groups) - 1:
                bucket.extend(class_groups[cursor])
                taken += len(class_groups[cursor])
                cursor += 1
        for group in class_groups[cursor:]:
            train.extend(group)
    if data.multi_label and (
        (validation_size > 0 and not validation) or (test_size > 0 and not test)
    ):  # every label too rare to share: nothing could validate the model or tune a threshold
        raise DataError(
            f"too few texts per label to hold out validation and test rows: all {len(data)} rows would train, "
            f"none would judge the model; each label needs at least {needed} distinct texts (add rows, or "
            "upload a separate validation file)"
        )
    return Splits(
        train=_subset(data, train),
        validation=_subset(data, validation),
        test=_subset(data, test) if test_size > 0 else None,
    )


def remove_overlap(train: LabelledData, held_out: list[LabelledData]) -> tuple[LabelledData, int]:
    """Drop training rows whose text also appears in a held-out file (leakage); return how many."""
    seen = {same_text_key(text) for part in held_out for text in part.texts}
    keep = [i for i, text in enumerate(train.texts) if same_text_key(text) not in seen]
    return _subset(train, keep), len(train) - len(keep)


def leave_out(train: LabelledData, rows: list[int]) -> tuple[LabelledData, int]:
    """The training rows without those numbered ``rows`` in the upload (the clean-the-data remedy), and how many."""
    if not rows or not train.rows:
        return train, 0
    excluded = set(rows)
    kept = train.subset([i for i, row in enumerate(train.rows) if row not in excluded])
    return kept, len(train) - len(kept)


def load_splits(
    data_path: Path,
    args: TrainingArguments,
    validation_path: Path | None = None,
    test_path: Path | None = None,
) -> tuple[Splits, DataReport]:
    """Read the file(s) and split; separate validation/test files replace the carved splits.

    The report describes the training file. Raises :class:`DataError` when a held-out label
    never occurs in training: the model could not predict it, and its scores would mislead.
    """

    def read(path: Path, task: str = args.task) -> tuple[LabelledData, DataReport]:
        return read_labelled_file(
            path,
            text_column=args.text_column,
            label_column=args.label_column,
            max_text_chars=args.max_text_chars,
            max_empty_share=args.max_empty_share,
            task=task,
            label_separator=args.label_separator,
            allow_empty_labels=args.allow_empty_labels,
        )

    data, report = read(data_path)
    # held-out files are read as the training file was
    given_val = read(validation_path, report.task)[0] if validation_path else None
    given_test = read(test_path, report.task)[0] if test_path else None
    splits = (
        split_data(
            data,
            validation_size=0.0 if given_val else args.validation_size,
            test_size=0.0 if given_test else args.test_size,
            seed=args.seed,
        )
        if not (given_val and given_test)
        else Splits(data, given_val, given_test)
    )
    validation = given_val or splits.validation
    test = given_test or splits.test
    train, leaked = remove_overlap(splits.train, [p for p in (given_val, given_test) if p is not None])
    if leaked:
        log.warning("dropped %d training rows whose text also appears in the validation/test file", leaked)
    train, report.training_rows_left_out = leave_out(train, args.excluded_training_rows)
    held_out_labels = {*validation.label_names(), *(test.label_names() if test else [])}
    unknown = sorted(held_out_labels - set(train.label_names()))
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} appear in the validation/test data but never in training; "
            "add training examples for them or remove them"
        )
    if train.multi_label:
        report_label_support(report, train, validation)
    return Splits(train, validation, test), report


MIN_LABEL_TRAINING_ROWS = 5  # fewer positive training rows: reported as too rare to learn (kept in the model)
MIN_LABEL_VALIDATION_ROWS = 5  # fewer positive validation rows: its threshold is the shared one, the gate skips it


def report_label_support(report: DataReport, train: LabelledData, validation: LabelledData) -> None:
    """Name the labels too rare to learn or to validate, and say in the report what happens to them."""
    train_counts = Counter(label for i in range(len(train)) for label in train.label_set(i))
    val_counts = Counter(label for i in range(len(validation)) for label in validation.label_set(i))
    report.labels_not_learnable = sorted(n for n, c in train_counts.items() if c < MIN_LABEL_TRAINING_ROWS)
    report.labels_not_validated = sorted(n for n in train_counts if val_counts[n] < MIN_LABEL_VALIDATION_ROWS)
