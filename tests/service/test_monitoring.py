"""Monitoring end to end: a real server with 2 workers, scraped by a real Prometheus running our alert rules."""

from __future__ import annotations

import csv
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from tests.conftest import require_tool
from tests.ports import free_port
from tests.service.conftest import REPO, Server, make_server

pytestmark = pytest.mark.slow
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
MODEL = "team-a/monitored"


def _prometheus_binary() -> str:
    return require_tool("prometheus", "scripts/test installs the Debian package")


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.process = url, process

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    def wait_for(self, what: str, check: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never showed {what}")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, healthy_run: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("monitored")
    server = make_server(
        tmp,
        tiny_model_dir,
        tokens=False,
        FITGATE_WORKERS="2",
        FITGATE_DRIFT_SMOOTHING="0.05",  # shorter memory: the shift below is found in a few dozen requests
        FITGATE_DRIFT_RUN_LENGTH="200000",  # and the in-distribution phase cannot plausibly false-alarm
    )
    settings = Settings(data_dir=server.data_dir)
    release(healthy_run, ModelName.parse(MODEL), settings, open_registry(settings), promote=True)
    server.start()
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def prometheus(monitored: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"  # the real expressions, without the waiting meant for production
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    target = monitored.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yml")],
        "scrape_configs": [{"job_name": "fitgate", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        prom.wait_for("its own readiness", lambda: _ok(f"{prom.url}/-/ready"), timeout=60)
        prom.wait_for("the fitgate target up", lambda: prom.value('up{job="fitgate"}') == 1.0)
        yield prom
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _send(server: Server, texts: list[str]) -> None:
    def one(text: str) -> int:
        return httpx.post(f"{server.url}/predict", json={"texts": [text], "model": MODEL}, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, texts))
    assert codes == [200] * len(texts)


def _validation_texts(healthy_run: Path) -> list[str]:
    with (healthy_run / "validation.csv").open(encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def test_two_workers_serve_and_metrics_add_up_across_them(
    monitored: Server, prometheus: Prometheus, healthy_run: Path
) -> None:
    assert monitored.process is not None
    workers = [p for p in psutil.Process(monitored.process.pid).children(recursive=True) if "python" in p.name()]
    assert len(workers) >= 2
    # the model is loaded at startup, before any request
    prometheus.wait_for("the model loaded in every worker", lambda: prometheus.value("min(fitgate_models_loaded)") == 1)
    reference = _validation_texts(healthy_run)  # in-distribution: the next test expects no drift alarm yet
    texts = random.Random(0).choices(reference, k=120)
    _send(monitored, texts)
    prometheus.wait_for(
        "all 120 predictions counted",
        lambda: prometheus.value(f'sum(fitgate_predictions_total{{model="{MODEL}"}})') == 120,
    )
    assert prometheus.value(f'sum(fitgate_prediction_confidence_count{{model="{MODEL}"}})') == 120
    current = prometheus.query("fitgate_model_current_info == 1")
    assert [r["metric"]["model"] for r in current] == [MODEL]
    thresholds = prometheus.query(f'fitgate_drift_threshold{{model="{MODEL}"}}')
    assert {r["metric"]["detector"] for r in thresholds} == {
        "class_mix", "probabilities", "confidence", "input_length", "unknown_token_rate",
    }  # fmt: skip
    assert all(float(r["value"][1]) > 0 for r in thresholds)


def test_in_distribution_traffic_keeps_the_drift_alert_quiet_and_a_shift_fires_it(
    monitored: Server, prometheus: Prometheus, healthy_run: Path
) -> None:
    before = prometheus.value(f'sum(fitgate_predictions_total{{model="{MODEL}"}})') or 0
    reference = _validation_texts(healthy_run)
    in_distribution = random.Random(1).choices(reference, k=300)  # independent draws, like real traffic
    _send(monitored, in_distribution)
    prometheus.wait_for(
        "the in-distribution traffic scraped",
        lambda: prometheus.value(f'sum(fitgate_predictions_total{{model="{MODEL}"}})') == before + 300,
    )
    time.sleep(3)  # a few rule evaluations over the scraped traffic
    assert prometheus.alerts("FitgateDriftDetected") == []
    assert prometheus.value(f'max(fitgate_drift_detected{{model="{MODEL}"}})') == 0

    # another product's traffic: long texts full of words and characters the model never saw
    shifted = [
        f"Überweisung {i} fehlgeschlagen ✓ 请检查账户余额 и повторите попытку позже, Kontonummer {i * 7919}"
        for i in range(300)
    ]
    _send(monitored, shifted)
    firing = prometheus.wait_for(
        "FitgateDriftDetected firing",
        lambda: [a for a in prometheus.alerts("FitgateDriftDetected") if a["state"] == "firing"],
    )
    assert {a["labels"]["model"] for a in firing} == {MODEL}
    assert {"input_length", "unknown_token_rate"} <= {a["labels"]["detector"] for a in firing}
    assert prometheus.value(f'sum(fitgate_drift_alarms_total{{model="{MODEL}"}})') >= 2


def test_metric_names_follow_prometheus_conventions(monitored: Server) -> None:
    text = httpx.get(f"{monitored.url}/metrics", timeout=10).text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE fitgate_")}
    kinds = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE fitgate_")}
    assert ":" not in "".join(names)
    assert all(name.endswith("_total") for name, kind in kinds.items() if kind == "counter")
    documented = (REPO / "README.md").read_text()
    assert sorted(n for n in names if f"`{n}`" not in documented) == []


def test_every_dashboard_query_runs_on_prometheus_and_the_core_panels_have_data(prometheus: Prometheus) -> None:
    from tests.deploy.test_monitoring_files import dashboard_expressions

    empty = []
    for expr in dashboard_expressions():
        concrete = expr.replace("$model", ".*").replace("$__rate_interval", "1m")
        if not prometheus.query(concrete):  # query() asserts the expression is valid PromQL
            empty.append(concrete)
    # job panels stay empty here: this server trains nothing
    assert [e for e in empty if "job" not in e and "gate" not in e] == []


def _series(server: Server) -> set[str]:
    """Every time series /metrics exposes now (name and labels, without the value)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_made_up_paths_and_ids_do_not_grow_the_http_metrics(monitored: Server) -> None:
    """BentoML labelled its HTTP metrics by raw path: 500 made-up paths grew /metrics from 0.6 to 2.8 MB. Now by
    route template: after each kind of request has been seen once, 1,000 new paths add no series."""
    rng = random.Random(7)

    def paths(n: int) -> list[str]:
        kinds = ["/made-up/{}", "/jobs/{}", "/jobs/{}/report", "/models/team-a/{}/drift", "/console/assets/{}.js"]
        return [rng.choice(kinds).format(f"{rng.getrandbits(64):x}") for _ in range(n)]

    with monitored.client() as client:
        for path in paths(200):  # every kind, answered by both workers
            assert client.get(path).status_code in (401, 404)
        before = _series(monitored)
        for path in paths(1000):
            answer = client.get(path)
            assert answer.status_code in (401, 404) and answer.headers["content-type"] == "application/json"
    after = _series(monitored)
    assert after - before == set(), sorted(after - before)[:5]
    endpoints = {s.split('endpoint="')[1].split('"')[0] for s in after if 'endpoint="' in s}
    assert "/{unmatched}" in endpoints and "/jobs/{job_id}" in endpoints
    assert not [e for e in endpoints if re.search("[0-9a-f]{8}", e)]  # no request's own id or path became a label
