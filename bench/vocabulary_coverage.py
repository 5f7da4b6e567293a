"""How the default base model's tokenizer reads each data set in ../shared/datasets (training/coverage.py).

    python bench/vocabulary_coverage.py

Prints one Markdown row per data set and writes bench/results/vocabulary_coverage.md: the share of [UNK] pieces,
of texts mostly unknown, pieces per word, single-letter pieces and the main script, on a seeded 2,000-text sample.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.coverage import measure_coverage
from training.modeling import default_base_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
FILES = {
    "chnsenticorp_htl": "chnsenticorp_htl/chnsenticorp_htl_all.csv",
    "online_shopping_10_cats": "online_shopping_10_cats/online_shopping_10_cats.csv",
    "sms_spam": "sms_spam/sms_spam.csv",
}
TEXT_COLUMNS = ("text", "review", "sms", "message")


def main() -> None:
    tokenizer = load_tokenizer(default_base_model())
    csv.field_size_limit(1 << 24)
    lines = [
        "`python bench/vocabulary_coverage.py`: the bundled all-MiniLM-L6-v2 tokenizer, a seeded 2,000-text sample.",
        "",
        "| data set | [UNK] pieces | texts mostly [UNK] | pieces per word | single-letter pieces | main script |",
        "|---|---|---|---|---|---|",
    ]
    for name, relative in FILES.items():
        with (DATASETS / relative).open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        column = next(c for c in TEXT_COLUMNS if c in rows[0])
        coverage = measure_coverage([row[column] for row in rows if row[column]], tokenizer)
        script, share = next(iter(coverage.scripts.items()))
        lines.append(
            f"| {name} | {coverage.unknown_share:.1%} | {coverage.mostly_unknown_share:.1%} "
            f"| {coverage.pieces_per_word:.2f} | {coverage.single_letter_share:.1%} | {script} ({share:.0%}) |"
        )
    out = ROOT / "bench" / "results" / "vocabulary_coverage.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
