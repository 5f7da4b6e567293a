"""How each built-in base model reads each data set in ../shared/datasets, and what fitgate decides.

    python bench/vocabulary_coverage.py

Writes bench/results/vocabulary_coverage.md: per data set and base model, the share of [UNK] pieces, of texts
mostly unknown, pieces per word, single-letter pieces, the main script, and whether the model reads the upload
under the default limits (training/base_models.py), on a seeded 2,000-text sample.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FITGATE_DATA_DIR", str(ROOT / "bench" / ".cache" / "chinese_quality" / "fitgate-data"))

from training.base_models import BaseModels  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
FILES = {
    "chnsenticorp_htl": "chnsenticorp_htl/chnsenticorp_htl_all.csv",
    "online_shopping_10_cats": "online_shopping_10_cats/online_shopping_10_cats.csv",
    "sms_spam": "sms_spam/sms_spam.csv",
}
TEXT_COLUMNS = ("text", "review", "sms", "message")


def main() -> None:
    catalogue = BaseModels(Path(os.environ["FITGATE_DATA_DIR"]) / "base-models")
    csv.field_size_limit(1 << 24)
    lines = [
        "`python bench/vocabulary_coverage.py`: each built-in base model's tokenizer, a seeded 2,000-text sample, "
        "the default limits.",
        "",
        "| data set | base model | [UNK] pieces | texts mostly [UNK] | pieces per word | single-letter pieces "
        "| main script | reads it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, relative in FILES.items():
        with (DATASETS / relative).open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        column = next(c for c in TEXT_COLUMNS if c in rows[0])
        texts = [row[column] for row in rows if row[column]]
        for model in catalogue.names():
            reading = catalogue.read(model, texts)
            coverage = reading.coverage
            script, share = next(iter(coverage.scripts.items()))
            lines.append(
                f"| {name} | {model} | {coverage.unknown_share:.1%} | {coverage.mostly_unknown_share:.1%} "
                f"| {coverage.pieces_per_word:.2f} | {coverage.single_letter_share:.1%} | {script} ({share:.0%}) "
                f"| {'yes' if reading.readable else 'no'} |"
            )
    out = ROOT / "bench" / "results" / "vocabulary_coverage.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
