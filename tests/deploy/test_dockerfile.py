"""The Dockerfile: hadolint-clean, multi-stage, non-root, state on a volume, and the README's own install path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(keyword: str) -> list[str]:
    return [line for line in DOCKERFILE.splitlines() if line.startswith(keyword + " ")]


def test_hadolint_finds_nothing() -> None:
    out = subprocess.run([str(HADOLINT), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gpu_by_default_cpu_by_build_argument() -> None:
    assert "ARG DEVICE=gpu" in DOCKERFILE
    assert any("nvidia/cuda:" in line and "runtime" in line for line in instructions("FROM"))
    assert "FROM base-${DEVICE} AS base" in DOCKERFILE
    assert len(instructions("FROM")) >= 4  # two bases, build, runtime


def test_the_image_installs_and_starts_with_the_readme_scripts() -> None:
    assert "RUN scripts/install" in DOCKERFILE
    assert instructions("CMD") == ['CMD ["scripts/serve"]']
    assert "exec scripts/serve" in (REPO / "scripts" / "start").read_text()  # scripts/start = install + serve


def test_runs_as_a_non_root_user_with_state_on_a_volume() -> None:
    (user,) = instructions("USER")
    assert not re.search(r"\b(root|0)(:|$)", user.split()[1])
    assert instructions("VOLUME") == ['VOLUME ["/data"]'] and "FITGATE_DATA_DIR=/data" in DOCKERFILE
    assert instructions("EXPOSE") == ["EXPOSE 3000"]
    assert "/livez" in "".join(DOCKERFILE.split("HEALTHCHECK", 1)[1].splitlines()[:2])


def test_no_secret_or_data_is_baked_in() -> None:
    assert not re.search(r"(?i)(token|password|secret)[A-Z_]*=", DOCKERFILE)
    copied = " ".join(instructions("COPY"))
    assert "fitgate-data" not in copied and ".venv" not in copied
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "fitgate-data", ".git"} <= set(ignored)
