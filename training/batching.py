"""Tokenize once, then build batches padded only to their own longest text.

Texts of similar length are grouped into the same batch (shuffled in large chunks, sorted
inside each chunk), so almost no compute is spent on padding: the naive recipe pads every
SMS to 128 tokens when most are under 40.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from training.padding import pad_batch
from training.windows import Windowing, Windows, frame, windows

CHUNK_BATCHES = 50  # batches per shuffled chunk sorted by length (as in HF's LengthGroupedSampler)
AUGMENT_DELETE_PROBABILITY = 0.1  # EDA's (Wei & Zou 2019) deletion rate: light enough to keep the label true


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    indices: list[int]  # positions in the encoded data set, to restore order after evaluation


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], windowing: Windowing) -> Windows:
    """The windows the model reads of each text (``training/windows.py``); one fast batched call."""
    bodies = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    return windows(bodies, *special_frame(tokenizer), windowing)


def special_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts around one text."""
    return frame(tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"])


def collate(ids: Sequence[Sequence[int]], labels: Sequence[int], indices: list[int], pad_id: int) -> Batch:
    """Pad with :func:`training.padding.pad_batch`, the rule the exported model is served with."""
    input_ids, attention_mask = pad_batch(ids, pad_id)
    return Batch(
        torch.from_numpy(input_ids),
        torch.from_numpy(attention_mask),
        torch.tensor(list(labels), dtype=torch.long),
        indices,
    )


def length_grouped_order(
    indices: Sequence[int], lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffle, sort by length within chunks, cut into batches, shuffle the batches."""
    shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    chunk = batch_size * CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(shuffled), chunk):
        part = sorted(shuffled[start : start + chunk], key=lambda i: lengths[i], reverse=True)
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def balanced_indices(labels: Sequence[int], num_classes: int, generator: torch.Generator) -> list[int]:
    """One epoch's worth of indices drawn with replacement so every class is equally likely."""
    counts = torch.bincount(torch.tensor(list(labels)), minlength=num_classes).float()
    weights = (1.0 / counts.clamp(min=1))[torch.tensor(list(labels))]
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator).tolist()


def augment_ids(
    ids: Sequence[int], generator: torch.Generator, p_delete: float = AUGMENT_DELETE_PROBABILITY
) -> list[int]:
    """Random token deletion plus one adjacent swap, keeping [CLS] and [SEP] in place."""
    body = list(ids[1:-1])
    if len(body) < 3:
        return list(ids)
    keep = torch.rand(len(body), generator=generator) >= p_delete
    body = [tok for tok, k in zip(body, keep.tolist(), strict=True) if k] or body[:1]
    if len(body) >= 2:
        i = int(torch.randint(0, len(body) - 1, (1,), generator=generator))
        body[i], body[i + 1] = body[i + 1], body[i]
    return [ids[0], *body, ids[-1]]


def training_batches(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    batch_size: int,
    pad_id: int,
    generator: torch.Generator,
    balanced: bool,
    augment_classes: frozenset[int] = frozenset(),
) -> Iterator[Batch]:
    """One epoch of training batches (length-grouped; optionally class-balanced and augmented)."""
    num_classes = max(labels) + 1
    pool = balanced_indices(labels, num_classes, generator) if balanced else list(range(len(ids)))
    lengths = [len(x) for x in ids]
    for order in length_grouped_order(pool, lengths, batch_size, generator):
        seqs = [augment_ids(ids[i], generator) if labels[i] in augment_classes else ids[i] for i in order]
        yield collate(seqs, [labels[i] for i in order], order, pad_id)


def evaluation_batches(
    ids: Sequence[Sequence[int]], labels: Sequence[int], *, batch_size: int, pad_id: int
) -> Iterator[Batch]:
    """Batches sorted by length (least padding); ``Batch.indices`` restores the original order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield collate([ids[i] for i in chunk], [labels[i] for i in chunk], chunk, pad_id)
