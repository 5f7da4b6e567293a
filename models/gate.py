"""The gate: a run becomes a deployable bundle only if diagnosis and parity both pass.

A blocked run keeps its report (verdicts, evidence, curves, per-class table) in its run
directory and produces no ONNX file and no registry entry.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fitgate.errors import GateBlocked
from fitgate.files import write_text_atomic
from fitgate.settings import Settings
from models.export import build_bundle
from models.names import ModelName
from models.registry import Registry
from training.diagnosis import Diagnosis, diagnose_run
from training.rundir import RunDirectory

DIAGNOSIS_FILE = "diagnosis.json"


@dataclass(frozen=True)
class Released:
    name: ModelName
    version: str
    promoted: bool
    diagnosis: Diagnosis


def diagnose_and_record(run: RunDirectory, settings: Settings) -> Diagnosis:
    diagnosis = diagnose_run(run, settings)
    write_text_atomic(run.path / DIAGNOSIS_FILE, json.dumps(diagnosis.to_dict(), indent=2))
    return diagnosis


def release(run_dir: Path, name: ModelName, settings: Settings, registry: Registry, *, promote: bool) -> Released:
    """Diagnose, then export, verify and register; raise GateBlocked when diagnosis refuses."""
    run = RunDirectory.open(Path(run_dir))
    diagnosis = diagnose_and_record(run, settings)
    if not diagnosis.passed:
        raise GateBlocked(diagnosis.summary())
    with tempfile.TemporaryDirectory(prefix="fitgate-bundle-", dir=settings.data_dir) as staging:
        spec = build_bundle(run, diagnosis, Path(staging) / "bundle", settings)
        summary = {"verdict": "passed", "metrics": spec.metrics, "int8": spec.onnx_int8 is not None}
        version = registry.register(name, Path(staging) / "bundle", summary)
    if promote:
        registry.promote(name, version)
    return Released(name, version, promote, diagnosis)


def open_registry(settings: Settings) -> Registry:
    return Registry(settings.bentoml_home(), settings.data_dir / "registry.db", settings.sqlite_journal_mode)
