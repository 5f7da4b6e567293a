"""ONNX export, validated on the real validation set, and the bundle written from a run.

Parity is checked on the data the model will meet, not dummy inputs: decision agreement (every
label alike, for a multi-label model) and
the largest probability difference against PyTorch on every validation text, plus a sweep
of extreme shapes. A failed check raises ExportError, which blocks like a failed gate.

The graph is exported from the eager attention path and then fused into ONNX Runtime's BERT
kernels (Attention, SkipLayerNormalization, BiasGelu): the SDPA export hides the attention
pattern from the fusions, and fewer, larger operators cost less per call (docs/BENCHMARKS.md,
section 5). The parity check runs on the fused graph, so a fusion that changed the outputs
blocks the export.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model
from transformers import AutoModelForSequenceClassification, PreTrainedModel

import fitgate
from fitgate.errors import ExportError, is_disk_full
from fitgate.settings import Settings
from models.bundle import SPEC, BundleSpec, ReferenceStatistics, sha256_file, write_manifest
from models.runtime import Encoded, encode, load_tokenizer, run_logits, session_options, text_logits, unknown_id
from training.diagnosis import Diagnosis
from training.evaluation import decided_macro_f1, label_micro_f1
from training.padding import pad_batch
from training.rundir import REPORT_FILES, RunDirectory

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]  # token_type_ids: single-text models use the all-zero default
QUANTILE_LEVELS = [round(q, 2) for q in np.linspace(0.0, 1.0, 21)]
REFERENCE_SAMPLE = 2000  # validation examples kept per scalar; drift detectors resample them
REFERENCE_PROBABILITY_CELLS = 200_000  # caps the probability sample for large label sets
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
FUSABLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert")  # what ONNX Runtime's "bert" fusions know


def export_onnx(model: PreTrainedModel, path: Path) -> None:
    """Trace to ONNX with dynamic batch and sequence axes and an explicit attention mask."""
    model.train(False)
    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about Python-level shape checks in transformers
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=INPUT_NAMES,
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT-family models
        )


def fuse_graph(model: PreTrainedModel, path: Path) -> dict[str, Any]:
    """Rewrite the graph at ``path`` with ONNX Runtime's fused BERT operators; the record says what fused.

    Fusion is an optimization: if it fails, the unfused graph ships and the record says why.
    The fused graph uses ONNX Runtime's contrib operators, so it needs ONNX Runtime to run.
    """
    config = model.config
    if config.model_type not in FUSABLE_MODEL_TYPES:
        return {"fused": False, "reason": f"ONNX Runtime has no fusions for model type {config.model_type!r}"}
    try:
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=0,  # Python fusions only: no hardware-specific ONNX Runtime rewrites baked into the file
        )
        optimized.save_model_to_file(str(path))
    except Exception as exc:
        if is_disk_full(exc):  # not a property of the fusion: nothing else can be written either
            raise
        return {"fused": False, "reason": f"graph fusion failed ({type(exc).__name__}: {exc}); the unfused graph ships"}
    return {"fused": True, "operators": {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}}


@torch.no_grad()
def torch_logits(model: PreTrainedModel, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
    """PyTorch's logits in input order: the reference the ONNX graph is checked against."""
    pad_id = int(model.config.pad_token_id or 0)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), int(model.config.num_labels or 0)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        logits = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits
        out[chunk] = logits.numpy()
    return out


def _shape_sweep_inputs(vocab_size: int, max_length: int, seed: int, start: int, end: int) -> list[list[list[int]]]:
    """Batch 1 and 256 at sequence 1 and the maximum, plus a padded batch of mixed lengths.

    Texts open and close with the tokenizer's own start and end ids (BERT's 101/102, XLM-R's 0/2) and hold
    random ids from the upper half of the vocabulary or above 1000, clear of the special tokens."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)

    def text(n: int) -> list[int]:
        return [start, *rng.integers(low, vocab_size, size=max(0, n - 2)).tolist(), end][:n] if n > 1 else [start]

    return [
        [text(1)],
        [text(max_length)],
        [text(1) for _ in range(256)],
        [text(max_length) for _ in range(256)],
        [text(int(n)) for n in rng.integers(1, max_length + 1, size=256)],
    ]


def check_parity(
    model: PreTrainedModel, session: ort.InferenceSession, ids: list[list[int]], run: RunDirectory, s: Settings
) -> dict[str, Any]:
    rule = run.decision_rule
    pad_id = int(model.config.pad_token_id or 0)
    ref, got = torch_logits(model, ids), run_logits(session, ids, pad_id)
    agreement = rule.agreement(ref, got)  # multi-label: every label's decision alike on the row
    max_diff = float(np.abs(rule.probabilities(ref) - rule.probabilities(got)).max())
    sweep = []
    max_length = run.arguments.max_length
    start, end = ids[0][0], ids[0][-1]  # the tokenizer's own: every encoded validation text opens and ends so
    for batch in _shape_sweep_inputs(int(model.config.vocab_size), max_length, run.arguments.seed, start, end):
        expected, actual = torch_logits(model, batch, 256), run_logits(session, batch, pad_id, 256)
        diff = float(np.abs(rule.probabilities(expected) - rule.probabilities(actual)).max())
        widths = {len(x) for x in batch}
        sweep.append({"batch": len(batch), "sequence": max(widths), "padded": len(widths) > 1, "max_abs_diff": diff})
    result = {
        "validation_examples": len(ids),
        "argmax_agreement": agreement,
        "max_abs_probability_diff": max_diff,
        "shape_sweep": sweep,
        "min_agreement": s.parity_min_agreement,
        "max_abs_diff_allowed": s.parity_max_abs_diff,
    }
    worst = max([max_diff, *(x["max_abs_diff"] for x in sweep)])
    if agreement < s.parity_min_agreement or worst > s.parity_max_abs_diff:
        raise ExportError(
            f"ONNX output does not match PyTorch: argmax agreement {agreement:.4%} on {len(ids)} validation texts "
            f"(need {s.parity_min_agreement:.1%}), largest probability difference {worst:.2e} "
            f"(allowed {s.parity_max_abs_diff:.0e}); the model was not exported"
        )
    return result


def try_int8(
    fp32_path: Path,
    int8_path: Path,
    encoded: Encoded,
    pad_id: int,
    fp32_logits: np.ndarray,
    run: RunDirectory,
    s: Settings,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Dynamic int8 quantization, kept only if validation quality holds; the reason is recorded either way.

    Returns the record and, when int8 is kept, its validation logits (the int8 drift reference).
    """
    if not s.quantize:
        return {"kept": False, "reason": "quantization is switched off (FITGATE_QUANTIZE=false)"}, None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint through the root logger
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            # shape inference cannot type the outputs of fused contrib operators; they are all float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as exc:  # int8 is optional: its failure ships fp32 with the reason
        int8_path.unlink(missing_ok=True)
        if is_disk_full(exc):  # not a property of int8: the rest of the bundle cannot be written either
            raise
        return {"kept": False, "reason": f"int8 quantization failed ({type(exc).__name__}); fp32 ships"}, None
    finally:
        root.setLevel(level)
    session = ort.InferenceSession(str(int8_path), session_options(), providers=["CPUExecutionProvider"])
    int8_logits = text_logits(session, encoded, pad_id, run.windowing)
    rule, k = run.decision_rule, len(run.label_names)
    labels = run.validation_labels
    f1_fp32 = decided_macro_f1(labels, rule.decide(fp32_logits), k)
    f1_int8 = decided_macro_f1(labels, rule.decide(int8_logits), k)
    agreement = rule.agreement(fp32_logits, int8_logits)
    micro: dict[str, float] = {}
    if rule.multi_label:  # the guard holds micro-F1 too: frequent labels dominate it, rare ones macro-F1
        micro = {
            "val_micro_f1_fp32": label_micro_f1(labels, rule.decide(fp32_logits)),
            "val_micro_f1_int8": label_micro_f1(labels, rule.decide(int8_logits)),
        }
    result: dict[str, Any] = {
        "val_macro_f1_fp32": f1_fp32,
        "val_macro_f1_int8": f1_int8,
        **micro,
        "agreement_with_fp32": agreement,
        "max_f1_drop": s.quantize_max_f1_drop,
        "min_agreement": s.quantize_min_agreement,
        "size_bytes_fp32": fp32_path.stat().st_size,
        "size_bytes_int8": int8_path.stat().st_size,
    }
    problems = []
    if f1_fp32 - f1_int8 > s.quantize_max_f1_drop:
        problems.append(f"macro-F1 fell {f1_fp32 - f1_int8:.4f} (allowed {s.quantize_max_f1_drop})")
    if micro and micro["val_micro_f1_fp32"] - micro["val_micro_f1_int8"] > s.quantize_max_f1_drop:
        drop = micro["val_micro_f1_fp32"] - micro["val_micro_f1_int8"]
        problems.append(f"micro-F1 fell {drop:.4f} (allowed {s.quantize_max_f1_drop})")
    if agreement < s.quantize_min_agreement:
        problems.append(f"agreement with fp32 is {agreement:.2%} (need {s.quantize_min_agreement:.0%})")
    if problems:
        int8_path.unlink()
        return {**result, "kept": False, "reason": "int8 dropped: " + "; ".join(problems)}, None
    return {**result, "kept": True, "reason": "int8 kept: quality within limits"}, int8_logits


def reference_statistics(
    logits: np.ndarray, lengths: list[int], unknown_rate: list[float], truncated: list[bool], run: RunDirectory
) -> ReferenceStatistics:
    rule = run.decision_rule
    probs = rule.probabilities(logits)
    confidence = rule.confidence(logits)
    rng = np.random.default_rng(run.arguments.seed)
    sample = rng.permutation(len(confidence))[:REFERENCE_SAMPLE]
    probability_rows = sample[: max(2, REFERENCE_PROBABILITY_CELLS // probs.shape[1])]
    return ReferenceStatistics(
        class_distribution=rule.answered_rate(logits).tolist(),
        confidence_quantiles=np.quantile(confidence, QUANTILE_LEVELS).tolist(),
        input_length_quantiles=np.quantile(lengths, QUANTILE_LEVELS).tolist(),
        unknown_token_rate_quantiles=np.quantile(unknown_rate, QUANTILE_LEVELS).tolist(),
        quantile_levels=QUANTILE_LEVELS,
        truncated_share=float(np.mean(truncated)),
        low_confidence_threshold=float(np.quantile(confidence, 0.05)),
        confidence_sample=confidence[sample].tolist(),  # full precision: near 1, rounding would invent ties
        input_length_sample=[int(lengths[i]) for i in sample],
        unknown_token_rate_sample=[round(float(unknown_rate[i]), 6) for i in sample],
        probability_sample=np.round(probs[probability_rows], 6).tolist(),
        examples=len(confidence),
    )


def _code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(run: RunDirectory) -> dict[str, Any]:
    return {
        "base_model": (run.report.get("data_report") or {}).get("base_model", {}).get("name")
        or run.report.get("base_model"),
        "base_model_path": run.report.get("base_model"),
        "data_sha256": run.report.get("data_sha256"),
        "arguments": run.arguments.model_dump(),
        "run_directory": str(run.path),
        "code_revision": _code_revision(),
        "libraries": {
            name: version(name) for name in ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "bentoml")
        }
        | {"fitgate": fitgate.__version__, "python": platform.python_version()},
    }


def build_bundle(run: RunDirectory, diagnosis: Diagnosis, dest: Path, settings: Settings) -> BundleSpec:
    """Export, check parity, optionally quantize, and write a complete bundle into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        # eager attention exports the plain attention pattern that the fusion recognises
        model = AutoModelForSequenceClassification.from_pretrained(run.model_dir, attn_implementation="eager").eval()
        fp32_path = dest / "model.onnx"
        export_onnx(model, fp32_path)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ExportError(f"ONNX export failed: {exc}") from exc

    fusion = fuse_graph(model, fp32_path)
    (dest / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        if (run.model_dir / name).exists():
            shutil.copy2(run.model_dir / name, dest / "tokenizer" / name)
    max_length = run.arguments.max_length
    windowing = run.windowing  # the served model reads long texts as training did
    tokenizer = load_tokenizer(dest / "tokenizer", windowing)
    encoded = encode(tokenizer, run.validation.texts, unknown_id(tokenizer), windowing)

    pad_id = int(model.config.pad_token_id or 0)
    session = ort.InferenceSession(str(fp32_path), session_options(), providers=["CPUExecutionProvider"])
    parity = check_parity(model, session, encoded.ids, run, settings)  # window by window
    fp32_logits = text_logits(session, encoded, pad_id, windowing)
    quantization, int8_logits = try_int8(
        fp32_path, dest / "model.int8.onnx", encoded, pad_id, fp32_logits, run, settings
    )
    lengths = encoded.tokens
    (dest / "report").mkdir()
    for name in REPORT_FILES:
        if (run.path / name).exists():
            shutil.copy2(run.path / name, dest / "report" / name)
    final = run.report.get("test") or run.report["validation"]
    spec = BundleSpec(
        labels=run.label_names,
        max_length=max_length,
        long_texts=windowing.mode,
        long_text_stride=windowing.stride,
        long_text_max_windows=windowing.max_windows,
        task="multi_label" if run.multi_label else "single_label",
        temperature=run.temperature,
        class_bias=run.class_bias.tolist(),
        label_temperatures=run.decision_rule.label_temperatures,
        thresholds=run.decision_rule.thresholds,
        onnx_fp32=fp32_path.name,
        onnx_int8="model.int8.onnx" if quantization["kept"] else None,
        pad_id=pad_id,
        reference=reference_statistics(fp32_logits, lengths, encoded.unknown_rate, encoded.truncated, run),
        reference_int8=(
            reference_statistics(int8_logits, lengths, encoded.unknown_rate, encoded.truncated, run)
            if int8_logits is not None
            else None
        ),
        parity=parity,
        fusion=fusion,
        quantization=quantization,
        metrics={
            "validation_macro_f1": run.report["validation"]["macro_f1"],
            "macro_f1": final["macro_f1"],
            "micro_f1": final.get("micro_f1"),
            "accuracy": final["accuracy"],
            "ece": final["ece_after_calibration"],
            "evaluated_on": "test" if run.report.get("test") else "validation",
        },
        diagnosis=diagnosis.to_dict(),
        provenance=provenance(run),
    )
    (dest / SPEC).write_text(spec.model_dump_json(indent=2))
    write_manifest(dest)
    log.info("bundle written to %s (onnx sha256 %s)", dest, sha256_file(fp32_path)[:12])
    return spec
