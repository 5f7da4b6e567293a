"""bentofile.yaml builds offline into a Bento holding the service, its settings and the exact pinned requirements."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def pinned_dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [d.split(";")[0].strip() for d in project["dependencies"]]


def test_bentofile_pins_exactly_what_pyproject_pins() -> None:
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == pinned_dependencies()


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bento")
    env = {**os.environ, "BENTOML_HOME": str(tmp / "home"), "FITGATE_DATA_DIR": str(tmp / "data"),
           "BENTOML_DO_NOT_TRACK": "True"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return tmp / "home" / "bentos" / name / version


def test_the_built_bento_holds_the_service_settings_and_requirements(bento: Path) -> None:
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "service.app:FitgateService"
    assert {"/predict", "/finetune", "/models"} <= set(manifest["schema"]["paths"])
    assert {e["name"]: e["value"] for e in manifest["envs"]}["FITGATE_DATA_DIR"] == "/data"
    for source in (
        "service/app.py",
        "service/drift.py",
        "fitgate/settings.py",
        "models/runtime.py",
        "training/loop.py",
    ):
        assert (bento / "src" / source).is_file(), source
    assert not (bento / "src" / "tests").exists() and not (bento / "src" / "bench").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert set(pinned_dependencies()) <= set(requirements)
    assert all("==" in r for r in requirements)
    assert "12.8" in (bento / "env" / "docker" / "Dockerfile").read_text()  # the GPU base image's CUDA
