"""One chunk of records scored by a loaded bundle: the output rows and what the drift report counts.

The output layout is owned here: ``row`` (the record's number in the input), the input's id
column under its own name (when it has one), the answer (``label``, or ``labels`` for a multi-label model),
``confidence``, one ``p:<class>`` column per class, ``truncated`` (the text was cut, or scored in
several windows when the model pools them), and ``problem`` (why a row was not scored; empty
otherwise). A row with a problem keeps its place, so the output has exactly the input's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch.files import Record
from models.runtime import OnnxClassifier

PROBABILITY_PREFIX = "p:"


def output_columns(labels: list[str], multi_label: bool, id_column: str | None) -> list[str]:
    """The output's columns, in order, for a model with classes ``labels``; the input's id column keeps its name."""
    answer = "labels" if multi_label else "label"
    scores = [answer, "confidence", *(PROBABILITY_PREFIX + name for name in labels), "truncated", "problem"]
    return ["row", *([output_id_column(id_column, scores)] if id_column else []), *scores]


def output_id_column(id_column: str, scores: list[str]) -> str:
    """The id column's name in the output: its input name, unless an output column has it already."""
    return id_column if id_column not in ("row", *scores) else "id"


@dataclass
class ChunkTally:
    """What a chunk adds to the job's summary and its reference-vs-batch drift report."""

    rows: int = 0
    problems: int = 0
    truncated: int = 0
    answers: list[int] = field(default_factory=list)  # per class: rows answered with it (multi-label: per label)
    confidence_sum: float = 0.0
    low_confidence: int = 0  # rows under the reference's 5th-percentile confidence

    def add(self, other: ChunkTally) -> None:
        self.rows += other.rows
        self.problems += other.problems
        self.truncated += other.truncated
        self.answers = [a + b for a, b in zip(self.answers or [0] * len(other.answers), other.answers, strict=True)]
        self.confidence_sum += other.confidence_sum
        self.low_confidence += other.low_confidence


def score_chunk(
    classifier: OnnxClassifier, chunk: list[Record], columns: list[str]
) -> tuple[list[dict[str, Any]], ChunkTally]:
    """Score the chunk's readable texts in one call; every record gets its row (in ``columns``, from
    ``output_columns``), in input order."""
    spec = classifier.spec
    id_name = columns[1] if columns[1] not in ("label", "labels") else None
    scorable = [i for i, r in enumerate(chunk) if r.problem is None]
    predictions = classifier.predict([chunk[i].text or "" for i in scorable]) if scorable else None
    tally = ChunkTally(rows=len(chunk), answers=[0] * len(spec.labels))
    rows: list[dict[str, Any]] = []
    answer = "labels" if spec.multi_label else "label"
    empty = {PROBABILITY_PREFIX + name: None for name in spec.labels}
    for record in chunk:
        row: dict[str, Any] = {"row": record.number}
        if id_name is not None:
            row[id_name] = record.id
        row.update({answer: None, "confidence": None, **empty, "truncated": None, "problem": record.problem})
        rows.append(row)
    if predictions is None:
        tally.problems = len(chunk)
        return rows, tally
    low = spec.reference.low_confidence_threshold
    for k, i in enumerate(scorable):
        row = rows[i]
        if spec.multi_label:
            row["labels"] = [spec.labels[j] for j in np.flatnonzero(predictions.decided[k])]
        else:
            row["label"] = spec.labels[int(predictions.decided[k])]
        row["confidence"] = round(float(predictions.confidence[k]), 6)
        for name, p in zip(spec.labels, predictions.probabilities[k], strict=True):
            row[PROBABILITY_PREFIX + name] = round(float(p), 6)
        row["truncated"] = predictions.truncated[k]
    decided = np.asarray(predictions.decided)
    if spec.multi_label:
        tally.answers = [int(v) for v in decided.sum(axis=0)]
    else:
        tally.answers = [int(v) for v in np.bincount(decided, minlength=len(spec.labels))]
    tally.problems = len(chunk) - len(scorable)
    tally.truncated = int(sum(predictions.truncated))
    tally.confidence_sum = float(predictions.confidence.sum())
    tally.low_confidence = int((predictions.confidence < low).sum())
    return rows, tally


def drift_report(tally: ChunkTally, classifier: OnnxClassifier) -> dict[str, Any]:
    """The batch's answers against the validation reference the bundle shipped with.

    Batch traffic never feeds the online detectors (a backfill of last year's tickets is not
    today's traffic); this report compares the whole file with the reference once, at the end.
    """
    spec = classifier.spec
    reference = spec.reference
    scored = tally.rows - tally.problems
    if scored == 0:
        return {"rows_scored": 0}
    shares = [a / scored for a in tally.answers]
    distance = 0.5 * sum(abs(a - b) for a, b in zip(shares, reference.class_distribution, strict=True))
    return {
        "rows_scored": scored,
        "answer_shares": dict(zip(spec.labels, (round(s, 4) for s in shares), strict=True)),
        "reference_answer_shares": dict(
            zip(spec.labels, (round(s, 4) for s in reference.class_distribution), strict=True)
        ),
        # single-label: total variation distance between the two distributions of answers; multi-label: half the
        # summed difference of per-label positive rates
        "answer_shift": round(distance, 4),
        "mean_confidence": round(tally.confidence_sum / scored, 4),
        "low_confidence_share": round(tally.low_confidence / scored, 4),
        "reference_low_confidence_share": 0.05,  # the threshold is the reference's 5th percentile
        "truncated_share": round(tally.truncated / scored, 4),
        "reference_truncated_share": round(reference.truncated_share, 4),
    }
