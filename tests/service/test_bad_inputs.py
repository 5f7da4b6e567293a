"""The bad-input corpus: every broken upload and predict request a product team is likely to send, against a
real server. Each gets its expected status and a message naming the problem; nothing answers 5xx (but 503
while no model is deployed at all); the
service answers a health check after every case; a refused upload leaves nothing behind."""

from __future__ import annotations

import io
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import Server, bearer, make_server

pytestmark = pytest.mark.slow
MAX_UPLOAD = 2 * 2**20


def _rows(n: int, labels: tuple[str, ...] = ("a", "b")) -> str:
    return "".join(f"text number {i} here,{labels[i % len(labels)]}\n" for i in range(n))


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.csv", "text,label\n" + _rows(60))
    return buf.getvalue()


# (case, file name, bytes, expected status, words the message must contain)
UPLOADS: list[tuple[str, str, bytes, int, str]] = [
    ("empty file", "d.csv", b"", 422, "the file is empty"),
    ("header only", "d.csv", b"text,label\n", 422, "no data rows"),
    ("no text column", "d.csv", b"words,kind\nhi,a\nho,b\n", 422, "no text column found"),
    ("no label column", "d.csv", ("text\n" + "".join(f"t{i}\n" for i in range(50))).encode(), 422, "found one column"),
    ("one class", "d.csv", ("text,label\n" + _rows(50, ("a",))).encode(), 422, "only one class"),
    ("a class with 1 example", "d.csv", ("text,label\n" + _rows(50) + "lonely,c\n").encode(), 422, "'c' has 1"),
    ("50,000 classes", "d.csv", ("text,label\n" + "".join(f"t{i},c{i}\n" for i in range(50000))).encode(), 422,
     "50,000 distinct labels"),
    ("non-UTF-8 bytes", "d.csv", ("text,label\n" + _rows(50)).encode() + "caf\xe9,a\n".encode("latin-1"), 422,
     "line 52 is not valid UTF-8"),
    ("UTF-16", "d.csv", ("text,label\n" + _rows(50)).encode("utf-16"), 422, "UTF-16"),
    ("a binary file named .csv", "d.csv", b"\x01\x02\x00\x03" * 500, 422, "NUL bytes"),
    ("a PNG named .csv", "d.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), 422, "PNG image"),
    ("a ZIP named .csv", "d.csv", _zip(), 422, "ZIP archive"),
    ("unbalanced quotes", "d.csv", ('text,label\n"never closed,a\n' + _rows(50)).encode(), 422, "unbalanced quotes"),
    ("NUL bytes in a row", "d.csv", ("text,label\n" + _rows(50)).encode() + b"bad\x00text,a\n", 422, "NUL bytes"),
    ("a 1 MB cell", "d.csv", ("text,label\n" + _rows(50) + "x" * 1_000_000 + ",a\n").encode(), 422,
     "more than 131,072 characters"),
    ("a label with a newline", "d.csv", ("text,label\n" + _rows(50) + 'some text,"a\nb"\n').encode(), 422,
     "'a\\nb' has 1"),
    ("numbers and words mixed as labels", "d.csv", ("text,label\n" + _rows(60, ("1", "2", "spam"))).encode(), 422,
     "labels mix numbers"),
    ("ragged rows", "d.csv", ("text,label\n" + _rows(50) + "a,b,c,d\n").encode(), 422, "row 52 has 4 fields"),
    ("every text empty", "d.csv", ("text,label\n" + "".join(f",{'ab'[i % 2]}\n" for i in range(50))).encode(), 422,
     "have an empty text"),
    ("multi-label rows with no label", "d.csv", ("text,label\n" + _rows(60, ("a;b", "a", ""))).encode(), 422,
     "allow_empty_labels=true"),
    ("a multi-label file too small to split", "d.csv", b"text,label\ncard charged twice,billing;bug\napp crashes,bug\n",
     422, "too few texts per label to hold out"),
    ("multi-label rows all with the one label", "d.csv", ("text,label\n" + _rows(60, ("a;a", "a"))).encode(), 422,
     "every row has the one label 'a'"),
    ("JSONL that is not JSON", "d.jsonl", b'{"text": "a", "label": "x"}\nnot json\n', 422, "line 2 is not valid JSON"),
    ("over the size limit", "d.csv", b"text,label\n" + b"y" * (MAX_UPLOAD + 1000), 413, "FITGATE_MAX_UPLOAD_BYTES"),
    ("an executable", "d.exe", b"MZ\x90\x00", 422, "upload a .csv, .tsv or .jsonl file"),
    # accepted: these are data, not attacks on the service
    ("a UTF-8 BOM", "d.csv", b"\xef\xbb\xbf" + ("text,label\n" + _rows(60)).encode(), 202, ""),
    ("formula-injection cells", "d.csv", ("text,label\n" + _rows(60) + '"=CMD(""calc"")",a\n+SUM(A1),b\n').encode(),
     202, ""),
    ("emoji labels", "d.csv", ("text,label\n" + _rows(60, ("😀", "🔥"))).encode(), 202, ""),
    ("path separators in labels", "d.csv", ("text,label\n" + _rows(60, ("../../etc/passwd", "a/b"))).encode(), 202, ""),
    ("a path in the file name", "../../../../tmp/evil.csv", ("text,label\n" + _rows(60)).encode(), 202, ""),
]  # fmt: skip

# (case, form fields, expected status, words the message must contain) with a valid file
FORMS: list[tuple[str, dict[str, str], int, str]] = [
    ("no model name", {}, 422, "model_name"),
    ("model name ../x", {"model_name": "../x"}, 422, "model name '../x' is invalid"),
    ("model name in uppercase", {"model_name": "Team/Spam"}, 422, "is invalid"),
    ("model name with spaces", {"model_name": "team a/spam"}, 422, "is invalid"),
    ("model name with three parts", {"model_name": "team-a/b/c"}, 422, "is invalid"),
    ("parameters not JSON", {"model_name": "team-a/x", "parameters": "{nope"}, 422, "not valid JSON"),
    ("parameters a list", {"model_name": "team-a/x", "parameters": "[1, 2]"}, 422, "must be a JSON object"),
    ("an unknown parameter", {"model_name": "team-a/x", "parameters": '{"learning_rat": 0.1}'}, 422, "learning_rat"),
    ("a parameter out of range", {"model_name": "team-a/x", "parameters": '{"learning_rate": 5}'}, 422,
     "learning_rate"),
    ("an unsupported label separator", {"model_name": "team-a/x", "parameters": '{"label_separator": "x"}'}, 422,
     "label_separator 'x' is not supported"),
    ("a server path as base_model", {"model_name": "team-a/x", "parameters": '{"base_model": "/etc"}'}, 422,
     "unknown base_model"),
]  # fmt: skip

# (case, request kwargs for POST /predict, expected status, words the message must contain)
PREDICTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("100,000 texts", {"json": {"texts": ["x"] * 100_000}}, 422, "the limit is 256"),
    ("a 10 MB text", {"json": {"texts": ["x" * 10_000_000]}}, 422, "has 10,000,000 characters; the limit is 20,000"),
    ("a 30 MB body", {"content": b'{"texts": ["' + b"x" * 30_000_000 + b'"]}',
                      "headers": {"Content-Type": "application/json"}}, 413, "FITGATE_MAX_TEXTS_PER_REQUEST"),
    ("a 30,000-character text", {"json": {"texts": ["x" * 30_000]}}, 422, "the limit is 20,000"),
    ("an empty list", {"json": {"texts": []}}, 422, "texts"),
    ("a null text", {"json": {"texts": [None]}}, 422, "texts.0"),
    ("null texts", {"json": {"texts": None}}, 422, "texts"),
    ("a number as text", {"json": {"texts": [42]}}, 422, "texts.0"),
    ("texts as a string", {"json": {"texts": "hello"}}, 422, "texts"),
    ("texts as an object", {"json": {"texts": {"a": "b"}}}, 422, "texts"),
    ("no texts field", {"json": {"text": ["hello"]}}, 422, "texts"),
    ("a JSON array body", {"json": ["hello"]}, 422, "body"),
    ("a body that is not JSON", {"content": b"texts=hello", "headers": {"Content-Type": "application/json"}}, 422,
     "JSON"),
    ("an unknown model", {"json": {"texts": ["x"], "model": "nobody/nothing"}}, 404, "no model named nobody/nothing"),
    ("model name ../x", {"json": {"texts": ["x"], "model": "../x"}}, 422, "is invalid"),
    ("model name in uppercase", {"json": {"texts": ["x"], "model": "Team/Spam"}}, 422, "is invalid"),
    ("model name with spaces", {"json": {"texts": ["x"], "model": "a b/c"}}, 422, "is invalid"),
    ("no model deployed yet", {"json": {"texts": ["x"]}}, 503, "no model is deployed yet"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    # training off: accepted uploads stay queued, so the corpus measures the API, not the trainer;
    # the per-team job limit is raised for the same reason (test_routes covers the limit itself)
    srv = make_server(tmp_path_factory.mktemp("bad-inputs"), tiny_model_dir, FITGATE_TRAINING_ENABLED="false",
                      FITGATE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), FITGATE_MAX_JOBS_PER_TEAM="1000")  # fmt: skip
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


def _check(server: Server, r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code < 500 or (status == 503 and r.status_code == 503)  # 503 only for "no model deployed yet"
    assert r.status_code == status, r.text[:500]
    if status >= 400:
        error = r.json()["error"]
        assert words in error["message"], error
        assert "Traceback" not in r.text
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200


@pytest.mark.parametrize(("case", "filename", "content", "status", "words"), UPLOADS, ids=[u[0] for u in UPLOADS])
def test_bad_uploads(server: Server, case: str, filename: str, content: bytes, status: int, words: str) -> None:
    before = set((server.data_dir / "uploads").glob("*")) if (server.data_dir / "uploads").exists() else set()
    r = httpx.post(f"{server.url}/finetune", headers=bearer("team-a"), files={"file": (filename, content)},
                   data={"model_name": "team-a/corpus"}, timeout=120)  # fmt: skip
    _check(server, r, status, words)
    after = set((server.data_dir / "uploads").glob("*"))
    if status == 202:
        (new,) = after - before  # exactly one upload folder, inside the data directory, under the job's id
        assert new.name == r.json()["job_id"] and [p.name for p in new.iterdir()] == ["data" + Path(filename).suffix]
    else:
        assert after == before  # a refused upload leaves nothing behind


@pytest.mark.parametrize(("case", "form", "status", "words"), FORMS, ids=[f[0] for f in FORMS])
def test_bad_upload_forms(server: Server, case: str, form: dict[str, str], status: int, words: str) -> None:
    good = ("text,label\n" + _rows(60)).encode()
    r = httpx.post(f"{server.url}/finetune", headers=bearer("team-a"), files={"file": ("d.csv", good)}, data=form)
    _check(server, r, status, words)


def test_multi_label_cells_joined_by_another_separator_than_named_say_which_to_set(server: Server) -> None:
    piped = ("text,label\n" + _rows(60, ("a|b", "a", "b"))).encode()
    r = httpx.post(f"{server.url}/finetune", headers=bearer("team-a"), files={"file": ("d.csv", piped)},
                   data={"model_name": "team-a/x", "parameters": '{"task": "multi_label"}'})  # fmt: skip
    _check(server, r, 422, "set label_separator to '|'")


def test_json_instead_of_multipart(server: Server) -> None:
    r = httpx.post(f"{server.url}/finetune", headers=bearer("team-a"), json={"file": "text,label\na,b\n"})
    _check(server, r, 422, "file")


@pytest.mark.parametrize(("case", "request_kwargs", "status", "words"), PREDICTS, ids=[p[0] for p in PREDICTS])
def test_bad_predict_requests(
    server: Server, case: str, request_kwargs: dict[str, Any], status: int, words: str
) -> None:
    r = httpx.post(f"{server.url}/predict", timeout=120, **request_kwargs)
    _check(server, r, status, words)


def test_the_corpus_has_at_least_forty_cases() -> None:
    assert len(UPLOADS) + len(FORMS) + 1 + len(PREDICTS) >= 40
