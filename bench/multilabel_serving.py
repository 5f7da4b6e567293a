"""Serving throughput of a multi-label model against a single-label model of the same size, in-process.

Both are the bundled all-MiniLM-L6-v2 with a 3-output head, fine-tuned for a few steps (the weights do not
change the cost) on ticket topics (tests/conftest.py ``ticket_rows``): once as three exclusive classes
(each ticket's first topic), once as three labels. Each is exported to a fitgate bundle by the exporter
(the gate skipped: it judges quality, not speed) and served by the runtime the server uses
(``OnnxClassifier``: tokenizer, ONNX Runtime, the decision rule, one answer per text). The two take
turns on the same texts (sms_spam, 2,000 messages, batches of 64) for ``--rounds`` rounds; the figure is
the median texts per second of each and their ratio. What differs between them is the sigmoid, the
per-label thresholds and the list of labels per answer; the graph is the same size.

    python bench/multilabel_serving.py              # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitgate.settings import Settings
from models.export import build_bundle
from models.runtime import OnnxClassifier
from tests.conftest import ticket_rows, write_csv
from training.arguments import TrainingArguments
from training.data import read_labelled_file
from training.diagnosis import Diagnosis
from training.loop import fine_tune
from training.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "datasets" / "sms_spam" / "sms_spam.csv"
OUT = ROOT / "bench" / "results" / "multilabel_serving"
TEXTS, BATCH = 2000, 64


def bundle(task: str, work: Path) -> OnnxClassifier:
    rows = ticket_rows(400)
    if task == "single_label":
        rows = [(text, labels.split(";")[0]) for text, labels in rows]
    data = write_csv(work / f"{task}.csv", rows)
    args = TrainingArguments(max_steps=4, label_audit=False, task=task)
    fine_tune(data, work / f"{task}-run", args)
    run = RunDirectory.open(work / f"{task}-run")
    dest = work / f"{task}-bundle"
    build_bundle(run, Diagnosis(run.curves[1]), dest, Settings(data_dir=work / "data"))
    classifier = OnnxClassifier(dest)
    classifier.load()
    return classifier


def texts_per_second(classifier: OnnxClassifier, texts: list[str]) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        classifier.predict(texts[start : start + BATCH]).answers()
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    ns = parser.parse_args()
    if not SMS.exists():
        print(f"skipped: {SMS} not found; this benchmark needs ../shared/datasets beside the checkout")
        return
    texts = read_labelled_file(SMS)[0].texts[:TEXTS]
    with tempfile.TemporaryDirectory(prefix="multilabel_serving_") as tmp:
        models = {task: bundle(task, Path(tmp)) for task in ("single_label", "multi_label")}
        for classifier in models.values():
            texts_per_second(classifier, texts[:256])  # warm up: the first calls pay for allocation
        speeds: dict[str, list[float]] = {task: [] for task in models}
        for _ in range(ns.rounds):
            for task, classifier in models.items():
                speeds[task].append(texts_per_second(classifier, texts))
        graphs = {task: classifier.served_graph for task, classifier in models.items()}
    median = {task: statistics.median(values) for task, values in speeds.items()}
    result: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "texts": len(texts),
        "batch": BATCH,
        "rounds": ns.rounds,
        "served_graph": graphs,
        "texts_per_second": speeds,
        "median_texts_per_second": median,
        "multi_over_single": median["multi_label"] / median["single_label"],
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"`{result['command']}`: {len(texts):,} sms_spam texts in batches of {BATCH}, {ns.rounds} alternating rounds, "
        f"MiniLM with a 3-output head, graph {graphs['single_label']} / {graphs['multi_label']}",
        "",
        "| model | median texts/s | rounds |",
        "|---|---:|---|",
        *(
            f"| {task.replace('_', '-')} | {median[task]:.0f} | {', '.join(f'{v:.0f}' for v in speeds[task])} |"
            for task in models
        ),
        "",
        f"multi-label / single-label: {result['multi_over_single']:.3f} (target: at least 0.90)",
    ]
    ns.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
