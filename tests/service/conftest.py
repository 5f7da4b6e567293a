"""A real fitgate server process (`bentoml serve`) on a free loopback port, with the tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.auth import hash_token
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TOKENS = {
    "team-a": ("token-team-a", ["predict", "finetune"]),
    "team-b": ("token-team-b", ["predict", "finetune"]),
    "predict-only": ("token-predict-a", ["predict"]),
    "admin": ("token-admin", ["admin"]),
}


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who][0]}"}


@dataclass
class Server:
    url: str
    data_dir: Path
    env: dict[str, str]
    bind: str = "127.0.0.1"  # "0.0.0.0" to accept callers from other addresses
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        with (self.data_dir / "server.log").open("ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [str(REPO / "scripts" / "serve")],  # the launcher users and the image run
                cwd=REPO, env={**self.env, "FITGATE_HOST": self.bind, "FITGATE_PORT": self.url.rsplit(":", 1)[1]},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server and every process under it (BentoML workers start their own sessions)."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = [*psutil.Process(self.process.pid).children(recursive=True), psutil.Process(self.process.pid)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        psutil.wait_procs(tree, timeout=30)
        self.process.wait(timeout=30)

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def wait_job(self, job_id: str, statuses: set[str], headers: dict[str, str], timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = httpx.get(f"{self.url}/jobs/{job_id}", headers=headers, timeout=30).json()
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not reach {statuses}: {job}")


def make_server(
    tmp: Path,
    tiny_model_dir: Path,
    tokens: bool = True,
    bind: str = "127.0.0.1",
    anonymous_predict: bool = True,
    **extra: str,
) -> Server:
    env = {
        **os.environ,
        "FITGATE_DATA_DIR": str(tmp / "data"),
        "FITGATE_BASE_MODEL": str(tiny_model_dir),
        "FITGATE_MODEL_REFRESH_SECONDS": "0.5",
        "FITGATE_PREPARE_BASE_MODELS": "false",  # no server here needs the multilingual model converted
        # one repair attempt (the default allows two): what a test shows of repair, one more attempt shows too,
        # and a tiny model that a test lets be blocked would otherwise train three times (tests/models and
        # tests/training cover the search over several attempts)
        "FITGATE_REMEDY_MAX_ATTEMPTS": "1",
        "BENTOML_HOME": str(tmp / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
        **extra,
    }
    if tokens:
        if anonymous_predict:  # scenario tests predict without a token; the default is tested with False
            env.setdefault("FITGATE_PREDICT_REQUIRES_TOKEN", "false")
        env["FITGATE_TOKENS"] = json.dumps(
            [{"sha256": hash_token(t), "team": ("team-b" if who == "team-b" else "team-a"), "roles": roles}
             for who, (t, roles) in TOKENS.items()]
        )  # fmt: skip
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    return Server(f"http://127.0.0.1:{free_port()}", tmp / "data", env, bind)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("server"), tiny_model_dir)
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)
