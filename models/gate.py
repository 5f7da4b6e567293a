"""The gate: a run becomes a deployable bundle only if diagnosis and parity both pass.

A blocked run keeps its report (verdicts, evidence, curves, per-class table) in its run
directory and produces no ONNX file and no registry entry.

The bundle is written into a staging folder inside the run directory and reaches the
registry only once complete. A failure removes the staging folder; a crash (kill -9) leaves
it inside the run directory, which a retry of the job deletes first. A full disk at any
step raises DiskFull, and the registry's current version stays as it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from fitgate.errors import DiskFull, GateBlocked, is_disk_full
from fitgate.settings import Settings
from models.export import build_bundle
from models.names import ModelName
from models.registry import Registry
from training.diagnosis import Diagnosis, diagnose_run
from training.progress import Progress, ProgressCallback, ignore_progress
from training.rundir import RunDirectory


@dataclass(frozen=True)
class Released:
    name: ModelName
    version: str
    promoted: bool
    diagnosis: Diagnosis


def diagnose_and_record(run: RunDirectory, settings: Settings) -> Diagnosis:
    diagnosis = diagnose_run(run, settings)
    run.write_diagnosis(diagnosis.to_dict())
    return diagnosis


def release(
    run_dir: Path,
    name: ModelName,
    settings: Settings,
    registry: Registry,
    *,
    promote: bool,
    on_progress: ProgressCallback = ignore_progress,
) -> Released:
    """Diagnose, then export, verify and register; raise GateBlocked when diagnosis refuses."""
    run = RunDirectory.open(Path(run_dir))
    try:
        on_progress(Progress("diagnosing"))
        diagnosis = diagnose_and_record(run, settings)
        if not diagnosis.passed:
            raise GateBlocked(diagnosis)
        on_progress(Progress("exporting"))
        with tempfile.TemporaryDirectory(prefix=".bundle-staging-", dir=run.path) as staging:
            bundle = Path(staging) / "bundle"
            spec = build_bundle(run, diagnosis, bundle, settings)
            summary = {"verdict": "passed", "metrics": spec.metrics, "int8": spec.onnx_int8 is not None}
            on_progress(Progress("registering"))
            version = registry.register(name, bundle, summary)
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(
                f"the server's disk is full: the bundle of {name} could not be written, so nothing was registered "
                "and the current version keeps serving; free space where fitgate keeps its data and models "
                "(FITGATE_DATA_DIR, FITGATE_MODEL_STORE, the temporary directory), then retry"
            ) from exc
        raise
    if promote:
        try:
            registry.promote(name, version)
        except Exception as exc:
            if is_disk_full(exc):
                raise DiskFull(
                    f"the server's disk is full: version {version} of {name} was registered but could not be "
                    f"promoted, so the current version keeps serving; free space, then promote {version}"
                ) from exc
            raise
    return Released(name, version, promote, diagnosis)
