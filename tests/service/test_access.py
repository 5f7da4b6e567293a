"""The access matrix against a real server: every endpoint x no token, wrong token, predict-only token,
the owning team, another team, admin. Tokens never appear in a response or in the server's log."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from tests.service.conftest import TOKENS, Server, bearer, make_server

pytestmark = pytest.mark.slow
CALLERS = ("none", "wrong", "predict-only", "team-a", "team-b", "admin")
GOOD_CSV = ("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(60))).encode()


@dataclass
class Deployment:
    server: Server
    version: str
    job_id: str


def headers(who: str) -> dict[str, str]:
    if who == "none":
        return {}
    if who == "wrong":
        return {"Authorization": "Bearer not-a-token"}
    return bearer(who)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, healthy_run: Path
) -> Iterator[Deployment]:
    srv = make_server(tmp_path_factory.mktemp("access"), tiny_model_dir, anonymous_predict=False,
                      FITGATE_TRAINING_ENABLED="false")  # fmt: skip
    settings = Settings(data_dir=srv.data_dir)
    version = release(healthy_run, ModelName.parse("team-a/spam"), settings, open_registry(settings), promote=True)
    srv.start()
    job = httpx.post(f"{srv.url}/finetune", headers=bearer("team-a"), files={"file": ("d.csv", GOOD_CSV)},
                     data={"model_name": "team-a/queued"}, timeout=60)  # fmt: skip
    assert job.status_code == 202
    yield Deployment(srv, version.version, job.json()["job_id"])
    srv.kill(signal.SIGTERM)


# expected status per caller, in CALLERS order
MATRIX: list[tuple[str, str, tuple[int, ...]]] = [
    ("POST", "/predict", (401, 401, 200, 200, 403, 200)),
    ("GET", "/models", (401, 401, 200, 200, 200, 200)),
    ("POST", "/finetune", (401, 401, 403, 202, 403, 202)),
    ("GET", "/jobs", (401, 401, 403, 200, 200, 200)),
    ("GET", "/jobs/{job}", (401, 401, 403, 200, 404, 200)),
    ("GET", "/jobs/{job}/report", (401, 401, 403, 404, 404, 404)),  # allowed callers: no report while queued
    ("POST", "/jobs/{job}/retry", (401, 401, 403, 409, 404, 409)),  # allowed callers: a queued job cannot be retried
    ("POST", "/models/team-a/spam/promote", (401, 401, 403, 200, 403, 200)),
    ("GET", "/livez", (200, 200, 200, 200, 200, 200)),
    ("GET", "/readyz", (200, 200, 200, 200, 200, 200)),
    ("GET", "/metrics", (200, 200, 200, 200, 200, 200)),  # open like the health probes: scrape it on the pod network
]


def _call(d: Deployment, method: str, path: str, who: str) -> httpx.Response:
    url = d.server.url + path.replace("{job}", d.job_id)
    h = headers(who)
    if path == "/predict":
        return httpx.post(url, headers=h, json={"texts": ["win cash now"], "model": "team-a/spam"}, timeout=60)
    if path == "/finetune":
        return httpx.post(url, headers=h, files={"file": ("d.csv", GOOD_CSV)}, data={"model_name": "team-a/other"},
                          timeout=60)  # fmt: skip
    if path.endswith("/promote"):
        return httpx.post(url, headers=h, json={"version": d.version}, timeout=60)
    return httpx.request(method, url, headers=h, timeout=60)


@pytest.mark.parametrize(("method", "path", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX])
def test_access_matrix(deployment: Deployment, method: str, path: str, expected: tuple[int, ...]) -> None:
    got = tuple(_call(deployment, method, path, who).status_code for who in CALLERS)
    assert dict(zip(CALLERS, got, strict=True)) == dict(zip(CALLERS, expected, strict=True))


def test_another_team_sees_none_of_my_models_or_jobs(deployment: Deployment) -> None:
    url = deployment.server.url
    assert httpx.get(f"{url}/models", headers=bearer("team-b")).json() == []
    assert all(j["model"].startswith("team-b/") for j in httpx.get(f"{url}/jobs", headers=bearer("team-b")).json())
    assert [m["model"] for m in httpx.get(f"{url}/models", headers=bearer("team-a")).json()] == ["team-a/spam"]


def test_a_denial_says_what_to_do(deployment: Deployment) -> None:
    url = deployment.server.url
    r = httpx.post(f"{url}/predict", json={"texts": ["x"], "model": "team-a/spam"})
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/jobs", headers=bearer("predict-only"))
    assert "lacks the 'finetune' role" in r.json()["error"]["message"]


def test_tokens_never_appear_in_responses_or_the_log(deployment: Deployment) -> None:
    bodies = [_call(deployment, m, p, who).text for m, p, _ in MATRIX for who in CALLERS if p != "/metrics"]
    log = (deployment.server.data_dir / "server.log").read_text(errors="replace")
    for token, _ in TOKENS.values():
        assert all(token not in body for body in bodies)
        assert token not in log


def _non_loopback_address() -> str:
    """An IPv4 address of this machine other than loopback: a caller from it is a remote caller."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    if os.environ.get("CI"):
        pytest.fail("no non-loopback IPv4 address: the loopback-only rule cannot be exercised")
    pytest.skip("no non-loopback IPv4 address on this machine")


def test_without_tokens_only_loopback_callers_may_change_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, healthy_run: Path
) -> None:
    """No FITGATE_TOKENS: a remote caller may predict and read, never train, promote or roll back."""
    address = _non_loopback_address()
    srv = make_server(tmp_path_factory.mktemp("open"), tiny_model_dir, tokens=False, bind="0.0.0.0",
                      FITGATE_TRAINING_ENABLED="false")  # fmt: skip
    settings = Settings(data_dir=srv.data_dir)
    version = release(healthy_run, ModelName.parse("team-a/spam"), settings, open_registry(settings), promote=True)
    srv.start()
    try:
        remote = srv.url.replace("127.0.0.1", address)
        upload = {"files": {"file": ("d.csv", GOOD_CSV)}, "data": {"model_name": "team-a/other"}, "timeout": 60}
        promote = {"json": {"version": version.version}, "timeout": 60}
        predicted = httpx.post(f"{remote}/predict", json={"texts": ["win cash"], "model": "team-a/spam"}, timeout=60)
        assert predicted.status_code == 200
        assert httpx.get(f"{remote}/models", timeout=60).status_code == 200
        for call in (
            lambda base: httpx.post(f"{base}/finetune", **upload),  # type: ignore[arg-type]
            lambda base: httpx.post(f"{base}/models/team-a/spam/promote", **promote),  # type: ignore[arg-type]
            lambda base: httpx.post(f"{base}/models/team-a/spam/rollback", timeout=60),
        ):
            refused = call(remote)
            assert refused.status_code == 403, refused.text
            message = refused.json()["error"]["message"]
            assert "loopback" in message and "FITGATE_TOKENS" in message
        assert httpx.post(f"{srv.url}/finetune", **upload).status_code == 202  # type: ignore[arg-type]
        assert httpx.post(f"{srv.url}/models/team-a/spam/promote", **promote).status_code == 200  # type: ignore[arg-type]
    finally:
        srv.kill(signal.SIGTERM)
