"""The one rule for texts longer than the model's window: which tokens of a text the model reads, and how the
answers of several windows of one text become the text's answer.

``truncate`` reads the head (the first ``max_length`` tokens); ``head_tail`` reads the first quarter of the
window from the head and the rest from the tail (Sun et al. 2019, "How to Fine-Tune BERT for Text
Classification?": a review's verdict or an email's request is often at its end); ``chunks`` reads the whole
text in windows of the model's length that share ``stride`` tokens with the next, at most ``max_windows``
(the first ones and the last, so the end is always read), and pools their logits: the mean for single-label
(every part of a review votes), the maximum for multi-label (a label present in one paragraph is present in
the text). Training (each window carries its text's labels; validation and the gate score whole texts), the
export's parity check, /predict and batch jobs all cut and pool with these functions (numpy only, so serving
stays torch-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

LongTexts = Literal["truncate", "head_tail", "chunks"]
HEAD_SHARE = 0.25  # of a head_tail window: the rest comes from the tail
AUTO_CHUNKS_SHARE = 0.1
"""``long_texts: auto`` reads a data set in chunks when at least this share of its training texts is cut."""


@dataclass(frozen=True)
class Windowing:
    """How texts are cut into the model's windows. ``prefix``/``suffix``: the tokenizer's special tokens around
    a text (BERT's [CLS] ... [SEP], XLM-R's <s> ... </s>)."""

    mode: LongTexts
    max_length: int
    stride: int = 0
    max_windows: int = 1
    multi_label: bool = False

    @property
    def pooling(self) -> Literal["mean", "max"]:
        return "max" if self.multi_label else "mean"


def frame(with_specials: Sequence[int], without: Sequence[int]) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text: the ids of one encoding with them, less
    the ids of the same text without them."""
    n = len(without)
    for start in range(len(with_specials) - n + 1):
        if list(with_specials[start : start + n]) == list(without):
            return list(with_specials[:start]), list(with_specials[start + n :])
    raise ValueError("the tokenizer's special tokens do not surround the text; long texts cannot be windowed")


def cut(body: Sequence[int], prefix: Sequence[int], suffix: Sequence[int], w: Windowing) -> list[list[int]]:
    """The windows the model reads of one text (its ``body``: token ids without special tokens)."""
    budget = w.max_length - len(prefix) - len(suffix)
    if len(body) <= budget:
        return [[*prefix, *body, *suffix]]
    if w.mode == "truncate":
        return [[*prefix, *body[:budget], *suffix]]
    if w.mode == "head_tail":
        head = int(budget * HEAD_SHARE)
        return [[*prefix, *body[:head], *body[len(body) - (budget - head) :], *suffix]]
    step = max(1, budget - min(w.stride, budget // 2))  # a window moves on by at least half its length
    starts = [*range(0, len(body) - budget, step), len(body) - budget]  # the last window ends the text
    if len(starts) > w.max_windows:
        starts = starts[: w.max_windows - 1] + starts[-1:]
    return [[*prefix, *body[s : s + budget], *suffix] for s in starts]


@dataclass(frozen=True)
class Windows:
    """Texts as the windows the model reads: ``ids`` per window, ``owners`` the text of each window."""

    ids: list[list[int]]
    owners: NDArray[np.intp]
    texts: int
    cut: list[bool]  # per text: not every token read in one window (truncated, or read in several)
    tokens: list[int]  # per text: its tokens, special tokens included, before any cut


def windows(bodies: Sequence[Sequence[int]], prefix: Sequence[int], suffix: Sequence[int], w: Windowing) -> Windows:
    ids: list[list[int]] = []
    owners: list[int] = []
    budget = w.max_length - len(prefix) - len(suffix)
    for i, body in enumerate(bodies):
        pieces = cut(body, prefix, suffix, w)
        ids.extend(pieces)
        owners.extend([i] * len(pieces))
    return Windows(
        ids=ids,
        owners=np.asarray(owners, dtype=np.intp),
        texts=len(bodies),
        cut=[len(b) > budget for b in bodies],
        tokens=[len(b) + len(prefix) + len(suffix) for b in bodies],
    )


def pool(logits: NDArray[np.float32], owners: NDArray[np.intp], texts: int, how: str) -> NDArray[np.float32]:
    """One row of logits per text from its windows' rows: their mean, or their maximum."""
    if len(owners) == texts and np.array_equal(owners, np.arange(texts)):
        return logits
    out = np.zeros((texts, logits.shape[1]), dtype=np.float32)
    if how == "max":
        out.fill(-np.inf)
        np.maximum.at(out, owners, logits)
        return out
    np.add.at(out, owners, logits)
    counts = np.bincount(owners, minlength=texts).astype(np.float32)
    return (out / counts[:, None]).astype(np.float32)


def choose(
    mode: Literal["auto", "truncate", "head_tail", "chunks"], tokens: Sequence[int], max_length: int
) -> tuple[LongTexts, dict[str, object]]:
    """The handling for a data set whose texts have ``tokens`` each (special tokens included), and why: what the
    data report and the dry run show."""
    over = np.asarray([t - max_length for t in tokens if t > max_length])
    share = len(over) / max(1, len(tokens))
    report: dict[str, object] = {
        "window_tokens": max_length,
        "texts_over_window": len(over),
        "share_over_window": round(share, 4),
        "median_tokens_over": int(np.median(over)) if len(over) else 0,
        "p90_tokens_over": int(np.quantile(over, 0.9)) if len(over) else 0,
        "longest_text_tokens": int(max(tokens, default=0)),
    }
    if mode != "auto":
        return mode, report | {"long_texts": mode, "chosen_by": "request"}
    chosen: LongTexts = "chunks" if share >= AUTO_CHUNKS_SHARE else "truncate"
    reason = (
        f"{share:.0%} of the training texts are longer than the {max_length}-token window "
        + (f"(at least {AUTO_CHUNKS_SHARE:.0%}): they are read whole, in overlapping windows whose answers are pooled"
           if chosen == "chunks" else
           f"(under {AUTO_CHUNKS_SHARE:.0%}): their first {max_length} tokens are read")
    )  # fmt: skip
    return chosen, report | {"long_texts": chosen, "chosen_by": "data", "reason": reason}
