"""Reading a labelled file into clean examples, with a specific error for every bad input.

Accepts CSV (comma, semicolon or tab, sniffed), TSV and JSONL, UTF-8 with or without BOM.
Pure functions: bytes or a path in, a :class:`LabelledData` and a :class:`DataReport` out.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitgate.errors import DataError, DataFormatError
from fitgate.json_input import load_json
from fitgate.texts import same_text_key, unreadable_reason

TEXT_COLUMN_NAMES = ("text", "sentence", "content", "message", "body", "utterance", "query", "review", "document")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "intent", "target", "tag", "sentiment")
MAX_CLASSES = 1000
MAX_LABEL_CHARS = 200  # a class name, not a text: longer is a column mix-up
_SHOWN = 5  # how many offending rows an error message names


@dataclass(frozen=True)
class LabelledData:
    """Clean examples: texts and their string labels, in file order.

    ``rows`` are the examples' row numbers in the file they were read from (the header is row 1,
    as in every error message), so a finding about an example can point at the row to fix; data
    built in memory has none.
    """

    texts: list[str]
    labels: list[str]
    rows: list[int] = field(default_factory=list)

    def row(self, i: int) -> int | None:
        return self.rows[i] if self.rows else None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class DataReport:
    """What the validation found: shown to the user and saved with the run."""

    rows_read: int = 0
    rows_kept: int = 0
    empty_texts_dropped: int = 0
    text_column: str = ""
    label_column: str = ""
    class_counts: dict[str, int] = field(default_factory=dict)
    duplicate_texts: int = 0
    conflicting_texts: int = 0
    conflicting_examples: list[str] = field(default_factory=list)
    base_model: dict[str, Any] = field(default_factory=dict)
    """The base model chosen for these texts and how each candidate read them (training.base_models)."""
    training_rows_left_out: int = 0
    """Training rows the clean-the-data remedy left out (``excluded_training_rows``)."""


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    max_text_chars: int = 20_000,
    max_empty_share: float = 0.1,
) -> tuple[LabelledData, DataReport]:
    """Read and validate a labelled CSV/TSV/JSONL file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"cannot read {path.name}: {exc.strerror}") from exc
    rows, columns = parse_table(raw, path.suffix.lower())
    return validate_rows(
        rows,
        columns,
        text_column=text_column,
        label_column=label_column,
        max_text_chars=max_text_chars,
        max_empty_share=max_empty_share,
    )


def write_labelled_csv(data: LabelledData, path: Path) -> Path:
    """Write examples as a ``text,label`` CSV (the format read back by :func:`read_labelled_file`)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(data.texts, data.labels, strict=True))
    return path


def decode_utf8(raw: bytes) -> str:
    """Decode UTF-8 (BOM allowed); name the line of the first undecodable byte otherwise."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(
            "the file is UTF-16 encoded; save it as UTF-8 (e.g. 'CSV UTF-8' in Excel) and upload again"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8 and upload again"
        ) from exc


# the first bytes of files people upload by mistake, and what to tell them
MAGIC = {
    b"PK\x03\x04": "a ZIP archive (or an Excel .xlsx workbook): unzip it, or save the sheet as CSV UTF-8",
    b"\x1f\x8b": "gzip-compressed: decompress it and upload the CSV inside",
    b"%PDF": "a PDF document, not a table: export the data as CSV UTF-8",
    b"\x89PNG": "a PNG image, not a table",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook: save the sheet as CSV UTF-8 and upload that",
}


def parse_table(raw: bytes, suffix: str) -> tuple[list[dict[str, str]], list[str]]:
    """Turn file bytes into rows (dicts keyed by column name) and the column names."""
    for magic, what in MAGIC.items():
        if raw.startswith(magic):
            raise DataFormatError(f"the file is {what}")
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError("the file contains NUL bytes: it looks binary, not a CSV/TSV/JSONL text file")
    text = decode_utf8(raw)
    if not text.strip():
        raise DataFormatError("the file is empty; upload a table with a text column and a label column")
    if suffix in (".jsonl", ".ndjson") or (suffix not in (".csv", ".tsv", ".txt") and text.lstrip().startswith("{")):
        return _parse_jsonl(text)
    return _parse_delimited(text, "\t" if suffix == ".tsv" else None)


def _parse_jsonl(text: str) -> tuple[list[dict[str, str]], list[str]]:
    rows: list[dict[str, str]] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = load_json(line, f"line {number}", DataFormatError)  # each line must be one JSON object
        if not isinstance(record, dict):
            raise DataFormatError(
                f"line {number} is a JSON {type(record).__name__}, expected an object like "
                '{"text": "...", "label": "..."}'
            )
        row = {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in record.items()}
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return rows, list(columns)


def _parse_delimited(text: str, delimiter: str | None) -> tuple[list[dict[str, str]], list[str]]:
    if delimiter is None:
        sample = text[:65536]
        try:
            delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        body = list(reader)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataFormatError(
                f"a cell near line {reader.line_num} holds more than {csv.field_size_limit():,} characters, far "
                "more than a text may have; shorten it (or close the quote that runs on)"
            ) from exc
        raise DataFormatError(
            f"the file is not valid CSV near line {reader.line_num} ({exc}); check for unbalanced quotes"
        ) from exc
    header = [name.strip() for name in header]
    if len(header) < 2:
        raise DataFormatError(
            f"found one column ({header[0]!r}); expected a text column and a label column separated by comma, "
            "semicolon or tab"
        )
    rows: list[dict[str, str]] = []
    for line_offset, values in enumerate(body, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataFormatError(
                f"row {line_offset} has {len(values)} fields but the header has {len(header)}; "
                "quote texts that contain the separator"
            )
        rows.append(dict(zip(header, values, strict=True)))
    return rows, header


def detect_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], role: str) -> str:
    """Return the column to use for ``role``, given an explicit name or by common names."""
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(f"{role} column {wanted!r} not found; the file has columns {columns}")
    by_lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise DataError(
        f"no {role} column found among {columns}; name it one of {list(candidates[:4])} or pass --{role}-column"
    )


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def validate_rows(
    rows: list[dict[str, str]],
    columns: list[str],
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    max_text_chars: int = 20_000,
    max_empty_share: float = 0.1,
) -> tuple[LabelledData, DataReport]:
    """Check rows for everything that would make training fail or mislead; drop empty texts."""
    if not rows:
        raise DataError("the file has a header but no data rows; add labelled examples")
    text_col = detect_column(columns, text_column, TEXT_COLUMN_NAMES, "text")
    label_col = detect_column(columns, label_column, LABEL_COLUMN_NAMES, "label")
    if text_col == label_col:
        raise DataError(f"text and label columns are both {text_col!r}; name two different columns")

    texts: list[str] = []
    labels: list[str] = []
    numbers: list[int] = []
    empty = 0
    missing_labels: list[int] = []
    too_long: list[tuple[int, int]] = []
    long_labels: list[int] = []
    unreadable: list[tuple[int, str]] = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        text = (row.get(text_col) or "").strip()
        label = (row.get(label_col) or "").strip()
        if not text:
            empty += 1
            continue
        if not label:
            missing_labels.append(number)
            continue
        if len(text) > max_text_chars:
            too_long.append((number, len(text)))
            continue
        if len(label) > MAX_LABEL_CHARS:
            long_labels.append(number)
            continue
        if (reason := unreadable_reason(text) or unreadable_reason(label)) is not None:
            unreadable.append((number, reason))
            continue
        texts.append(text)
        labels.append(label)
        numbers.append(number)

    if missing_labels:
        raise DataError(
            f"{len(missing_labels)} rows have no label (rows {missing_labels[:_SHOWN]}); label them or remove them"
        )
    if too_long:
        shown = ", ".join(f"row {n} ({c:,} chars)" for n, c in too_long[:_SHOWN])
        raise DataError(
            f"{len(too_long)} texts are longer than {max_text_chars:,} characters: {shown}; "
            "split or shorten them (the model reads at most a few hundred words)"
        )
    if long_labels:
        raise DataError(
            f"{len(long_labels)} labels are longer than {MAX_LABEL_CHARS} characters (rows {long_labels[:_SHOWN]}); "
            f"a label names a class: check that column {label_col!r} is the label column"
        )
    if unreadable:
        number, reason = unreadable[0]
        raise DataError(
            f"{len(unreadable)} rows are not readable text (rows {[n for n, _ in unreadable[:_SHOWN]]}); "
            f"row {number} {reason}"
        )
    if empty / len(rows) > max_empty_share:
        raise DataError(
            f"{empty} of {len(rows)} rows ({empty / len(rows):.0%}) have an empty text, more than the "
            f"{max_empty_share:.0%} allowed; check that column {text_col!r} is the text column"
        )
    if not texts:
        raise DataError("no rows with both a text and a label")

    numeric = [label for label in set(labels) if _is_number(label)]
    if numeric and len(numeric) != len(set(labels)):
        words = sorted(set(labels) - set(numeric))[:3]
        raise DataError(
            f"labels mix numbers ({sorted(numeric)[:3]}) and words ({words}); use one kind of label for every row"
        )

    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError(
            f"found only one class ({next(iter(counts))!r}, {len(labels)} rows); a classifier needs at least 2 classes"
        )
    if len(counts) > MAX_CLASSES:
        raise DataError(
            f"found {len(counts):,} distinct labels, more than the {MAX_CLASSES} supported; "
            f"check that column {label_col!r} holds class names, not free text"
        )

    labels_by_text: dict[str, set[str]] = defaultdict(set)
    first_seen: dict[str, str] = {}
    for text, label in zip(texts, labels, strict=True):
        key = same_text_key(text)
        labels_by_text[key].add(label)
        first_seen.setdefault(key, text)
    conflicting = [first_seen[key] for key, ls in labels_by_text.items() if len(ls) > 1]
    report = DataReport(
        rows_read=len(rows),
        rows_kept=len(texts),
        empty_texts_dropped=empty,
        text_column=text_col,
        label_column=label_col,
        class_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        duplicate_texts=len(texts) - len(labels_by_text),
        conflicting_texts=len(conflicting),
        conflicting_examples=[t[:80] for t in conflicting[:_SHOWN]],
    )
    return LabelledData(texts, labels, numbers), report
