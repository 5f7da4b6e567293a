"""Learning curves: what is recorded at each evaluation, saved as JSON and drawn as PNG.

matplotlib is imported inside the plot functions: the serving process reads curves and
reports through :mod:`training.rundir` and must not pay for a plotting library. The plots
use matplotlib's ``Figure`` directly, not pyplot: no global figure state and no display
backend, as matplotlib recommends for servers.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fitgate.files import write_text_atomic


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation. Train scores come from a fixed training subset scored in eval mode,
    so they are comparable with validation (the generalization gap)."""

    step: int
    epoch: float
    train_loss: float | None  # running mean of the optimised objective since the last point
    train_eval_loss: float
    train_macro_f1: float
    val_loss: float
    val_macro_f1: float
    val_accuracy: float
    learning_rate: float
    samples_per_second: float | None
    peak_gpu_memory_mb: float | None


def save_curves(points: list[CurvePoint], best_step: int | None, path: Path) -> None:
    """``{"best_step": ..., "points": [...]}``, read back by :func:`load_curves`.

    Written after every evaluation while a run trains (``best_step`` null until a trained
    checkpoint was offered), atomically, so a reader such as the console's live chart never
    sees half a file.
    """
    write_text_atomic(path, json.dumps({"best_step": best_step, "points": [asdict(p) for p in points]}, indent=2))


def load_curves(path: Path) -> tuple[list[CurvePoint], int]:
    raw = json.loads(path.read_text())
    return [CurvePoint(**p) for p in raw["points"]], int(raw["best_step"] or 0)


def plot_curves(points: list[CurvePoint], best_step: int, path: Path, title: str) -> None:
    """Loss and macro-F1, train vs validation, the selected checkpoint marked."""
    from matplotlib.figure import Figure

    epochs = [p.epoch for p in points]
    best_epoch = next(p.epoch for p in points if p.step == best_step)
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    ax_loss.plot(epochs, [p.train_eval_loss for p in points], "o-", label="train (eval mode)")
    ax_loss.plot(epochs, [p.val_loss for p in points], "o-", label="validation")
    running = [(p.epoch, p.train_loss) for p in points if p.train_loss is not None]
    if running:
        ax_loss.plot(*zip(*running, strict=True), ":", color="grey", label="training objective")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_f1.plot(epochs, [p.train_macro_f1 for p in points], "o-", label="train (eval mode)")
    ax_f1.plot(epochs, [p.val_macro_f1 for p in points], "o-", label="validation")
    ax_f1.set(xlabel="epoch", ylabel="macro-F1", title="macro-F1", ylim=(0, 1.02))
    for ax in (ax_loss, ax_f1):
        ax.axvline(best_epoch, color="green", linestyle="--", label="selected checkpoint")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(matrix: NDArray[np.integer], label_names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true class per row); counts written in small matrices."""
    from matplotlib.figure import Figure

    k = len(label_names)
    size = min(4 + 0.25 * k, 24)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / totals, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(k)
    families = label_fonts(label_names)
    if families is None:  # no installed font draws these names: number the classes rather than draw boxes
        label_names = [str(i) for i in range(k)]
        title += " (classes by number, in report.json order: no installed font draws their names)"
    font: dict[str, Any] = {"fontsize": max(4, 10 - k // 10), "family": families or None}
    # label names are the user's strings, drawn as they are: never as mathtext ("$x$ spam") or TeX
    ax.set_xticks(ticks, label_names, rotation=90, parse_math=False, usetex=False, **font)
    ax.set_yticks(ticks, label_names, parse_math=False, usetex=False, **font)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def label_fonts(texts: list[str]) -> list[str] | None:
    """Font families that draw every character of ``texts``: matplotlib's default alone for Latin text, plus an
    installed font that has the rest (a CJK font for Chinese labels; matplotlib falls back glyph by glyph).
    None when no installed font has them (matplotlib would draw empty boxes and warn)."""
    from matplotlib import font_manager, rcParams

    default = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    missing = {c for text in texts for c in text if not c.isspace()} - _characters(default)
    if not missing:
        return [font_manager.FontProperties(fname=default).get_name()]
    for entry in font_manager.fontManager.ttflist:
        if entry.name.startswith("Last Resort"):  # maps every code point to a placeholder box: draws no name
            continue
        if missing <= _characters(entry.fname):
            return [font_manager.FontProperties(fname=default).get_name(), entry.name]
    return None


@functools.lru_cache(maxsize=64)
def _characters(font_path: str) -> frozenset[str]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(chr(code) for code in FT2Font(font_path).get_charmap())
    except (OSError, RuntimeError):  # a font file matplotlib lists but cannot open
        return frozenset()
