"""Prometheus metrics: every prediction, the drift detectors, and the training jobs.

BentoML runs ``prometheus_client`` in multiprocess mode and serves ``/metrics`` by merging
every worker's files. Counters and histograms add up across workers. Each worker runs its
own drift detectors over the requests it serves (a random share of the traffic, so the
same calibration holds); the drift gauges export the largest value among live workers
(``livemax``), so a model is flagged when any worker detects drift. With W workers each
sees 1/W of the requests: false alarms per request stay the same, detection delays in
total requests grow about W-fold.

Label sets are bounded: model and version (versions of retired models stay at 0), the
model's own class labels, the detector names, job statuses and gate verdicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from fitgate.settings import Settings
from models.bundle import BundleSpec, ReferenceStatistics
from models.runtime import Predictions
from service.drift import DETECTORS, DriftDetectors, Reference, calibrate, percentile_rank

log = logging.getLogger(__name__)

MODEL = ("model", "version")
# from 1/K up to 1, finest near 1 where a healthy model's confidences sit
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9999, 1.0)
PERCENTILE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))
LENGTH_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512)
DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
DRIFT_SEED = 0

PREDICTIONS = Counter(
    "fitgate_predictions_total",
    "Predictions by predicted class; for a multi-label model, texts answered with each label (divide by "
    "fitgate_multilabel_texts_total for the predicted-positive rate).",
    [*MODEL, "label"],
)
LABELLED_TEXTS = Counter("fitgate_multilabel_texts_total", "Texts a multi-label model answered.", MODEL)
LABEL_PROBABILITY = Histogram(
    "fitgate_label_probability",
    "A multi-label model's calibrated probability per label and text.",
    [*MODEL, "label"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95),
)
CONFIDENCE = Histogram(
    "fitgate_prediction_confidence", "Calibrated probability of the predicted class.", MODEL, buckets=CONFIDENCE_BUCKETS
)
CONFIDENCE_PERCENTILE = Histogram(
    "fitgate_prediction_confidence_percentile",
    "Confidence as its percentile among validation predictions: flat when traffic looks like validation.",
    MODEL,
    buckets=PERCENTILE_BUCKETS,
)
LOW_CONFIDENCE = Counter(
    "fitgate_low_confidence_predictions_total",
    "Predictions below the model's low-confidence threshold (5th percentile of validation confidence).",
    MODEL,
)
INPUT_LENGTH = Histogram("fitgate_input_length_tokens", "Tokens per input text.", MODEL, buckets=LENGTH_BUCKETS)
TRUNCATED = Counter("fitgate_truncated_inputs_total", "Texts cut at the model's max_length.", MODEL)
INPUT_TOKENS = Counter("fitgate_input_tokens_total", "Tokens of input text, special tokens excluded.", MODEL)
UNKNOWN_TOKENS = Counter("fitgate_unknown_tokens_total", "Input tokens the tokenizer did not know ([UNK]).", MODEL)
PREDICT_LATENCY = Histogram(
    "fitgate_predict_request_duration_seconds", "Time to answer POST /predict.", ["model"], buckets=LATENCY_BUCKETS
)
# what the batcher makes of the traffic, beside the request latency: where a slow answer waits
BATCH_TEXTS = Histogram(
    "fitgate_inference_batch_texts", "Texts per model call (requests merged by the batcher).", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)  # fmt: skip
INFERENCE_LATENCY = Histogram(
    "fitgate_inference_duration_seconds", "Time of one model call: tokenizer, ONNX Runtime, calibration.", ["model"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip

LOW_CONFIDENCE_THRESHOLD = Gauge(
    "fitgate_low_confidence_threshold", "The model's low-confidence threshold.", MODEL, multiprocess_mode="livemax"
)
REFERENCE_CLASS_SHARE = Gauge(
    "fitgate_reference_class_share",
    "Share of each class among validation predictions, to compare with the live mix.",
    [*MODEL, "label"],
    multiprocess_mode="livemax",
)
MODEL_LOADED = Gauge(
    "fitgate_model_loaded", "1 while a worker serves this model version.", MODEL, multiprocess_mode="livemax"
)
MODELS_LOADED = Gauge(
    "fitgate_models_loaded", "Model versions loaded, in the worker with the fewest.", multiprocess_mode="livemin"
)
MODEL_CURRENT = Gauge(
    "fitgate_model_current_info",
    "1 for the registry's current version of each model.",
    MODEL,
    multiprocess_mode="livemax",
)

DRIFT_STATISTIC = Gauge(
    "fitgate_drift_statistic", "Drift detector statistic (alarm above the threshold).", [*MODEL, "detector"],
    multiprocess_mode="livemax",
)  # fmt: skip
DRIFT_THRESHOLD = Gauge(
    "fitgate_drift_threshold", "Drift detector threshold (calibrated false-alarm rate).", [*MODEL, "detector"],
    multiprocess_mode="livemax",
)  # fmt: skip
DRIFT_DETECTED = Gauge(
    "fitgate_drift_detected", "1 when the detector alarmed within its hold period.", [*MODEL, "detector"],
    multiprocess_mode="livemax",
)  # fmt: skip
DRIFT_ALARMS = Counter("fitgate_drift_alarms_total", "Drift alarms.", [*MODEL, "detector"])

JOBS = Counter("fitgate_jobs_total", "Fine-tune jobs by final status.", ["status"])
GATE_VERDICTS = Counter("fitgate_gate_verdicts_total", "Gate outcomes: pass, or each blocking verdict.", ["verdict"])
JOB_DURATION = Histogram(
    "fitgate_job_duration_seconds", "Fine-tune job wall time by final status.", ["status"], buckets=DURATION_BUCKETS
)
JOBS_QUEUED = Gauge(
    "fitgate_jobs_queued", "Fine-tune jobs waiting for a trainer (scale trainers on this).", multiprocess_mode="livemax"
)
JOBS_RUNNING = Gauge(
    "fitgate_jobs_running", "Fine-tune jobs running under a live lease, per trainer.", ["trainer"],
    multiprocess_mode="livemax",
)  # fmt: skip
BATCH_ROWS = Counter(
    "fitgate_batch_rows_total", "Rows batch jobs have read and written (rows with a problem included).", ["model"]
)
BATCH_ROWS_PER_SECOND = Gauge(
    "fitgate_batch_rows_per_second", "Rows per second of the batch jobs running on each trainer.", ["trainer"],
    multiprocess_mode="livesum",
)  # fmt: skip
_trainers_seen: set[str] = set()


def reference_arrays(statistics: ReferenceStatistics, thresholds: list[float] | None = None) -> Reference:
    """The detectors' reference; ``thresholds`` (a multi-label model's) turn the probability sample into its
    0/1 answers, the reference of the label mix."""
    probabilities = np.asarray(statistics.probability_sample, dtype=float)
    return Reference(
        decisions=(probabilities >= np.asarray(thresholds)).astype(float) if thresholds else None,
        class_shares=np.asarray(statistics.class_distribution, dtype=float),
        examples=statistics.examples,
        probabilities=np.asarray(statistics.probability_sample, dtype=float),
        scalars={
            "confidence": np.asarray(statistics.confidence_sample, dtype=float),
            "input_length": np.asarray(statistics.input_length_sample, dtype=float),
            "unknown_token_rate": np.asarray(statistics.unknown_token_rate_sample, dtype=float),
        },
    )


class ModelMonitor:
    """Metrics and drift detectors of one served model version; ``observe`` after every batch.

    The batcher runs several batches at once (``inference_threads``); ``observe`` takes them one at a
    time, as the detectors' running statistics need.
    """

    def __init__(self, model: str, version: str, spec: BundleSpec, served_graph: str, settings: Settings) -> None:
        self.model, self.version = model, version
        self._observing = threading.Lock()
        statistics = spec.reference_int8 if served_graph == spec.onnx_int8 and spec.reference_int8 else spec.reference
        self.low_confidence_threshold = statistics.low_confidence_threshold
        self.reference_confidence = np.sort(np.asarray(statistics.confidence_sample, dtype=float))
        self.multi_label = spec.multi_label
        reference = reference_arrays(statistics, spec.thresholds if spec.multi_label else None)
        started = time.perf_counter()
        thresholds = calibrate(reference, settings.drift_smoothing, settings.drift_run_length, seed=DRIFT_SEED)
        log.info(
            "%s:%s drift thresholds calibrated in %.1fs: %s",
            model,
            version,
            time.perf_counter() - started,
            {k: round(v, 3) for k, v in thresholds.items()},
        )
        self.detectors = DriftDetectors.build(
            reference, settings.drift_smoothing, thresholds, settings.drift_alarm_hold_requests
        )
        labels = (model, version)
        self._predictions = [PREDICTIONS.labels(*labels, name) for name in spec.labels]
        self._label_probability = (
            [LABEL_PROBABILITY.labels(*labels, name) for name in spec.labels] if spec.multi_label else []
        )
        self._texts = LABELLED_TEXTS.labels(*labels) if spec.multi_label else None
        self._confidence = CONFIDENCE.labels(*labels)
        self._percentile = CONFIDENCE_PERCENTILE.labels(*labels)
        self._low_confidence = LOW_CONFIDENCE.labels(*labels)
        self._length = INPUT_LENGTH.labels(*labels)
        self._truncated = TRUNCATED.labels(*labels)
        self._tokens = INPUT_TOKENS.labels(*labels)
        self._unknown = UNKNOWN_TOKENS.labels(*labels)
        self._statistic = {d.name: DRIFT_STATISTIC.labels(*labels, d.name) for d in self.detectors.all()}
        self._detected = {d.name: DRIFT_DETECTED.labels(*labels, d.name) for d in self.detectors.all()}
        self._alarms = {d.name: DRIFT_ALARMS.labels(*labels, d.name) for d in self.detectors.all()}
        for d in self.detectors.all():
            DRIFT_THRESHOLD.labels(*labels, d.name).set(d.threshold)
            self._statistic[d.name].set(0)
            self._detected[d.name].set(0)
        LOW_CONFIDENCE_THRESHOLD.labels(*labels).set(self.low_confidence_threshold)
        for name, share in zip(spec.labels, statistics.class_distribution, strict=True):
            REFERENCE_CLASS_SHARE.labels(*labels, name).set(share)
        MODEL_LOADED.labels(*labels).set(1)
        self.retired = False

    def confidence_percentile(self, confidence: float) -> float:
        """Share of validation confidences below this one (ties count half)."""
        return float(percentile_rank(self.reference_confidence, confidence, 0.5))

    def observe(self, batch: Predictions) -> None:
        """Record one batch of predictions: O(1) per text per detector, plus O(K) for the probability vector."""
        with self._observing:
            self._observe(batch)

    def _observe(self, batch: Predictions) -> None:
        confidence = batch.confidence
        detectors = self.detectors
        for i in range(len(confidence)):
            c = float(confidence[i])
            tokens = batch.input_tokens[i]
            unknown = batch.unknown_rate[i]
            predicted: int | np.ndarray
            if batch.multi_label:  # one count per label answered: the per-label predicted-positive rate
                predicted = batch.decided[i].astype(float)
                for answered in np.flatnonzero(batch.decided[i]).tolist():
                    self._predictions[answered].inc()
                for histogram, p in zip(self._label_probability, batch.probabilities[i].tolist(), strict=True):
                    histogram.observe(p)
                if self._texts is not None:
                    self._texts.inc()
            else:
                predicted = int(batch.decided[i])
                self._predictions[predicted].inc()
            self._confidence.observe(c)
            self._percentile.observe(self.confidence_percentile(c))
            if c < self.low_confidence_threshold:
                self._low_confidence.inc()
            self._length.observe(tokens)
            if batch.truncated[i]:
                self._truncated.inc()
            words = max(0, tokens - 2)  # [CLS] and [SEP] are not the user's text
            self._tokens.inc(words)
            if unknown:
                self._unknown.inc(unknown * words)
            for name in detectors.update(predicted, batch.probabilities[i], c, tokens, unknown):
                self._alarms[name].inc()
                log.warning("%s:%s drift detected by %s", self.model, self.version, name)
        if self.retired:
            return  # the last batches of a replaced version do not bring its gauges back
        for d in detectors.all():
            self._statistic[d.name].set(d.statistic)
            self._detected[d.name].set(1 if d.detected else 0)

    def drift_state(self) -> dict[str, dict[str, float | int | bool]]:
        """Each detector now, in this worker: its statistic against its threshold, and its alarms so far."""
        return {
            d.name: {
                "statistic": d.statistic,
                "threshold": d.threshold,
                "detected": d.detected,
                "alarms": d.alarms,
                "predictions_seen": d.seen,
            }
            for d in self.detectors.all()
        }

    def retire(self) -> None:
        """This version is no longer served here: its gauges drop to 0 (multiprocess files keep the series)."""
        with self._observing:  # a batch still being observed cannot set them again
            self.retired = True
            labels = (self.model, self.version)
            MODEL_LOADED.labels(*labels).set(0)
            for name in DETECTORS:
                DRIFT_DETECTED.labels(*labels, name).set(0)
                DRIFT_STATISTIC.labels(*labels, name).set(0)


def record_inference(model: str, texts: int, seconds: float) -> None:
    BATCH_TEXTS.labels(model).observe(texts)
    INFERENCE_LATENCY.labels(model).observe(seconds)


def record_current_versions(current: dict[str, str], previous: dict[str, str]) -> None:
    """Point ``fitgate_model_current_info`` at each model's current version."""
    for model, version in previous.items():
        if current.get(model) != version:
            MODEL_CURRENT.labels(model, version).set(0)
    for model, version in current.items():
        MODEL_CURRENT.labels(model, version).set(1)


def record_queue(queued: int, running: dict[str, int]) -> None:
    """The queue as the database has it; a trainer seen before with nothing running now reads 0."""
    JOBS_QUEUED.set(queued)
    for trainer in _trainers_seen - running.keys():
        JOBS_RUNNING.labels(trainer).set(0)
    for trainer, count in running.items():
        JOBS_RUNNING.labels(trainer).set(count)
    _trainers_seen.update(running)


def record_batch_rows(model: str, rows: int) -> None:
    BATCH_ROWS.labels(model).inc(rows)


def record_batch_speed(trainer: str, rows_per_second: float) -> None:
    BATCH_ROWS_PER_SECOND.labels(trainer).set(rows_per_second)


def record_job_outcome(status: str, seconds: float | None, verdicts: Iterable[str]) -> None:
    JOBS.labels(status).inc()
    if seconds is not None:
        JOB_DURATION.labels(status).observe(seconds)
    for verdict in verdicts:
        GATE_VERDICTS.labels(verdict).inc()
