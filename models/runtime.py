"""The serving runtime: a verified bundle on ONNX Runtime, ``load()``, ``predict()``, ``ready``.

Probabilities are ``softmax(logits / temperature)`` (calibrated); the label is
``argmax(logits / temperature + class_bias)`` (the decision rule tuned on validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from models.bundle import BundleSpec, load_spec, verify_manifest

DEFAULT_BATCH = 64
PADDING_SLACK = 0.5  # a batch's padded cells stay within 1.5x its real tokens (see length_batches)


@dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]
    truncated: list[bool]
    unknown_rate: list[float]


@dataclass(frozen=True)
class Classified:
    """One batch's outputs as arrays: what the predict response and the monitors are built from."""

    probabilities: np.ndarray  # (n, K), calibrated
    chosen: np.ndarray  # (n,) class index under the decision rule
    input_tokens: list[int]
    unknown_rate: list[float]
    truncated: list[bool]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities[np.arange(len(self.chosen)), self.chosen]


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


def providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_tokenizer(tokenizer_dir: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.no_padding()  # batches are padded to their own longest text, not to a fixed width
    tokenizer.enable_truncation(max_length)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str], unk_id: int | None) -> Encoded:
    encodings = tokenizer.encode_batch(texts)
    return Encoded(
        ids=[e.ids for e in encodings],
        truncated=[bool(e.overflowing) for e in encodings],
        unknown_rate=[
            (sum(i == unk_id for i in e.ids) / max(1, len(e.ids) - 2)) if unk_id is not None else 0.0 for e in encodings
        ],
    )


def length_batches(lengths: list[int], batch_size: int, slack: float = PADDING_SLACK) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most ``batch_size`` each, and a batch ends
    before padding would make its cells exceed ``1 + slack`` times its real tokens.

    Why: a served micro-batch mixes short and long texts; padded to the longest, the short ones
    cost as much as it does, and with ONNX Runtime's fused kernels that waste outweighs what one
    call saves over several.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = max(1, lengths[i])  # sorted: n is the new width of the batch
        if batch and (len(batch) >= batch_size or n * (len(batch) + 1) > (1 + slack) * (tokens + n)):
            batches.append(batch)
            batch, tokens = [], 0
        batch.append(i)
        tokens += n
    return [*batches, batch] if batch else batches


def run_logits(session: ort.InferenceSession, ids: list[list[int]], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Logits in input order, computed in batches of similar length (``length_batches``)."""
    names = {i.name for i in session.get_inputs()}
    out: np.ndarray | None = None
    for chunk in length_batches([len(x) for x in ids], batch_size):
        width = max(len(ids[i]) for i in chunk)
        input_ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        logits = session.run(["logits"], feed)[0]
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[chunk] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class OnnxClassifier:
    """One bundle loaded for serving. Construct, ``load()``, then ``predict()`` from any thread."""

    def __init__(self, bundle_dir: Path, *, precision: str = "auto", threads: int | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.precision = precision
        self.threads = threads
        self.spec: BundleSpec | None = None
        self._session: ort.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._unk_id: int | None = None

    @property
    def ready(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        """Verify checksums, then build the session; int8 on CPU when the bundle kept it."""
        verify_manifest(self.bundle_dir)
        spec = load_spec(self.bundle_dir)
        chosen = providers()
        use_int8 = spec.onnx_int8 is not None and (
            self.precision == "int8" or (self.precision == "auto" and chosen[0] == "CPUExecutionProvider")
        )
        graph = spec.onnx_int8 if use_int8 and spec.onnx_int8 else spec.onnx_fp32
        self._tokenizer = load_tokenizer(self.bundle_dir / "tokenizer", spec.max_length)
        self._unk_id = self._tokenizer.token_to_id("[UNK]")
        self._session = ort.InferenceSession(
            str(self.bundle_dir / graph), sess_options=session_options(self.threads), providers=chosen
        )
        self.spec = spec
        self.served_graph = graph

    def encode(self, texts: list[str]) -> Encoded:
        assert self._tokenizer is not None, "call load() first"
        return encode(self._tokenizer, texts, self._unk_id)

    def logits(self, ids: list[list[int]]) -> np.ndarray:
        assert self._session is not None, "call load() first"
        return run_logits(self._session, ids)

    def classify(self, texts: list[str]) -> Classified:
        assert self.spec is not None, "call load() first"
        encoded = self.encode(texts)
        scaled = self.logits(encoded.ids) / self.spec.temperature
        probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        chosen = np.argmax(scaled + np.array(self.spec.class_bias), axis=1)
        return Classified(probs, chosen, [len(i) for i in encoded.ids], encoded.unknown_rate, encoded.truncated)

    def predictions(self, classified: Classified) -> list[Prediction]:
        assert self.spec is not None, "call load() first"
        labels = self.spec.labels
        return [
            Prediction(
                label=labels[c],
                confidence=float(p[c]),
                probabilities={name: float(v) for name, v in zip(labels, p, strict=True)},
                truncated=t,
            )
            for c, p, t in zip(classified.chosen, classified.probabilities, classified.truncated, strict=True)
        ]

    def predict(self, texts: list[str]) -> list[Prediction]:
        return self.predictions(self.classify(texts))
