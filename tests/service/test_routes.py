"""Route-level behaviour, in process: the FastAPI app with a real Fitgate state (SQLite, registry,
ONNX Runtime) behind Starlette's test client. What needs a real server process (BentoML's workers,
/metrics, signals) stays in the end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from training import rundir

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
        ('{"base_model": "/etc"}', "unknown base_model"),
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
    answer = client.post("/predict", headers=bearer("team-a"), json={"texts": ["hello"]})
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "NoModelDeployed" and "POST /finetune" in answer.json()["error"]["message"]


def test_predict_answers_with_the_promoted_version_on_onnx_runtime(settings: Settings, healthy_run: Path) -> None:
    name = ModelName.parse("team-a/spam")
    released = release(healthy_run, name, settings, open_registry(settings), promote=True)
    with TestClient(attach(create_app(settings), Fitgate(settings)), client=("127.0.0.1", 5000)) as client:
        answer = client.post(
            "/predict", headers=bearer("team-a"), json={"texts": ["win cash prize now", "see you at lunch"]}
        )
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model"], body["version"]) == ("team-a/spam", released.version)
    for prediction in body["predictions"]:
        assert prediction["label"] in {"ham", "spam"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["confidence"] == pytest.approx(prediction["probabilities"][prediction["label"]], abs=1e-6)


# --- what the console builds on: the dry run, the argument list, identity, versions, drift, headers ---


def validate(client: TestClient, body: bytes, parameters: str = "{}", name: str = "d.csv") -> dict[str, Any]:
    response = client.post(
        "/finetune/validate", headers=bearer("team-a"), files={"file": (name, body)}, data={"parameters": parameters}
    )
    return {**response.json(), "http": response.status_code}


def test_a_dry_run_says_what_fitgate_read_and_keeps_nothing(client: TestClient, settings: Settings) -> None:
    body = CSV + b"text number 0,b\ntext number 0,a\n,a\n"  # a duplicate with a conflicting label, an empty text
    check = validate(client, body)
    assert check["http"] == 200 and check["accepted"] is True and check["refusal"] is None
    assert (check["columns"], check["text_column"], check["label_column"]) == (["text", "label"], "text", "label")
    assert (check["rows_read"], check["rows_kept"], check["empty_texts_dropped"]) == (63, 62, 1)
    assert check["class_counts"] == {"a": 31, "b": 31}
    assert (check["duplicate_texts"], check["conflicting_texts"]) == (2, 1)
    assert check["conflicting_examples"] == ["text number 0"]
    assert sum(check["splits"].values()) == 62 and check["splits"]["validation"] > 0
    assert client.get("/jobs", headers=bearer("team-a")).json() == []
    assert not list(settings.data_dir.glob("uploads/*")) and not list(settings.data_dir.glob(".dry-run-*"))


def test_a_dry_run_of_a_file_fitgate_would_refuse_answers_the_refusal_and_the_columns_to_choose_from(
    client: TestClient,
) -> None:
    body = b"message_body,kind\n" + b"".join(f"text {i},{'xy'[i % 2]}\n".encode() for i in range(40))
    refused = validate(client, body)
    assert refused["http"] == 200 and refused["accepted"] is False
    assert refused["columns"] == ["message_body", "kind"]
    assert refused["refusal"]["type"] == "DataError" and "no text column found" in refused["refusal"]["message"]
    chosen = validate(client, body, '{"text_column": "message_body", "label_column": "kind"}')
    assert chosen["accepted"] is True and chosen["class_counts"] == {"x": 20, "y": 20}


@pytest.mark.parametrize(
    ("name", "parameters", "says"),
    [("d.xlsx", "{}", "upload a .csv"), ("d.csv", "{not json", "not valid JSON"), ("d.csv", '{"seed": -1}', "seed")],
)
def test_a_dry_run_with_a_wrong_request_is_a_422_like_the_upload_itself(
    client: TestClient, name: str, parameters: str, says: str
) -> None:
    wrong = validate(client, CSV, parameters, name)
    assert wrong["http"] == 422 and says in wrong["error"]["message"]


def test_the_training_arguments_are_listed_with_defaults_and_descriptions_but_not_server_settings(
    client: TestClient,
) -> None:
    arguments = client.get("/finetune/arguments").json()
    assert arguments["num_train_epochs"]["default"] == 3 and arguments["num_train_epochs"]["description"]
    assert "learning_rate" in arguments
    assert arguments["base_model"]["enum"][:3] == [
        "server-default",
        "minilm",
        "multilingual-e5-small",
    ]  # names, no paths
    assert "/" not in str(arguments["base_model"]["enum"])


def test_whoami_names_the_tokens_team_refuses_a_wrong_token_and_says_when_there_are_no_tokens(
    client: TestClient, tmp_path: Path
) -> None:
    me = client.get("/whoami", headers=bearer("team-b")).json()
    assert me == {"mode": "tokens", "team": "team-b", "roles": ["finetune", "predict"], "predict_needs_token": True}
    wrong = client.get("/whoami", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API token"
    open_settings = Settings(data_dir=tmp_path / "open")
    for host, roles in (("127.0.0.1", ["admin", "finetune", "predict"]), ("10.1.2.3", ["predict"])):
        with TestClient(attach(create_app(open_settings), Fitgate(open_settings)), client=(host, 5000)) as c:
            assert c.get("/whoami").json() == {
                "mode": "loopback",
                "team": None,
                "roles": roles,
                "predict_needs_token": False,
            }


def test_a_version_other_than_the_served_one_can_be_tried_and_is_not_monitored(
    settings: Settings, healthy_run: Path
) -> None:
    name = ModelName.parse("team-a/spam")
    registry = open_registry(settings)
    first = release(healthy_run, name, settings, registry, promote=True).version
    second = release(healthy_run, name, settings, registry, promote=True).version
    texts = {"texts": ["win cash prize now"], "model": "team-a/spam"}
    with TestClient(attach(create_app(settings), Fitgate(settings)), client=("127.0.0.1", 5000)) as client:
        served = client.post("/predict", headers=bearer("team-a"), json=texts).json()
        tried = client.post("/predict", headers=bearer("team-a"), json={**texts, "version": first}).json()
        unknown = client.post("/predict", headers=bearer("team-a"), json={**texts, "version": "nope"})
        drift = client.get("/models/team-a/spam/drift", headers=bearer("team-a")).json()
        other_team = client.get("/models/team-a/spam/drift", headers=bearer("team-b"))
        missing = client.get("/models/team-a/none/drift", headers=bearer("team-a"))
    assert (served["version"], tried["version"]) == (second, first)
    assert tried["predictions"][0]["probabilities"] == pytest.approx(served["predictions"][0]["probabilities"])
    assert unknown.status_code == 404
    assert drift["version"] == second
    assert {d["predictions_seen"] for d in drift["detectors"].values()} == {1}, "the tried version fed no detector"
    assert set(drift["detectors"]["class_mix"]) == {"statistic", "threshold", "detected", "alarms", "predictions_seen"}
    assert (other_team.status_code, missing.status_code) == (403, 404)


def test_a_pinned_version_answers_even_before_this_worker_switched_to_it(settings: Settings, healthy_run: Path) -> None:
    name = ModelName.parse("team-a/spam")
    registry = open_registry(settings)
    first = release(healthy_run, name, settings, registry, promote=True).version
    texts = {"texts": ["win cash prize now"], "model": "team-a/spam"}
    slow_refresh = settings.model_copy(update={"model_refresh_seconds": 60.0})
    with TestClient(attach(create_app(slow_refresh), Fitgate(slow_refresh)), client=("127.0.0.1", 5000)) as client:
        assert (
            client.post("/predict", headers=bearer("team-a"), json=texts).json()["version"] == first
        )  # this worker now serves it
        second = release(healthy_run, name, settings, registry, promote=True).version  # current, not yet served
        pinned = client.post("/predict", headers=bearer("team-a"), json={**texts, "version": second}).json()
        unpinned = client.post("/predict", headers=bearer("team-a"), json=texts).json()
    assert pinned["version"] == second
    assert unpinned["version"] == first  # until the refresh, as the predict path documents


def test_a_finished_job_says_done_and_keeps_where_training_ended(client: TestClient) -> None:
    fitgate: Fitgate = client.app.state.fitgate  # type: ignore[attr-defined]
    job_id = str(upload(client)["job_id"])
    fitgate.jobs.update_progress(job_id, {"phase": "registering", "epoch": 3.0, "step": 75, "eta_seconds": 4.0})
    fitgate.jobs.finish(job_id, "succeeded", result={})
    progress = client.get(f"/jobs/{job_id}", headers=bearer("team-a")).json()["progress"]
    assert progress == {"phase": "done", "epoch": 3.0, "step": 75, "eta_seconds": 0}


def test_curves_of_a_job_are_served_while_it_trains_and_not_found_before_the_first_point(
    client: TestClient, settings: Settings, healthy_run: Path
) -> None:
    job_id = str(upload(client)["job_id"])
    assert client.get(f"/jobs/{job_id}/curves", headers=bearer("team-a")).status_code == 404
    attempt = rundir.attempt_dir(settings.run_dir(job_id), 1)
    attempt.mkdir(parents=True)
    (attempt / rundir.CURVES).write_text((healthy_run / rundir.CURVES).read_text())
    rundir.write_attempts(settings.run_dir(job_id), [], chosen=1)
    curves = client.get(f"/jobs/{job_id}/curves", headers=bearer("team-a")).json()
    assert curves["attempt"] == 1 and len(curves["points"]) >= 2 and "val_macro_f1" in curves["points"][0]
    assert client.get(f"/jobs/{job_id}/curves", headers=bearer("team-b")).status_code == 404


def test_every_response_carries_the_content_security_policy_and_the_pages_have_no_inline_script(
    client: TestClient,
) -> None:
    for path in ("/", "/console/models", "/console/jobs/any", "/docs", "/finetune/arguments", "/jobs/none"):
        response = client.get(path, headers=bearer("team-a"))
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        assert response.headers["x-content-type-options"] == "nosniff"
        if response.headers["content-type"].startswith("text/html"):
            assert "<script>" not in response.text and "https://" not in response.text, path
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/console/assets/vendor/uplot/LICENSE").status_code == 200


# --- hostile input refused at the door (the whole corpus, against a real server: test_hostile.py) ----------------


def test_a_team_at_its_job_limit_is_refused_with_429_and_other_teams_are_not(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_jobs_per_team": 2})
    with TestClient(attach(create_app(limited), Fitgate(limited)), client=("127.0.0.1", 5000)) as client:
        first, second = upload(client), upload(client)
        refused = upload(client)
        assert refused["http"] == 429, refused
        assert "FITGATE_MAX_JOBS_PER_TEAM=2" in refused["error"]["message"]  # type: ignore[index]
        assert upload(client, team="team-b")["http"] == 202
        client.post(f"/jobs/{first['job_id']}/cancel", headers=bearer("team-a"))
        assert upload(client)["http"] == 202  # a cancelled job frees its place
        retry = client.post(f"/jobs/{first['job_id']}/retry", headers=bearer("team-a"))
        assert retry.status_code == 429  # a retry queues again, so it counts too
        assert client.get(f"/jobs/{second['job_id']}", headers=bearer("team-a")).json()["status"] == "queued"


def test_a_run_over_the_step_limit_is_refused_at_upload_and_in_the_dry_run(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_job_steps": 1000})
    with TestClient(attach(create_app(limited), Fitgate(limited)), client=("127.0.0.1", 5000)) as client:
        refused = upload(client, parameters='{"max_steps": 1000000000000}')
        assert refused["http"] == 422
        assert "1,000,000,000,000 optimizer steps" in refused["error"]["message"]  # type: ignore[index]
        assert "FITGATE_MAX_JOB_STEPS" in refused["error"]["message"]  # type: ignore[index]
        epochs = upload(client, parameters='{"num_train_epochs": 100, "per_device_train_batch_size": 1}')
        assert epochs["http"] == 422 and "100 epochs of" in epochs["error"]["message"]  # type: ignore[index]
        dry = client.post(
            "/finetune/validate",
            headers=bearer("team-a"),
            files={"file": ("d.csv", CSV)},
            data={"parameters": '{"max_steps": 5000}'},
        ).json()
        assert not dry["accepted"] and "FITGATE_MAX_JOB_STEPS" in dry["refusal"]["message"]
        assert upload(client, parameters='{"max_steps": 1000}')["http"] == 202
    assert len(list((limited.data_dir / "uploads").iterdir())) == 1  # the refused uploads left nothing behind


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ("[" * 10_000 + "]" * 10_000, "deeper than the limit of 32"),
        ('{"seed": ' + "[" * 40 + "]" * 40 + "}", "deeper than the limit of 32"),
        ('{"seed": ' + "9" * 5000 + "}", "a number of 5,000 characters"),
        ('{"learning_rate": 0.' + "1" * 100 + "}", "a number of 102 characters"),
        ('{"learning_rate": NaN}', "NaN, which is not a JSON number"),
        ('{"seed": 18446744073709551616}', "seed: Input should be less than or equal to 4294967295"),
        ('{"seed": -1}', "seed: Input should be greater than or equal to 0"),
        ('{"max_steps": 0}', "max_steps"),
        ('{"text_column": "' + "x" * 100_000 + '"}', "over the limit of 65,536"),
    ],
    ids=[
        "10,000 deep",
        "41 deep",
        "5,000 digits",
        "a long float",
        "NaN",
        "seed 2^64",
        "seed -1",
        "max_steps 0",
        "100 kB",
    ],
)
def test_parameters_a_parser_or_a_library_would_choke_on_are_refused_at_upload(
    client: TestClient, parameters: str, words: str
) -> None:
    refused = upload(client, parameters=parameters)
    assert refused["http"] == 422, refused
    assert words in refused["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "body", "words"),
    [
        ("a lone surrogate", b'{"text": "fine \\ud800 text", "label": "a"}\n', "lone UTF-16 surrogate (U+D800)"),
        ("a lone surrogate label", b'{"text": "fine", "label": "\\udfff"}\n', "lone UTF-16 surrogate (U+DFFF)"),
        ("a 300-character label", ('{"text": "t", "label": "' + "y" * 300 + '"}\n').encode(), "longer than 200"),
        ("a line nested 10,000 deep", b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}\n", "deeper than"),
        ("a 5,000-digit number", b'{"text": "t", "label": ' + b"7" * 5000 + b"}\n", "5,000 characters"),
    ],
)
def test_jsonl_rows_that_would_fail_after_the_upload_are_refused_with_it(
    client: TestClient, name: str, body: bytes, words: str
) -> None:
    good = "".join(f'{{"text": "text number {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(60)).encode()
    response = client.post(
        "/finetune",
        headers=bearer("team-a"),
        files={"file": ("d.jsonl", good + body)},
        data={"model_name": "team-a/spam"},
    )
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]["message"]


def test_a_model_name_is_matched_whole_so_a_final_newline_is_refused(client: TestClient) -> None:
    response = client.post(
        "/finetune", headers=bearer("team-a"), files={"file": ("d.csv", CSV)}, data={"model_name": "team-a/x\n"}
    )
    assert response.status_code == 422 and "is invalid" in response.json()["error"]["message"]


def test_a_text_with_a_lone_surrogate_is_refused_at_predict_naming_the_text(client: TestClient) -> None:
    body = b'{"texts": ["fine", "bad \\ud800 text"], "model": "team-a/spam"}'
    response = client.post("/predict", headers={**bearer("team-a"), "Content-Type": "application/json"}, content=body)
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("texts[1] holds a lone UTF-16 surrogate (U+D800) at")
