"""The plots of a run draw whatever label names a user uploads, as plain text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.curves import plot_confusion

HOSTILE_LABELS = ["$\\frac{a}$ spam", "$x^2$", "\\textbf{b}", "$", "a_b^c", "100% &amp; <b>"]


def test_label_names_that_look_like_mathtext_or_tex_are_drawn_as_text(tmp_path: Path) -> None:
    k = len(HOSTILE_LABELS)
    matrix = np.arange(k * k).reshape(k, k)
    path = tmp_path / "confusion.png"
    plot_confusion(matrix, HOSTILE_LABELS, path, title="confusion matrix ($validation$)")
    assert path.read_bytes().startswith(b"\x89PNG")
