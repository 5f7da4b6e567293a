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
    indices = sorted(indices)
    return LabelledData(
        [data.texts[i] for i in indices],
        [data.labels[i] for i in indices],
        [data.rows[i] for i in indices] if data.rows else [],
    )


def split_data(data: LabelledData, *, validation_size: float, test_size: float, seed: int) -> Splits:
    """Split into train/validation/test (test may be empty when ``test_size`` is 0)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(data.texts):
        groups[same_text_key(text)].append(i)
    groups_by_class: dict[str, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        majority = Counter(data.labels[i] for i in members).most_common(1)[0][0]
        groups_by_class[majority].append(members)

    held_out_parts = [size for size in (validation_size, test_size) if size > 0]
    needed = 1 + MIN_PER_SPLIT * len(held_out_parts)
    too_small = {label: len(g) for label, g in groups_by_class.items() if len(g) < needed}
    if too_small:
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
    keep = [i for i, row in enumerate(train.rows) if row not in excluded]
    kept = LabelledData([train.texts[i] for i in keep], [train.labels[i] for i in keep], [train.rows[i] for i in keep])
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

    def read(path: Path) -> tuple[LabelledData, DataReport]:
        return read_labelled_file(
            path,
            text_column=args.text_column,
            label_column=args.label_column,
            max_text_chars=args.max_text_chars,
            max_empty_share=args.max_empty_share,
        )

    data, report = read(data_path)
    given_val = read(validation_path)[0] if validation_path else None
    given_test = read(test_path)[0] if test_path else None
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
    unknown = sorted({*validation.labels, *(test.labels if test else [])} - set(train.labels))
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} appear in the validation/test data but never in training; "
            "add training examples for them or remove them"
        )
    return Splits(train, validation, test), report
