"""A batch job's run: score a file chunk by chunk into part files, resumable at any point, then join them.

Exactly once, without a transaction spanning the database and the disk: chunk k's rows are
written to ``part-k`` (atomically: whole or absent) with its tally beside it, and a resumed run
starts at the first chunk without a part. A worker killed at any instant (before a part's rename,
after it, before its progress reached the database) therefore leaves every row in exactly one
part. Chunks are numbered by the input's record order, which is the same on every read.
Memory is one chunk of input and output at a time, whatever the file's size.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batch.files import Columns, Format, OutputTable, chunks, count_records, records
from batch.scoring import ChunkTally, drift_report, output_columns, score_chunk
from fitgate.errors import JobCancelled
from models.runtime import OnnxClassifier

BATCH_CANCELLED = "cancelled by request; the rows scored so far are kept: a retry resumes after them"
OUTPUT_SUFFIX: dict[Format, str] = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet"}


@dataclass(frozen=True)
class BatchPlan:
    """What to read, how to cut it, and where the parts and the joined output go."""

    source: Path
    source_format: Format
    columns: Columns
    output_format: Format
    destination: Path
    parts_dir: Path
    chunk_rows: int
    max_chars: int


@dataclass(frozen=True)
class BatchProgress:
    phase: str  # counting, scoring, joining, done
    rows_done: int
    rows_total: int | None
    chunks_done: int
    rows_with_problems: int
    rows_per_second: float | None  # this run's (a resumed run counts from where it resumed)
    eta_seconds: float | None
    resumed_at_row: int | None = None


def _part(plan: BatchPlan, k: int) -> Path:
    return plan.parts_dir / f"part-{k:07d}{OUTPUT_SUFFIX[plan.output_format]}"


def _tally_file(plan: BatchPlan, k: int) -> Path:
    return plan.parts_dir / f"part-{k:07d}.tally.json"


def finished_chunks(plan: BatchPlan) -> tuple[int, ChunkTally]:
    """Chunks already written (the parts 0, 1, ... present without a gap) and their summed tally."""
    total = ChunkTally()
    k = 0
    while _part(plan, k).is_file() and _tally_file(plan, k).is_file():
        total.add(ChunkTally(**json.loads(_tally_file(plan, k).read_text())))
        k += 1
    return k, total


def run_batch(
    plan: BatchPlan,
    classifier: OnnxClassifier,
    on_progress: Callable[[BatchProgress], bool] = lambda _: False,
) -> dict[str, Any]:
    """Score what is left of ``plan`` and join the output; ``on_progress``, called after every chunk, returns True
    to cancel (JobCancelled).

    Returns the job's result: rows, problems, the drift report and the output's columns.
    """
    plan.parts_dir.mkdir(parents=True, exist_ok=True)
    spec = classifier.spec
    columns = output_columns(spec.labels, spec.multi_label, plan.columns.id)
    table = OutputTable(plan.output_format, columns)
    done, tally = finished_chunks(plan)
    resumed_at = done * plan.chunk_rows if done else None
    on_progress(BatchProgress("counting", tally.rows, None, done, tally.problems, None, None, resumed_at))
    total = count_records(plan.source, plan.source_format, plan.columns)
    started, rows_this_run = time.monotonic(), 0
    stream = chunks(records(plan.source, plan.source_format, plan.columns, plan.max_chars), plan.chunk_rows)
    for k, chunk in enumerate(stream):
        if k < done:
            continue  # written by an earlier run of this job
        rows, chunk_tally = score_chunk(classifier, chunk, columns)
        _tally_file(plan, k).write_text(json.dumps(asdict(chunk_tally)))  # before the part: a part has its tally
        table.write_part(_part(plan, k), rows)
        tally.add(chunk_tally)
        rows_this_run += len(chunk)
        speed = rows_this_run / max(time.monotonic() - started, 1e-9)
        progress = BatchProgress(
            "scoring", tally.rows, total, k + 1, tally.problems, round(speed, 1),
            round(max(total - tally.rows, 0) / speed, 1) if speed > 0 else None, resumed_at,
        )  # fmt: skip
        if on_progress(progress):
            raise JobCancelled(BATCH_CANCELLED)
    parts_written, tally = finished_chunks(plan)
    on_progress(BatchProgress("joining", tally.rows, total, parts_written, tally.problems, None, None, resumed_at))
    table.assemble([_part(plan, k) for k in range(parts_written)], plan.destination)
    shutil.rmtree(plan.parts_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    on_progress(BatchProgress("done", tally.rows, total, parts_written, tally.problems,
                              round(rows_this_run / max(seconds, 1e-9), 1), 0.0, resumed_at))  # fmt: skip
    return {
        "rows": tally.rows,
        "rows_scored": tally.rows - tally.problems,
        "rows_with_problems": tally.problems,
        "texts_over_window": tally.truncated,
        "columns": columns,
        "output_format": plan.output_format,
        "drift": drift_report(tally, classifier),
    }
