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
from training.windows import Windowing, choose


@dataclass(frozen=True)
class Encoded:
    """One split, tokenized once: the windows the model reads and the targets (``LabelledData.targets``: a class
    index per text, or a 0/1 matrix texts x labels for multi-label data).

    ``owners`` maps each window to its text when a text may be read in several windows (validation and test,
    scored per text); None when every row of ``ids`` is its own example (training rows, where each window of
    a long text carries the text's targets)."""

    ids: list[list[int]]
    targets: NDArray[np.intp]
    owners: NDArray[np.intp] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, rows: list[int]) -> Encoded:
        assert self.owners is None, "a subset of windowed texts is taken by text, not by window"
        return Encoded([self.ids[i] for i in rows], self.targets[np.asarray(rows, dtype=np.intp)])


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    part: LabelledData,
    label_names: list[str],
    windowing: Windowing,
    *,
    examples: bool,
) -> Encoded:
    """A split as the model reads it: ``examples`` (training) makes each window an example with its text's targets;
    otherwise windows keep their text (``owners``), and scores are pooled per text."""
    cut = batching.encode(tokenizer, part.texts, windowing)
    targets = part.targets(label_names)
    if examples:
        return Encoded(cut.ids, targets[cut.owners])
    return Encoded(cut.ids, targets, cut.owners)


@dataclass(frozen=True)
class EncodedSplits:
    label_names: list[str]  # class i is label_names[i]
    train: Encoded
    validation: Encoded
    test: Encoded | None
    windowing: Windowing
    long_texts: dict[str, object]  # what the data report says about texts longer than the window


def encode_splits(
    splits: Splits, tokenizer: PreTrainedTokenizerBase, args: TrainingArguments, multi_label: bool
) -> EncodedSplits:
    """Tokenize every split once; classes (labels) are numbered in sorted order of the training labels. The
    long-text handling is chosen here, from the training texts' lengths (``long_texts: auto``)."""
    label_names = splits.train.label_names()
    lengths = batching.encode(tokenizer, splits.train.texts, Windowing("truncate", args.max_length)).tokens
    mode, report = choose(args.long_texts, lengths, args.max_length)
    windowing = Windowing(mode, args.max_length, args.long_text_stride, args.long_text_max_windows, multi_label)

    def encode(part: LabelledData, examples: bool = False) -> Encoded:
        return encode_texts(tokenizer, part, label_names, windowing, examples=examples)

    test = encode(splits.test) if splits.test is not None else None
    train = encode(splits.train, examples=True)
    report["training_windows"] = len(train.ids)
    return EncodedSplits(label_names, train, encode(splits.validation), test, windowing, report)


TRAIN_EVAL_ROWS = (256, 1000)  # the default training subset: the validation split's size, within these bounds


def train_eval_subset(train: Encoded, size: int, generator: torch.Generator) -> Encoded:
    """The fixed training rows re-scored in eval mode at each evaluation (the generalization gap)."""
    return train.subset(sorted(torch.randperm(len(train), generator=generator)[:size].tolist()))


def train_eval_rows(args: TrainingArguments, validation_rows: int) -> int:
    """``train_eval_size``, or by default as many rows as validation has (within ``TRAIN_EVAL_ROWS``)."""
    low, high = TRAIN_EVAL_ROWS
    return args.train_eval_size or min(high, max(low, validation_rows))
