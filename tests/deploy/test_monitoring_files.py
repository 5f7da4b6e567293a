"""The operations files under deploy/: alert rules that promtool accepts and whose unit tests pass, a dashboard
that queries only metrics fitgate exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "fitgate.json"


def _promtool() -> str:
    return require_tool("promtool", "scripts/test installs the Debian package prometheus")


def documented_metrics() -> set[str]:
    readme = (REPO / "README.md").read_text()
    return set(re.findall(r"`(fitgate_[a-z_]+)`", readme))


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_alert_rules_pass_promtool_check() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    tests = RULES.with_name("alerts_test.yml")
    out = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_and_dashboard_query_only_documented_metrics() -> None:
    exported = documented_metrics()
    queried = set(re.findall(r"fitgate_[a-z_]+", RULES.read_text() + " ".join(dashboard_expressions())))
    base = {re.sub(r"_(bucket|count|sum)$", "", name) for name in queried}
    assert base - exported == set()


def test_the_dashboard_covers_what_an_sre_needs() -> None:
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("predictions", "latency", "class mix", "confidence", "drift", "alarms", "jobs"):
        assert topic in titles
