"""Drift detectors on a real SMS spam model: false-alarm run length, detection delays, overhead.

Fine-tunes the bundled MiniLM on part of sms_spam (cached under bench/.cache), exports it
through the gate, and classifies the held-out SMS messages and banking77 queries with the
served ONNX graph. Streams of those real outputs then drive the service's detectors with
their default calibration (service/drift.py, settings' defaults):

- false alarms: streams drawn from the validation reference itself, and from held-out
  SMS messages the reference never saw; mean requests between alarms, with a 95% lower bound;
- delays (requests after the shift until the first alarm), for: (a) the spam share
  tripling; (b) a 50% -> 70% spam mix, for a model whose reference mix is 50%; (c) banking77
  queries sent to the SMS model; (d) mean confidence half a standard deviation lower, two ways:
  every output flattened (probabilities re-tempered: p^(1/t), renormalized) and, harder, the
  same messages reweighted towards the low-confidence tail (exponential tilting);
- overhead: the whole monitoring path per text vs one single-text predict call.

    python bench/drift_detection.py --quick     # ~10 minutes on 2 cores
    python bench/drift_detection.py             # the figures in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import chi2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATASETS, ROOT, sms_model
from fitgate.settings import Settings
from models.runtime import OnnxClassifier
from service.drift import DETECTORS, DriftDetectors, Reference, calibrate
from service.monitoring import ModelMonitor, reference_arrays
from training.data import LabelledData, read_labelled_file

TARGETS = {"binary_mix": 250, "other_dataset": 200, "confidence_drop": 150, "confidence_drop_tail": 150}
ARL_TARGET = 10_000


@dataclass
class Outputs:
    """Per-text model outputs, aligned: what the detectors see."""

    chosen: np.ndarray
    probabilities: np.ndarray
    confidence: np.ndarray
    length: np.ndarray
    unknown: np.ndarray
    truth: list[str]

    def take(self, rows: np.ndarray) -> Outputs:
        return Outputs(
            self.chosen[rows], self.probabilities[rows], self.confidence[rows], self.length[rows],
            self.unknown[rows], [self.truth[i] for i in rows],
        )  # fmt: skip


def classify(classifier: OnnxClassifier, data: LabelledData) -> Outputs:
    c = classifier.predict(data.texts)
    return Outputs(
        c.decided, c.probabilities, c.confidence, np.array(c.input_tokens), np.array(c.unknown_rate), data.labels
    )


def _streams_alarms(detectors: DriftDetectors, outputs: Outputs, rows: np.ndarray) -> None:
    for j in rows:
        detectors.update(
            int(outputs.chosen[j]), outputs.probabilities[j], float(outputs.confidence[j]),
            int(outputs.length[j]), float(outputs.unknown[j]),
        )  # fmt: skip


def false_alarms(
    reference: Reference, thresholds: dict[str, float], settings: Settings, pool: Outputs, requests: int, seed: int
) -> dict[str, Any]:
    detectors = DriftDetectors.build(
        reference, settings.drift_smoothing, thresholds, settings.drift_alarm_hold_requests
    )
    rows = np.random.default_rng(seed).integers(len(pool.chosen), size=requests)
    _streams_alarms(detectors, pool, rows)
    result = {}
    for d in detectors.all():
        upper = chi2.ppf(0.975, 2 * (d.alarms + 1)) / 2  # Poisson upper bound on the alarm count
        result[d.name] = {
            "alarms": d.alarms,
            "mean_run_length": requests / d.alarms if d.alarms else None,
            "run_length_lower_95": requests / upper,
        }
    return result


def delays(
    reference: Reference,
    thresholds: dict[str, float],
    settings: Settings,
    before: tuple[Outputs, np.ndarray | None],
    after: tuple[Outputs, np.ndarray | None],
    replicates: int,
    seed: int,
    warmup: int = 500,
    horizon: int = 5000,
) -> dict[str, Any]:
    """Mean requests from the shift to each detector's first alarm (and to the first of any)."""
    rng = np.random.default_rng(seed)
    found: dict[str, list[int]] = {name: [] for name in (*DETECTORS, "any")}
    missed: dict[str, int] = {name: 0 for name in found}
    for _ in range(replicates):
        detectors = DriftDetectors.build(reference, settings.drift_smoothing, thresholds, 10**9)
        pool, weights = before
        _streams_alarms(detectors, pool, rng.choice(len(pool.chosen), warmup, p=weights))
        for d in detectors.all():
            d.reset()
            d.alarms = 0
        pool, weights = after
        rows = rng.choice(len(pool.chosen), horizon, p=weights)
        first: dict[str, int] = {}
        for i, j in enumerate(rows):
            _streams_alarms(detectors, pool, np.array([j]))
            for d in detectors.all():
                if d.alarms and d.name not in first:
                    first[d.name] = i + 1
            if len(first) == len(DETECTORS):
                break
        if first:
            first["any"] = min(first.values())
        for name in found:
            if name in first:
                found[name].append(first[name])
            else:
                missed[name] += 1
    return {
        name: {
            "mean_delay": float(np.mean(found[name])) if found[name] else None,
            "median_delay": float(np.median(found[name])) if found[name] else None,
            "missed": missed[name],
        }
        for name in found
    }


def label_weights(outputs: Outputs, label: str, share: float) -> np.ndarray:
    hit = np.array([t == label for t in outputs.truth])
    w = np.where(hit, share / hit.sum(), (1 - share) / (~hit).sum())
    return np.asarray(w / w.sum())


def tilted_weights(confidence: np.ndarray, drop: float) -> np.ndarray:
    """Exponential tilting towards low confidence so the mean falls by ``drop``."""
    target = confidence.mean() - drop

    def weights(theta: float) -> np.ndarray:
        return np.asarray(np.exp(-theta * (confidence - confidence.min())))  # <= 1: no overflow

    def gap(theta: float) -> float:
        w = weights(theta)
        return float((w * confidence).sum() / w.sum() - target)

    theta = brentq(gap, 0.0, 1e4)
    w = weights(theta)
    return np.asarray(w / w.sum())


def tempered(outputs: Outputs, drop: float) -> Outputs:
    """Every output flattened (p^(1/t), renormalized) until mean confidence falls by ``drop``."""
    rows = np.arange(len(outputs.chosen))

    def flatten(t: float) -> np.ndarray:
        logp = np.log(np.maximum(outputs.probabilities, 1e-12)) / t
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    target = outputs.confidence.mean() - drop
    t = brentq(lambda t: float(flatten(t)[rows, outputs.chosen].mean() - target), 1.0, 1e3)
    probabilities = flatten(t)
    return Outputs(
        outputs.chosen, probabilities, probabilities[rows, outputs.chosen], outputs.length, outputs.unknown,
        outputs.truth,
    )  # fmt: skip


def overhead(classifier: OnnxClassifier, run_dir: Path, settings: Settings, texts: list[str]) -> dict[str, float]:
    assert classifier.spec is not None
    monitor = ModelMonitor("bench/sms", "bench", classifier.spec, classifier.served_graph, settings)
    batches = [classifier.predict([t]) for t in texts[:200]]
    started = time.perf_counter()
    for t in texts[:200]:
        classifier.predict([t])
    predict_seconds = (time.perf_counter() - started) / 200
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        for b in batches:
            monitor.observe(b)
    observe_seconds = (time.perf_counter() - started) / (rounds * len(batches))
    return {
        "predict_one_text_ms": predict_seconds * 1e3,
        "monitoring_per_text_us": observe_seconds * 1e6,
        "overhead_percent": 100 * observe_seconds / predict_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and replicates (minutes)")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift_detection.json")
    ns = parser.parse_args()
    null_requests, replicates = (200_000, 40) if ns.quick else (1_000_000, 200)
    settings = Settings()
    started = time.time()

    model = sms_model(ns.train_rows, ns.epochs)
    classifier, validation, held_out, run_dir = model.classifier(), model.validation, model.held_out, model.run_dir
    assert classifier.spec is not None
    statistics = (
        classifier.spec.reference_int8
        if classifier.served_graph == classifier.spec.onnx_int8 and classifier.spec.reference_int8
        else classifier.spec.reference
    )
    reference = reference_arrays(statistics)
    thresholds = calibrate(reference, settings.drift_smoothing, settings.drift_run_length)
    print("thresholds", {k: round(v, 3) for k, v in thresholds.items()}, flush=True)

    val = classify(classifier, validation)
    sms = classify(classifier, held_out)
    banking = read_labelled_file(DATASETS / "banking77" / "banking77_test.csv")[0]
    bank = classify(classifier, banking)
    results: dict[str, Any] = {
        "command": "python bench/drift_detection.py" + (" --quick" if ns.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "model": f"all-MiniLM-L6-v2 fine-tuned on {ns.train_rows} sms_spam rows, {ns.epochs} epochs; "
        f"served graph {classifier.served_graph}",
        "smoothing": settings.drift_smoothing,
        "design_run_length": settings.drift_run_length,
        "thresholds": thresholds,
        "reference_examples": statistics.examples,
        "held_out_sms": len(held_out.texts),
    }

    print("false alarms ...", flush=True)
    results["false_alarms"] = {
        "reference": false_alarms(reference, thresholds, settings, val, null_requests, 1),
        "held_out": false_alarms(reference, thresholds, settings, sms, null_requests, 2),
    }
    write(ns.out, results)

    spam_share = float(np.mean([t == "spam" for t in sms.truth]))
    print("delays ...", flush=True)
    shifts: dict[str, Any] = {}
    shifts["minority_tripled"] = delays(
        reference, thresholds, settings, (sms, None), (sms, label_weights(sms, "spam", 3 * spam_share)), replicates, 3
    )
    # (b) needs a model whose reference mix is 50/50: the validation outputs resampled to balance
    rng = np.random.default_rng(4)
    weights = label_weights(val, "spam", 0.5)
    balanced_rows = rng.choice(len(val.chosen), len(val.chosen), p=weights)
    balanced = val.take(balanced_rows)
    balanced_reference = Reference(
        class_shares=np.bincount(balanced.chosen, minlength=len(reference.class_shares)) / len(balanced.chosen),
        examples=len(balanced.chosen),
        probabilities=balanced.probabilities,
        scalars={"confidence": balanced.confidence, "input_length": balanced.length.astype(float),
                 "unknown_token_rate": balanced.unknown},
    )  # fmt: skip
    balanced_thresholds = calibrate(balanced_reference, settings.drift_smoothing, settings.drift_run_length)
    shifts["binary_mix"] = delays(
        balanced_reference, balanced_thresholds, settings,
        (sms, label_weights(sms, "spam", 0.5)), (sms, label_weights(sms, "spam", 0.7)), replicates, 5,
    )  # fmt: skip
    shifts["other_dataset"] = delays(reference, thresholds, settings, (sms, None), (bank, None), replicates, 6)
    half_sd = 0.5 * sms.confidence.std()
    shifts["confidence_drop"] = delays(
        reference, thresholds, settings, (sms, None), (tempered(sms, half_sd), None), replicates, 7
    )
    shifts["confidence_drop_tail"] = delays(
        reference, thresholds, settings, (sms, None), (sms, tilted_weights(sms.confidence, half_sd)), replicates, 8
    )
    results["delays"] = shifts
    results["overhead"] = overhead(classifier, run_dir, settings, held_out.texts)
    results["seconds"] = time.time() - started
    write(ns.out, results)
    print(ns.out.with_suffix(".md").read_text())


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"`{results['command']}` ({results['date']}, {results['machine']}; {results['model']})", ""]
    lines += [
        f"Detectors: EWMA weight {results['smoothing']}, calibrated for {results['design_run_length']:,} requests "
        f"between false alarms (target >= {ARL_TARGET:,}); "
        f"reference: {results['reference_examples']} validation examples.",
        "",
        "| detector | false alarms: stream from reference | mean run length | 95% lower bound | met | "
        "stream from held-out SMS | mean run length | 95% lower bound | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fa = results["false_alarms"]
    for name in DETECTORS:
        cells = [name]
        for source in ("reference", "held_out"):
            r = fa[source][name]
            mean = f"{r['mean_run_length']:,.0f}" if r["mean_run_length"] else "no alarm"
            met = "yes" if r["run_length_lower_95"] >= ARL_TARGET else "NO"
            cells += [f"{r['alarms']} alarms", mean, f"{r['run_length_lower_95']:,.0f}", met]
        lines.append("| " + " | ".join(cells) + " |")
    if "delays" in results:
        lines += ["", "Mean detection delay in requests after the shift (missed: no alarm within 5,000 requests):", ""]
        shifts = list(results["delays"])
        lines.append("| detector | " + " | ".join(shifts) + " |")
        lines.append("|---|" + "---|" * len(shifts))
        for name in (*DETECTORS, "any"):
            row = [name]
            for shift in shifts:
                r = results["delays"][shift][name]
                cell = f"{r['mean_delay']:.0f}" if r["mean_delay"] is not None else "-"
                if r["missed"]:
                    cell += f" ({r['missed']} missed)"
                row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
        targets = ", ".join(
            f"{k} <= {v} ({'met' if (results['delays'][k]['any']['mean_delay'] or 1e9) <= v else 'NOT met'}: "
            f"{results['delays'][k]['any']['mean_delay']:.0f})"
            for k, v in TARGETS.items()
        )
        lines += ["", f"Targets on the first alarm of any detector: {targets}."]
    if "overhead" in results:
        o = results["overhead"]
        lines += [
            "",
            f"Overhead: monitoring {o['monitoring_per_text_us']:.0f} us per text vs {o['predict_one_text_ms']:.2f} ms "
            f"for a single-text predict call ({o['overhead_percent']:.2f}%).",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
