"""The run directory: complete or refused, its client-facing report, the gate's verdict, and a light import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fitgate.errors import RunDirectoryError
from training import rundir
from training.rundir import DIAGNOSIS, RunDirectory, read_public_report


def _report(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    report = {"output_dir": "/srv/data/runs/x", "base_model": "/srv/models/minilm", "label_names": ["a", "b"]}
    (path / rundir.REPORT).write_text(json.dumps(report))
    return path


def test_the_public_report_leaves_out_server_paths_and_has_no_diagnosis_before_the_gate(tmp_path: Path) -> None:
    report, diagnosis = read_public_report(_report(tmp_path / "run"))
    assert report == {"label_names": ["a", "b"]}
    assert diagnosis is None


def test_a_run_without_a_report_yet_is_a_run_directory_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match=r"has no report\.json yet"):
        read_public_report(tmp_path)


def test_an_incomplete_run_directory_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match=r"missing \['curves.json', 'arguments.json'"):
        RunDirectory.open(_report(tmp_path / "run"))


def test_the_written_diagnosis_is_read_back_by_the_run_and_in_the_public_report(
    healthy_run: Path, tmp_path: Path
) -> None:
    run_dir = shutil.copytree(healthy_run, tmp_path / "run")  # the session's run is shared: work on a copy
    (run_dir / DIAGNOSIS).unlink(missing_ok=True)  # other tests may have released (and so diagnosed) it
    run = RunDirectory.open(run_dir)
    assert run.diagnosis is None
    verdict = {"passed": False, "blocking": ["underfit"], "findings": []}
    run.write_diagnosis(verdict)
    assert run.diagnosis == verdict
    assert read_public_report(run_dir)[1] == verdict
    assert not list(run_dir.glob(".*.tmp"))  # written atomically: no temporary file left behind
    assert set(rundir.REPORT_FILES) <= {p.name for p in run_dir.iterdir()}  # all a bundle copies


def test_reading_run_directories_imports_no_training_or_plotting_library() -> None:
    """The torch-free serving process reads reports through these modules."""
    code = (
        "import sys, training.rundir, training.splits, training.arguments, training.diagnosis; "
        "print([m for m in ('torch', 'transformers', 'matplotlib', 'sklearn', 'onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
