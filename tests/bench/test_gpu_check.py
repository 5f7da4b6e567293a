"""bench/gpu_check.py, the script a session with a lent GPU runs once, works: its CPU smoke mode runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import shared_dataset

REPO = Path(__file__).resolve().parents[2]


def test_the_smoke_run_measures_training_fine_tuning_and_serving_on_the_cpu(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    shared_dataset("sms_spam/sms_spam.csv")  # the smoke run fine-tunes on 300 of its rows
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--base-model", str(tiny_model_dir), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    variants = {t["variant"] for t in report["throughput"]}
    assert variants == {"loss.item() per step", "no host sync"}  # torch.compile is measured on the GPU only
    for t in report["throughput"]:
        assert t["samples_per_second"] > 0 and t["precision"] == "fp32"
        assert 0 < t["non_embedding_parameters"] < t["parameters"]
        assert t["mfu"] is None  # no known peak for a CPU: the table says so rather than guess
        assert t["peak_memory_mb"] > 0

    fine = report["fine_tune"]
    assert fine["device"] == "cpu" and fine["rows"] == 300
    assert 0.0 <= fine["validation_macro_f1"] <= 1.0 and fine["wall_seconds"] > 0

    cpu = report["serving"]["providers"]["CPUExecutionProvider"]
    assert report["serving"]["texts"] == 200 and cpu["texts_per_second"] > 0
    assert cpu["argmax_agreement_with_pytorch"] >= 0.99  # the exported graph answers as the model it came from
    assert cpu["max_abs_logit_diff_vs_pytorch"] < 1e-3

    table = out.with_suffix(".md").read_text()
    assert "| base model | no host sync | 8 | fp32 |" in table and "n/a (CPU)" in table
    assert "CPUExecutionProvider" in table
