"""The ``fitgate`` command line (``fitgate ...`` or ``python -m cli ...``).

It sits above the packages it drives (training, models) rather than in the ground package ``fitgate``, so that
imports point down: ``fitgate`` imports nothing from the layers above it (tests/test_layers.py checks).

Options are generated from :class:`training.arguments.TrainingArguments`, so the CLI and the
HTTP endpoint share one definition, one default and one validation per value.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import typing
from pathlib import Path
from typing import Any

from tqdm import tqdm

import fitgate
from fitgate.errors import FitgateError, GateBlocked, InvalidRequest, ModelNotFound
from fitgate.settings import Settings
from models.names import ModelName
from training.arguments import TrainingArguments, parse_arguments
from training.progress import Progress

EXIT_ERROR = 2
EXIT_BLOCKED = 3  # the gate refused the model: distinct from a usage or data error


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training options (Hugging Face TrainingArguments names where one exists)")
    for name, info in TrainingArguments.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default()
        help_text = f"{info.description} (default: {default})".replace("%", "%%")  # argparse formats help with %
        if info.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
        group.add_argument(
            flag,
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            type=_none_or_text if _admits_none(info.annotation) else str,
            metavar=None if choices else "VALUE",
            help=help_text,
        )


def _admits_none(annotation: object) -> bool:
    """Whether a field is optional (``int | None``): only there does the word "none" mean null.

    A literal option may have "none" as one of its values (``--class-weighting none``), which must
    reach validation as the string.
    """
    return type(None) in typing.get_args(annotation)


def _none_or_text(value: str) -> str | None:
    return None if value.lower() in ("none", "null") else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitgate", description=fitgate.__doc__)
    parser.add_argument("--version", action="version", version=f"fitgate {fitgate.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a classifier on a labelled CSV/TSV/JSONL file",
        description="Fine-tune a BERT-family classifier and write curves, plots and a per-class report to --output.",
    )
    finetune.add_argument("data", type=Path, help="labelled CSV, TSV or JSONL file")
    finetune.add_argument("--output", "-o", type=Path, required=True, help="run directory to create")
    finetune.add_argument("--validation-file", type=Path, help="separate validation file (default: carved from DATA)")
    finetune.add_argument("--test-file", type=Path, help="separate test file (default: carved from DATA)")
    finetune.add_argument("--quiet", action="store_true", help="no progress bar")
    finetune.add_argument(
        "--model-name", help="team/name to register a passing model under (default: local/<output folder name>)"
    )
    finetune.add_argument("--no-export", action="store_true", help="diagnose only: no ONNX export, no registration")
    finetune.add_argument("--no-promote", action="store_true", help="register a passing model without serving it")
    _add_training_options(finetune)

    export = commands.add_parser(
        "export",
        help="diagnose a finished run and, if it passes, export and register it",
        description="Re-run diagnosis on RUN_DIR with the operator's gate settings; export and register if it passes.",
    )
    export.add_argument("run_dir", type=Path, help="a run directory written by `fitgate finetune`")
    export.add_argument("--model-name", required=True, help="team/name to register the model under")
    export.add_argument("--no-promote", action="store_true", help="register without serving it")

    predict = commands.add_parser(
        "predict",
        help="score a CSV/TSV/JSONL/Parquet file of any size with a registered model",
        description="Score every row of FILE with one version of a model into OUT (its format from its suffix), "
        "streamed in chunks: memory stays flat whatever the file's size, and running the same command again after "
        "an interruption resumes at the first chunk it had not written.",
    )
    predict.add_argument("file", type=Path, help="the texts: .csv, .tsv, .jsonl or .parquet")
    predict.add_argument("--model", required=True, help="team/name or team/name:VERSION (default: the current one)")
    predict.add_argument(
        "--out", "-o", type=Path, required=True, help="the scored file: .csv, .tsv, .jsonl or .parquet"
    )
    predict.add_argument("--text-column", help="the column holding the texts (default: as for training)")
    predict.add_argument("--id-column", help="a column carried into the output (default: id, if present)")
    predict.add_argument("--chunk-rows", type=int, help="rows per chunk (default: FITGATE_BATCH_CHUNK_ROWS)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    models = commands.add_parser("models", help="list, inspect, promote and roll back registered models")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every model, its versions and which one is current")
    show = actions.add_parser("show", help="one model's versions, verdicts and metrics")
    show.add_argument("name", help="team/name")
    show.add_argument("--version", help="print this version's bundle.json")
    promote = actions.add_parser("promote", help="serve VERSION of a model")
    promote.add_argument("name", help="team/name")
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", help="serve the previously current version again")
    rollback.add_argument("name", help="team/name")
    return parser


class _ProgressBar:
    """Renders :class:`Progress` updates as one tqdm bar over optimizer steps."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm[None] | None = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if progress.phase == "loading" and progress.attempt > 1:
            tqdm.write(
                f"[attempt {progress.attempt} of {progress.attempts_allowed}] {progress.attempt_reason}",
                file=sys.stderr,
            )
        if progress.phase == "training":
            if self.bar is None:
                desc = "training" if progress.attempts_allowed == 1 else f"training (attempt {progress.attempt})"
                self.bar = tqdm(total=progress.total_steps, unit="step", desc=desc, dynamic_ncols=True)
            self.bar.update(progress.step - self.bar.n)
            self.bar.set_postfix(epoch=f"{progress.epoch:.2f}", val_f1=f"{progress.metrics.get('val_macro_f1', 0):.3f}")
        elif progress.phase in ("calibrating", "done") and self.bar is not None:
            self.bar.close()
            self.bar = None
        if progress.phase != "training":
            tqdm.write(f"[{progress.phase}]", file=sys.stderr)


def _default_model_name(output: Path) -> ModelName:
    slug = re.sub(r"[^a-z0-9_-]+", "-", output.resolve().name.lower())[:30].strip("-_") or "model"
    return ModelName.parse(f"local/{slug}")


def _release(run_dir: Path, name: ModelName, promote: bool) -> int:
    from models.gate import release
    from models.registry import open_registry

    settings = Settings()
    try:
        released = release(run_dir, name, settings, open_registry(settings), promote=promote)
    except GateBlocked as exc:
        print(exc.message)
        print(f"the report, curves and per-class table stay in {run_dir}")
        return EXIT_BLOCKED
    print(released.diagnosis.summary())
    state = "and promoted: it is now the current version" if released.promoted else "(not promoted)"
    print(f"registered {released.name} version {released.version} {state}")
    return 0


def _finetune(ns: argparse.Namespace) -> int:
    reserved = {
        "command",
        "data",
        "output",
        "validation_file",
        "test_file",
        "quiet",
        "model_name",
        "no_export",
        "no_promote",
    }
    name = ModelName.parse(ns.model_name) if ns.model_name else _default_model_name(ns.output)
    given = {k: v for k, v in vars(ns).items() if k not in reserved}
    args = parse_arguments(given)
    return _train_and_release(ns, args, name)


def _search_log(remedy: dict[str, Any]) -> str:
    """What the remedy search saw after an attempt, and what it changed next (or why it stopped)."""
    changes = "; ".join(f"{c['argument']} {c['before']} -> {c['after']}" for c in remedy["changes"])
    return f"seen: {remedy['seen']}; next: {remedy['reason']}" + (f" ({changes})" if changes else "")


def _train_and_release(ns: argparse.Namespace, args: TrainingArguments, name: ModelName) -> int:
    """Train, judge, repair when blocked (--remedy-attempts, default FITGATE_REMEDY_MAX_ATTEMPTS), export.

    With --no-export the same attempts run and are shown; nothing is exported or registered.
    """
    from models.registry import open_registry
    from models.repair import JobVerdict, train_and_release
    from training.report import format_report

    settings = Settings()
    attempts = settings.remedy_max_attempts if args.remedy_attempts is None else args.remedy_attempts
    try:
        repaired = train_and_release(
            ns.data,
            ns.output,
            args,
            name,
            settings,
            None if ns.no_export else open_registry(settings),
            repair_attempts=attempts,  # on the command line the user is the operator: no server cap
            promote=not ns.no_promote,
            validation_path=ns.validation_file,
            test_path=ns.test_file,
            on_progress=_ProgressBar(enabled=not ns.quiet),
            export=not ns.no_export,
        )
    except GateBlocked as exc:
        if isinstance(exc.diagnosis, JobVerdict):
            print(format_report(exc.diagnosis.result))  # the last attempt's, scored on validation only
            for attempt in exc.diagnosis.attempts:
                if attempt.remedy:
                    print(f"  {attempt.number}. {_search_log(attempt.remedy)}")
        print(exc.message)
        print(f"the report, curves, per-class table and label_issues.csv stay in {ns.output}")
        return EXIT_BLOCKED
    print(format_report(repaired.result))
    if len(repaired.attempts) > 1:
        print(f"repaired: attempt {repaired.chosen} of {len(repaired.attempts)} chosen")
        for attempt in repaired.attempts:
            print(f"  {attempt.number}. {', '.join(attempt.verdicts) or 'passed'}")
            if attempt.remedy and attempt.remedy["retry"]:
                print(f"     {_search_log(attempt.remedy)}")
    released = repaired.released
    if released is None:
        from models.gate import diagnose_and_record
        from training.rundir import RunDirectory, attempt_dir

        print(diagnose_and_record(RunDirectory.open(attempt_dir(ns.output, repaired.chosen)), settings).summary())
        print(f"--no-export: nothing was exported or registered; the runs stay in {ns.output}")
        return 0
    print(released.diagnosis.summary())
    state = "and promoted: it is now the current version" if released.promoted else "(not promoted)"
    print(f"registered {released.name} version {released.version} {state}")
    return 0


def _models(ns: argparse.Namespace) -> int:
    from models.registry import open_registry

    registry = open_registry(Settings())
    if ns.action == "list":
        for v in registry.versions():
            print(
                f"{v.model:<40} {v.version:<20} {'current' if v.current else '':<8} "
                f"macro-F1 {v.summary['metrics']['macro_f1']:.4f}"
            )
        return 0
    name = ModelName.parse(ns.name)
    if ns.action == "show":
        if ns.version:
            print(registry.spec(name, ns.version).model_dump_json(indent=2))
            return 0
        versions = registry.versions(name)
        if not versions:
            raise ModelNotFound(f"no model named {name}; `fitgate models list` shows the registered ones")
        for v in versions:
            m = v.summary["metrics"]
            print(
                f"{v.version:<20} {'current' if v.current else '':<8} verdict {v.summary['verdict']:<7} "
                f"macro-F1 {m['macro_f1']:.4f} accuracy {m['accuracy']:.4f} ({m['evaluated_on']})"
            )
        return 0
    if ns.action == "promote":
        registry.promote(name, ns.version)
        print(f"{name}: version {ns.version} is now current")
        return 0
    print(f"{name}: rolled back; version {registry.rollback(name)} is current again")
    return 0


def _predict(ns: argparse.Namespace) -> int:
    """Score a file locally with the batch path a POST /batch job runs (batch/run.py), resumable the same way."""
    from batch.files import choose_columns, file_format, read_columns
    from batch.run import BatchPlan, BatchProgress, run_batch
    from models.registry import open_registry
    from models.runtime import OnnxClassifier

    settings = Settings()
    model, _, version = ns.model.partition(":")
    name = ModelName.parse(model)
    registry = open_registry(settings)
    pinned = version or registry.current(name)
    if pinned is None:
        raise ModelNotFound(f"model {name} has no current version; name one as {name}:VERSION (fitgate models show)")
    source_format, output_format = file_format(ns.file.name), file_format(ns.out.name)
    if not ns.file.is_file():
        raise InvalidRequest(f"no file {ns.file}")
    plan = BatchPlan(
        source=ns.file, source_format=source_format,
        columns=choose_columns(read_columns(ns.file, source_format), ns.text_column, ns.id_column),
        output_format=output_format, destination=ns.out,
        parts_dir=ns.out.with_name(f".{ns.out.name}.parts"),  # kept until the output is whole: a rerun resumes
        chunk_rows=ns.chunk_rows or settings.batch_chunk_rows, max_chars=settings.max_chars_per_text,
    )  # fmt: skip
    classifier = OnnxClassifier(registry.bundle_path(name, pinned))
    classifier.load()
    bar: tqdm[None] | None = None

    def show(progress: BatchProgress) -> bool:
        nonlocal bar
        if ns.quiet:
            return False
        if progress.resumed_at_row and bar is None and progress.phase == "counting":
            tqdm.write(f"resuming after row {progress.resumed_at_row:,} (an earlier run wrote those)", file=sys.stderr)
        if progress.rows_total is not None and bar is None:
            bar = tqdm(total=progress.rows_total, initial=progress.rows_done, unit="row", dynamic_ncols=True)
        if bar is not None:
            bar.update(progress.rows_done - bar.n)
            bar.set_postfix(problems=progress.rows_with_problems)
        return False

    result = run_batch(plan, classifier, show)
    if bar is not None:
        bar.close()
    print(f"{result['rows']:,} rows scored with {name} version {pinned} into {ns.out} "
          f"({result['rows_with_problems']:,} with a problem, said in their 'problem' column)")  # fmt: skip
    drift = result["drift"]
    if drift.get("rows_scored"):
        print(f"answers vs the validation reference: shift {drift['answer_shift']:.3f}; "
              f"low-confidence share {drift['low_confidence_share']:.3f} (reference 0.05)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "finetune":
            return _finetune(ns)
        if ns.command == "export":
            return _release(ns.run_dir, ModelName.parse(ns.model_name), promote=not ns.no_promote)
        if ns.command == "models":
            return _models(ns)
        if ns.command == "predict":
            return _predict(ns)
    except FitgateError as exc:
        print(f"fitgate: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    return 1
