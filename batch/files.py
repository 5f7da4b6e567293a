"""The files a batch job reads and writes, streamed: CSV/TSV, JSONL or Parquet in, the same out.

Nothing here holds a whole file: input is read record by record (Parquet batch by batch) and
cut into chunks of a fixed number of records, so a chunk's number names the same rows on every
read of the same file (what a resumed job relies on). A record that cannot be scored (an empty
text, bytes that are not UTF-8, a CSV row with the wrong number of fields, a JSONL line that is
not an object) becomes a row with a ``problem`` instead of failing the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from fitgate.errors import DataError, InvalidRequest
from fitgate.texts import lone_surrogate_at, unreadable_reason
from training.data import TEXT_COLUMN_NAMES, detect_column

Format = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
ID_COLUMN_NAMES = ("id", "row_id", "uuid", "key")
"""An input column carried into the output beside each row's number, when the request names none (else the first
column whose name ends in ``_id``)."""
_HEADER_BYTES = 1 << 16


def file_format(name: str) -> Format:
    """The format of a file by its suffix, or a 4xx that lists the supported ones."""
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidRequest(
            f"cannot read {Path(name).name!r} as a table: send a .csv, .tsv, .jsonl or .parquet file "
            "(the format is read from the file name's suffix)"
        )
    return FORMATS[suffix]


@dataclass(frozen=True)
class Record:
    """One input row: its 1-based number in the file, its id (when the file has an id column), and its text
    or the reason it cannot be scored."""

    number: int
    id: str | None
    text: str | None
    problem: str | None


@dataclass(frozen=True)
class Columns:
    """The columns a batch job reads, chosen as for training: named by the request, else by common names."""

    found: list[str]
    text: str
    id: str | None


def choose_columns(found: list[str], text_column: str | None, id_column: str | None) -> Columns:
    """The text and id columns of a file with columns ``found`` (DataError, a 422, names what is there)."""
    text = detect_column(found, text_column, TEXT_COLUMN_NAMES, "text")
    if id_column is not None:
        row_id: str | None = detect_column(found, id_column, (), "id")
    else:
        by_lower = {c.lower(): c for c in found}
        named = [by_lower[n] for n in ID_COLUMN_NAMES if n in by_lower] + [
            c for c in found if c.lower().endswith("_id")
        ]
        row_id = named[0] if named else None
    if row_id == text:
        raise DataError(f"the text and id columns are both {text!r}; name two different columns")
    return Columns(found, text, row_id)


# --- reading ------------------------------------------------------------------------------------


def _text_stream(path: Path) -> io.TextIOWrapper:
    """UTF-8 (a BOM is skipped); bytes that are not UTF-8 survive as lone surrogates, so one bad row is
    reported as that row's problem (``unreadable_reason``) instead of ending the read."""
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", errors="surrogateescape", newline="")


def _delimiter(path: Path, fmt: Format) -> str:
    if fmt == "tsv":
        return "\t"
    with path.open("rb") as raw:
        first = raw.read(_HEADER_BYTES).decode("utf-8-sig", errors="replace").split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def read_columns(path: Path, fmt: Format) -> list[str]:
    """The file's column names, read from its header (its first record for JSONL)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        with _text_stream(path) as stream:
            if fmt == "jsonl":
                for line in stream:
                    if line.strip():
                        first = json.loads(line)
                        if not isinstance(first, dict):
                            raise DataError('the first JSONL line is not an object; each line must be {"text": ...}')
                        return list(first)
                return []
            header = next(csv.reader(stream, delimiter=_delimiter(path, fmt)), [])
            return [h.strip() for h in header]
    except (OSError, ValueError, csv.Error) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"the file cannot be read as {fmt.upper()} ({type(exc).__name__}: {exc})") from exc


def _problem(text: Any, max_chars: int) -> str | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return "empty text"
    if not isinstance(text, str):
        return f"the text is a {type(text).__name__}, not a string"
    at = lone_surrogate_at(text)
    if at is not None and "\udc80" <= text[at] <= "\udcff":  # how a byte that is not UTF-8 was read
        byte = ord(text[at]) - 0xDC00
        return f"the text is not valid UTF-8 (byte 0x{byte:02X} at character {at}); save the file as UTF-8"
    if len(text) > max_chars:
        return f"the text has {len(text):,} characters, more than {max_chars:,} (FITGATE_MAX_CHARS_PER_TEXT)"
    if reason := unreadable_reason(text):
        return f"the text {reason}"
    return None


def record(number: int, row_id: Any, text: Any, max_chars: int, problem: str | None = None) -> Record:
    """One input row as a Record: its text, or why it cannot be scored (the one set of checks every reader uses)."""
    problem = problem or _problem(text, max_chars)
    return Record(number, None if row_id is None else str(row_id), None if problem else text, problem)


def records(path: Path, fmt: Format, columns: Columns, max_chars: int) -> Iterator[Record]:
    """Every record of the file, in order: the same numbers on every read."""
    if fmt == "parquet":
        yield from _parquet_records(path, columns, max_chars)
        return
    with _text_stream(path) as stream:
        if fmt == "jsonl":
            yield from _jsonl_records(stream, columns, max_chars)
        else:
            yield from _csv_records(stream, _delimiter(path, fmt), columns, max_chars)


def _csv_records(stream: io.TextIOWrapper, delimiter: str, columns: Columns, max_chars: int) -> Iterator[Record]:
    reader = csv.reader(stream, delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    text_at = header.index(columns.text)
    id_at = header.index(columns.id) if columns.id is not None else None
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a NUL byte: the row is lost, its number is reported
            number += 1
            yield record(number, None, None, max_chars, f"the row cannot be read as CSV ({exc})")
            continue
        if not values:  # a blank line is no record
            continue
        number += 1
        if len(values) != len(header):
            yield record(number, None, None, max_chars,
                          f"the row has {len(values)} fields but the header has {len(header)}; quote texts that "
                          "contain the separator")  # fmt: skip
            continue
        yield record(number, values[id_at] if id_at is not None else None, values[text_at], max_chars)


def _jsonl_records(stream: io.TextIOWrapper, columns: Columns, max_chars: int) -> Iterator[Record]:
    number = 0
    for line in stream:
        if not line.strip():
            continue
        number += 1
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield record(number, None, None, max_chars, f"the line is not JSON ({exc})")
            continue
        if not isinstance(row, dict):
            yield record(number, None, None, max_chars, "the line is not a JSON object")
            continue
        yield record(number, row.get(columns.id) if columns.id else None, row.get(columns.text), max_chars)


def _parquet_records(path: Path, columns: Columns, max_chars: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    wanted = [columns.text] + ([columns.id] if columns.id else [])
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=wanted):
        texts = batch.column(columns.text).to_pylist()
        ids = batch.column(columns.id).to_pylist() if columns.id else [None] * len(texts)
        for row_id, text in zip(ids, texts, strict=True):
            number += 1
            yield record(number, row_id, text, max_chars)


def count_records(path: Path, fmt: Format, columns: Columns) -> int:
    """How many records the file holds (Parquet: from its footer; others: one read, nothing kept)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(1 for _ in records(path, fmt, columns, max_chars=2**62))


def chunks(rows: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """Consecutive records ``size`` at a time: chunk k always holds records k*size+1 ... (k+1)*size."""
    while chunk := list(islice(rows, size)):
        yield chunk


# --- writing ------------------------------------------------------------------------------------


class OutputTable:
    """Rows of one output layout (the same columns in every part), written in one format."""

    def __init__(self, fmt: Format, columns: list[str]) -> None:
        self.fmt, self.columns = fmt, columns

    def write_part(self, path: Path, rows: list[dict[str, Any]]) -> None:
        """Write one chunk's rows to ``path`` atomically: the part is whole or absent, never half written."""
        partial = path.with_name(path.name + ".partial")
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows, schema=self.schema()), partial)
        else:
            with partial.open("w", encoding="utf-8", newline="") as out:
                if self.fmt == "jsonl":
                    out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                else:
                    writer = csv.DictWriter(out, self.columns, delimiter="\t" if self.fmt == "tsv" else ",")
                    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
            with partial.open("rb") as flushed:
                os.fsync(flushed.fileno())
        os.replace(partial, path)

    def assemble(self, parts: list[Path], dest: Path) -> None:
        """Join the parts, in order, into one file with one header (Parquet: one row group per part)."""
        partial = dest.with_name(dest.name + ".partial")
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(partial, self.schema()) as writer:
                for part in parts:
                    writer.write_table(pq.read_table(part, schema=self.schema()))
        else:
            with partial.open("wb") as out:
                if self.fmt != "jsonl":
                    header = io.StringIO()
                    csv.writer(header, delimiter="\t" if self.fmt == "tsv" else ",").writerow(self.columns)
                    out.write(header.getvalue().encode())
                for part in parts:
                    with part.open("rb") as piece:
                        while block := piece.read(1 << 20):
                            out.write(block)
        os.replace(partial, dest)

    def schema(self) -> Any:
        """The output's Arrow schema (Parquet, and the Ray adapter's tables)."""
        import pyarrow as pa

        def kind(column: str) -> Any:
            if column == "row":
                return pa.int64()
            if column == "labels":
                return pa.list_(pa.string())
            if column in ("confidence", "chunks") or column.startswith("p:"):
                return pa.float64() if column != "chunks" else pa.int64()
            if column == "truncated":
                return pa.bool_()
            return pa.string()

        return pa.schema([(c, kind(c)) for c in self.columns])


def _cell(value: Any) -> Any:
    """A CSV cell: a list of labels as one string, separated by ';'."""
    if isinstance(value, list):
        return ";".join(value)
    return value
