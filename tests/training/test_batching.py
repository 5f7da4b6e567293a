"""Batching: dynamic padding, length grouping, order restored after evaluation."""

from __future__ import annotations

import random

import torch

from training.batching import augment_ids, evaluation_batches, training_batches


def _ids(lengths: list[int]) -> list[list[int]]:
    return [[101, *range(1000, 1000 + n - 2), 102] for n in lengths]


def test_batches_are_padded_to_their_longest_text_not_to_max_length() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([5, 6, 7, 8]) for _ in range(500)] + [120] * 4
    ids = _ids(lengths)
    widths = [
        b.input_ids.shape[1]
        for b in training_batches(
            ids, [0, 1] * 252, batch_size=16, pad_id=0, generator=torch.Generator().manual_seed(0), balanced=False
        )
    ]
    assert max(widths) == 120
    assert sorted(widths)[len(widths) // 2] <= 8  # the median batch holds no padding to 120


def test_length_grouping_wastes_less_padding_than_random_batches() -> None:
    rng = random.Random(0)
    ids = _ids([rng.randint(4, 100) for _ in range(1600)])
    batches = list(
        training_batches(
            ids, [0] * 1600, batch_size=32, pad_id=0, generator=torch.Generator().manual_seed(0), balanced=False
        )
    )
    grouped_tokens = sum(b.input_ids.numel() for b in batches)
    random_tokens = sum(32 * max(len(x) for x in ids[i : i + 32]) for i in range(0, 1600, 32))
    real_tokens = sum(len(x) for x in ids)
    assert grouped_tokens < 1.2 * real_tokens < random_tokens


def test_every_example_appears_once_per_epoch_and_masks_mark_real_tokens() -> None:
    ids = _ids([3, 9, 4, 7, 5])
    batches = list(
        training_batches(
            ids, [0, 1, 0, 1, 0], batch_size=2, pad_id=0, generator=torch.Generator().manual_seed(0), balanced=False
        )
    )
    assert sorted(i for b in batches for i in b.indices) == [0, 1, 2, 3, 4]
    for b in batches:
        assert b.attention_mask.sum(1).tolist() == [len(ids[i]) for i in b.indices]


def test_balanced_sampler_draws_classes_equally_often() -> None:
    labels = [0] * 950 + [1] * 50
    drawn = [
        labels[i]
        for b in training_batches(
            _ids([5] * 1000), labels, batch_size=50, pad_id=0, generator=torch.Generator().manual_seed(0), balanced=True
        )
        for i in b.indices
    ]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6


def test_evaluation_batches_restore_input_order() -> None:
    ids = _ids([9, 3, 7, 5])
    seen = {
        i: row[: len(ids[i])].tolist()
        for b in evaluation_batches(ids, [0, 0, 0, 0], batch_size=3, pad_id=0)
        for i, row in zip(b.indices, b.input_ids, strict=True)
    }
    assert seen == dict(enumerate(ids))


def test_augmentation_keeps_special_tokens_and_changes_the_body() -> None:
    ids = [101, *range(2000, 2020), 102]
    out = augment_ids(ids, torch.Generator().manual_seed(0))
    assert out[0] == 101 and out[-1] == 102
    assert out != ids and set(out) <= set(ids)
