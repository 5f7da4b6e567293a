"""The repair loop and the label audit on a real server: a blocked upload comes back repaired by its second
attempt, labels unrelated to the texts stay blocked with the audit named, and label_issues.csv lists rows."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import httpx
import pytest

from tests.conftest import keyword_rows, write_csv
from tests.service.conftest import Server, bearer

pytestmark = pytest.mark.slow
TINY = {"max_length": 32, "train_eval_size": 100}


def _upload(server: Server, path: Path, model: str, parameters: dict[str, object]) -> str:
    with path.open("rb") as f:
        r = httpx.post(
            f"{server.url}/finetune", headers=bearer("team-a"), files={"file": ("train.csv", f, "text/csv")},
            data={"model_name": model, "parameters": json.dumps({**TINY, **parameters})}, timeout=60,
        )  # fmt: skip
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def test_an_underfit_upload_is_repaired_by_its_second_attempt(server: Server, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "train.csv", keyword_rows(300))
    # class weighting and the balanced sampler already on: three steps of a random tiny BERT may also leave a
    # class unpredicted, and then only the underfit remedies are left to apply (the attempt under test)
    job_id = _upload(
        server,
        data,
        "team-a/repaired",
        {"learning_rate": 0.005, "max_steps": 3, "class_weighting": "inverse", "sampler": "balanced"},
    )
    seen_attempts: set[int] = set()
    job = server.wait_job(job_id, {"running"}, bearer("team-a"))
    while job["status"] == "running":
        if job["progress"]:
            seen_attempts.add(job["progress"]["attempt"])
        job = httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer("team-a"), timeout=30).json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["exported_attempt"] == 2
    first, second = result["attempts"]
    assert "underfit" in first["verdicts"] and not first["passed"]
    assert {c["argument"] for c in second["changes"]} >= {"max_steps"} and second["reason"]
    assert second["passed"] and result["metrics"]["test_macro_f1"] is not None
    assert 2 in seen_attempts, "progress says which attempt runs"
    assert job["progress"]["phase"] == "done" and job["progress"]["attempt"] == 2

    report = httpx.get(f"{server.url}/jobs/{job_id}/report", headers=bearer("team-a")).json()
    assert report["report"]["chosen_attempt"] == 2 and len(report["report"]["attempts"]) == 2
    assert report["diagnosis"]["passed"] and report["report"]["test"] is not None
    assert httpx.post(f"{server.url}/predict", json={"texts": ["win cash"], "model": "team-a/repaired"}).is_success


def test_labels_unrelated_to_the_texts_stay_blocked_and_the_audit_is_named(server: Server, tmp_path: Path) -> None:
    rows = keyword_rows(300)
    labels = [y for _, y in rows]
    random.Random(3).shuffle(labels)
    data = write_csv(tmp_path / "permuted.csv", [(t, y) for (t, _), y in zip(rows, labels, strict=True)])
    job_id = _upload(server, data, "team-a/permuted", {"learning_rate": 0.005, "num_train_epochs": 3})
    job = server.wait_job(job_id, {"succeeded", "blocked", "failed"}, bearer("team-a"))
    assert job["status"] == "blocked", job
    assert len(job["result"]["attempts"]) == 1, "no retry can learn labels that do not depend on the text"
    assert "does not predict from the text" in job["reason"] and "label_issues.csv" in job["reason"]
    assert job["result"]["label_audit"]["labels_unrelated"] is True

    issues = httpx.get(f"{server.url}/jobs/{job_id}/label_issues.csv", headers=bearer("team-a"))
    assert issues.status_code == 200 and issues.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(issues.text)))
    assert table and set(table[0]) == {"row", "split", "text", "given_label", "suggested_label", "quality_score"}
    assert all(int(r["row"]) >= 2 for r in table)  # row numbers of the upload (the header is row 1)
    other_team = httpx.get(f"{server.url}/jobs/{job_id}/label_issues.csv", headers=bearer("team-b"))
    assert other_team.status_code == 404


def test_doubted_training_labels_are_left_out_by_the_next_attempt_and_listed(server: Server, tmp_path: Path) -> None:
    """The clean-the-data remedy: 20% of the labels flipped; the audit names the rows, an attempt trains without
    the training ones, the job lists them, and the better attempt on validation is exported."""
    rows = keyword_rows(300)
    rng = random.Random(5)
    flipped = {i for i in range(len(rows)) if rng.random() < 0.2}
    noisy = [(t, ({"ham": "spam", "spam": "ham"}[y] if i in flipped else y)) for i, (t, y) in enumerate(rows)]
    data = write_csv(tmp_path / "noisy.csv", noisy)
    job_id = _upload(server, data, "team-a/cleaned", {"learning_rate": 0.005, "num_train_epochs": 4})
    job = server.wait_job(job_id, {"succeeded", "blocked", "failed"}, bearer("team-a"))
    assert job["status"] in {"succeeded", "blocked"}, job
    first, second = job["result"]["attempts"][:2]
    assert first["remedy"]["retry"] and "audit" in first["remedy"]["changes"][-1]["reason"]
    assert second["rows_dropped"] > 0
    assert any(c["argument"] == "excluded_training_rows" for c in second["changes"])

    listed = httpx.get(f"{server.url}/jobs/{job_id}/dropped_rows.csv", headers=bearer("team-a"))
    assert listed.status_code == 200, listed.text
    table = list(csv.DictReader(io.StringIO(listed.text)))
    assert len(table) == second["rows_dropped"]
    assert set(table[0]) == {"row", "text", "given_label", "suggested_label", "quality_score"}
    assert all(r["given_label"] != r["suggested_label"] for r in table)
    truly_flipped = sum(int(r["row"]) - 2 in flipped for r in table)  # the header is row 1
    assert truly_flipped >= 0.8 * len(table), f"{truly_flipped} of {len(table)} dropped rows were flipped"
    if job["status"] == "succeeded":
        chosen = job["result"]["exported_attempt"]
        assert job["result"]["attempts"][chosen - 1]["validation_macro_f1"] == max(
            a["validation_macro_f1"] for a in job["result"]["attempts"] if a["passed"]
        ), "the better passing attempt on validation is exported"
    other_team = httpx.get(f"{server.url}/jobs/{job_id}/dropped_rows.csv", headers=bearer("team-b"))
    assert other_team.status_code == 404
