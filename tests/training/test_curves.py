"""The plots of a run draw whatever label names a user uploads, as plain text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.curves import label_fonts, plot_confusion

HOSTILE_LABELS = ["$\\frac{a}$ spam", "$x^2$", "\\textbf{b}", "$", "a_b^c", "100% &amp; <b>"]


def test_label_names_that_look_like_mathtext_or_tex_are_drawn_as_text(tmp_path: Path) -> None:
    k = len(HOSTILE_LABELS)
    matrix = np.arange(k * k).reshape(k, k)
    path = tmp_path / "confusion.png"
    plot_confusion(matrix, HOSTILE_LABELS, path, title="confusion matrix ($validation$)")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_class_names_in_any_script_are_drawn_or_numbered_never_drawn_as_empty_boxes(tmp_path: Path) -> None:
    # warnings are errors in this suite: matplotlib's "Glyph ... missing from font" would fail the test
    plot_confusion(np.array([[5, 1], [2, 4]]), ["正面", "负面"], tmp_path / "chinese.png", "confusion (test)")
    assert (tmp_path / "chinese.png").stat().st_size > 0
    assert label_fonts(["spam", "ham"]) == ["DejaVu Sans"]
    assert label_fonts(["𓀀 hieroglyph"]) is None  # no installed font has it (the Last Resort font only draws boxes)
    chinese = label_fonts(["正面"])
    assert chinese is None or (chinese[0] == "DejaVu Sans" and len(chinese) == 2)  # a CJK font where one is installed
