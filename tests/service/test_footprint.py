"""An inference replica stays light: from start through loading a model and answering /predict it never
imports torch, transformers, onnx or ONNX Runtime's transformer tools (docs/BENCHMARKS.md measures what
that saves in memory and start-up time)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from tests.service.conftest import REPO, make_server

HEAVY = ("torch", "transformers", "onnx", "onnxruntime.transformers", "matplotlib", "sklearn")

CHILD = """
import json, sys
from fastapi.testclient import TestClient
from fitgate.settings import Settings
from service.app import attach, create_app
from service.core import Fitgate

settings = Settings()
with TestClient(attach(create_app(settings), Fitgate(settings)), client=("127.0.0.1", 5000)) as client:
    answer = client.post("/predict", json={"texts": ["win a free prize now", "see you at lunch"]})
print(json.dumps({"status": answer.status_code, "body": answer.json(),
                  "loaded": sorted(m for m in sys.argv[1:] if m in sys.modules)}))
"""


@pytest.fixture
def deployed(tmp_path: Path, healthy_run: Path) -> Path:
    settings = Settings(data_dir=tmp_path / "data")
    release(healthy_run, ModelName.parse("team-a/spam"), settings, open_registry(settings), promote=True)
    return settings.data_dir


def test_an_inference_worker_imports_no_training_or_export_library(deployed: Path) -> None:
    env = {"FITGATE_DATA_DIR": str(deployed), "FITGATE_TRAINING_ENABLED": "false", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *HEAVY], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and len(out["body"]["predictions"]) == 2, out
    assert out["loaded"] == [], f"the predict path imported {out['loaded']}"


@pytest.mark.slow
def test_a_served_inference_replica_maps_no_torch_library(
    tmp_path: Path, tiny_model_dir: Path, healthy_run: Path
) -> None:
    server = make_server(tmp_path, tiny_model_dir, tokens=False, FITGATE_TRAINING_ENABLED="false")
    settings = Settings(data_dir=server.data_dir)
    release(healthy_run, ModelName.parse("team-a/spam"), settings, open_registry(settings), promote=True)
    server.start()
    try:
        assert httpx.post(f"{server.url}/predict", json={"texts": ["hello there"]}, timeout=60).status_code == 200
        assert server.process is not None
        tree = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        mapped = {
            p.pid: [m.path for m in p.memory_maps() if "libtorch" in m.path or "onnx_cpp2py_export" in m.path]
            for p in tree
        }
        assert any(p.cmdline() and "bentoml" in " ".join(p.cmdline()) for p in tree)
        assert all(not paths for paths in mapped.values()), f"heavy libraries mapped: {mapped}"
    finally:
        server.kill(signal.SIGTERM)
