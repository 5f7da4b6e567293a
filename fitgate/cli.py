"""The ``fitgate`` command line.

Options are generated from :class:`training.arguments.TrainingArguments`, so the CLI and the
HTTP endpoint share one definition, one default and one validation per value.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from tqdm import tqdm

import fitgate
from fitgate.errors import FitgateError
from training.arguments import TrainingArguments, parse_arguments
from training.progress import Progress


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training options (Hugging Face TrainingArguments names where one exists)")
    for name, info in TrainingArguments.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default()
        help_text = f"{info.description} (default: {default})"
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
            metavar=None if choices else "VALUE",
            help=help_text,
        )


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
    _add_training_options(finetune)
    return parser


class _ProgressBar:
    """Renders :class:`Progress` updates as one tqdm bar over optimizer steps."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm[None] | None = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if progress.phase == "training":
            if self.bar is None:
                self.bar = tqdm(total=progress.total_steps, unit="step", desc="training", dynamic_ncols=True)
            self.bar.update(progress.step - self.bar.n)
            self.bar.set_postfix(epoch=f"{progress.epoch:.2f}", val_f1=f"{progress.metrics.get('val_macro_f1', 0):.3f}")
        elif progress.phase in ("calibrating", "done") and self.bar is not None:
            self.bar.close()
            self.bar = None
        if progress.phase != "training":
            tqdm.write(f"[{progress.phase}]", file=sys.stderr)


def _finetune(ns: argparse.Namespace) -> int:
    from training.loop import fine_tune  # heavy imports (torch) only for this command
    from training.report import format_report

    reserved = {"command", "data", "output", "validation_file", "test_file", "quiet"}
    given = {k: v for k, v in vars(ns).items() if k not in reserved}
    args = parse_arguments({k: None if str(v).lower() in ("none", "null") else v for k, v in given.items()})
    result = fine_tune(
        ns.data,
        ns.output,
        args,
        validation_path=ns.validation_file,
        test_path=ns.test_file,
        on_progress=_ProgressBar(enabled=not ns.quiet),
    )
    print(format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "finetune":
            return _finetune(ns)
    except FitgateError as exc:
        print(f"fitgate: error: {exc.message}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
