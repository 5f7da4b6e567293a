"""The splits tokenized once, and the fixed training subset re-scored at each evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import PreTrainedTokenizerBase

from training import batching
from training.arguments import TrainingArguments
from training.data import LabelledData
from training.splits import Splits


@dataclass(frozen=True)
class Encoded:
    """One split, tokenized once: token ids and targets, row for row (``LabelledData.targets``: a class index
    per row, or a 0/1 matrix rows x labels for multi-label data)."""

    ids: list[list[int]]
    targets: NDArray[np.intp]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int]) -> Encoded:
        return Encoded([self.ids[i] for i in rows], self.targets[np.asarray(rows, dtype=np.intp)])


@dataclass(frozen=True)
class EncodedSplits:
    label_names: list[str]  # class i is label_names[i]
    train: Encoded
    validation: Encoded
    test: Encoded | None


def encode_splits(splits: Splits, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedSplits:
    """Tokenize every split once; classes (labels) are numbered in sorted order of the training labels."""
    label_names = splits.train.label_names()

    def encode(part: LabelledData) -> Encoded:
        return Encoded(batching.encode(tokenizer, part.texts, max_length), part.targets(label_names))

    test = encode(splits.test) if splits.test is not None else None
    return EncodedSplits(label_names, encode(splits.train), encode(splits.validation), test)


TRAIN_EVAL_ROWS = (256, 1000)  # the default training subset: the validation split's size, within these bounds


def train_eval_subset(train: Encoded, size: int, generator: torch.Generator) -> Encoded:
    """The fixed training rows re-scored in eval mode at each evaluation (the generalization gap)."""
    return train.subset(sorted(torch.randperm(len(train), generator=generator)[:size].tolist()))


def train_eval_rows(args: TrainingArguments, validation_rows: int) -> int:
    """``train_eval_size``, or by default as many rows as validation has (within ``TRAIN_EVAL_ROWS``)."""
    low, high = TRAIN_EVAL_ROWS
    return args.train_eval_size or min(high, max(low, validation_rows))
