"""The fitgate command line: documented options, readable errors, a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import EXAMPLE_CSV, chinese_keyword_rows, shared_dataset, write_csv
from training.arguments import TrainingArguments


def test_help_documents_every_training_option_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--learning-rate",
        "--num-train-epochs",
        "--per-device-train-batch-size",
        "--weight-decay",
        "--warmup-ratio",
        "--label-smoothing-factor",
        "--seed",
    ):
        assert flag in text
    for name, info in TrainingArguments.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text
        assert f"(default: {info.get_default()})" in text


def test_bad_data_prints_one_clear_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly,one\nclass,one\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "finetune", str(bad), "-o", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "fitgate: error: found only one class ('one', 2 rows); a classifier needs at least 2 classes"
    )
    assert "Traceback" not in proc.stderr


def test_text_the_named_base_model_cannot_read_is_refused_in_one_line_naming_the_model_that_reads_it(
    tmp_path: Path,
) -> None:
    reviews = write_csv(tmp_path / "reviews.csv", chinese_keyword_rows(60))
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "finetune", str(reviews), "-o", str(tmp_path / "r"),
         "--base-model", "minilm"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "FITGATE_PREPARE_BASE_MODELS": "false"},
    )  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fitgate: error: base model 'minilm' (all-MiniLM-L6-v2: English")
    assert "Choose base_model 'multilingual-e5-small'" in last and "Traceback" not in proc.stderr


def test_out_of_bounds_option_is_refused_with_its_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["finetune", str(EXAMPLE_CSV), "-o", str(tmp_path / "r"), "--learning-rate", "5"]) == 2
    assert "learning_rate: Input should be less than or equal to 0.01" in capsys.readouterr().err


def test_literal_none_and_optional_none_both_reach_the_run(tmp_path: Path) -> None:
    """ "none" is a value of --class-weighting (kept as the word) and null for --early-stopping-patience."""
    from cli.main import build_parser
    from training.arguments import parse_arguments

    ns = build_parser().parse_args(
        [
            "finetune",
            "d.csv",
            "-o",
            str(tmp_path / "r"),
            "--class-weighting",
            "none",
            "--early-stopping-patience",
            "none",
        ]
    )
    args = parse_arguments(
        {"class_weighting": ns.class_weighting, "early_stopping_patience": ns.early_stopping_patience}
    )
    assert (args.class_weighting, args.early_stopping_patience) == ("none", None)


def test_finetune_prints_the_table_macro_f1_and_the_verdict(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Five steps cannot fit anything: the run reports in full, then the gate blocks it (exit code 3).

    With repair off the remedy the next attempt would apply is named; the test split stays unscored,
    because it is scored only for a model that is exported."""
    code = main(
        ["finetune", str(EXAMPLE_CSV), "-o", str(tmp_path / "run"), "--base-model", str(tiny_model_dir),
         "--max-steps", "5", "--early-stopping-patience", "none", "--class-weighting", "none", "--quiet",
         "--remedy-attempts", "0", "--model-name", "cli/test"]
    )  # fmt: skip
    assert code == 3
    out = capsys.readouterr().out
    assert "ham " in out and "spam " in out and "precision" in out
    assert "validation macro-F1: " in out and "test macro-F1" not in out
    assert "verdict: BLOCKED (underfit" in out and "remedy:" in out
    assert "no further attempt" in out and "learning_rate" in out and "max_steps 5 -> None" in out
    attempt = tmp_path / "run" / "attempt-1"
    assert (attempt / "learning_curves.png").is_file() and (attempt / "label_issues.csv").is_file()
    assert not list(tmp_path.rglob("*.onnx"))
    saved = json.loads((attempt / "arguments.json").read_text())
    assert (saved["class_weighting"], saved["early_stopping_patience"]) == ("none", None)


def test_models_commands_manage_versions(capsys: pytest.CaptureFixture[str], healthy_run: Path, tmp_path: Path) -> None:
    assert main(["export", str(healthy_run), "--model-name", "cli/spam"]) == 0
    assert main(["export", str(healthy_run), "--model-name", "cli/spam", "--no-promote"]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASSED" in out and "(not promoted)" in out
    assert main(["models", "show", "cli/spam"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 2 and "current" in listing[0] and "current" not in listing[1]
    version_two = listing[1].split()[0]
    assert main(["models", "promote", "cli/spam", version_two]) == 0
    assert main(["models", "rollback", "cli/spam"]) == 0
    assert main(["models", "rollback", "cli/spam"]) == 2
    assert "no earlier promoted version" in capsys.readouterr().err
    assert main(["models", "show", "Bad/Name"]) == 2


@pytest.mark.slow
def test_real_minilm_fine_tunes_on_sms_spam(tmp_path: Path) -> None:
    """The bundled all-MiniLM-L6-v2, a few steps on real SMS data: it must already separate spam."""
    source = shared_dataset("sms_spam/sms_spam.csv")
    lines = source.read_text(encoding="utf-8").splitlines()
    sample = tmp_path / "sms.csv"
    sample.write_text("\n".join(lines[:601]) + "\n", encoding="utf-8")
    code = main(
        [
            "finetune",
            str(sample),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "30",
            "--max-length",
            "64",  # SMS texts are short; the export's shape sweep at 128 tokens cost more than the training
            "--quiet",
            "--early-stopping-patience",
            "none",
            "--eval-steps",
            "15",
            "--no-label-audit",  # the audit on the real MiniLM: tests/training/test_audit.py
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "run" / "attempt-1" / "report.json").read_text())
    assert result["test"]["macro_f1"] > 0.8  # scored once the attempt passed the gate
    assert result["curves"][-1]["val_loss"] < result["curves"][0]["val_loss"]


def test_no_export_runs_the_same_repair_attempts_and_exports_nothing(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A user sees what repair would do without registering anything: the attempts, what each saw and changed."""
    code = main(
        ["finetune", str(EXAMPLE_CSV), "-o", str(tmp_path / "run"), "--base-model", str(tiny_model_dir),
         "--learning-rate", "0.005", "--max-steps", "3", "--class-weighting", "inverse", "--sampler", "balanced",
         "--max-length", "32", "--train-eval-size", "100", "--remedy-attempts", "1", "--quiet", "--no-export"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "1. underfit" in out and "seen: attempt 1: underfit" in out and "max_steps" in out
    assert (tmp_path / "run" / "attempt-2" / "arguments.json").is_file(), "the repair attempt ran"
    assert code in (0, 3) and ("--no-export: nothing was exported or registered" in out or code == 3)
    assert not list(tmp_path.rglob("*.onnx")) and "registered" not in out.replace("or registered", "")


def test_the_fitgate_command_runs_this_main() -> None:
    """The installed ``fitgate`` console script points at the CLI's main, wherever the package moves."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="fitgate")
    assert script.load() is main


def test_predict_scores_a_file_with_a_registered_model_version_into_the_format_of_out(
    tmp_path: Path, healthy_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from fitgate.settings import Settings
    from models.gate import release
    from models.names import ModelName
    from models.registry import open_registry

    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    version = release(healthy_run, ModelName.parse("local/spam"), settings, open_registry(settings),
                      promote=True).version  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"message": f"win cash now {i}", "key": i}) + "\n" for i in range(50)))
    out = tmp_path / "out.parquet"
    assert main(["predict", str(source), "--model", f"local/spam:{version}", "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == list(range(1, 51)) and [r["key"] for r in table] == [str(i) for i in range(50)]
    assert "50 rows scored with local/spam version" in capsys.readouterr().out
    assert not (tmp_path / ".out.parquet.parts").exists()  # the parts go once the output is whole


def test_predict_refuses_a_version_that_does_not_exist_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "data"))
    source = tmp_path / "in.csv"
    source.write_text("text\nhello\n")
    assert main(["predict", str(source), "--model", "local/none", "--out", str(tmp_path / "o.csv")]) == 2
    assert capsys.readouterr().err.startswith("fitgate: error: model local/none has no current version")
