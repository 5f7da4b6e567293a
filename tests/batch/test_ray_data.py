"""batch/ray_data.py on a real local Ray cluster (2 CPUs): every row comes back once, with the answer the
serving runtime gives its text, in the batch job's columns; bad rows are reported, not dropped; the RayJob's
entrypoint (deploy/ray/score.py) reads a CSV and writes Parquet the same way."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: scripts/install ray (or pip install -e .[ray])")

import ray
import ray.data

from batch.ray_data import score_dataset, scored_columns
from fitgate.errors import DataError
from models.runtime import Answer, OnnxClassifier, Prediction
from tests.conftest import keyword_rows
from tests.deploy.test_rayjob import load_score_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster for this module; its workers import fitgate from this checkout, wherever pytest
    was started (Ray gives workers the driver's directory, not its sys.path)."""
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )  # fmt: skip
    yield
    ray.shutdown()


def texts() -> list[str]:
    return [text for text, _ in keyword_rows(60, seed=7)]


def expected(runtime: OnnxClassifier, batch: list[str]) -> dict[str, Answer]:
    """Each text's answer from one predict() call in this process (fp32 both sides: int8 answers move with the
    batch a text is scored in, and Ray's batches are not this call's)."""
    return dict(zip(batch, runtime.predict(batch).answers(), strict=True))


def assert_answers_match(
    rows: list[dict[str, Any]], id_column: str, by_id: dict[str, str], runtime: OnnxClassifier
) -> None:
    want = expected(runtime, [by_id[r[id_column]] for r in rows])
    for row in rows:
        answer = want[by_id[row[id_column]]]
        assert isinstance(answer, Prediction)
        assert row["label"] == answer.label, row
        got = {name: row[f"p:{name}"] for name in runtime.spec.labels}
        assert got == pytest.approx(answer.probabilities, abs=1e-5)  # the output rounds to 6 digits
        assert row["confidence"] == pytest.approx(answer.confidence, abs=1e-5)
        assert row["problem"] is None


def test_every_row_comes_back_once_with_the_runtimes_answer_and_bad_rows_say_why(
    cluster: None, spam_bundle: Path, spam_classifier: OnnxClassifier
) -> None:
    by_id = {f"t{i}": text for i, text in enumerate(texts())}
    cells: dict[str, str | None] = {**by_id, "blank": "   ", "missing": None}
    items = [{"id": row_id, "text": text} for row_id, text in cells.items()]
    ds = ray.data.from_items(items, override_num_blocks=4)  # several blocks: both actors get work

    scored = score_dataset(ds, spam_bundle, actors=2, batch_size=16, precision="fp32")
    rows = scored.take_all()

    assert scored.columns() == scored_columns(spam_classifier.spec.labels, False, "id")  # no "row": see the module
    assert sorted(r["id"] for r in rows) == sorted(cells)  # each row once, none lost or doubled
    bad = {r["id"]: r for r in rows if r["id"] in ("blank", "missing")}
    assert {i: (r["problem"], r["label"], r["confidence"]) for i, r in bad.items()} == {
        "blank": ("empty text", None, None),
        "missing": ("empty text", None, None),
    }
    assert_answers_match([r for r in rows if r["id"] in by_id], "id", by_id, spam_classifier)


def test_a_dataset_without_an_id_column_is_refused_before_any_actor_starts(cluster: None, spam_bundle: Path) -> None:
    ds = ray.data.from_items([{"text": "win cash now"}, {"text": "see you at lunch"}])
    with pytest.raises(DataError, match="needs an id column"):
        score_dataset(ds, spam_bundle)


def test_the_rayjob_entrypoint_scores_a_csv_into_parquet(
    cluster: None, spam_bundle: Path, spam_classifier: OnnxClassifier, tmp_path: Path
) -> None:
    by_id = {str(i): text for i, text in enumerate(texts()[:20], start=1)}
    source = tmp_path / "tickets.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "body"])  # found by their common names, as a batch job finds them
        writer.writerows([*by_id.items(), ("21", "")])
    out = tmp_path / "scored"

    exit_code = load_score_script().main(
        [str(source), "--out", str(out), "--bundle", str(spam_bundle), "--actors", "1", "--precision", "fp32"]
    )

    assert exit_code == 0
    table = pq.read_table(out)
    assert table.column_names == scored_columns(spam_classifier.spec.labels, False, "key")
    assert table.schema.field("key").type == pa.string()  # "1", as a batch job writes a CSV's ids
    assert table.schema.field("confidence").type == pa.float64()
    rows = table.to_pylist()
    assert sorted(r["key"] for r in rows) == sorted([*by_id, "21"])
    assert [r["problem"] for r in rows if r["key"] == "21"] == ["empty text"]
    assert_answers_match([r for r in rows if r["key"] != "21"], "key", by_id, spam_classifier)
