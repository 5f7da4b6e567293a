"""Fuzzing: schemathesis sends requests generated from the running service's own OpenAPI schema to every route
of the FastAPI app, valid and deliberately invalid ones, from every kind of caller. No answer may be a 5xx, and
every answer must be one the schema declares: its status code, its content type and its body's JSON schema.
Invalid requests must be refused with a 4xx.

Generation is derandomized and bounded per operation, so CI sends the same requests every run."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from service.jobs import JobStore
from tests.service.conftest import Server, bearer, make_server
from training import rundir

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 60  # per operation: 1,080 requests in all, about 30 seconds on 2 cores
OPERATIONS = [  # every route of the FastAPI app; test_every_operation_in_the_schema_is_fuzzed keeps this complete
    "POST /predict",
    "POST /finetune",
    "POST /finetune/validate",
    "POST /batch",
    "GET /jobs/{job_id}/output",
    "GET /finetune/arguments",
    "GET /whoami",
    "GET /jobs",
    "GET /jobs/{job_id}",
    "POST /jobs/{job_id}/cancel",
    "POST /jobs/{job_id}/retry",
    "GET /jobs/{job_id}/report",
    "GET /jobs/{job_id}/curves",
    "GET /jobs/{job_id}/learning_curves.png",
    "GET /jobs/{job_id}/confusion_matrix.png",
    "GET /jobs/{job_id}/label_issues.csv",
    "GET /jobs/{job_id}/dropped_rows.csv",
    "GET /models",
    "GET /models/{team}/{name}/drift",
    "POST /models/{team}/{name}/promote",
    "POST /models/{team}/{name}/rollback",
]
TAKES_NO_INPUT = {"GET /finetune/arguments"}  # nothing to get wrong: no request to it can be refused
CHECKS = [
    not_a_server_error,
    status_code_conformance,  # every status is declared: 401, 403 and 422 everywhere, 404/409/413/503 per route
    content_type_conformance,  # JSON everywhere but the PNG plots
    response_schema_conformance,  # the error body on every error, the route's model on success
    negative_data_rejection,  # a request the schema calls invalid gets a 4xx
]
CALLERS = ("admin", "admin", "team-a", "team-b", "predict-only", "anonymous")  # admin twice: most cases pass auth
MODEL = "team-a/spam"
GOOD_CSV = ("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(60))).encode()
# FastAPI cannot declare that an upload's file name picks its parser; without this hint every generated upload
# would be named "file" and refused for its name before its contents were ever read
UPLOAD_NAME = {"headers": {"Content-Disposition": {"example": 'form-data; name="file"; filename="data.csv"'}}}


@dataclass
class Target:
    """A running server with a model promoted twice, a queued job and a cancelled job with a run's files."""

    server: Server
    versions: list[str]
    queued_job: str
    ended_job: str
    batch_job: str  # a succeeded batch job with its output file


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, healthy_run: Path) -> Iterator[Target]:
    # training off: accepted uploads stay queued, so the fuzzer measures the API, not the trainer; the per-team
    # limit raised, or the queued fine-tunes of POST /finetune's cases would leave POST /batch nothing but 429s
    # (tests/service/test_routes.py holds the limit itself)
    srv = make_server(
        tmp_path_factory.mktemp("fuzz"),
        tiny_model_dir,
        FITGATE_TRAINING_ENABLED="false",
        FITGATE_MAX_JOBS_PER_TEAM="1000",
    )
    settings = Settings(data_dir=srv.data_dir)
    registry = open_registry(settings)
    model = ModelName.parse(MODEL)
    first = release(healthy_run, model, settings, registry, promote=True).version
    second = registry.register(model, registry.bundle_path(model, first), {"verdict": "passed"})  # rollback needs two
    registry.promote(model, second)
    srv.start()
    jobs = []
    for _ in "ab":
        r = httpx.post(f"{srv.url}/finetune", headers=bearer("team-a"), files={"file": ("d.csv", GOOD_CSV)},
                       data={"model_name": MODEL}, timeout=60)  # fmt: skip
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job_id"])
    assert httpx.post(f"{srv.url}/jobs/{jobs[1]}/cancel", headers=bearer("team-a"), timeout=60).status_code == 200
    run_dir = srv.data_dir / "runs" / jobs[1]
    run_dir.mkdir(parents=True)
    for name in (*rundir.REPORT_FILES, rundir.LABEL_ISSUES):
        shutil.copy(healthy_run / name, run_dir / name)
    (run_dir / rundir.DROPPED_ROWS).write_text(
        "row,text,given_label,suggested_label,quality_score\n5,text 3,b,a,0.01\n"
    )
    store = JobStore.open(settings)
    batch_job = store.new_id()
    upload = srv.data_dir / "uploads" / batch_job / "input.csv"
    upload.parent.mkdir(parents=True)
    upload.write_text("text\nwin cash\n")
    arguments = {"version": first, "input_format": "csv", "output_format": "csv", "text_column": "text",
                 "id_column": None, "file_name": "in.csv"}  # fmt: skip
    store.create(batch_job, "team-a", MODEL, arguments, upload, kind="batch")
    store.finish(batch_job, "succeeded", result={"rows": 1})
    (srv.data_dir / "runs" / batch_job).mkdir(parents=True)
    (srv.data_dir / "runs" / batch_job / "output.csv").write_text("row,label\n1,spam\n")
    yield Target(srv, [first, second], jobs[0], jobs[1], batch_job)
    srv.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def fuzz_schema(target: Target) -> BaseSchema:
    """The schema the running server publishes (plus the upload's file name, which only shapes requests)."""
    raw = httpx.get(f"{target.server.url}/openapi.json", timeout=60).json()
    for upload in ("/finetune", "/finetune/validate", "/batch"):
        raw["paths"][upload]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"] = {
            "file": UPLOAD_NAME
        }
    return schemathesis.openapi.from_dict(raw, config=schemathesis.Config.from_dict({"base-url": target.server.url}))


def _use_existing_resources(case: schemathesis.Case, target: Target, choice: int) -> None:
    """Swap generated names for ones that exist, so that valid requests reach the success paths too."""
    params = case.path_parameters or {}
    if "job_id" in params:
        params["job_id"] = (target.queued_job, target.ended_job)[choice]
        if case.path.endswith("/output"):  # only a batch job has an output file
            params["job_id"] = target.batch_job
    if "team" in params:
        params["team"], params["name"] = MODEL.split("/")
    body: Any = case.body
    if not isinstance(body, dict):
        return
    if "version" in body:
        body["version"] = target.versions[choice]
    if "model" in body:
        body["model"] = MODEL
    if "model_name" in body:
        body.update(file=GOOD_CSV, model_name=MODEL, parameters="{}")
    elif "file" in body:  # the dry run, a batch
        body.update(file=GOOD_CSV, parameters="{}")


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_request_gets_a_5xx_or_an_answer_the_schema_does_not_declare(
    fuzz_schema: BaseSchema, target: Target, label: str
) -> None:
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served schema"
    statuses: set[int] = set()

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None)
    @given(
        case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)),
        who=st.sampled_from(CALLERS),
        existing=st.sampled_from((None, 0, 1)),
    )
    def fuzz(case: schemathesis.Case, who: str, existing: int | None) -> None:
        # only valid requests: an invalid one keeps whatever made it invalid
        if existing is not None and case.meta is not None and case.meta.generation.mode.is_positive:
            _use_existing_resources(case, target, existing)
        response = case.call_and_validate(headers={} if who == "anonymous" else bearer(who), checks=CHECKS)
        statuses.add(response.status_code)

    fuzz()
    # a fuzzer that only ever met 401s and 422s would pass every check above while testing nothing
    assert any(200 <= s < 300 for s in statuses), f"no request to {label} succeeded: {sorted(statuses)}"
    if label not in TAKES_NO_INPUT:
        assert any(400 <= s < 500 for s in statuses), f"no request to {label} was refused: {sorted(statuses)}"


def test_every_operation_in_the_schema_is_fuzzed(target: Target) -> None:
    paths = httpx.get(f"{target.server.url}/openapi.json", timeout=60).json()["paths"]
    assert {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods} == set(OPERATIONS)
