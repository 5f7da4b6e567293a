"""End to end against a real `bentoml serve` process: upload -> job -> verdict -> predict, and the edges."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from tests.conftest import keyword_rows, ticket_rows, write_csv
from tests.service.conftest import Server, bearer, make_server

pytestmark = pytest.mark.slow
LEARNABLE = {"parameters": '{"num_train_epochs": 4, "learning_rate": 0.005, "max_length": 32}'}


def _upload(server: Server, tmp_path: Path, who: str, model: str, data: dict[str, str] = LEARNABLE) -> httpx.Response:
    csv = write_csv(tmp_path / "train.csv", keyword_rows(300))
    with csv.open("rb") as f:
        return httpx.post(
            f"{server.url}/finetune", headers=bearer(who), files={"file": ("train.csv", f, "text/csv")},
            data={"model_name": model, **data}, timeout=60,
        )  # fmt: skip


def test_no_model_yet_says_how_to_train_one(server: Server) -> None:
    r = httpx.post(f"{server.url}/predict", json={"texts": ["hello"]})
    assert r.status_code == 503
    assert "POST /finetune" in r.json()["error"]["message"]


def test_upload_trains_gates_registers_and_serves(server: Server, tmp_path: Path) -> None:
    r = _upload(server, tmp_path, "team-a", "team-a/spam")
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    job = server.wait_job(job_id, {"succeeded", "blocked", "failed"}, bearer("team-a"))
    assert job["status"] == "succeeded", job
    assert job["result"]["diagnosis"]["passed"] and job["result"]["promoted"]

    r = httpx.post(
        f"{server.url}/predict", json={"texts": ["win cash prize now", "see you at lunch"], "model": "team-a/spam"}
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["model"], body["version"]) == ("team-a/spam", job["result"]["version"])
    assert [p["label"] for p in body["predictions"]] == ["spam", "ham"]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in body["predictions"])

    report = httpx.get(f"{server.url}/jobs/{job_id}/report", headers=bearer("team-a")).json()
    assert report["diagnosis"]["passed"] and {c["label"] for c in report["report"]["validation"]["per_class"]} == {
        "ham",
        "spam",
    }
    png = httpx.get(f"{server.url}/jobs/{job_id}/learning_curves.png", headers=bearer("team-a"))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    models = httpx.get(f"{server.url}/models", headers=bearer("team-a")).json()
    assert [(m["model"], m["current"], m["verdict"]) for m in models] == [("team-a/spam", True, "passed")]


def test_a_multi_label_upload_trains_and_serves_several_labels_with_their_scores(
    server: Server, tmp_path: Path
) -> None:
    csv = write_csv(tmp_path / "tickets.csv", ticket_rows(600))
    parameters = '{"num_train_epochs": 20, "learning_rate": 0.005, "max_length": 32, "early_stopping_patience": 4}'
    with csv.open("rb") as f:
        checked = httpx.post(
            f"{server.url}/finetune/validate", headers=bearer("team-a"), files={"file": ("tickets.csv", f)},
            data={"parameters": parameters}, timeout=60,
        ).json()  # fmt: skip
    assert checked["accepted"] and checked["task"] == "multi_label"
    assert set(checked["class_counts"]) == {"account", "billing", "bug"} and checked["label_cardinality"] > 1
    assert checked["label_co_occurrence"] and checked["rows_without_labels"] == 0
    with csv.open("rb") as f:
        r = httpx.post(
            f"{server.url}/finetune", headers=bearer("team-a"), files={"file": ("tickets.csv", f)},
            data={"model_name": "team-a/tickets", "parameters": parameters}, timeout=60,
        )  # fmt: skip
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = server.wait_job(job_id, {"succeeded", "blocked", "failed"}, bearer("team-a"))
    assert job["status"] == "succeeded", job

    texts = ["refund for the crash please", "password login profile", "invoice charged twice and app error"]
    r = httpx.post(f"{server.url}/predict", json={"texts": texts, "model": "team-a/tickets"})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert all("label" not in p and set(p["probabilities"]) == {"account", "billing", "bug"} for p in predictions)
    assert [set(p["labels"]) for p in predictions] == [{"billing", "bug"}, {"account"}, {"billing", "bug"}]
    assert all(0.0 <= p["confidence"] <= 1.0 for p in predictions)

    report = httpx.get(f"{server.url}/jobs/{job_id}/report", headers=bearer("team-a")).json()["report"]
    assert report["task"] == "multi_label" and len(report["thresholds"]) == 3
    assert report["validation"]["micro_f1"] is not None and report["validation"]["confusion"] == []
    schema = httpx.get(f"{server.url}/openapi.json", timeout=60).json()
    assert "LabelsPredictionOut" in str(schema["components"]["schemas"])  # the answer is typed in the OpenAPI document
    metrics = [
        line for line in httpx.get(f"{server.url}/metrics").text.splitlines() if 'model="team-a/tickets"' in line
    ]
    answered_bug = [line for line in metrics if line.startswith("fitgate_predictions_total{") and 'label="bug"' in line]
    texts_seen = [line for line in metrics if line.startswith("fitgate_multilabel_texts_total{")]
    assert float(answered_bug[0].split()[-1]) == 2 and float(texts_seen[0].split()[-1]) == 3  # per-label positive rate


def test_a_blocked_job_says_why_and_deploys_nothing(server: Server, tmp_path: Path) -> None:
    r = _upload(
        server,
        tmp_path,
        "team-b",
        "team-b/lazy",
        {"parameters": '{"learning_rate": 1e-7, "num_train_epochs": 1, "max_length": 32, "remedy_attempts": 0}'},
    )
    job = server.wait_job(r.json()["job_id"], {"succeeded", "blocked", "failed"}, bearer("team-b"))
    assert job["status"] == "blocked"
    assert "underfit" in job["reason"] and "remedy:" in job["reason"]
    assert httpx.post(f"{server.url}/predict", json={"texts": ["x"], "model": "team-b/lazy"}).status_code == 404


def test_cancel_stops_a_running_job(server: Server, tmp_path: Path) -> None:
    r = _upload(server, tmp_path, "team-a", "team-a/slow", {"parameters": '{"num_train_epochs": 100}'})
    job_id = r.json()["job_id"]
    server.wait_job(job_id, {"running"}, bearer("team-a"))
    cancel = httpx.post(f"{server.url}/jobs/{job_id}/cancel", headers=bearer("team-a"))
    assert cancel.status_code == 200
    job = server.wait_job(job_id, {"cancelled", "failed", "succeeded"}, bearer("team-a"), timeout=60)
    assert job["status"] == "cancelled"


def test_promotion_switches_versions_without_failing_a_request(
    server: Server, healthy_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITGATE_DATA_DIR", str(server.data_dir))
    settings = Settings()
    registry = open_registry(settings)
    name = ModelName.parse("team-a/swap")
    first = release(healthy_run, name, settings, registry, promote=True).version
    second = release(healthy_run, name, settings, registry, promote=False).version
    seen: list[str] = []
    failures: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/predict", json={"texts": ["win cash now"], "model": "team-a/swap"})
                if r.status_code == 200:
                    seen.append(r.json()["version"])
                else:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    promote = httpx.post(f"{server.url}/models/team-a/swap/promote", json={"version": second}, headers=bearer("team-a"))
    assert promote.status_code == 200
    # loading the new version competes with the four clients for the CPU: up to a deadline, never a fixed sleep,
    # the switch, then 20 answers in a row from the new version (a slow machine just takes longer to show both)
    deadline = time.monotonic() + 60
    while seen[-20:] != [second] * 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert first in seen and seen[-1] == second
    switch = seen.index(second)
    assert set(seen[switch:]) <= {first, second} and seen[-20:] == [second] * 20


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        (None, "/jobs", 401),
        ("wrong", "/jobs", 401),
        ("predict-only", "/jobs", 403),
        ("team-a", "/jobs", 200),
        ("admin", "/jobs", 200),
    ],
)
def test_auth_matrix_on_jobs(server: Server, who: str | None, path: str, status: int) -> None:
    headers = {"Authorization": "Bearer nope"} if who == "wrong" else (bearer(who) if who else {})
    r = httpx.get(f"{server.url}{path}", headers=headers)
    assert r.status_code == status
    if status >= 400:
        assert r.json()["error"]["message"]


def test_another_team_cannot_train_or_promote_my_model(server: Server, tmp_path: Path) -> None:
    r = _upload(server, tmp_path, "team-b", "team-a/spam")
    assert r.status_code == 403 and "belongs to team team-a" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/models/team-a/spam/rollback", headers=bearer("team-b"))
    assert r.status_code == 403


def _wait_for_epoch(srv: Server, job_id: str, epoch: float, resumed: bool = False) -> dict[str, Any]:
    """The job once its progress reached ``epoch`` (and, with ``resumed``, says it was resumed)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{srv.url}/jobs/{job_id}", timeout=30).json()
        progress = job["progress"] or {}
        if (progress.get("epoch") or 0) >= epoch and (not resumed or progress.get("resumed_at_epoch")):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached epoch {epoch} (resumed: {resumed}): {job}")


def test_kill_9_during_training_then_restart_resumes_from_the_last_epoch(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = make_server(tmp_path, tiny_model_dir, tokens=False)
    srv.start()
    long_job = {"parameters": '{"num_train_epochs": 100, "learning_rate": 0.005, "early_stopping_patience": null}'}
    try:
        r = _upload(srv, tmp_path, "team-a", "team-a/crash", long_job)
        job_id = r.json()["job_id"]
        srv.wait_job(job_id, {"running"}, {})
        before = _wait_for_epoch(srv, job_id, 3)
        # a lost pod: the server's processes and the training process all die at once
        with sqlite3.connect(srv.data_dir / "jobs.db") as db:
            (pid,) = db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        os.kill(pid, signal.SIGKILL)
        srv.kill(signal.SIGKILL)
        srv.start()
        # the restarted service takes its job back at once and goes on from the last completed epoch
        resumed = _wait_for_epoch(srv, job_id, 1, resumed=True)
        assert resumed["attempts"] == 2 and resumed["status"] == "running"
        assert 3 <= resumed["progress"]["resumed_at_epoch"] <= int(before["progress"]["epoch"]) + 2
        curves = httpx.get(f"{srv.url}/jobs/{job_id}/curves", timeout=30).json()
        steps = [p["step"] for p in curves["points"]]
        assert steps == sorted(set(steps)) and steps[0] == 0  # one continuous run, no epoch twice
        assert httpx.get(f"{srv.url}/models").json() == []  # nothing half-written became visible
        httpx.post(f"{srv.url}/jobs/{job_id}/cancel")
        assert srv.wait_job(job_id, {"cancelled"}, {}, timeout=60)["attempts"] == 2
    finally:
        srv.kill(signal.SIGTERM)


def test_the_dry_run_says_how_many_texts_exceed_the_window_and_how_they_will_be_read(
    server: Server, tmp_path: Path
) -> None:
    rows = [(("word " * 60) + text, label) for text, label in keyword_rows(60)]
    csv = write_csv(tmp_path / "long.csv", rows)
    for parameters, expected in (('{"max_length": 32}', "chunks"), ('{"max_length": 256}', "truncate")):
        with csv.open("rb") as f:
            checked = httpx.post(
                f"{server.url}/finetune/validate", headers=bearer("team-a"), files={"file": ("long.csv", f)},
                data={"parameters": parameters}, timeout=60,
            ).json()  # fmt: skip
        long_texts = checked["long_texts"]
        assert long_texts["long_texts"] == expected and long_texts["chosen_by"] == "data", long_texts
    assert long_texts["texts_over_window"] == 0 and long_texts["window_tokens"] == 256
