"""Reading a labelled file into clean examples, with a specific error for every bad input.

Accepts CSV (comma, semicolon or tab, sniffed), TSV and JSONL, UTF-8 with or without BOM.
Pure functions: bytes or a path in, a :class:`LabelledData` and a :class:`DataReport` out.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fitgate.errors import DataError, DataFormatError
from fitgate.json_input import load_json
from fitgate.texts import same_text_key, unreadable_reason
from training.arguments import LABEL_SEPARATORS

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
    multi_label: bool = False
    """Each label is a cell of several labels: sorted, unique, joined by ``separator`` ("" for none)."""
    separator: str = ";"

    def row(self, i: int) -> int | None:
        return self.rows[i] if self.rows else None

    def __len__(self) -> int:
        return len(self.texts)

    def label_set(self, i: int) -> tuple[str, ...]:
        """Row ``i``'s labels: one for single-label data, none or several for multi-label data."""
        if not self.multi_label:
            return (self.labels[i],)
        return tuple(self.labels[i].split(self.separator)) if self.labels[i] else ()

    def label_names(self) -> list[str]:
        """Every label that occurs, sorted (the class order of a model trained on these rows)."""
        return sorted({name for i in range(len(self)) for name in self.label_set(i)})

    def targets(self, label_names: list[str]) -> NDArray[np.intp]:
        """The labels as a model's targets: class indices, or for multi-label data a 0/1 matrix (rows x labels)."""
        index = {name: i for i, name in enumerate(label_names)}
        if not self.multi_label:
            return np.array([index[label] for label in self.labels], dtype=np.intp)
        targets = np.zeros((len(self), len(label_names)), dtype=np.intp)
        for i in range(len(self)):
            for name in self.label_set(i):
                targets[i, index[name]] = 1
        return targets

    def subset(self, indices: list[int]) -> LabelledData:
        """These rows (in the order given), with their row numbers and label kind."""
        return replace(
            self,
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            rows=[self.rows[i] for i in indices] if self.rows else [],
        )


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
    task: str = "single_label"
    """single_label or multi_label: what the label column holds (multi_label: the fields below are filled)."""
    label_cardinality: float = 1.0
    """Mean labels per row."""
    rows_without_labels: int = 0
    label_co_occurrence: list[dict[str, Any]] = field(default_factory=list)
    """The most frequent pairs of labels on one row: {"labels": [a, b], "rows": n}."""
    labels_not_learnable: list[str] = field(default_factory=list)
    """Labels with too few training rows to learn (multi-label): kept in the model, said in the report."""
    long_texts: dict[str, Any] = field(default_factory=dict)
    """Texts longer than the model's window (how many, by how much) and how they are read (training/windows.py)."""
    labels_not_validated: list[str] = field(default_factory=list)
    """Labels with too few validation rows to tune a threshold or judge (the gate names them; shared threshold)."""


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    max_text_chars: int = 20_000,
    max_empty_share: float = 0.1,
    task: str = "auto",
    label_separator: str = ";",
    allow_empty_labels: bool = False,
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
        task=task,
        label_separator=label_separator,
        allow_empty_labels=allow_empty_labels,
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
    task: str = "auto",
    label_separator: str = ";",
    allow_empty_labels: bool = False,
) -> tuple[LabelledData, DataReport]:
    """Check rows for everything that would make training fail or mislead; drop empty texts."""
    if not rows:
        raise DataError("the file has a header but no data rows; add labelled examples")
    text_col = detect_column(columns, text_column, TEXT_COLUMN_NAMES, "text")
    label_col = detect_column(columns, label_column, LABEL_COLUMN_NAMES, "label")
    if text_col == label_col:
        raise DataError(f"text and label columns are both {text_col!r}; name two different columns")
    cells = [(row.get(label_col) or "").strip() for row in rows]
    multi = task == "multi_label" or (
        task == "auto" and any(label_separator in cell or _json_list(cell) is not None for cell in cells)
    )
    if multi:
        _check_separator(cells, label_separator)
        return _validate_multi_label(
            rows, text_col, label_col, label_separator, allow_empty_labels, max_text_chars, max_empty_share
        )

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

    report = _report(rows, texts, labels, counts, empty, text_col, label_col)
    return LabelledData(texts, labels, numbers), report


def _report(
    rows: list[dict[str, str]],
    texts: list[str],
    cells: list[str],
    counts: Counter[str],
    empty: int,
    text_col: str,
    label_col: str,
) -> DataReport:
    """What both kinds of label column share in the report: rows, columns, counts, duplicates, conflicts."""
    labels_by_text: dict[str, set[str]] = defaultdict(set)
    first_seen: dict[str, str] = {}
    for text, cell in zip(texts, cells, strict=True):
        key = same_text_key(text)
        labels_by_text[key].add(cell)
        first_seen.setdefault(key, text)
    conflicting = [first_seen[key] for key, ls in labels_by_text.items() if len(ls) > 1]
    return DataReport(
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


def _json_list(cell: str) -> list[str] | None:
    """The labels of a cell holding a JSON list of strings (JSONL ``"labels": ["a", "b"]``), else None."""
    if not cell.startswith("["):
        return None
    try:
        value = json.loads(cell)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip() for v in value]


def _check_separator(cells: list[str], separator: str) -> None:
    """A multi-label file whose cells never hold the separator, but do hold another one, names the one it uses."""
    if any(separator in cell or _json_list(cell) is not None for cell in cells):
        return
    used = [
        s for s in LABEL_SEPARATORS if s != separator and sum(s in cell for cell in cells) >= max(1, len(cells) // 20)
    ]
    if used:
        raise DataError(
            f"no label cell holds the separator {separator!r}, but {sum(used[0] in c for c in cells)} cells hold "
            f"{used[0]!r}: set label_separator to {used[0]!r} if that joins several labels"
        )


def parse_label_set(cell: str, separator: str) -> tuple[str, ...]:
    """A multi-label cell's labels, sorted and unique: ``b;a;a`` and ``["a", "b"]`` are both ``("a", "b")``."""
    parts = _json_list(cell)
    if parts is None:
        parts = [part.strip() for part in cell.split(separator)]
    return tuple(sorted({part for part in parts if part}))


MAX_CO_OCCURRENCE_SHOWN = 10


def _validate_multi_label(
    rows: list[dict[str, str]],
    text_col: str,
    label_col: str,
    separator: str,
    allow_empty: bool,
    max_text_chars: int,
    max_empty_share: float,
) -> tuple[LabelledData, DataReport]:
    """The multi-label counterpart of :func:`validate_rows`: every label cell is a set of labels."""
    texts: list[str] = []
    cells: list[str] = []
    numbers: list[int] = []
    empty_texts, no_labels, too_long, long_labels, unreadable = 0, [], [], [], []
    for number, row in enumerate(rows, start=2):
        text = (row.get(text_col) or "").strip()
        if not text:
            empty_texts += 1
            continue
        label_set = parse_label_set((row.get(label_col) or "").strip(), separator)
        if not label_set and not allow_empty:
            no_labels.append(number)
            continue
        if len(text) > max_text_chars:
            too_long.append(number)
            continue
        if any(len(label) > MAX_LABEL_CHARS for label in label_set):
            long_labels.append(number)
            continue
        if (
            reason := unreadable_reason(text) or next(filter(None, map(unreadable_reason, label_set)), None)
        ) is not None:
            unreadable.append((number, reason))
            continue
        texts.append(text)
        cells.append(separator.join(label_set))
        numbers.append(number)
    if no_labels:
        raise DataError(
            f"{len(no_labels)} rows have no label (rows {no_labels[:_SHOWN]}); label them, or set "
            "allow_empty_labels=true if a row with no label is a real answer (a negative for every label)"
        )
    if too_long:
        raise DataError(
            f"{len(too_long)} texts are longer than {max_text_chars:,} characters (rows {too_long[:_SHOWN]}); "
            "split or shorten them"
        )
    if long_labels:
        raise DataError(
            f"{len(long_labels)} rows have a label longer than {MAX_LABEL_CHARS} characters (rows "
            f"{long_labels[:_SHOWN]}); check that column {label_col!r} holds labels joined by {separator!r}"
        )
    if unreadable:
        number, reason = unreadable[0]
        raise DataError(
            f"{len(unreadable)} rows are not readable text (rows {[n for n, _ in unreadable[:_SHOWN]]}); "
            f"row {number} {reason}"
        )
    if empty_texts / len(rows) > max_empty_share:
        raise DataError(
            f"{empty_texts} of {len(rows)} rows ({empty_texts / len(rows):.0%}) have an empty text, more than the "
            f"{max_empty_share:.0%} allowed; check that column {text_col!r} is the text column"
        )
    data = LabelledData(texts, cells, numbers, multi_label=True, separator=separator)
    if not texts:
        raise DataError("no rows with a text")
    sets = [data.label_set(i) for i in range(len(data))]
    counts = Counter(label for labels in sets for label in labels)
    if not counts:
        raise DataError("no row has a label; a multi-label file needs labelled rows")
    if len(counts) > MAX_CLASSES:
        raise DataError(
            f"found {len(counts):,} distinct labels, more than the {MAX_CLASSES} supported; "
            f"check that column {label_col!r} holds labels joined by {separator!r}"
        )
    if len(counts) == 1 and all(sets):
        raise DataError(
            f"every row has the one label {next(iter(counts))!r}; a classifier needs rows without it (set "
            "allow_empty_labels=true and keep unlabelled rows) or a second label"
        )
    pairs = Counter(pair for labels in sets for pair in itertools.combinations(labels, 2))
    report = _report(rows, texts, cells, counts, empty_texts, text_col, label_col)
    report.task = "multi_label"
    report.label_cardinality = round(sum(map(len, sets)) / len(sets), 4)
    report.rows_without_labels = sum(1 for s in sets if not s)
    report.label_co_occurrence = [
        {"labels": list(pair), "rows": n} for pair, n in pairs.most_common(MAX_CO_OCCURRENCE_SHOWN)
    ]
    return data, report
