"""Label audit against known noise: flip 10% of the labels (seeded), fine-tune with fitgate's defaults, and
score the audit's flags (label_issues.csv) against the flipped rows.

Each data set is capped (stratified) as in bench/gate_scenarios.py, so both fit in one sitting on 2 cores.
The fine-tune runs the audit exactly as the service does; its report gives the audit's and the training's
wall time. Then the same audited rows are scored with other ways of getting out-of-sample probabilities
(embeddings alone, TF-IDF alone, other regularization, other cleanlab filters), so the choice made in
training/audit.py is measured, not assumed.

    python bench/label_audit.py                      # sms_spam and banking77: the figures in docs/BENCHMARKS.md
    python bench/label_audit.py --datasets sms_spam --rows 1000 --out bench/results/quick/label_audit.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gate_scenarios import SOURCES
from training import audit
from training.arguments import TrainingArguments
from training.data import LabelledData, read_labelled_file, write_labelled_csv
from training.loop import fine_tune
from training.modeling import default_base_model
from training.rundir import LABEL_ISSUES
from training.splits import load_splits

ROWS = {"sms_spam": 2000, "banking77": 4000}
NOISE = 0.10
CONVERGED = 2000  # L-BFGS steps enough to converge (40 to 45 on banking77): what the step cap is compared with
VARIANTS = [  # (features, logistic regression C, L-BFGS steps, cleanlab filter); the first is training/audit.py's
    ("embeddings+tfidf", audit.REGULARIZATION_C, audit.MAX_ITERATIONS, audit.FILTER_BY),
    ("embeddings+tfidf", audit.REGULARIZATION_C, CONVERGED, audit.FILTER_BY),
    ("embeddings+tfidf", 1.0, audit.MAX_ITERATIONS, audit.FILTER_BY),
    ("embeddings+tfidf", audit.REGULARIZATION_C, audit.MAX_ITERATIONS, "prune_by_noise_rate"),
    ("embeddings", 1.0, audit.MAX_ITERATIONS, audit.FILTER_BY),
    ("embeddings", audit.REGULARIZATION_C, audit.MAX_ITERATIONS, audit.FILTER_BY),
    ("tfidf", audit.REGULARIZATION_C, audit.MAX_ITERATIONS, audit.FILTER_BY),
]


def noisy_sample(full: LabelledData, rows: int, seed: int) -> tuple[LabelledData, set[int]]:
    """``rows`` stratified rows with ``NOISE`` of their labels flipped; the flipped rows' numbers in the CSV."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for text, label in zip(full.texts, full.labels, strict=True):
        by_class.setdefault(label, []).append(text)
    share = min(1.0, rows / len(full))
    picked = [(t, y) for y, texts in by_class.items() for t in rng.sample(texts, max(3, round(len(texts) * share)))]
    rng.shuffle(picked)
    classes = sorted(by_class)
    flipped = set(rng.sample(range(len(picked)), round(NOISE * len(picked))))
    labels = [rng.choice([c for c in classes if c != y]) if i in flipped else y for i, (_, y) in enumerate(picked)]
    return LabelledData([t for t, _ in picked], labels), {i + 2 for i in flipped}  # the header is row 1


def precision_recall(flagged: set[int], truth: set[int]) -> dict[str, float]:
    hits = len(flagged & truth)
    return {
        "precision": hits / len(flagged) if flagged else 0.0,
        "recall": hits / len(truth) if truth else 0.0,
        "flagged": len(flagged),
    }


def variants(rows: audit.AuditedRows, k: int, truth: set[int], seed: int) -> list[dict[str, Any]]:
    started = time.perf_counter()
    embeddings = audit.sentence_embeddings(default_base_model(), rows.texts)
    embedding_seconds = time.perf_counter() - started
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    views = {
        "embeddings": csr_matrix(embeddings),
        "tfidf": TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32).fit_transform(rows.texts),
        "embeddings+tfidf": audit.text_features(rows.texts, embeddings),
    }
    out = []
    for features, c, steps, filter_by in VARIANTS:
        started = time.perf_counter()
        probabilities = audit.out_of_sample_probabilities(
            views[features], rows.labels, k, seed, regularization=c, max_iterations=steps
        )
        flags, _ = audit.find_issues(rows.labels, probabilities, filter_by=filter_by)
        flagged = {rows.rows[i] for i in np.flatnonzero(flags)}
        out.append(
            {
                "features": features,
                "C": c,
                "max_iterations": steps,
                "filter_by": filter_by,
                **precision_recall({r for r in flagged if r is not None}, truth),
                "seconds": time.perf_counter() - started + (embedding_seconds if "embeddings" in features else 0.0),
            }
        )
        print(f"  {features} C={c} steps={steps} {filter_by}: {out[-1]}", file=sys.stderr, flush=True)
    return out


def run(dataset: str, rows: int, seed: int) -> dict[str, Any]:
    full = read_labelled_file(SOURCES[dataset])[0]
    data, flipped = noisy_sample(full, rows, seed)
    args = TrainingArguments(seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_labelled_csv(data, Path(tmp) / "noisy.csv")
        splits, _ = load_splits(path, args)  # as fine_tune splits it: the audit sees train + validation
        audited = {r for part in (splits.train, splits.validation) for r in part.rows}
        truth = flipped & audited
        print(f"{dataset}: {len(data)} rows, {len(truth)} flipped labels among {len(audited)} audited", file=sys.stderr)
        result = fine_tune(path, Path(tmp) / "run", args)
        assert result.label_audit is not None
        with (Path(tmp) / "run" / LABEL_ISSUES).open(newline="", encoding="utf-8") as f:
            flagged = {int(r["row"]) for r in csv.DictReader(f)}
        label_names = result.label_names
        rows_audited = audit.audited_rows(splits.train, splits.validation, label_names)
        compared = variants(rows_audited, len(label_names), truth, seed)
    seconds = float(result.label_audit["seconds"])
    return {
        "dataset": dataset,
        "rows": len(data),
        "audited": len(audited),
        "flipped": len(truth),
        **precision_recall(flagged, truth),
        "audit_seconds": seconds,
        "train_seconds": result.train_seconds,
        "audit_share_of_training": seconds / result.train_seconds,
        "test_macro_f1": result.test.macro_f1 if result.test else None,
        "estimated_noise_share": result.label_audit["estimated_noise_share"],
        "variants": compared,
    }


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M")}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"`{meta['command']}` ({meta['date']}; {NOISE:.0%} of labels flipped at random, seeded)",
        "",
        "| data set | rows (audited) | flipped | precision | recall | audit (s) | training (s) | audit / training "
        "| met (P ≥ 0.8, R ≥ 0.7, ≤ 15%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = r["precision"] >= 0.8 and r["recall"] >= 0.7 and r["audit_share_of_training"] <= 0.15
        lines.append(
            f"| {r['dataset']} | {r['rows']} ({r['audited']}) | {r['flipped']} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['audit_seconds']:.1f} | {r['train_seconds']:.0f} | "
            f"{r['audit_share_of_training']:.1%} | {'yes' if met else 'NO'} |"
        )
    lines += [
        "",
        "The ways compared on the same audited rows (the first row of each data set is what fitgate runs):",
        "",
        "| data set | features | C | L-BFGS steps (max) | cleanlab filter | precision | recall | flagged | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for v in r["variants"]:
            lines.append(
                f"| {r['dataset']} | {v['features']} | {v['C']:g} | {v['max_iterations']} | {v['filter_by']} | "
                f"{v['precision']:.3f} | "
                f"{v['recall']:.3f} | {v['flagged']} | {v['seconds']:.1f} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--rows", type=int, help="rows per data set (default: 2,000 sms_spam, 4,000 banking77)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/label_audit.json"))
    ns = parser.parse_args()
    rows = []
    for dataset in ns.datasets:
        rows.append(run(dataset, ns.rows or ROWS[dataset], ns.seed))
        write_results(ns.out, rows)  # after every data set: a stopped run keeps what it measured


if __name__ == "__main__":
    main()
