"""Multi-label quality on Reuters-21578 (ModApte, 90 topics): TF-IDF, the Hugging Face Trainer and fitgate.

Arms, each trained on the official training file and scored on the official test file (9,603 / 3,299 stories):
- ``tfidf``: one-vs-rest TF-IDF (word 1-2 grams, sublinear tf) + LogisticRegression (liblinear, no class
  weights, C of 1, 10 or 100 chosen on macro-F1 of a seeded 10% of the training stories, then refit on all),
  a topic predicted when its probability is over 0.5.
- ``trainer``: the bundled all-MiniLM-L6-v2 as ``AutoModelForSequenceClassification`` with
  ``problem_type="multi_label_classification"`` and the Hugging Face ``Trainer`` with default
  ``TrainingArguments`` (lr 5e-5, batch 8, 3 epochs; no checkpoints, no reporting), texts tokenized with
  ``truncation=True, max_length=128`` and padded per batch by the default collator; a topic predicted when
  its sigmoid is over 0.5 (the documented default).
- ``fitgate``: fitgate's multi-label training (``run_fitgate``).

An arm trains only on the topics present in its training rows (all 90 in a full run); a topic it never saw
is never predicted. Every arm is scored by ``score`` on the same test rows: micro-F1, macro-F1 over all 90
topics (a topic without test stories scores 0), macro-F1 over the topics with test stories, subset accuracy,
Hamming loss and the F1 of each of the 7 topics with a single training example. Training seconds are wall
time of the fit alone. The Trainer uses a GPU when one is visible: compare its times only on one machine.
The data are for research use only: nothing here copies them into the repository (quick samples go to /tmp).

    python bench/multilabel_reuters.py                          # all three arms (the Trainer: about 3 h on 2 cores)
    python bench/multilabel_reuters.py --arms tfidf             # under 2 minutes on 2 cores
    python bench/multilabel_reuters.py --quick --out /tmp/ml    # ~10 min: 1,500 train / 500 test rows, 1 epoch
    python bench/multilabel_reuters.py --train-rows 2000         # a seeded 2,000 training stories, every test story
    python bench/multilabel_reuters.py --render                 # rewrite the .md from the JSON (e.g. of a stopped run)
    python bench/multilabel_reuters.py --append --arms fitgate  # redo one arm, keep the others
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: training/ is imported by the Trainer arm
DATA = ROOT.parent / "shared" / "datasets" / "reuters21578"
TRAIN_CSV, TEST_CSV, LABELS_TXT = (
    DATA / "reuters21578_train.csv",
    DATA / "reuters21578_test.csv",
    DATA / "labels.txt",
)
OUT = ROOT / "bench" / "results" / "multilabel_reuters"
THRESHOLD = 0.5  # both baselines' documented default: a topic is predicted when its probability is over it
MAX_LENGTH = 128  # the Trainer arm's truncation
QUICK_TRAIN_ROWS, QUICK_TEST_ROWS, QUICK_SEED = 1500, 500, 0
TFIDF_C_GRID = (1.0, 10.0, 100.0)
VARIANT_HELP = (
    "JSON training arguments over fitgate's defaults for the fitgate arm, a variant kept as its own row "
    """(e.g. '{"learning_rate": 3e-4}')"""
)
SEPARATOR = ";"  # between the topics of one story in the label column (datasets/README.md)


@dataclass(frozen=True)
class Arm:
    """What an arm hands back; the bench scores every arm with the same function."""

    predicted: np.ndarray
    """Test indicator matrix: one row per test story in file order, one 0/1 column per topic in labels.txt order."""
    train_seconds: float
    """Wall seconds of fitting alone: not reading, tokenizing the test file or predicting."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything worth keeping in the JSON: the arm's settings, epochs run, ..."""


# --- data -------------------------------------------------------------------------------------------------


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_stories(path: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Texts and their indicator matrix (stories x topics); an empty label is a story with no topic."""
    column = {name: j for j, name in enumerate(labels)}
    with path.open(newline="", encoding="utf-8") as f:  # texts hold newlines: a real CSV parser, not lines
        rows = list(csv.DictReader(f))
    truth = np.zeros((len(rows), len(labels)), dtype=np.int8)
    for i, row in enumerate(rows):
        for topic in filter(None, row["label"].split(SEPARATOR)):
            if topic not in column:
                raise ValueError(f"{path} row {i + 2}: topic {topic!r} is not in labels.txt; pass the matching labels")
            truth[i, column[topic]] = 1
    return [row["text"] for row in rows], truth


def write_sample(source: Path, rows: int, seed: int, target: Path) -> Path:
    """``rows`` stories of ``source`` drawn with ``seed``, kept in file order, written to ``target``."""
    with source.open(newline="", encoding="utf-8") as f:
        header, *stories = list(csv.reader(f))
    keep = np.sort(np.random.default_rng(seed).choice(len(stories), size=min(rows, len(stories)), replace=False))
    with target.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *(stories[i] for i in keep)])
    return target


def to_all_topics(predicted: np.ndarray, trained: np.ndarray, n_labels: int) -> np.ndarray:
    """Columns of the ``trained`` topics spread into all ``n_labels``; a topic never trained on stays 0."""
    full = np.zeros((predicted.shape[0], n_labels), dtype=np.int8)
    full[:, trained] = predicted
    return full


# --- arms -------------------------------------------------------------------------------------------------


def run_tfidf(train_csv: Path, test_csv: Path, labels: list[str], work: Path, quick: bool) -> Arm:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    texts, truth = read_stories(train_csv, labels)
    trained = np.flatnonzero(truth.any(axis=0))

    def pipeline(c: float) -> Any:
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            OneVsRestClassifier(LogisticRegression(solver="liblinear", C=c)),
        )

    started = time.perf_counter()
    # C chosen on a seeded 10% of the training stories (at C = 1 most rare topics are never predicted), then refit
    held = np.random.default_rng(0).random(len(texts)) < 0.1
    fit_texts = [t for t, h in zip(texts, held, strict=True) if not h]
    held_texts = [t for t, h in zip(texts, held, strict=True) if h]
    tried = {}
    for c in TFIDF_C_GRID:
        candidate = pipeline(c).fit(fit_texts, truth[~held][:, trained])
        decided = candidate.predict_proba(held_texts) > THRESHOLD
        tried[c] = float(f1_score(truth[held][:, trained], decided, average="macro", zero_division=0))
    best_c = max(tried, key=lambda c: tried[c])
    model = pipeline(best_c).fit(texts, truth[:, trained])
    train_seconds = time.perf_counter() - started
    test_texts, _ = read_stories(test_csv, labels)
    predicted = (model.predict_proba(test_texts) > THRESHOLD).astype(np.int8)
    return Arm(
        to_all_topics(predicted, trained, len(labels)),
        train_seconds,
        {
            "features": len(model[0].vocabulary_),
            "solver": "liblinear",
            "C": best_c,
            "holdout_macro_f1_by_C": tried,
            "threshold": THRESHOLD,
        },
    )


def run_trainer(train_csv: Path, test_csv: Path, labels: list[str], work: Path, quick: bool) -> Arm:
    """``transformers.Trainer`` with default arguments, as its multi-label documentation shows it."""
    from scipy.special import expit
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed
    from transformers import TrainingArguments as HfTrainingArguments

    from training.modeling import default_base_model

    texts, truth = read_stories(train_csv, labels)
    trained = np.flatnonzero(truth.any(axis=0))
    names = [labels[j] for j in trained]
    base = default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)

    def dataset(part: list[str], targets: np.ndarray | None) -> list[dict[str, Any]]:
        enc = tokenizer(part, truncation=True, max_length=MAX_LENGTH)
        rows = [{k: v[i] for k, v in enc.items()} for i in range(len(part))]
        if targets is not None:  # BCEWithLogitsLoss wants float targets
            rows = [{**r, "labels": [float(x) for x in t]} for r, t in zip(rows, targets, strict=True)]
        return rows

    shorter: dict[str, Any] = {"num_train_epochs": 1} if quick else {}  # otherwise the default: 3
    args = HfTrainingArguments(
        output_dir=str(work / "trainer"),
        save_strategy="no",
        report_to=[],
        **shorter,
    )
    set_seed(args.seed)  # the new head's initialization, before the Trainer seeds its own run
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(names),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    train = dataset(texts, truth[:, trained])
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    test_texts, _ = read_stories(test_csv, labels)
    # a list of dicts works as a map-style dataset; the stub asks for torch's Dataset
    logits = np.asarray(trainer.predict(dataset(test_texts, None)).predictions)  # type: ignore[arg-type]
    predicted = (expit(logits) > THRESHOLD).astype(np.int8)
    return Arm(
        to_all_topics(predicted, trained, len(labels)),
        train_seconds,
        {
            "epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate,
            "batch_size": args.per_device_train_batch_size,
            "max_length": MAX_LENGTH,
            "threshold": THRESHOLD,
            "device": str(args.device),
        },
    )


def run_fitgate(train_csv: Path, test_csv: Path, labels: list[str], work: Path, quick: bool) -> Arm:
    """fitgate's defaults on the training file (its own 90/10 validation carve, no carved test split), the
    stories with no topic kept (``allow_empty_labels``); the test file scored with the run's saved model and its
    per-label temperatures and thresholds, as the exported bundle applies them. Its time is the whole
    ``fine_tune`` (data checks, training, calibration and the label audit), not the loop alone."""
    from transformers import AutoModelForSequenceClassification

    from fitgate.settings import Settings
    from training import batching, modeling
    from training.arguments import TrainingArguments
    from training.diagnosis import diagnose_run
    from training.encoding import Encoded
    from training.loop import fine_tune
    from training.precision import pick_device
    from training.rundir import RunDirectory
    from training.scoring import EvaluationConfig, score

    shorter: dict[str, Any] = {"num_train_epochs": 1} if quick else {}
    overrides = json.loads(os.environ.get("FITGATE_BENCH_ARGUMENTS") or "{}")  # a variant: --fitgate-arguments
    args = TrainingArguments.model_validate({"allow_empty_labels": True, "test_size": 0.0, **shorter, **overrides})
    started = time.perf_counter()
    result = fine_tune(train_csv, work / "run", args)
    train_seconds = time.perf_counter() - started
    run = RunDirectory.open(work / "run")
    diagnosis = diagnose_run(run, Settings())
    test_texts, _ = read_stories(test_csv, labels)
    tokenizer = modeling.load_tokenizer(str(run.model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    device = pick_device(args.device)
    cut = batching.encode(tokenizer, test_texts, run.windowing)
    data = Encoded(cut.ids, np.zeros(len(test_texts), np.intp), cut.owners)
    pad_id = int(tokenizer.pad_token_id or 0)
    config = EvaluationConfig(args.per_device_eval_batch_size, pad_id, device, None, run.windowing.pooling)
    decided = run.decision_rule.decide(score(model.to(device), data, config)).astype(np.int8)
    trained = [labels.index(name) for name in run.label_names]
    return Arm(
        to_all_topics(decided, np.array(trained), len(labels)),
        train_seconds,
        {
            "arguments": overrides,
            "loop_seconds": result.train_seconds,
            "epochs_run": result.curves[-1].epoch,
            "best_epoch": next(p.epoch for p in result.curves if p.step == result.best_step),
            "validation_macro_f1": result.validation.macro_f1,
            "validation_micro_f1": result.validation.micro_f1,
            "gate": "passed" if diagnosis.passed else "blocked: " + ", ".join(diagnosis.blocking_verdicts),
            "labels_not_validated": len(result.data_report.labels_not_validated),
            "label_audit_seconds": (result.label_audit or {}).get("seconds"),
            "simple_validation_macro_f1": (result.label_audit or {}).get("simple_validation_macro_f1"),
        },
    )


ARMS = {"tfidf": run_tfidf, "trainer": run_trainer, "fitgate": run_fitgate}


# --- scoring ----------------------------------------------------------------------------------------------


def check_predictions(arm: str, predicted: np.ndarray, truth: np.ndarray, train_counts: np.ndarray) -> None:
    """An arm's matrix must be test rows x topics of 0/1, and predict no topic it never trained on."""
    if predicted.shape != truth.shape:
        raise ValueError(
            f"arm {arm!r} returned a {predicted.shape} matrix; expected {truth.shape} "
            "(one row per test story in file order, one column per topic in labels.txt order)"
        )
    if not np.isin(predicted, (0, 1)).all():
        raise ValueError(f"arm {arm!r} returned values other than 0/1; threshold its scores before returning")
    unseen = np.flatnonzero((train_counts == 0) & predicted.any(axis=0))
    if unseen.size:
        raise ValueError(
            f"arm {arm!r} predicted {unseen.size} topic column(s) with no training example (first: column "
            f"{unseen[0]}); are its columns in labels.txt order?"
        )


def score(truth: np.ndarray, predicted: np.ndarray, labels: list[str], rare: list[str]) -> dict[str, Any]:
    """The bench's metrics, the same for every arm; ``rare`` topics get their own F1 in the result."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    tested = np.flatnonzero(truth.any(axis=0))
    per_topic = f1_score(truth, predicted, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "macro_f1_tested": float(f1_score(truth, predicted, labels=tested, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, predicted)),
        "hamming_loss": float(hamming_loss(truth, predicted)),
        "topics_predicted": int(predicted.any(axis=0).sum()),
        "rare_f1": {t: float(per_topic[labels.index(t)]) for t in rare},
        "per_topic_f1": {t: float(f) for t, f in zip(labels, per_topic, strict=True)},
    }


# --- results ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass  # keep platform's name
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "scikit-learn": version("scikit-learn"),
        "python": platform.python_version(),
    }


def markdown(result: dict[str, Any]) -> str:
    runs, data, rows = result["runs"], result["data"], result["arms"]
    m = runs[-1]["machine"] if runs else {}
    out = [
        *(
            f"- run {i}: `{r['command']}`, {r['date']}, {r['machine']['cpu']}, {r['machine']['cores']} cores, "
            f"GPU: {r['machine']['gpu'] or 'none'}, torch {r['machine']['torch']}"
            for i, r in enumerate(runs)
        ),
        f"- data: {data['train_rows']:,} training / {data['test_rows']:,} test stories"
        f"{' (quick sample)' if data['quick'] else ''}; {data['topics']} topics, {data['topics_in_training']} "
        f"with a training story, {data['topics_in_test']} with a test story. A topic without training stories is "
        "never predicted; macro-F1 (all) scores a topic without test stories as 0.",
        "",
        "| arm | run | micro-F1 | macro-F1 (all) | macro-F1 (topics in test) | subset accuracy | Hamming loss "
        "| topics predicted | train (s) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['arm']} | {r['run']} | {r['micro_f1']:.4f} | {r['macro_f1']:.4f} | {r['macro_f1_tested']:.4f} | "
            f"{r['subset_accuracy']:.4f} | {r['hamming_loss']:.5f} | {r['topics_predicted']} | "
            f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )
    rare = data["one_example_topics"]
    out += [
        "",
        "Topics with one story in the full training file: F1 on the test file.",
        "",
        "| topic | training stories | test stories | " + " | ".join(r["arm"] for r in rows) + " |",
        "|---|---|---|" + "---|" * len(rows),
    ]
    for topic, counts in rare.items():
        f1s = " | ".join(f"{r['rare_f1'][topic]:.2f}" for r in rows)
        out.append(f"| {topic} | {counts['train']} | {counts['test']} | {f1s} |")
    if m:
        out += ["", f"Libraries: transformers {m['transformers']}, scikit-learn {m['scikit-learn']}."]
    return "\n".join(out)


def write(result: dict[str, Any], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")


# --- main -------------------------------------------------------------------------------------------------


def parse_arms(value: str) -> list[str]:
    arms = [a.strip() for a in value.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown or value!r}; choose from {','.join(ARMS)}")
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=parse_arms, default=list(ARMS), help=f"comma-separated, of {','.join(ARMS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_TRAIN_ROWS:,} training / {QUICK_TEST_ROWS:,} test stories (seeded sample), one Trainer epoch",
    )
    parser.add_argument(
        "--train-rows", type=int, default=None, help="a seeded sample of this many training stories (full test file)"
    )
    parser.add_argument("--fitgate-arguments", default=None, help=VARIANT_HELP)
    parser.add_argument("--out", type=Path, default=OUT, help="results path without suffix: writes .json and .md")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the JSON in --out")
    parser.add_argument(
        "--append", action="store_true", help="keep the arms already in --out; a rerun replaces its row"
    )
    ns = parser.parse_args()
    if ns.fitgate_arguments:
        os.environ["FITGATE_BENCH_ARGUMENTS"] = ns.fitgate_arguments
    if ns.render:  # a run stopped early: its JSON has every finished arm
        result = json.loads(ns.out.with_suffix(".json").read_text())
        write(result, ns.out)
        print(ns.out.with_suffix(".md").read_text())
        return
    if not TRAIN_CSV.exists():
        print(f"skipped: {TRAIN_CSV} not found; this benchmark needs ../shared/datasets beside the checkout")
        return

    previous = (
        json.loads(ns.out.with_suffix(".json").read_text())
        if ns.append and ns.out.with_suffix(".json").exists()
        else None
    )
    if previous is not None and previous["data"]["quick"] != ns.quick:
        sys.exit(
            f"{ns.out.with_suffix('.json')} holds {'quick' if previous['data']['quick'] else 'full'} results; "
            f"append with{'' if previous['data']['quick'] else 'out'} --quick, or write elsewhere with --out"
        )
    runs = [
        *(previous["runs"] if previous else []),
        {
            "command": "python " + " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
        },
    ]
    rows: list[dict[str, Any]] = previous["arms"] if previous else []
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    labels = read_labels(LABELS_TXT)
    full_counts = read_stories(TRAIN_CSV, labels)[1].sum(axis=0)
    rare = [t for t, n in zip(labels, full_counts, strict=True) if n == 1]
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multilabel_reuters_") as tmp:
        train_csv, test_csv = TRAIN_CSV, TEST_CSV
        if ns.quick:  # the sample lives in /tmp: these data are never written into the repository
            train_csv = write_sample(TRAIN_CSV, QUICK_TRAIN_ROWS, QUICK_SEED, Path(tmp) / "train.csv")
            test_csv = write_sample(TEST_CSV, QUICK_TEST_ROWS, QUICK_SEED + 1, Path(tmp) / "test.csv")
        elif ns.train_rows:
            train_csv = write_sample(TRAIN_CSV, ns.train_rows, QUICK_SEED, Path(tmp) / "train.csv")
        train_texts, train_truth = read_stories(train_csv, labels)
        train_counts = train_truth.sum(axis=0)
        truth = read_stories(test_csv, labels)[1]
        test_counts = truth.sum(axis=0)
        data = {
            "quick": ns.quick,
            "train_rows": len(train_texts),
            "test_rows": int(truth.shape[0]),
            "sample_seed": QUICK_SEED if ns.quick or ns.train_rows else None,
            "topics": len(labels),
            "topics_in_training": int((train_counts > 0).sum()),
            "topics_in_test": int((test_counts > 0).sum()),
            "one_example_topics": {
                t: {"train": int(train_counts[labels.index(t)]), "test": int(test_counts[labels.index(t)])}
                for t in rare
            },
        }
        for name in ns.arms:
            print(f"running {name} on {data['train_rows']:,} training stories ...", file=sys.stderr, flush=True)
            work = Path(tmp) / name
            work.mkdir()
            started = time.perf_counter()
            arm = ARMS[name](train_csv, test_csv, labels, work, ns.quick)
            wall = time.perf_counter() - started
            check_predictions(name, arm.predicted, truth, train_counts)
            variant = ns.fitgate_arguments if name == "fitgate" and ns.fitgate_arguments else None
            row = {
                "arm": f"{name} {variant}" if variant else name,
                "run": len(runs) - 1,  # which entry of "runs" measured it
                **score(truth, arm.predicted, labels, rare),
                "train_seconds": arm.train_seconds,
                "wall_seconds": wall,
                "details": arm.details,
            }
            rows = [*(r for r in rows if r["arm"] != row["arm"]), row]
            print(json.dumps({k: v for k, v in row.items() if k != "per_topic_f1"}), file=sys.stderr, flush=True)
            write({"runs": runs, "data": data, "arms": rows}, ns.out)  # after every arm: a stopped run keeps its rows
    print(ns.out.with_suffix(".md").read_text())
    print(f"all arms: {time.perf_counter() - started_all:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
