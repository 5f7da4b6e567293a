"""The serving runtime: a verified bundle on ONNX Runtime, ``load()``, ``predict()``, ``ready``.

Probabilities and answers come from the bundle's ``DecisionRule`` (``training/decision.py``):
single-label, ``softmax(logits / temperature)`` and ``argmax(logits / temperature + class_bias)``;
multi-label, a sigmoid per label and every label at or above its threshold. This module is the
whole predict path below HTTP: it imports ONNX Runtime, the ``tokenizers`` library and numpy,
never torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from fitgate.devices import usable_cpus
from fitgate.errors import BundleCorrupt, InferenceError, InvalidRequest
from models.bundle import BundleSpec, load_spec, verify_manifest
from training.padding import pad_batch
from training.windows import Windowing, frame, pool, windows

DEFAULT_BATCH = 64
PADDING_SLACK = 0.5  # a batch's padded cells stay within 1.5x its real tokens (see length_batches)


@dataclass(frozen=True)
class Encoded:
    """Texts as the model reads them: ``ids`` per window (one per text unless long texts are read in chunks,
    ``owners`` then naming each window's text), the rest per text."""

    ids: list[list[int]]
    truncated: list[bool]  # not read in one window: cut, or read in several
    unknown_rate: list[float]
    tokens: list[int]  # special tokens included (truncate: after the cut, as the model reads it)
    owners: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """A single-label model's answer to one text."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


@dataclass(frozen=True)
class LabelsPrediction:
    """A multi-label model's answer to one text: every label at or above its threshold (maybe none), and
    every label's calibrated probability; ``confidence`` is the least sure of its label decisions."""

    labels: list[str]
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


Answer = Prediction | LabelsPrediction  # what a model answers one text with, by its task


@dataclass(frozen=True)
class Predictions:
    """One ``predict()`` call's outputs as arrays: the response and the monitors are both built from it."""

    labels: list[str]  # the model's class names, in logit order
    probabilities: np.ndarray  # (n, K), calibrated
    decided: np.ndarray  # (n,) class index, or for a multi-label model (n, K) booleans, under the decision rule
    confidence: np.ndarray  # (n,) how sure each answer is (DecisionRule.confidence)
    input_tokens: list[int]
    unknown_rate: list[float]
    truncated: list[bool]

    @property
    def multi_label(self) -> bool:
        return self.decided.ndim == 2

    def answers(self) -> list[Answer]:
        """One answer per text, in input order."""
        answers: list[Answer] = []
        for i, (p, t) in enumerate(zip(self.probabilities, self.truncated, strict=True)):
            probabilities = {name: float(v) for name, v in zip(self.labels, p, strict=True)}
            if self.multi_label:
                chosen = [self.labels[j] for j in np.flatnonzero(self.decided[i])]
                answers.append(LabelsPrediction(chosen, float(self.confidence[i]), probabilities, t))
            else:
                answers.append(Prediction(self.labels[self.decided[i]], float(self.confidence[i]), probabilities, t))
        return answers


def session_options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
    """``threads``: ONNX Runtime's intra-op threads (0: one per usable CPU, ``usable_cpus``: ONNX Runtime's own
    default counts the machine's cores, ignoring the process's affinity and its container's CPU limit, and its
    threads then spin against each other on the CPUs there are). ``spinning=False`` for a server:
    idle intra-op threads otherwise spin for the next call, burning the cores that its HTTP loop and its
    other inference threads need (docs/BENCHMARKS.md §4)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_tokenizer(tokenizer_dir: Path, windowing: Windowing) -> Tokenizer:
    """The bundle's tokenizer; it truncates itself (in Rust) unless long texts are windowed here."""
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.no_padding()  # batches are padded to their own longest text, not to a fixed width
    if windowing.mode == "truncate":
        tokenizer.enable_truncation(windowing.max_length)
    else:
        tokenizer.no_truncation()
    return tokenizer


def unknown_id(tokenizer: Tokenizer) -> int | None:
    """The id of the unknown piece: BERT's ``[UNK]``, XLM-R's ``<unk>``. WordPiece and BPE models name their
    unknown token, Unigram models number it; a model without one has None (every text counts as known)."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("unk_id") is not None:
        return int(model["unk_id"])
    token = model.get("unk_token")
    return tokenizer.token_to_id(token) if token else None


def encode(tokenizer: Tokenizer, texts: list[str], unk_id: int | None, windowing: Windowing) -> Encoded:
    """Tokenize ``texts`` and cut them into the windows the model reads (``training/windows.py``)."""
    if windowing.mode == "truncate":
        encodings = tokenizer.encode_batch(texts)
        return Encoded(
            ids=[e.ids for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
            unknown_rate=[
                (sum(i == unk_id for i in e.ids) / max(1, len(e.ids) - 2)) if unk_id is not None else 0.0
                for e in encodings
            ],
            tokens=[len(e.ids) for e in encodings],
        )
    bodies = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    cut = windows(bodies, *special_frame(tokenizer), windowing)
    return Encoded(
        ids=cut.ids,
        truncated=cut.cut,
        unknown_rate=[
            (sum(i == unk_id for i in body) / max(1, len(body))) if unk_id is not None else 0.0 for body in bodies
        ],
        tokens=cut.tokens,
        owners=cut.owners,
    )


def special_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts around one text."""
    return frame(tokenizer.encode("a").ids, tokenizer.encode("a", add_special_tokens=False).ids)


def text_logits(
    session: ort.InferenceSession, encoded: Encoded, pad_id: int, windowing: Windowing, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """One row of logits per text: its windows' logits, pooled."""
    logits = run_logits(session, encoded.ids, pad_id, batch_size)
    if encoded.owners is None:
        return logits
    return pool(logits, encoded.owners, len(encoded.truncated), windowing.pooling)


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


def run_logits(
    session: ort.InferenceSession, ids: list[list[int]], pad_id: int, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Logits in input order, computed in batches of similar length (``length_batches``)."""
    names = {i.name for i in session.get_inputs()}
    out: np.ndarray | None = None
    for chunk in length_batches([len(x) for x in ids], batch_size):
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        logits = session.run(["logits"], feed)[0]
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[chunk] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class OnnxClassifier:
    """One bundle loaded for serving. Construct, ``load()``, then ``predict()`` from any thread (several at once).

    ``threads``/``spinning``: ``session_options``; a server runs several calls at once on few threads each.
    """

    def __init__(self, bundle_dir: Path, *, precision: str = "auto", threads: int = 0, spinning: bool = True) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.precision = precision
        self.threads, self.spinning = threads, spinning
        self._spec: BundleSpec | None = None
        self._session: ort.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._unk_id: int | None = None
        self.served_graph = ""

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def spec(self) -> BundleSpec:
        if self._spec is None:
            raise InferenceError(f"bundle {self.bundle_dir} is not loaded: call load() first")
        return self._spec

    def load(self) -> None:
        """Verify checksums, then build the session; int8 on CPU when the bundle kept it.

        A bundle whose files pass their checksums but that the tokenizer or ONNX Runtime cannot
        read (a file written by an incompatible version) is refused as corrupt, with the cause.
        """
        verify_manifest(self.bundle_dir)
        spec = load_spec(self.bundle_dir)
        chosen = providers()
        use_int8 = spec.onnx_int8 is not None and (
            self.precision == "int8" or (self.precision == "auto" and chosen[0] == "CPUExecutionProvider")
        )
        graph = spec.onnx_int8 if use_int8 and spec.onnx_int8 else spec.onnx_fp32
        try:
            tokenizer = load_tokenizer(self.bundle_dir / "tokenizer", spec.windowing())
        except Exception as exc:  # tokenizers raises plain Exception subclasses with its own messages
            raise BundleCorrupt(f"bundle {self.bundle_dir}: its tokenizer cannot be loaded ({exc})") from exc
        try:
            session = ort.InferenceSession(
                str(self.bundle_dir / graph),
                sess_options=session_options(self.threads, self.spinning),
                providers=chosen,
            )
        except Exception as exc:  # onnxruntime's errors share no public base class
            raise BundleCorrupt(f"bundle {self.bundle_dir}: ONNX Runtime cannot load {graph} ({exc})") from exc
        self._tokenizer, self._unk_id = tokenizer, unknown_id(tokenizer)
        self._spec, self.served_graph = spec, graph
        self._session = session

    def predict(self, texts: list[str]) -> Predictions:
        """Tokenize, run the graph, calibrate and decide: texts the tokenizer cannot read raise InvalidRequest,
        an ONNX Runtime failure InferenceError."""
        if self._session is None or self._tokenizer is None:
            raise InferenceError(f"bundle {self.bundle_dir} is not loaded: call load() first")
        spec = self.spec
        try:
            encoded = encode(self._tokenizer, texts, self._unk_id, spec.windowing())
        except Exception as exc:  # the texts, not the bundle: a loaded tokenizer reads any well-formed text
            raise InvalidRequest(
                f"the model's tokenizer cannot read these texts ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            logits = text_logits(self._session, encoded, spec.pad_id, spec.windowing())
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on {self.bundle_dir / self.served_graph}: {exc}") from exc
        rule = spec.decision_rule()
        return Predictions(
            labels=spec.labels,
            probabilities=rule.probabilities(logits),
            decided=rule.decide(logits),
            confidence=rule.confidence(logits),
            input_tokens=encoded.tokens,
            unknown_rate=encoded.unknown_rate,
            truncated=encoded.truncated,
        )
