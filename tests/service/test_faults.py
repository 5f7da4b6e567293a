"""Faults fitgate survives: kill -9 during export, a full disk, a training process out of memory.

The server tests run a real `bentoml serve` process and real training processes; the worker tests
at the end call the worker's job function in this process to check the reason a user reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch

from fitgate.settings import Settings
from models import export, repair
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from service import worker
from service.jobs import JobStore
from tests.conftest import keyword_rows, save_random_bert, write_csv
from tests.service.conftest import Server, bearer, make_server

LEARNABLE = {"parameters": '{"num_train_epochs": 4, "learning_rate": 0.005, "max_length": 32}'}
DEPLOYED = "team-a/spam"


def upload(server: Server, csv: Path, model: str, data: dict[str, str]) -> str:
    with csv.open("rb") as f:
        r = httpx.post(
            f"{server.url}/finetune", files={"file": ("train.csv", f, "text/csv")},
            data={"model_name": model, **data}, timeout=60,
        )  # fmt: skip
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def wait_for_worker(server: Server, job_id: str, timeout: float = 60) -> int:
    """The process id of the job's training process, once the runner has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(server.data_dir / "jobs.db")) as db:
            (pid,) = db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if pid:
            return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never started its training process")


def wait_for_phase(server: Server, job_id: str, *phases: str, timeout: float = 180) -> dict[str, Any]:
    """Poll the job as a client would until its progress reports one of ``phases``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30).json()
        if (job["progress"] or {}).get("phase") in phases:
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reported a phase in {phases}")


# --- a full disk during an upload -----------------------------------------------------------------


@pytest.mark.slow
def test_an_upload_onto_a_full_disk_is_refused_clearly_and_leaves_nothing(
    small_volume: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    srv = make_server(tmp_path, tiny_model_dir, FITGATE_DATA_DIR=str(small_volume),
                      FITGATE_TRAINING_ENABLED="false", FITGATE_MAX_UPLOAD_BYTES=str(64 * 2**20))  # fmt: skip
    srv.start()  # its log stays on the roomy disk

    def post(csv: Path, model: str) -> httpx.Response:
        with csv.open("rb") as f:
            return httpx.post(f"{srv.url}/finetune", files={"file": (csv.name, f)}, data={"model_name": model},
                              headers=bearer("team-a"), timeout=120)  # fmt: skip

    try:
        rows = [(f"message number {i} " + "x" * 300, "ab"[i % 2]) for i in range(90_000)]
        big = write_csv(tmp_path / "big.csv", rows)
        assert big.stat().st_size > 24 * 2**20
        refused = post(big, "team-a/big")
        assert refused.status_code == 507, refused.text
        assert "disk is full" in refused.json()["error"]["message"]
        assert str(small_volume) not in refused.text
        assert httpx.get(f"{srv.url}/livez", timeout=30).status_code == 200
        assert list((small_volume / "uploads").iterdir()) == []
        accepted = post(write_csv(tmp_path / "small.csv", keyword_rows(60)), "team-a/small")
        assert accepted.status_code == 202, "the space was given back: the next upload fits"
    finally:
        srv.kill(signal.SIGTERM)


# --- kill -9 during export ------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_export_then_restart_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = make_server(tmp_path, tiny_model_dir, tokens=False)
    srv.start()
    try:
        job_id = upload(srv, write_csv(tmp_path / "train.csv", keyword_rows(300)), "team-a/crash", LEARNABLE)
        wait_for_phase(srv, job_id, "exporting")
        # a lost pod while the bundle is being written: the server's processes and the worker die at once
        os.kill(wait_for_worker(srv, job_id), signal.SIGKILL)
        srv.kill(signal.SIGKILL)
        run = srv.data_dir / "runs" / job_id
        assert list(run.glob("attempt-*/.bundle-staging-*/bundle")), (
            "the kill did not land while the bundle was written"
        )

        srv.start()
        # the restarted service takes the job back; training had ended (no checkpoint is kept past it), so the
        # run starts over, and until it is done nothing half-written is listed or served
        assert httpx.get(f"{srv.url}/models").json() == []
        r = httpx.post(f"{srv.url}/predict", json={"texts": ["win cash"], "model": "team-a/crash"})
        assert r.status_code == 404
        done = srv.wait_job(job_id, {"succeeded", "failed", "blocked"}, {}, timeout=180)
        assert (done["status"], done["attempts"]) == ("succeeded", 2), done
        assert not list(run.glob("**/.bundle-staging-*"))  # the half-written bundle went with the new run's start
        version = done["result"]["version"]
        assert [m["version"] for m in httpx.get(f"{srv.url}/models").json()] == [version]
        served = httpx.post(f"{srv.url}/predict", json={"texts": ["win cash"], "model": "team-a/crash"}, timeout=60)
        assert served.status_code == 200 and served.json()["version"] == version
    finally:
        srv.kill(signal.SIGTERM)


# --- a training process out of memory, while the deployed model keeps answering -------------------

MEMORY_LIMIT_MB = 6144
HUNGRY = {  # 120 validation texts of 128 tokens in one batch through a 131,072-wide layer: one 8 GiB tensor
    "parameters": '{"max_length": 128, "validation_size": 0.3, "per_device_eval_batch_size": 256, '
    '"per_device_train_batch_size": 256}'
}


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A one-layer BERT with a 131,072-wide feed-forward layer: small on disk, huge activations."""
    path = tmp_path_factory.mktemp("wide-bert")
    return save_random_bert(path, str(tiny_model_dir), num_hidden_layers=1, intermediate_size=131_072)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, wide_model_dir: Path, healthy_run: Path) -> Iterator[Server]:
    """A server with a deployed model, training the wide model under a memory limit."""
    srv = make_server(
        tmp_path_factory.mktemp("faults"), wide_model_dir, tokens=False,
        FITGATE_TRAINING_MEMORY_MB=str(MEMORY_LIMIT_MB),
        MALLOC_ARENA_MAX="2",  # as the setting advises: many cores must not eat the limit before training does
    )  # fmt: skip
    settings = Settings(data_dir=srv.data_dir)
    release(healthy_run, ModelName.parse(DEPLOYED), settings, open_registry(settings), promote=True)
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


@contextlib.contextmanager
def predicting(server: Server) -> Iterator[list[int | str]]:
    """Ask the deployed model continuously; collect each answer's status (or the connection error)."""
    outcomes: list[int | str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"texts": ["win cash prize now"], "model": DEPLOYED})
                    outcomes.append(r.status_code)
                except httpx.HTTPError as exc:
                    outcomes.append(type(exc).__name__)
                time.sleep(0.05)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join()


def long_rows(n: int) -> list[tuple[str, str]]:
    """Texts far longer than 128 tokens, so every batch is padded to the full max_length."""
    rng = random.Random(0)
    return [
        (" ".join(rng.choices(["win", "cash", "lunch", "home", "prize", "later"], k=200)), "ab"[i % 2])
        for i in range(n)
    ]


@pytest.mark.slow
def test_a_training_process_out_of_memory_fails_its_job_while_predict_keeps_answering(
    serving: Server, tmp_path: Path
) -> None:
    with predicting(serving) as outcomes:
        job_id = upload(serving, write_csv(tmp_path / "long.csv", long_rows(400)), "team-a/hungry", HUNGRY)
        job = serving.wait_job(job_id, {"succeeded", "blocked", "failed"}, {}, timeout=120)
    assert job["status"] == "failed"
    assert job["reason"] == worker.OUT_OF_MEMORY  # recorded by the worker itself, not by a crash
    assert len(outcomes) >= 20 and set(outcomes) == {200}, outcomes
    assert httpx.get(f"{serving.url}/models").json()[0]["model"] == DEPLOYED


@pytest.mark.slow
def test_a_training_process_killed_like_the_oom_killer_does_fails_its_job_while_predict_keeps_answering(
    serving: Server, tmp_path: Path
) -> None:
    with predicting(serving) as outcomes:
        slow = {"parameters": '{"num_train_epochs": 100, "early_stopping_patience": null}'}
        job_id = upload(serving, write_csv(tmp_path / "train.csv", keyword_rows(300)), "team-a/killed", slow)
        pid = wait_for_worker(serving, job_id)
        wait_for_phase(serving, job_id, "loading", "training")  # the worker applies its limit before either
        # the setting reached the real training process: the out-of-memory failure above is the limit's doing
        assert psutil.Process(pid).rlimit(psutil.RLIMIT_AS)[0] == MEMORY_LIMIT_MB * 2**20
        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer sends
        job = serving.wait_job(job_id, {"succeeded", "blocked", "failed", "cancelled"}, {}, timeout=60)
        time.sleep(1)  # answers after the reaping count too
    assert job["status"] == "failed"
    assert "killed (SIGKILL)" in job["reason"] and "out-of-memory killer" in job["reason"]
    assert "smaller max_length" in job["reason"]
    assert len(outcomes) >= 20 and set(outcomes) == {200}, outcomes


# --- the reason a user reads, for each way a run can run out of resources (worker in this process) ---


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[JobStore, Settings, str]:
    """A job claimed as the runner would, ready for ``worker.run_job`` under its lease (generation 1)."""
    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    jobs = JobStore.open(settings)
    upload = write_csv(tmp_path / "data.csv", keyword_rows(60))
    job = jobs.create(jobs.new_id(), "team-a", "team-a/spam", {}, upload)
    assert jobs.claim_next("trainer", 1, 60) is not None
    return jobs, settings, job.id


def _raise(exc: BaseException) -> Any:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (MemoryError(), worker.OUT_OF_MEMORY),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
            ),
            worker.OUT_OF_MEMORY,
        ),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), worker.OUT_OF_MEMORY),
        (ENOSPC, worker.DISK_FULL_IN_TRAINING),
        (
            RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
            worker.unexpected_failure("RuntimeError", "starting"),
        ),
    ],
    ids=["MemoryError", "torch-cpu-allocator", "torch-cuda", "disk-full", "other-error"],
)
def test_a_run_out_of_resources_fails_with_a_reason_the_user_can_act_on(
    store: tuple[JobStore, Settings, str], monkeypatch: pytest.MonkeyPatch, fault: BaseException, reason: str
) -> None:
    jobs, settings, job_id = store
    monkeypatch.setattr(repair, "fine_tune", _raise(fault))
    worker.run_job(job_id, settings, 1)
    job = jobs.get(job_id)
    assert (job.status, job.reason) == ("failed", reason)


def test_a_full_disk_during_export_fails_the_job_and_registers_nothing(
    store: tuple[JobStore, Settings, str], healthy_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training is not under test: a finished run stands in for it, then the ONNX file meets a full disk."""
    jobs, settings, job_id = store

    def trained(data: Path, run_dir: Path, *args: object, **kwargs: object) -> None:
        shutil.copytree(healthy_run, run_dir)

    def export_until_full(model: object, path: Path) -> None:
        path.write_bytes(b"\x08" * 65536)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(repair, "fine_tune", trained)
    monkeypatch.setattr(export, "export_onnx", export_until_full)
    worker.run_job(job_id, settings, 1)
    job = jobs.get(job_id)
    assert job.status == "failed" and job.progress and job.progress["phase"] == "exporting"
    assert job.reason and job.reason.startswith("the server's disk is full")
    assert "nothing was registered and the current version keeps serving" in job.reason
    assert str(settings.data_dir) not in job.reason  # a reason shown to the user names no server path
    assert open_registry(settings).versions() == []
    assert not list((settings.data_dir / "runs" / job_id).glob("**/.bundle-staging-*"))
