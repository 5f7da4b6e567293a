"""Reading labelled files: every format we promise, and a specific message for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitgate.errors import DataError, DataFormatError
from training.data import parse_table, read_labelled_file, validate_rows


def _file(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _read(tmp_path: Path, content: str | bytes, name: str = "data.csv", **kwargs: object):
    return read_labelled_file(_file(tmp_path, content, name), **kwargs)  # type: ignore[arg-type]


ROWS = "hello there,ham\nwin cash now,spam\nsee you,ham\n"


@pytest.mark.parametrize(
    ("content", "name"),
    [
        ("text,label\n" + ROWS, "data.csv"),
        ("text;label\n" + ROWS.replace(",", ";"), "data.csv"),
        ("text\tlabel\n" + ROWS.replace(",", "\t"), "data.csv"),
        ("text\tlabel\n" + ROWS.replace(",", "\t"), "data.tsv"),
        ("\ufefftext,label\n" + ROWS, "data.csv"),
        (
            '{"text": "hello there", "label": "ham"}\n{"text": "win cash now", "label": "spam"}\n'
            '{"text": "see you", "label": "ham"}\n',
            "data.jsonl",
        ),
    ],
    ids=["comma", "semicolon", "tab-sniffed", "tsv", "utf8-bom", "jsonl"],
)
def test_reads_every_supported_format(tmp_path: Path, content: str, name: str) -> None:
    data, report = _read(tmp_path, content, name)
    assert data.texts == ["hello there", "win cash now", "see you"]
    assert data.labels == ["ham", "spam", "ham"]
    assert report.class_counts == {"ham": 2, "spam": 1}


def test_detects_common_column_names_case_insensitively(tmp_path: Path) -> None:
    data, report = _read(tmp_path, "id,Sentence,Intent\n1,hi,greet\n2,bye,leave\n")
    assert (report.text_column, report.label_column) == ("Sentence", "Intent")
    assert data.labels == ["greet", "leave"]


def test_explicit_columns_override_detection(tmp_path: Path) -> None:
    data, _ = _read(tmp_path, "a,b,text\nhi,x,ignored\nbye,y,ignored\n", text_column="a", label_column="b")
    assert data.texts == ["hi", "bye"]


def test_report_lists_duplicates_and_conflicting_labels(tmp_path: Path) -> None:
    _, report = _read(tmp_path, "text,label\nsame,a\nsame,a\nclash,a\nclash,b\nother,b\n")
    assert report.duplicate_texts == 2
    assert report.conflicting_texts == 1
    assert report.conflicting_examples == ["clash"]


def test_full_width_and_half_width_forms_of_a_text_are_one_text(tmp_path: Path) -> None:
    # Chinese and Japanese keyboards type Latin letters and digits full width: ＷｉＦｉ１２３ is WiFi123
    rows = "房间 ＷｉＦｉ 很快,正面\n房间 WiFi 很快,负面\n房间  WiFi 很快,正面\n服务差,负面\n"
    _, report = _read(tmp_path, "text,label\n" + rows)
    assert report.duplicate_texts == 2
    assert report.conflicting_texts == 1 and report.conflicting_examples == ["房间 ＷｉＦｉ 很快"]
    assert report.class_counts == {"正面": 2, "负面": 2}


def test_empty_texts_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'a' if i % 2 else 'b'}\n" for i in range(20))
    data, report = _read(tmp_path, "text,label\n" + rows + "   ,a\n")
    assert report.empty_texts_dropped == 1
    assert len(data) == 20


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("", DataFormatError, "the file is empty"),
        ("text,label\n", DataError, "header but no data rows"),
        ("message,kind\nhi,a\nbye,b\n", DataError, "no label column found among ['message', 'kind']"),
        ("foo,label\nhi,a\nbye,b\n", DataError, "no text column found among ['foo', 'label']"),
        ("text,label\nhi,a\nbye,a\n", DataError, "found only one class ('a', 2 rows)"),
        ("text,label\nhi,1\nbye,2\nyo,cat\n", DataError, "labels mix numbers"),
        ("text,label\nhi,a\n,b\n,a\n,b\n", DataError, "3 of 4 rows (75%) have an empty text"),
        ("text,label\nhi,a\nbye,\n", DataError, "1 rows have no label (rows [3])"),
        ("text,label\n" + "x" * 30_000 + ",a\nbye,b\n", DataError, "row 2 (30,000 chars)"),
        ('text,label\n"unbalanced,a\nbye,b\n', DataFormatError, "unbalanced quotes"),
        ("text,label\nhi,a,extra\n", DataFormatError, "row 2 has 3 fields but the header has 2"),
        ("justonecolumn\nhi\n", DataFormatError, "found one column ('justonecolumn')"),
    ],
    ids=[
        "empty",
        "header-only",
        "missing-label-column",
        "missing-text-column",
        "one-class",
        "mixed-label-types",
        "mostly-empty-texts",
        "missing-label",
        "text-too-long",
        "unbalanced-quotes",
        "ragged-row",
        "one-column",
    ],
)
def test_bad_data_gets_a_specific_message(tmp_path: Path, content: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as excinfo:
        _read(tmp_path, content)
    assert message in str(excinfo.value)


def test_explicit_column_that_is_missing_names_the_columns_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label column 'intent' not found; the file has columns \['text', 'label'\]"):
        _read(tmp_path, "text,label\nhi,a\n", label_column="intent")


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    content = b"text,label\nhello,a\ncaf\xe9 au lait,b\n"
    with pytest.raises(DataFormatError, match=r"line 3 is not valid UTF-8 \(byte 0xe9"):
        _read(tmp_path, content)


def test_utf16_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="UTF-16 encoded; save it as UTF-8"):
        _read(tmp_path, "text,label\nhi,a\n".encode("utf-16"))


def test_binary_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="NUL bytes"):
        _read(tmp_path, b"\x01\x02\x00\x00binary")


def test_an_excel_workbook_or_zip_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"ZIP archive \(or an Excel \.xlsx workbook\)"):
        _read(tmp_path, b"PK\x03\x04\x00\x00binary")


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="line 2 is a JSON list"):
        _read(tmp_path, '{"text": "a", "label": "x"}\n[1, 2]\n', "data.jsonl")


def test_too_many_classes_is_refused(tmp_path: Path) -> None:
    rows = "".join(f"text {i},label{i}\n" for i in range(1500))
    with pytest.raises(DataError, match="1,500 distinct labels"):
        _read(tmp_path, "text,label\n" + rows)


# --- whatever bytes arrive, reading them ends in rows training can use or a DataError that says why ---------------

_cells = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ['=HYPERLINK("x")', "$\\frac{a}$", '"', "\ufeff", "\ud800", "\x00", "a,b", "\n", "{}", "[" * 50]
)
_rows = st.lists(st.tuples(_cells, _cells), max_size=12)


def _csv(rows: list[tuple[str, str]], sep: str) -> bytes:
    return ("text" + sep + "label\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in rows)).encode("utf-8", "surrogatepass")


def _jsonl(rows: list[tuple[str, str]]) -> bytes:
    return "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows).encode("utf-8")


_files = st.one_of(
    st.binary(max_size=300).map(lambda raw: (raw, ".csv")),
    st.tuples(_rows, st.sampled_from([",", ";", "\t"])).map(lambda r: (_csv(*r), ".csv")),
    _rows.map(lambda rows: (_jsonl(rows), ".jsonl")),
    st.text(max_size=200).map(lambda text: (text.encode("utf-8", "surrogatepass"), ".jsonl")),
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_files)
def test_any_upload_becomes_readable_rows_or_a_data_error(upload: tuple[bytes, str]) -> None:
    raw, suffix = upload
    try:
        rows, columns = parse_table(raw, suffix)
        data, _report = validate_rows(rows, columns, max_empty_share=1.0)
    except DataError as exc:
        assert str(exc), "a refusal must say what was wrong"
        return
    for text in (*data.texts, *data.labels):
        text.encode("utf-8")  # well-formed: no lone surrogate reaches the tokenizer
        assert text.strip() == text and text


# --- multi-label files ----------------------------------------------------------------------------

TICKETS = (
    "text,label\n"
    "card charged twice,billing;bug\n"
    "app crashes on login,bug\n"
    "refund please,billing\n"
    "dark mode request,\n"
    '"crash, then charged",bug;billing;bug\n'
)


def test_a_label_cell_joined_by_the_separator_makes_the_file_multi_label(tmp_path: Path) -> None:
    data, report = _read(tmp_path, TICKETS, allow_empty_labels=True)
    assert data.multi_label and report.task == "multi_label"
    assert [data.label_set(i) for i in range(len(data))] == [
        ("billing", "bug"), ("bug",), ("billing",), (), ("billing", "bug"),
    ]  # fmt: skip
    assert report.class_counts == {"billing": 3, "bug": 3}
    assert report.rows_without_labels == 1
    assert report.label_cardinality == pytest.approx(6 / 5)
    assert report.label_co_occurrence == [{"labels": ["billing", "bug"], "rows": 2}]


def test_rows_with_no_label_are_refused_unless_the_user_allows_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"1 rows have no label \(rows \[5\]\).*allow_empty_labels=true"):
        _read(tmp_path, TICKETS)


def test_jsonl_label_lists_are_label_sets(tmp_path: Path) -> None:
    lines = [
        {"text": "card charged twice", "labels": ["billing", "bug"]},
        {"text": "app crashes", "labels": ["bug"]},
        {"text": "refund please", "labels": ["billing"]},
    ]
    data, report = _read(tmp_path, "\n".join(json.dumps(x) for x in lines), "data.jsonl")
    assert report.task == "multi_label" and data.label_set(0) == ("billing", "bug")


def test_another_separator_is_read_when_named(tmp_path: Path) -> None:
    data, _ = _read(tmp_path, "text,label\na b,x|y\nc d,y\ne f,x\n", task="multi_label", label_separator="|")
    assert data.label_set(0) == ("x", "y")


def test_an_unsupported_separator_is_an_arguments_error_naming_the_supported_ones() -> None:
    from fitgate.errors import ArgumentsError
    from training.arguments import parse_arguments

    with pytest.raises(ArgumentsError, match=r"label_separator 'x' is not supported; use one of"):
        parse_arguments({"label_separator": "x"})


def test_single_label_files_stay_single_label(tmp_path: Path) -> None:
    data, report = _read(tmp_path, "text,label\n" + ROWS)
    assert not data.multi_label and report.task == "single_label"


def test_multi_label_targets_are_a_zero_one_matrix_in_label_order(tmp_path: Path) -> None:
    data, _ = _read(tmp_path, TICKETS, allow_empty_labels=True)
    assert data.targets(["billing", "bug"]).tolist() == [[1, 1], [0, 1], [1, 0], [0, 0], [1, 1]]
