"""The gate end to end on tiny runs: pass -> verified bundle in the registry; block -> nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from fitgate.errors import BundleCorrupt, GateBlocked, ModelNotFound, RegistryConflict
from fitgate.settings import Settings
from models import export
from models.bundle import load_spec, verify_manifest
from models.export import export_onnx
from models.gate import open_registry, release
from models.names import ModelName
from models.runtime import OnnxClassifier
from training.rundir import RunDirectory

NAME = ModelName.parse("team-a/spam")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def test_a_passing_run_becomes_a_verified_current_bundle(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    released = release(healthy_run, NAME, settings, registry, promote=True)
    assert released.diagnosis.passed
    assert registry.current(NAME) == released.version
    bundle = registry.bundle_path(NAME)
    verify_manifest(bundle)
    spec = load_spec(bundle)
    assert spec.labels == ["ham", "spam"]
    assert spec.parity["argmax_agreement"] >= 0.999 and spec.parity["max_abs_probability_diff"] <= 1e-4
    assert {(s["batch"], s["sequence"]) for s in spec.parity["shape_sweep"]} >= {(1, 1), (1, 32), (256, 1), (256, 32)}
    assert spec.provenance["data_sha256"]["train"] and spec.provenance["libraries"]["onnxruntime"]
    assert len(spec.reference.class_distribution) == 2 and spec.reference.probability_sample
    assert {"report/report.json", "report/diagnosis.json", "report/learning_curves.png"} <= {
        str(p.relative_to(bundle)) for p in bundle.rglob("*")
    }


def test_the_served_model_answers_like_the_trained_one(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    run = RunDirectory.open(healthy_run)
    classifier = OnnxClassifier(registry.bundle_path(NAME), precision="fp32")
    classifier.load()
    answers = classifier.predict(run.validation.texts)
    expected = [run.label_names[i] for i in run.validation_predictions]
    assert [a.label for a in answers] == expected
    assert all(abs(sum(a.probabilities.values()) - 1) < 1e-5 for a in answers)


def test_a_blocked_run_leaves_no_onnx_and_no_registry_entry(underfit_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    with pytest.raises(GateBlocked, match=r"BLOCKED \(.*underfit") as excinfo:
        release(underfit_run, NAME, settings, registry, promote=True)
    assert "remedy:" in str(excinfo.value)
    assert registry.versions(NAME) == [] and registry.current(NAME) is None
    assert not list(settings.data_dir.rglob("*.onnx")) and not list(underfit_run.rglob("*.onnx"))
    diagnosis = json.loads((underfit_run / "diagnosis.json").read_text())
    assert diagnosis["passed"] is False and "underfit" in diagnosis["blocking"]
    assert (underfit_run / "learning_curves.png").is_file()  # the report stays for the user


def test_promote_and_rollback_move_the_current_pointer(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    first = release(healthy_run, NAME, settings, registry, promote=True).version
    second = release(healthy_run, NAME, settings, registry, promote=True).version
    assert registry.current(NAME) == second
    assert registry.rollback(NAME) == first and registry.current(NAME) == first
    with pytest.raises(RegistryConflict, match="no earlier promoted version"):
        registry.rollback(NAME)
    registry.promote(NAME, second)
    assert [v.current for v in registry.versions(NAME)] == [False, True]
    with pytest.raises(ModelNotFound):
        registry.promote(NAME, "doesnotexist")


def test_registry_survives_reopening(healthy_run: Path, settings: Settings) -> None:
    version = release(healthy_run, NAME, settings, open_registry(settings), promote=True).version
    assert open_registry(settings).current(NAME) == version


def test_a_tampered_bundle_is_refused_by_the_loader(healthy_run: Path, settings: Settings, tmp_path: Path) -> None:
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    copy = tmp_path / "copy"
    shutil.copytree(registry.bundle_path(NAME), copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleCorrupt, match=r"model\.onnx .* does not match its sha256"):
        OnnxClassifier(copy).load()
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleCorrupt, match="not completely written"):
        OnnxClassifier(copy).load()


def test_int8_is_dropped_when_it_costs_quality(
    healthy_run: Path, underfit_run: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Stand a worse model in for the quantized one: the quality check must refuse it and ship fp32."""
    worse = tmp_path / "worse.onnx"
    export_onnx(AutoModelForSequenceClassification.from_pretrained(underfit_run / "model"), worse)
    monkeypatch.setattr(export, "quantize_dynamic", lambda src, dst, **kw: shutil.copy(worse, dst))
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    spec = load_spec(registry.bundle_path(NAME))
    assert spec.onnx_int8 is None and not spec.quantization["kept"]
    assert spec.quantization["reason"].startswith("int8 dropped: macro-F1 fell")
    assert not (registry.bundle_path(NAME) / "model.int8.onnx").exists()


def test_int8_can_be_switched_off(healthy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FITGATE_QUANTIZE", "false")
    settings = Settings()
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    assert load_spec(registry.bundle_path(NAME)).quantization == {
        "kept": False,
        "reason": "quantization is switched off (FITGATE_QUANTIZE=false)",
    }


def test_truncated_inputs_are_flagged(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    classifier = OnnxClassifier(registry.bundle_path(NAME))
    classifier.load()
    short, long = classifier.predict(["win cash", "win cash " * 200])
    assert not short.truncated and long.truncated
    assert np.isclose(sum(long.probabilities.values()), 1.0)
