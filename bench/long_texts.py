"""Long texts: fitgate's default long-text handling vs head truncation vs head+tail truncation, on imdb and Reuters.

Every arm fine-tunes the bundled all-MiniLM-L6-v2 with fitgate's defaults (max_length 128) on the same seeded
training rows and differs only in ``long_texts``:
- ``head``: ``truncate`` (the first 126 word pieces; what fitgate did before, and most recipes do);
- ``head_tail``: the first quarter of the window from the head, the rest from the tail (Sun et al. 2019);
- ``default``: ``auto``, which fitgate resolves from the data (chunks when >= 10% of the training texts are
  longer than the window; the row says what it chose).
Each trained run scores the same test rows with its own handling (``score_test_split``: the gate's decision
rule, the windows pooled per text); macro-F1 (and micro-F1 for Reuters) and wall seconds of training.
The data are for research use only: nothing here copies them into the repository.

    python bench/long_texts.py --data imdb --train-rows 2000 --test-rows 2000
    python bench/long_texts.py --data reuters --train-rows 2000 --test-rows 1000 --arms head default
    python bench/long_texts.py --data imdb --render
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "datasets"
FILES = {
    "imdb": (DATA / "imdb" / "imdb_train.csv", DATA / "imdb" / "imdb_test.csv"),
    "reuters": (DATA / "reuters21578" / "reuters21578_train.csv", DATA / "reuters21578" / "reuters21578_test.csv"),
}
ARMS = {"head": "truncate", "head_tail": "head_tail", "default": "auto"}
OUT = ROOT / "bench" / "results"


def sample(path: Path, rows: int, seed: int) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    random.Random(seed).shuffle(table)
    return table[:rows]


def write(rows: list[dict[str, str]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def run_arm(data: str, arm: str, train_csv: Path, test_csv: Path, work: Path) -> dict[str, Any]:
    from training.arguments import TrainingArguments
    from training.loop import fine_tune
    from training.rundir import RunDirectory

    extra: dict[str, Any] = {"allow_empty_labels": True, "task": "multi_label"} if data == "reuters" else {}
    args = TrainingArguments(long_texts=ARMS[arm], **extra)
    run_dir = work / arm
    started = time.perf_counter()
    result = fine_tune(train_csv, run_dir, args, test_path=test_csv)
    seconds = time.perf_counter() - started
    scores = result.test
    run = RunDirectory.open(run_dir)
    long_texts = run.report["data_report"]["long_texts"]
    return {
        "arm": arm,
        "long_texts": long_texts["long_texts"],
        "macro_f1": scores.macro_f1 if scores else None,
        "micro_f1": getattr(scores, "micro_f1", None),
        "accuracy": scores.accuracy if scores else None,
        "train_seconds": round(seconds, 1),
        "epochs_run": result.curves[-1].epoch,
        "training_windows": long_texts.get("training_windows"),
        "share_over_window": long_texts["share_over_window"],
    }


def render(data: str, results: dict[str, Any]) -> str:
    rows = {r["arm"]: r for r in results["arms"]}
    head = rows.get("head", {}).get("macro_f1")
    lines = [
        f"{results['data']}: {results['train_rows']:,} training rows, {results['test_rows']:,} test rows (seed "
        f"{results['seed']}), MiniLM, max_length 128; {100 * results['share_over_window']:.0f}% of the training "
        f"texts are longer than the window. {results['machine']}.",
        "",
        "| arm | long_texts | macro-F1 | vs head (points) | micro-F1 | training windows | train seconds | epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("head", "head_tail", "default"):
        r = rows.get(name)
        if r is None:
            continue
        delta = f"{100 * (r['macro_f1'] - head):+.1f}" if head is not None and r["macro_f1"] is not None else "–"
        micro = f"{r['micro_f1']:.3f}" if r.get("micro_f1") is not None else "–"
        lines.append(
            f"| {name} | {r['long_texts']} | {r['macro_f1']:.3f} | {delta} | {micro} | {r['training_windows']:,} | "
            f"{r['train_seconds']:,.0f} | {r['epochs_run']:.2f} |"
        )
    lines.append("")
    lines.append(f"`{results['command']}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(FILES), default="imdb")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the JSON")
    ns = parser.parse_args()
    json_path, md_path = OUT / f"long_texts_{ns.data}.json", OUT / f"long_texts_{ns.data}.md"
    if ns.render:
        md_path.write_text(render(ns.data, json.loads(json_path.read_text())))
        return 0
    train_file, test_file = FILES[ns.data]
    if not train_file.is_file():
        print(f"skipped: {train_file} is absent (../shared/datasets)", file=sys.stderr)
        return 0
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"arms": []}
    results["arms"] = [a for a in results.get("arms", []) if a["arm"] not in ns.arms]
    with tempfile.TemporaryDirectory(prefix="long-texts-") as tmp:
        work = Path(tmp)
        train_csv = write(sample(train_file, ns.train_rows, ns.seed), work / "train.csv")
        test_csv = write(sample(test_file, ns.test_rows, ns.seed), work / "test.csv")
        for arm in ns.arms:
            row = run_arm(ns.data, arm, train_csv, test_csv, work)
            print(json.dumps(row), flush=True)
            results["arms"].append(row)
            results.update(
                data=ns.data, train_rows=ns.train_rows, test_rows=ns.test_rows, seed=ns.seed,
                share_over_window=row["share_over_window"],
                machine=f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
                command="python bench/long_texts.py " + " ".join(sys.argv[1:]),
            )  # fmt: skip
            json_path.write_text(json.dumps(results, indent=2))
            md_path.write_text(render(ns.data, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
