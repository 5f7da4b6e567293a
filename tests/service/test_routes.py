"""Route-level behaviour, in process: the FastAPI app with a real Fitgate state (SQLite, registry,
ONNX Runtime) behind Starlette's test client. What needs a real server process (BentoML's workers,
/metrics, signals) stays in the end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fitgate.devices import cuda_device_count
from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from service.app import attach, create_app
from service.auth import hash_token
from service.core import Fitgate

CSV = ("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(60))).encode()
TOKENS = {"team-a": "token-a", "team-b": "token-b"}


def bearer(team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[team]}"}


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    tokens = [{"sha256": hash_token(t), "team": team, "roles": ["predict", "finetune"]} for team, t in TOKENS.items()]
    # training_enabled: jobs stay queued (no runner thread), the device check applies as on a trainer
    return Settings(data_dir=tmp_path / "data", base_model=str(tiny_model_dir), tokens=json.dumps(tokens))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(attach(create_app(settings), Fitgate(settings)), client=("127.0.0.1", 5000)) as c:
        yield c


def upload(client: TestClient, team: str = "team-a", parameters: str = "{}", body: bytes = CSV) -> dict[str, object]:
    response = client.post(
        "/finetune",
        headers=bearer(team),
        files={"file": ("d.csv", body)},
        data={"model_name": f"{team}/spam", "parameters": parameters},
    )
    return {**response.json(), "http": response.status_code}


def test_a_valid_upload_is_queued_as_a_job(client: TestClient) -> None:
    accepted = upload(client)
    assert accepted["http"] == 202 and accepted["job_id"]
    job = client.get(f"/jobs/{accepted['job_id']}", headers=bearer("team-a")).json()
    assert (job["status"], job["model"]) == ("queued", "team-a/spam")


@pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a CUDA device, so device cuda is valid")
def test_device_cuda_on_a_server_without_gpu_is_refused_at_submit_with_the_setting_named(
    client: TestClient, settings: Settings
) -> None:
    refused = upload(client, parameters='{"device": "cuda"}')
    assert refused["http"] == 422
    error = refused["error"]
    assert isinstance(error, dict) and error["type"] == "DeviceUnavailable"
    assert "device" in error["message"] and "no CUDA device" in error["message"] and "'auto'" in error["message"]
    assert not list((settings.data_dir / "uploads").glob("*/*")), "a refused upload leaves nothing behind"
    assert client.get("/jobs", headers=bearer("team-a")).json() == []


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"base_model": "/etc"}', "server settings"),
        ('{"num_train_epochs": 0}', "num_train_epochs"),
    ],
)
def test_bad_parameters_are_a_422_that_names_the_problem(client: TestClient, parameters: str, says: str) -> None:
    refused = upload(client, parameters=parameters)
    assert refused["http"] == 422
    assert says in str(refused["error"])


def test_unknown_and_other_teams_jobs_are_not_found_not_forbidden(client: TestClient) -> None:
    job_id = upload(client, team="team-a")["job_id"]
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/report", f"/jobs/{job_id}/learning_curves.png"):
        answer = client.get(path, headers=bearer("team-b"))
        assert (answer.status_code, answer.json()["error"]["type"]) == (404, "JobNotFound")
    missing = client.get("/jobs/0123456789abcdef", headers=bearer("team-a"))
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "JobNotFound")


def test_a_job_report_before_training_ends_says_it_is_not_written_yet(client: TestClient) -> None:
    job_id = upload(client)["job_id"]
    answer = client.get(f"/jobs/{job_id}/report", headers=bearer("team-a"))
    assert answer.status_code == 404
    assert "no report yet" in answer.json()["error"]["message"]


def test_cancelling_an_ended_job_is_a_job_conflict(client: TestClient) -> None:
    job_id = upload(client)["job_id"]
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=bearer("team-a")).json()
    assert cancelled["status"] == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel", headers=bearer("team-a"))
    assert (again.status_code, again.json()["error"]["type"]) == (409, "JobConflict")


def test_predict_without_a_deployed_model_says_how_to_deploy_one(client: TestClient) -> None:
    answer = client.post("/predict", json={"texts": ["hello"]})
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "NoModelDeployed" and "POST /finetune" in answer.json()["error"]["message"]


def test_predict_answers_with_the_promoted_version_on_onnx_runtime(settings: Settings, healthy_run: Path) -> None:
    name = ModelName.parse("team-a/spam")
    released = release(healthy_run, name, settings, open_registry(settings), promote=True)
    with TestClient(attach(create_app(settings), Fitgate(settings)), client=("127.0.0.1", 5000)) as client:
        answer = client.post("/predict", json={"texts": ["win cash prize now", "see you at lunch"]})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model"], body["version"]) == ("team-a/spam", released.version)
    for prediction in body["predictions"]:
        assert prediction["label"] in {"ham", "spam"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["confidence"] == pytest.approx(prediction["probabilities"][prediction["label"]], abs=1e-6)
