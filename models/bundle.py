"""The model bundle: everything the server needs to answer, and nothing it does not.

bundle.json          labels, inference settings, reference statistics, provenance
model.onnx           fp32 graph (always)
model.int8.onnx      int8 graph (only when it kept quality)
tokenizer/           tokenizer.json and friends
report/              report.json, diagnosis.json, curves.json, PNG plots
manifest.json        sha256 of every other file; the loader refuses a mismatch
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fitgate.errors import BundleCorrupt
from training.decision import DecisionRule
from training.windows import Windowing

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
SPEC = "bundle.json"


class ReferenceStatistics(BaseModel):
    """Validation-set statistics the drift monitors compare live traffic with (service/drift.py)."""

    class_distribution: list[float]  # share of validation predictions per class (multi-label: positive rate per label)
    confidence_quantiles: list[float]  # at quantile_levels
    input_length_quantiles: list[float]  # tokens, special tokens included
    unknown_token_rate_quantiles: list[float]
    quantile_levels: list[float]
    truncated_share: float
    low_confidence_threshold: float  # the 5th percentile of validation confidence
    confidence_sample: list[float]  # per validation example (a random subset of at most 2,000)
    input_length_sample: list[int]
    unknown_token_rate_sample: list[float]
    probability_sample: list[list[float]]  # predicted probability vectors (at most 2,000 rows, 200,000 numbers)
    examples: int


class BundleSpec(BaseModel):
    # extra="ignore": bundles written before a field was dropped (``input_names``) still load
    model_config = ConfigDict(extra="ignore")

    format: int = BUNDLE_FORMAT  # load_spec refuses a newer format than this server understands
    labels: list[str]
    max_length: int
    pad_id: int = 0  # the tokenizer's padding id (absent in older bundles, all of them BERT vocabularies: 0)
    task: Literal["single_label", "multi_label"] = "single_label"  # absent in older bundles: all single-label
    temperature: float
    class_bias: list[float]
    label_temperatures: list[float] = []  # multi-label: the calibration per label
    thresholds: list[float] = []  # multi-label: a label is answered when its probability reaches its threshold
    long_texts: Literal["truncate", "head_tail", "chunks"] = "truncate"  # absent in older bundles: truncated
    long_text_stride: int = 0
    long_text_max_windows: int = 1
    onnx_fp32: str
    onnx_int8: str | None
    reference: ReferenceStatistics  # outputs of the fp32 graph
    reference_int8: ReferenceStatistics | None = None  # outputs of the int8 graph, when it ships
    parity: dict[str, Any]
    fusion: dict[str, Any] = {}  # which ONNX Runtime fused operators the fp32 graph uses (absent in older bundles)
    quantization: dict[str, Any]
    metrics: dict[str, Any]
    diagnosis: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def windowing(self) -> Windowing:
        """How the model reads texts longer than its window, as it was trained to."""
        return Windowing(
            self.long_texts, self.max_length, self.long_text_stride, self.long_text_max_windows, self.multi_label
        )

    def decision_rule(self) -> DecisionRule:
        """The calibration and decision rule the model was exported with."""
        if self.multi_label:
            return DecisionRule(
                multi_label=True, label_temperatures=self.label_temperatures, thresholds=self.thresholds
            )
        return DecisionRule(temperature=self.temperature, class_bias=self.class_bias)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(bundle_dir: Path) -> dict[str, str]:
    """Checksum every file of the bundle (written last: its presence means the rest is complete)."""
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(bundle_dir)): sha256_file(p) for p in files}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(bundle_dir: Path) -> None:
    """Raise BundleCorrupt unless every listed file exists with its checksum and nothing is unlisted."""
    try:
        manifest: dict[str, str] = json.loads((bundle_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleCorrupt(f"bundle {bundle_dir} has no readable {MANIFEST}: it was not completely written") from exc
    present = {str(p.relative_to(bundle_dir)) for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST}
    present.discard("model.yaml")  # BentoML's own metadata file beside the bundle
    if missing := sorted(set(manifest) - present):
        raise BundleCorrupt(f"bundle {bundle_dir} is missing {missing}")
    if extra := sorted(present - set(manifest)):
        raise BundleCorrupt(f"bundle {bundle_dir} has files not in its manifest: {extra}")
    for name, expected in manifest.items():
        if sha256_file(bundle_dir / name) != expected:
            raise BundleCorrupt(f"bundle file {name} in {bundle_dir} does not match its sha256 checksum")


def load_spec(bundle_dir: Path) -> BundleSpec:
    """The bundle's spec; a bundle of a newer format than this server knows is refused, not misread."""
    try:
        spec = BundleSpec.model_validate_json((bundle_dir / SPEC).read_text())
    except (OSError, ValidationError) as exc:
        raise BundleCorrupt(f"bundle {bundle_dir} has no readable {SPEC}: {exc}") from exc
    if spec.format > BUNDLE_FORMAT:
        raise BundleCorrupt(
            f"bundle {bundle_dir} has format {spec.format}, newer than this server's {BUNDLE_FORMAT}: "
            "upgrade the server before promoting it"
        )
    return spec
