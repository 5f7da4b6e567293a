"""The one padding rule: a batch of token-id lists becomes ``input_ids`` and ``attention_mask``.

Each batch is padded to its own longest sequence with the tokenizer's pad id. Training,
the export's parity check and serving all use it (numpy only, so serving stays torch-free).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(input_ids, attention_mask)``, both ``(len(ids), longest)`` int64."""
    width = max((len(x) for x in ids), default=0)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask
