"""A batch run scores every input row exactly once, in order, resumable at any chunk, in every format."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.files import Format, choose_columns, read_columns
from batch.run import BatchPlan, BatchProgress, finished_chunks, run_batch
from fitgate.errors import JobCancelled
from models.runtime import OnnxClassifier
from tests.conftest import keyword_rows

CHUNK = 16


def write_input(path: Path, texts: list[str], ids: bool = True) -> Path:
    fmt = path.suffix
    if fmt == ".parquet":
        columns: dict[str, Any] = {"text": texts}
        if ids:
            columns = {"id": [f"t{i}" for i in range(len(texts))], **columns}
        pq.write_table(pa.table(columns), path, row_group_size=7)  # row groups that cut across chunks
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "text"])
            writer.writerows([f"t{i}", t] for i, t in enumerate(texts))
    return path


def plan_for(source: Path, out: Path, fmt_in: Format, fmt_out: Format) -> BatchPlan:
    columns = choose_columns(read_columns(source, fmt_in), None, None)
    return BatchPlan(source, fmt_in, columns, fmt_out, out, out.with_name(out.name + ".parts"), CHUNK, 20_000)


def read_output(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return list(pq.read_table(path).to_pylist())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


TEXTS = [text for text, _ in keyword_rows(70, seed=3)]


@pytest.mark.parametrize(("fmt_in", "fmt_out"), [("csv", "csv"), ("jsonl", "parquet"), ("parquet", "jsonl")])
def test_every_row_comes_back_once_in_input_order_with_the_answer_predict_gives(
    tmp_path: Path, spam_classifier: OnnxClassifier, fmt_in: Format, fmt_out: Format
) -> None:
    source = write_input(tmp_path / f"in.{fmt_in}", TEXTS)
    result = run_batch(plan_for(source, tmp_path / f"out.{fmt_out}", fmt_in, fmt_out), spam_classifier)
    rows = read_output(tmp_path / f"out.{fmt_out}")
    expected = spam_classifier.predict(TEXTS).answers()
    assert [int(r["row"]) for r in rows] == list(range(1, 71))
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(70)]
    assert [r["label"] for r in rows] == [a.label for a in expected]  # type: ignore[union-attr]
    assert [float(r["p:spam"]) for r in rows] == pytest.approx([a.probabilities["spam"] for a in expected], abs=1e-5)
    assert result["rows"] == result["rows_scored"] == 70 and result["rows_with_problems"] == 0
    assert not (tmp_path / f"out.{fmt_out}.parts").exists()  # the parts go once the output is whole


def test_rows_that_cannot_be_scored_keep_their_place_and_say_why(
    tmp_path: Path, spam_classifier: OnnxClassifier
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(
        b"id,text\n"
        b"a,win cash now\n"
        b"b,\n"  # empty text
        b"c,caf\xe9 latin-1 bytes\n"  # not UTF-8
        b"d,one,field,too,many\n"
        b"e,see you at lunch\n"
    )
    result = run_batch(plan_for(source, tmp_path / "out.csv", "csv", "csv"), spam_classifier)
    rows = read_output(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["a", "b", "c", "", "e"]
    problems = [r["problem"] for r in rows]
    assert problems[0] == problems[4] == ""
    assert problems[1] == "empty text"
    assert "not valid UTF-8" in problems[2] and "0xE9" in problems[2]
    assert "5 fields but the header has 2" in problems[3]
    assert rows[1]["label"] == "" and rows[4]["label"] in ("ham", "spam")
    assert (result["rows"], result["rows_with_problems"]) == (5, 3)


class Crash(Exception):
    """Stands for the worker's kill -9: nothing after the raise runs."""


def test_a_run_stopped_after_any_chunk_resumes_without_losing_or_repeating_a_row(
    tmp_path: Path, spam_classifier: OnnxClassifier
) -> None:
    source = write_input(tmp_path / "in.csv", TEXTS)
    whole = run_batch(plan_for(source, tmp_path / "whole.csv", "csv", "csv"), spam_classifier)
    plan = plan_for(source, tmp_path / "out.csv", "csv", "csv")
    stops = iter([2, 3])  # chunks written before each crash

    def crash_after(chunks: int) -> Any:
        def on_progress(progress: BatchProgress) -> bool:
            if progress.phase == "scoring" and progress.chunks_done >= chunks:
                raise Crash
            return False

        return on_progress

    with pytest.raises(Crash):
        run_batch(plan, spam_classifier, crash_after(next(stops)))
    assert finished_chunks(plan)[0] == 2
    (plan.parts_dir / "part-0000002.csv.partial").write_text("half a part the crash left behind\n")
    with pytest.raises(Crash):
        run_batch(plan, spam_classifier, crash_after(next(stops)))
    seen: list[BatchProgress] = []
    resumed = run_batch(plan, spam_classifier, lambda p: seen.append(p) or False)
    assert seen[0].resumed_at_row == 3 * CHUNK
    assert read_output(tmp_path / "out.csv") == read_output(tmp_path / "whole.csv")
    assert resumed == whole


def test_a_cancel_stops_at_the_next_chunk_and_keeps_what_was_scored(
    tmp_path: Path, spam_classifier: OnnxClassifier
) -> None:
    source = write_input(tmp_path / "in.jsonl", TEXTS)
    plan = plan_for(source, tmp_path / "out.jsonl", "jsonl", "jsonl")
    with pytest.raises(JobCancelled):
        run_batch(plan, spam_classifier, lambda p: p.phase == "scoring")
    assert finished_chunks(plan)[0] == 1 and not plan.destination.exists()


def test_progress_counts_rows_and_estimates_the_time_left(tmp_path: Path, spam_classifier: OnnxClassifier) -> None:
    source = write_input(tmp_path / "in.parquet", TEXTS)
    seen: list[BatchProgress] = []
    run_batch(plan_for(source, tmp_path / "out.csv", "parquet", "csv"), spam_classifier,
              lambda p: seen.append(p) or False)  # fmt: skip
    scoring = [p for p in seen if p.phase == "scoring"]
    assert scoring and all(p.rows_total == 70 and p.rows_per_second and p.eta_seconds is not None for p in scoring)
    assert seen[-1].phase == "done" and seen[-1].rows_done == 70


def test_the_result_compares_the_answers_with_the_validation_reference(
    tmp_path: Path, spam_classifier: OnnxClassifier
) -> None:
    spam_only = [t for t, label in keyword_rows(200, seed=5) if label == "spam"][:40]
    source = write_input(tmp_path / "in.csv", spam_only)
    drift = run_batch(plan_for(source, tmp_path / "out.csv", "csv", "csv"), spam_classifier)["drift"]
    reference = drift["reference_answer_shares"]["spam"]
    assert reference < 0.5 < drift["answer_shares"]["spam"]  # a file of spam is not the validation mix
    assert drift["answer_shift"] == pytest.approx(drift["answer_shares"]["spam"] - reference, abs=1e-3)


def test_a_multi_label_model_answers_every_row_with_its_labels_and_every_labels_score(
    tmp_path: Path, multi_label_run: Path
) -> None:
    from fitgate.settings import Settings
    from models.export import build_bundle
    from training.diagnosis import diagnose_run
    from training.rundir import RunDirectory

    run = RunDirectory.open(multi_label_run)
    settings = Settings(data_dir=tmp_path / "data")
    build_bundle(run, diagnose_run(run, settings), tmp_path / "bundle", settings)
    classifier = OnnxClassifier(tmp_path / "bundle", precision="fp32", threads=1)
    classifier.load()
    texts = ["refund for the crash please", "password login profile", "invoice charged twice and app error"]
    source = write_input(tmp_path / "in.parquet", texts)
    run_batch(plan_for(source, tmp_path / "out.parquet", "parquet", "parquet"), classifier)
    rows = read_output(tmp_path / "out.parquet")
    expected = classifier.predict(texts).answers()
    assert [r["labels"] for r in rows] == [a.labels for a in expected]  # type: ignore[union-attr]
    assert {k for k in rows[0] if k.startswith("p:")} == {"p:account", "p:billing", "p:bug"}
    csv_out = run_batch(plan_for(source, tmp_path / "out.csv", "parquet", "csv"), classifier)
    assert csv_out["columns"][2] == "labels"
    joined = [r["labels"] for r in read_output(tmp_path / "out.csv")]
    assert joined == [";".join(a.labels) for a in expected]  # type: ignore[union-attr]
