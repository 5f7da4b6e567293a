"""The run directory: the one module that knows its file names, and writes and reads it.

A run directory is complete once ``report.json`` exists: :func:`save_run` writes it last.
The torch-free serving process imports this module to read reports, so it imports no torch,
transformers, matplotlib or scikit-learn at module level (the model types are for mypy only,
the plots import matplotlib when drawn).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

import fitgate
from fitgate.errors import RunDirectoryError
from fitgate.files import write_text_atomic
from training.arguments import TrainingArguments
from training.curves import CurvePoint, load_curves, plot_confusion, plot_curves, save_curves
from training.data import DataReport, LabelledData, read_labelled_file, write_labelled_csv
from training.decision import DecisionRule
from training.evaluation import ClassScores
from training.windows import Windowing

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

REPORT = "report.json"  # RunResult as JSON; written last, so its presence means the run is complete
CURVES = "curves.json"
ARGUMENTS = "arguments.json"
VALIDATION_CSV = "validation.csv"  # diagnosis, the export's parity check and drift statistics use these rows
VALIDATION_LOGITS = "validation_logits.npy"
MODEL_DIR = "model"  # the selected checkpoint and its tokenizer, as Hugging Face save_pretrained writes them
DIAGNOSIS = "diagnosis.json"  # written by the gate after the run, not by save_run
LEARNING_CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
TEST_CSV = "test.csv"  # the held-out rows, scored only once an attempt is chosen for export
LABEL_ISSUES = "label_issues.csv"  # rows whose labels look wrong (training/audit.py)
DROPPED_ROWS = "dropped_rows.csv"  # training rows an attempt left out: the clean-the-data remedy (models/repair.py)
CHECKPOINT = "checkpoint.pt"  # the last finished epoch of a running job (training/checkpoint.py); gone once saved
ATTEMPTS = "attempts.json"  # in a job's directory holding one sub-directory per attempt (models/repair.py)

REQUIRED = (REPORT, CURVES, ARGUMENTS, VALIDATION_CSV, VALIDATION_LOGITS, MODEL_DIR)
REPORT_FILES = (REPORT, CURVES, DIAGNOSIS, LEARNING_CURVES_PNG, CONFUSION_PNG)  # what a bundle's report/ holds
PRIVATE_REPORT_KEYS = ("output_dir", "base_model")  # server paths: never shown to a client


@dataclass(frozen=True)
class SplitScores:
    """Scores of the final model (calibrated, decision rule applied) on one split."""

    macro_f1: float
    accuracy: float
    ece_before_calibration: float
    ece_after_calibration: float
    per_class: list[ClassScores]  # per label for a multi-label model (support: rows carrying the label)
    confusion: list[list[int]]  # empty for a multi-label model: its labels do not exclude each other
    micro_f1: float | None = None  # multi-label: F1 over every (row, label) decision
    hamming_loss: float | None = None  # multi-label: share of (row, label) decisions that are wrong
    ece_per_label: list[float] | None = None  # multi-label: after calibration; the ece_* fields are their mean


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced; the run directory holds the same as files."""

    output_dir: Path
    base_model: str
    data_sha256: dict[str, str]
    label_names: list[str]
    curves: list[CurvePoint]
    best_step: int
    stopped_early: bool
    temperature: float
    class_bias: list[float]
    class_weights: list[float] | None
    validation: SplitScores
    test: SplitScores | None
    data_report: DataReport
    split_sizes: dict[str, int]
    train_class_counts: list[int]
    train_seconds: float
    total_seconds: float
    device: str
    label_audit: dict[str, Any] | None = None  # training/audit.py's LabelAudit; None when the audit is off
    task: str = "single_label"  # or multi_label: temperature/class_bias are then unused (1.0, zeros)
    label_temperatures: list[float] | None = None  # multi-label: the calibration, one temperature per label
    thresholds: list[float] | None = None  # multi-label: the decision rule, on calibrated probabilities


def save_run(
    result: RunResult,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: TrainingArguments,
    validation: LabelledData,
    validation_logits: NDArray[np.float32],
    test: LabelledData | None = None,
) -> None:
    """Write the selected model, the arguments, the curves, the plots and the report.

    The validation rows and their logits are kept too: diagnosis, the ONNX parity check
    and the drift reference statistics are all computed on them. The test rows are kept
    when they were not scored yet (``record_test_scores`` adds their scores later).
    """
    out = result.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_labelled_csv(validation, out / VALIDATION_CSV)
    if test is not None:
        write_labelled_csv(test, out / TEST_CSV)
    np.save(out / VALIDATION_LOGITS, validation_logits)
    model.save_pretrained(out / MODEL_DIR)
    tokenizer.save_pretrained(out / MODEL_DIR)
    (out / ARGUMENTS).write_text(args.model_dump_json(indent=2))
    save_curves(result.curves, result.best_step, out / CURVES)
    plot_curves(result.curves, result.best_step, out / LEARNING_CURVES_PNG, title=f"fitgate run: {out.name}")
    _plot_final_confusion(
        out, result.label_names, result.test or result.validation, "test" if result.test else "validation"
    )
    report = asdict(result)
    report["output_dir"] = str(out)
    report["fitgate_version"] = fitgate.__version__
    write_text_atomic(out / REPORT, json.dumps(report, indent=2))  # last: its presence means complete


def _plot_final_confusion(out: Path, label_names: list[str], scores: SplitScores | dict[str, Any], split: str) -> None:
    confusion = scores["confusion"] if isinstance(scores, dict) else scores.confusion
    if not confusion:  # a multi-label model: per-label scores, no confusion matrix
        return
    plot_confusion(np.array(confusion), label_names, out / CONFUSION_PNG, title=f"confusion matrix ({split})")


def _split_scores(values: dict[str, Any] | None) -> SplitScores | None:
    if values is None:
        return None
    return SplitScores(**{**values, "per_class": [ClassScores(**c) for c in values["per_class"]]})


def load_result(path: Path) -> RunResult:
    """A finished run's ``RunResult`` read back from its directory (a resumed job's earlier attempt)."""
    report = _read_json(path / REPORT)
    curves, _ = load_curves(path / CURVES)
    fields = {name: report[name] for name in RunResult.__dataclass_fields__ if name in report}
    validation = _split_scores(report["validation"])
    assert validation is not None
    return RunResult(
        **{
            **fields,
            "output_dir": path,
            "curves": curves,
            "validation": validation,
            "test": _split_scores(report.get("test")),
            "data_report": DataReport(**report["data_report"]),
        }
    )


def record_test_scores(path: Path, scores: SplitScores) -> None:
    """Add the test split's scores to a finished run (the attempt chosen for export) and redraw its matrix."""
    report = _read_json(path / REPORT)
    report["test"] = asdict(scores)
    _plot_final_confusion(path, list(report["label_names"]), scores, "test")
    write_text_atomic(path / REPORT, json.dumps(report, indent=2))


def attempt_dir(job_dir: Path, number: int) -> Path:
    return job_dir / f"attempt-{number}"


def write_attempts(job_dir: Path, attempts: list[dict[str, Any]], chosen: int) -> None:
    """The job's attempts (arguments changed, verdicts) and which one the job's files are read from."""
    job_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job_dir / ATTEMPTS, json.dumps({"chosen": chosen, "attempts": attempts}, indent=2))


def read_attempts(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / ATTEMPTS
    return _read_json(path) if path.is_file() else None


def resolve(path: Path) -> Path:
    """The run directory a path stands for: a job's chosen attempt (exported, or the last one), else itself.

    The chosen attempt is also the latest one while the job trains, so a client polling the
    job's files sees the attempt that is running.
    """
    attempts = read_attempts(path)
    return attempt_dir(path, int(attempts["chosen"])) if attempts else path


def _read_json(path: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(path.read_text())
    return parsed


def dropped_rows_file(path: Path) -> Path:
    """A job's list of training rows left out (its chosen attempt's, else the first attempt's that left any out),
    or a run's own."""
    attempts = read_attempts(path)
    if not attempts:
        return path / DROPPED_ROWS
    chosen = attempt_dir(path, int(attempts["chosen"])) / DROPPED_ROWS
    cleaned = [
        attempt_dir(path, int(a["number"])) / DROPPED_ROWS for a in attempts["attempts"] if a.get("rows_dropped")
    ]
    return chosen if chosen.is_file() or not cleaned else cleaned[0]


def read_live_curves(path: Path) -> dict[str, Any] | None:
    """The learning curves of a job's running (or chosen) attempt so far: ``best_step``, ``points``, ``attempt``.

    None before the first evaluation is written. Points carry no server paths.
    """
    attempts = read_attempts(path)
    try:
        curves = _read_json(resolve(path) / CURVES)
    except (OSError, ValueError):
        return None
    return {**curves, "attempt": int(attempts["chosen"]) if attempts else 1}


def read_public_report(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The client-facing report of a run, and its diagnosis (None before the gate has run).

    Works on a run the gate has not seen or that never got a model. Server paths are left
    out. A job with several attempts answers with its chosen one's report, and lists every
    attempt under ``attempts``. Raises :class:`RunDirectoryError` while ``report.json`` is not
    written yet.
    """
    attempts = read_attempts(path)
    path = resolve(path)
    try:
        report = _read_json(path / REPORT)
    except FileNotFoundError as exc:
        raise RunDirectoryError(f"{path} has no {REPORT} yet: the run has not finished") from exc
    for key in PRIVATE_REPORT_KEYS:
        report.pop(key, None)
    if attempts:
        report["attempts"] = attempts["attempts"]
        report["chosen_attempt"] = attempts["chosen"]
    diagnosis = path / DIAGNOSIS
    return report, _read_json(diagnosis) if diagnosis.is_file() else None


@dataclass(frozen=True)
class RunDirectory:
    """A complete run directory, read lazily: what diagnosis and export need, typed."""

    path: Path

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        """The run at ``path``, or the chosen attempt of the job whose directory ``path`` is."""
        path = resolve(path)
        missing = [name for name in REQUIRED if not (path / name).exists()]
        if missing:
            raise RunDirectoryError(
                f"{path} is not a complete fitgate run directory (missing {missing}); run `fitgate finetune` first"
            )
        return cls(path)

    @cached_property
    def report(self) -> dict[str, Any]:
        return _read_json(self.path / REPORT)

    @cached_property
    def arguments(self) -> TrainingArguments:
        return TrainingArguments.model_validate_json((self.path / ARGUMENTS).read_text())

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def label_names(self) -> list[str]:
        return list(self.report["label_names"])

    @property
    def temperature(self) -> float:
        return float(self.report["temperature"])

    @property
    def class_bias(self) -> NDArray[np.float64]:
        return np.array(self.report["class_bias"], dtype=np.float64)

    @cached_property
    def curves(self) -> tuple[list[CurvePoint], int]:
        return load_curves(self.path / CURVES)

    @property
    def multi_label(self) -> bool:
        return self.report.get("task") == "multi_label"

    @property
    def windowing(self) -> Windowing:
        """How this run read texts longer than its window (runs from before long-text handling: truncated)."""
        args = self.arguments
        chosen = ((self.report.get("data_report") or {}).get("long_texts") or {}).get("long_texts", "truncate")
        return Windowing(chosen, args.max_length, args.long_text_stride, args.long_text_max_windows, self.multi_label)

    def read_rows(self, name: str) -> LabelledData:
        """A kept split (validation.csv, test.csv), read as the run read its upload (single or multi-label)."""
        args = self.arguments
        return read_labelled_file(
            self.path / name,
            max_text_chars=10**9,
            task=self.report.get("task", "single_label"),
            label_separator=args.label_separator,
            allow_empty_labels=True,
        )[0]

    @cached_property
    def validation(self) -> LabelledData:
        return self.read_rows(VALIDATION_CSV)

    @cached_property
    def validation_labels(self) -> NDArray[np.intp]:
        """Class indices per row; for a multi-label run a 0/1 matrix, rows x labels."""
        return self.validation.targets(self.label_names)

    @cached_property
    def validation_logits(self) -> NDArray[np.float32]:
        logits: NDArray[np.float32] = np.load(self.path / VALIDATION_LOGITS)
        return logits

    @cached_property
    def decision_rule(self) -> DecisionRule:
        """The calibration and decision rule the exported model applies."""
        report = self.report
        if self.multi_label:
            return DecisionRule(
                multi_label=True,
                label_temperatures=list(report["label_temperatures"]),
                thresholds=list(report["thresholds"]),
            )
        return DecisionRule(temperature=float(report["temperature"]), class_bias=list(report["class_bias"]))

    @property
    def validation_predictions(self) -> NDArray[Any]:
        """What the exported model would answer: temperature and decision rule applied (multi-label: a
        boolean matrix, rows x labels)."""
        return self.decision_rule.decide(self.validation_logits)

    @property
    def train_labels(self) -> NDArray[np.intp]:
        """Training labels with the training split's class frequencies (all a trivial baseline needs); for a
        multi-label run a 0/1 matrix with each label's training prior (its co-occurrences are not kept)."""
        counts = self.report["train_class_counts"]
        if not self.multi_label:
            return np.repeat(np.arange(len(counts)), counts)
        rows = int(self.report["split_sizes"]["train"])
        return (np.arange(rows)[:, None] < np.array(counts)[None, :]).astype(np.intp)

    @property
    def diagnosis(self) -> dict[str, Any] | None:
        """The gate's verdict as written by :meth:`write_diagnosis`; None before the gate has run."""
        path = self.path / DIAGNOSIS
        return _read_json(path) if path.is_file() else None

    def write_diagnosis(self, diagnosis: dict[str, Any]) -> None:
        """Atomically: a client polling the report never reads half a verdict."""
        write_text_atomic(self.path / DIAGNOSIS, json.dumps(diagnosis, indent=2))
