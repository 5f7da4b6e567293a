"""docs/BENCHMARKS.md shows what the benchmark scripts wrote, not numbers typed by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_included_table_equals_its_results_file() -> None:
    check = subprocess.run([sys.executable, "bench/report.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_a_table_edited_by_hand_is_caught() -> None:
    from bench.report import render

    page = (REPO / "docs" / "BENCHMARKS.md").read_text()
    edited = page.replace("| fitgate | 32 | 1 |", "| fitgate | 32 | 1 | 999 |", 1)
    assert edited != page, "the serving table is included in the page"
    assert render(edited, with_machine=False) == page
