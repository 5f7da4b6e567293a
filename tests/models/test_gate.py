"""The gate end to end on tiny runs: pass -> verified bundle in the registry; block -> nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from sqlalchemy import event
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fitgate.errors import BundleCorrupt, DiskFull, ExportError, GateBlocked, ModelNotFound, RegistryConflict
from fitgate.settings import Settings
from models import export
from models.bundle import SPEC, load_spec, verify_manifest, write_manifest
from models.export import export_onnx
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from models.runtime import OnnxClassifier
from training.decision import sigmoid
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
    assert "int8 quantization failed" not in spec.quantization["reason"]  # the quantizer handles the fused graph
    assert {"report/report.json", "report/diagnosis.json", "report/learning_curves.png"} <= {
        str(p.relative_to(bundle)) for p in bundle.rglob("*")
    }


def test_the_exported_graph_uses_the_fused_bert_operators(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    spec = load_spec(registry.bundle_path(NAME))
    graph = onnx.load(str(registry.bundle_path(NAME) / spec.onnx_fp32)).graph
    assert spec.fusion["fused"] and spec.fusion["operators"]["Attention"] == 2  # one per encoder layer
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= {n.op_type for n in graph.node}
    assert spec.parity["argmax_agreement"] >= 0.999  # the parity check ran on the fused graph


def test_a_failed_fusion_ships_the_unfused_graph_with_the_reason(
    healthy_run: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_optimizer(*args: object, **kwargs: object) -> None:
        raise ValueError("pattern not supported")

    monkeypatch.setattr(export, "optimize_model", broken_optimizer)
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    spec = load_spec(registry.bundle_path(NAME))
    assert spec.fusion == {
        "fused": False,
        "reason": "graph fusion failed (ValueError: pattern not supported); the unfused graph ships",
    }
    graph = onnx.load(str(registry.bundle_path(NAME) / spec.onnx_fp32)).graph
    assert "Attention" not in {n.op_type for n in graph.node}
    classifier = OnnxClassifier(registry.bundle_path(NAME), precision="fp32")
    classifier.load()
    run = RunDirectory.open(healthy_run)
    assert [a.label for a in classifier.predict(run.validation.texts).answers()] == [
        run.label_names[i] for i in run.validation_predictions
    ]


def test_the_served_model_answers_like_the_trained_one(healthy_run: Path, settings: Settings) -> None:
    registry = open_registry(settings)
    release(healthy_run, NAME, settings, registry, promote=True)
    run = RunDirectory.open(healthy_run)
    classifier = OnnxClassifier(registry.bundle_path(NAME), precision="fp32")
    classifier.load()
    answers = classifier.predict(run.validation.texts).answers()
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
    short, long = classifier.predict(["win cash", "win cash " * 200]).answers()
    assert not short.truncated and long.truncated
    assert np.isclose(sum(long.probabilities.values()), 1.0)


# --- a full disk during export: the previous version stays current and keeps serving -------------------


@pytest.fixture(scope="module")
def one_version(tmp_path_factory: pytest.TempPathFactory, healthy_run: Path) -> tuple[Path, str]:
    """A data directory holding one promoted version of NAME, released once and copied by each test."""
    data = tmp_path_factory.mktemp("one-version") / "data"
    settings = Settings(data_dir=data)
    return data, release(healthy_run, NAME, settings, open_registry(settings), promote=True).version


def deploy_one_version(one_version: tuple[Path, str], data: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    shutil.copytree(one_version[0], data)
    monkeypatch.setenv("FITGATE_DATA_DIR", str(data))
    return Settings()


def assert_only_the_previous_version_exists_and_serves(settings: Settings, previous: str, run: Path) -> None:
    registry = open_registry(settings)
    assert [v.version for v in registry.versions(NAME)] == [previous] and registry.current(NAME) == previous
    store = settings.bentoml_home() / "models" / NAME.tag_name
    assert {p.name for p in store.iterdir() if p.is_dir()} == {previous}  # no half-copied version folder
    assert not list(run.glob(".bundle-staging-*")) and not list(run.rglob("*.onnx"))  # staging removed
    classifier = OnnxClassifier(registry.bundle_path(NAME), precision="fp32")
    classifier.load()  # verifies every file against the manifest
    trained = RunDirectory.open(run)
    answers = [a.label for a in classifier.predict(trained.validation.texts).answers()]
    assert answers == [trained.label_names[i] for i in trained.validation_predictions]


def _no_space(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fill_disk_writing_onnx(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """What torch.onnx.export does on a full disk: part of the file is written, then a plain OSError."""

    def export_until_full(model: object, path: Path) -> None:
        path.write_bytes(b"\x08" * 65536)
        raise _no_space(path)

    monkeypatch.setattr(export, "export_onnx", export_until_full)


def fill_disk_copying_into_the_store(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The store's volume fills after two files of the bundle were copied into it."""
    real_copytree, store, copied = shutil.copytree, settings.bentoml_home(), []

    def copy_until_full(src: str, dst: str, *, follow_symlinks: bool = True) -> object:
        if Path(dst).is_relative_to(store):
            if len(copied) >= 2:
                raise _no_space(dst)
            copied.append(dst)
        return shutil.copy2(src, dst, follow_symlinks=follow_symlinks)

    def copytree(src: Path, dst: Path, symlinks: bool = False, ignore: Any = None, copy_function: Any = None,
                 *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        return real_copytree(src, dst, symlinks, ignore, copy_until_full, *args, **kwargs)  # also when it recurses

    monkeypatch.setattr(shutil, "copytree", copytree)


def fill_disk_recording_the_version(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The bundle fits in the store, then SQLite cannot write the version's row."""

    def full(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO versions"):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error

    # the engine belongs to this test's own data directory, so the listener ends with the test
    event.listen(open_registry(settings).engine, "before_cursor_execute", full)


@pytest.mark.parametrize(
    "fill_disk", [fill_disk_writing_onnx, fill_disk_copying_into_the_store, fill_disk_recording_the_version]
)
def test_a_full_disk_during_export_keeps_the_previous_version_serving(
    healthy_run: Path,
    one_version: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fill_disk: Callable[[pytest.MonkeyPatch, Settings], None],
) -> None:
    settings = deploy_one_version(one_version, tmp_path / "data", monkeypatch)
    fill_disk(monkeypatch, settings)
    with pytest.raises(DiskFull, match="disk is full") as excinfo:
        release(healthy_run, NAME, settings, open_registry(settings), promote=True)
    assert "current version keeps serving" in excinfo.value.message and "free space" in excinfo.value.message
    assert excinfo.value.status_code == 507
    assert_only_the_previous_version_exists_and_serves(settings, one_version[1], healthy_run)


@pytest.mark.parametrize(
    ("run_on_volume", "free_mib", "failed_write"),
    [
        (True, 1, ExportError),  # the run's staging folder has no room for the ONNX file
        (False, 3, shutil.Error),  # the bundle (about 6 MB) was staged elsewhere; the store has no room for it
    ],
)
def test_a_really_full_volume_during_export_leaves_nothing_behind(
    healthy_run: Path,
    one_version: tuple[Path, str],
    small_volume: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_on_volume: bool,
    free_mib: int,
    failed_write: type[Exception],
) -> None:
    """The data directory on a small volume, filled until ``free_mib`` remain: nothing is mocked."""
    settings = deploy_one_version(one_version, small_volume / "data", monkeypatch)
    run = shutil.copytree(healthy_run, small_volume / "run") if run_on_volume else healthy_run
    filler = shutil.disk_usage(small_volume).free - free_mib * 2**20
    (small_volume / "filler").write_bytes(b"\0" * filler)
    free_before = shutil.disk_usage(small_volume).free
    with pytest.raises(DiskFull, match="disk is full") as excinfo:
        release(run, NAME, settings, open_registry(settings), promote=True)
    assert isinstance(excinfo.value.__cause__, failed_write)
    assert shutil.disk_usage(small_volume).free >= free_before - 64 * 1024  # every partial file was removed
    assert_only_the_previous_version_exists_and_serves(settings, one_version[1], run)


# --- a multi-label run through the same gate, exporter and runtime ----------------------------------------


def test_a_multi_label_run_exports_a_sigmoid_graph_that_matches_pytorch(
    multi_label_run: Path, settings: Settings
) -> None:
    name = ModelName.parse("team-a/tickets")
    registry = open_registry(settings)
    released = release(multi_label_run, name, settings, registry, promote=True)
    assert released.diagnosis.passed, released.diagnosis.summary()
    spec = load_spec(registry.bundle_path(name))
    run = RunDirectory.open(multi_label_run)
    assert spec.multi_label and spec.labels == ["account", "billing", "bug"]
    assert spec.thresholds == run.report["thresholds"] and len(spec.label_temperatures) == 3
    # parity: every label's decision alike on every validation row, probabilities within 1e-4 of PyTorch's
    assert spec.parity["argmax_agreement"] >= 0.999 and spec.parity["max_abs_probability_diff"] <= 1e-4
    assert "val_micro_f1_fp32" in spec.quantization or not spec.quantization["kept"]

    classifier = OnnxClassifier(registry.bundle_path(name), precision="fp32")
    classifier.load()
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir).eval()
    assert model.config.problem_type == "multi_label_classification"
    texts = run.validation.texts[:50]
    served = classifier.predict(texts)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        logits = model(**batch).logits.numpy()
    expected = sigmoid(logits, spec.label_temperatures)
    assert np.abs(served.probabilities - expected).max() < 1e-4
    assert (served.decided == (expected >= np.array(spec.thresholds))).all()  # the thresholds, applied at serving
    answers = served.answers()
    assert all(sorted(a.labels) == a.labels and set(a.probabilities) == set(spec.labels) for a in answers)  # type: ignore[union-attr]


def test_per_label_thresholds_in_the_bundle_decide_what_the_runtime_answers(
    multi_label_run: Path, settings: Settings
) -> None:
    name = ModelName.parse("team-a/tickets")
    registry = open_registry(settings)
    release(multi_label_run, name, settings, registry, promote=True)
    bundle = registry.bundle_path(name)
    classifier = OnnxClassifier(bundle)
    classifier.load()
    text = ["refund for the crash please"]
    before = classifier.predict(text)
    answered = int(np.flatnonzero(before.decided[0])[0])
    # a copy of the bundle whose threshold for an answered label is above any probability: no longer answered
    copy = settings.data_dir / "copy"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("model.yaml"))  # BentoML's, written after the manifest
    spec = json.loads((copy / SPEC).read_text())
    spec["thresholds"][answered] = 1.01
    (copy / SPEC).write_text(json.dumps(spec))
    write_manifest(copy)
    moved = OnnxClassifier(copy)
    moved.load()
    after = moved.predict(text)
    assert not after.decided[0, answered] and after.probabilities[0, answered] == before.probabilities[0, answered]
