"""Drift detectors: live traffic against a model's reference statistics, O(1) per request.

Each detector keeps an exponentially weighted moving average (EWMA, weight ``smoothing``)
of one per-request quantity and compares it with the bundle's validation reference:

- ``class_mix``: the predicted-class one-hot vector; statistic sum_k (e_k - p_k)^2 / p_k,
  updated in O(1) per request (lazy decay, see ``ClassMixDrift``): label / prior shift.
- ``probabilities``: the predicted probability vector (black-box shift detection on the
  softmax outputs, Rabanser et al. 2019); statistic sum_k (m_k - mu_k)^2 / var_k.
- ``confidence``, ``input_length``, ``unknown_token_rate``: each value is turned into its
  reference percentile (randomized probability integral transform, so ties and discrete
  values such as token counts are exactly uniform under the reference); statistic |EWMA - 1/2|
  in standard deviations. Distribution-free and bounded: one rule serves skewed and discrete
  quantities, and a handful of extreme values cannot dominate it. (A test of the raw mean was
  tried and dropped: with a few hundred validation examples the mean of a heavy-tailed
  confidence distribution is too uncertain: in an uncommitted trial it alarmed every ~1,300
  held-out requests, docs/BENCHMARKS.md.)

Statistics are normalized so that in-distribution traffic keeps them near 1 (vectors) or
0 (scalars). Memory is fixed by the number of classes and the reference sample, never by
traffic.

Calibration (``calibrate``): bootstrap simulation. Each of many simulated streams first
draws its own "true" distribution as a bootstrap resample of the reference (so the
reference's own sampling error is part of the null), then traffic from it; the threshold
is the quantile of the streams' maxima that makes the alarm time, which is close to
geometric for an EWMA, have a mean of ``design_run_length`` requests:
P(max over T requests <= h) = exp(-T / design_run_length).

Reset rule: an alarm increments the alarm count and resets the detector to the reference,
so a second alarm needs fresh evidence; ``detected`` stays true for ``hold`` requests after
the latest alarm. Drift that persists re-alarms within its detection delay, so ``detected``
stays true while it lasts and clears ``hold`` requests after it ends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

DETECTORS = ("class_mix", "probabilities", "confidence", "input_length", "unknown_token_rate")
SCALAR_DETECTORS = ("confidence", "input_length", "unknown_token_rate")
# Confidence is compared at this resolution: smaller differences are numerics, not drift (int8 dynamic
# quantization scales activations per batch, so a text's confidence moves slightly with its batch-mates).
RESOLUTION = {"confidence": 1e-3}
SIMULATED_REQUESTS = 4000  # per simulated stream: many EWMA memories long, so alarm times are ~geometric
SIMULATED_CELLS = 200_000  # streams x classes per simulated step: bounds calibration time for large label sets
MIN_STREAMS = 200
MAX_STREAMS = 500
VARIANCE_FLOOR = 1e-6


def uniform_ewma_sd(smoothing: float) -> float:
    """Standard deviation of an EWMA of Uniform(0, 1) values: the scale of the percentile detectors."""
    return math.sqrt(smoothing / (2 - smoothing) / 12)


def percentile_rank(ordered: np.ndarray, values: np.ndarray | float, tie_share: np.ndarray | float) -> np.ndarray:
    """Share of the sorted reference below ``values``, with ``tie_share`` of the equal ones counted below.

    The one percentile rule: ``tie_share`` 0.5 counts ties half (a plain mid-rank), a Uniform(0, 1)
    draw makes it the randomized probability integral transform, exactly uniform on the reference
    even when values repeat (lengths, rounded confidences).
    """
    below = np.searchsorted(ordered, values, side="left")
    at_or_below = np.searchsorted(ordered, values, side="right")
    return np.asarray((below + tie_share * (at_or_below - below)) / len(ordered))


def smoothed_shares(shares: np.ndarray) -> np.ndarray:
    """Class shares with a floor, so a class never predicted on validation keeps the statistic finite."""
    floored = np.maximum(np.asarray(shares, dtype=float), 1e-4)
    return np.asarray(floored / floored.sum())


class Detector:
    """Alarm bookkeeping shared by every detector: count, reset, hold."""

    name: str

    def __init__(self, smoothing: float, threshold: float, hold: int) -> None:
        if not 0 < smoothing < 1:
            raise ValueError(f"smoothing must be in (0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.threshold = threshold
        self.hold = hold
        self.statistic = 0.0
        self.alarms = 0
        self.seen = 0
        self._last_alarm: int | None = None
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    @property
    def detected(self) -> bool:
        return self._last_alarm is not None and self.seen - self._last_alarm < self.hold

    def _check(self) -> bool:
        self.seen += 1
        if self.statistic <= self.threshold:
            return False
        self.alarms += 1
        self._last_alarm = self.seen
        self.reset()
        return True


def coarsen(name: str, values: np.ndarray) -> np.ndarray:
    """Values as the detector compares them (see RESOLUTION)."""
    step = RESOLUTION.get(name)
    return np.round(values / step) * step if step else values


class ScalarDrift(Detector):
    """EWMA of a value's reference percentile; alarm when it leaves 1/2 by ``threshold`` sds."""

    def __init__(
        self,
        name: str,
        reference: Sequence[float],
        smoothing: float,
        threshold: float,
        hold: int,
        seed: int = 0,
    ) -> None:
        if not reference:
            raise ValueError(f"{name}: the reference sample is empty")
        self.name = name
        self.step = RESOLUTION.get(name)
        self.reference = np.sort(coarsen(name, np.asarray(reference, dtype=float)))
        self.scale = uniform_ewma_sd(smoothing)
        self._random = random.Random(seed)
        super().__init__(smoothing, threshold, hold)

    def reset(self) -> None:
        self.mean = 0.5
        self.statistic = 0.0

    def percentile(self, value: float) -> float:
        """Randomized PIT: exactly Uniform(0, 1) when ``value`` is drawn from the reference."""
        if self.step:
            value = round(value / self.step) * self.step
        return float(percentile_rank(self.reference, value, self._random.random()))

    def update(self, value: float) -> bool:
        self.mean += self.smoothing * (self.percentile(value) - self.mean)
        self.statistic = abs(self.mean - 0.5) / self.scale
        return self._check()


class ClassMixDrift(Detector):
    """EWMA of the predicted-class one-hot vector against the reference class shares.

    The vector is stored as ``scale * f`` so one update touches one class: decaying every
    entry is a multiplication of ``scale`` (renormalized when it gets small).
    """

    name = "class_mix"

    def __init__(self, reference: Sequence[float], smoothing: float, threshold: float, hold: int) -> None:
        shares = np.asarray(reference, dtype=float)
        if shares.ndim != 1 or len(shares) < 2:
            raise ValueError("class_mix needs the reference share of at least two classes")
        self.reference = smoothed_shares(shares).tolist()
        self.classes = len(self.reference)
        self.normalizer = (self.classes - 1) * smoothing / (2 - smoothing)  # null mean of the raw statistic
        super().__init__(smoothing, threshold, hold)

    def reset(self) -> None:
        self._f = list(self.reference)
        self._scale = 1.0
        self._sum_f = 1.0
        self._weighted_squares = 1.0  # sum f_k^2 / p_k
        self.statistic = 0.0

    def update(self, predicted: int) -> bool:
        lam = self.smoothing
        self._scale *= 1 - lam
        if self._scale < 1e-100:
            self._f = [v * self._scale for v in self._f]
            self._sum_f *= self._scale
            self._weighted_squares *= self._scale**2
            self._scale = 1.0
        old = self._f[predicted]
        new = old + lam / self._scale
        self._f[predicted] = new
        self._sum_f += new - old
        self._weighted_squares += (new * new - old * old) / self.reference[predicted]
        c = self._scale
        raw = c * c * self._weighted_squares - 2 * c * self._sum_f + 1.0  # sum (e_k - p_k)^2 / p_k
        self.statistic = max(raw, 0.0) / self.normalizer
        return self._check()


class ProbabilityDrift(Detector):
    """EWMA of the predicted probability vector against the reference mean vector (BBSD)."""

    name = "probabilities"

    def __init__(self, reference: np.ndarray, smoothing: float, threshold: float, hold: int) -> None:
        reference = np.asarray(reference, dtype=float)
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError("probabilities needs a reference sample of at least two probability vectors")
        self.mean_reference = reference.mean(axis=0)
        self.weights = 1.0 / np.maximum(reference.var(axis=0), VARIANCE_FLOOR)
        self.normalizer = reference.shape[1] * smoothing / (2 - smoothing)
        super().__init__(smoothing, threshold, hold)

    def reset(self) -> None:
        self.mean = self.mean_reference.copy()
        self.statistic = 0.0

    def update(self, probabilities: np.ndarray) -> bool:
        self.mean += self.smoothing * (probabilities - self.mean)
        gap = self.mean - self.mean_reference
        self.statistic = float(gap @ (gap * self.weights)) / self.normalizer
        return self._check()


# --- calibration --------------------------------------------------------------------------------


class LabelMixDrift(ProbabilityDrift):
    """A multi-label model's ``class_mix``: the EWMA of each answer's 0/1 label vector against the reference
    answers' per-label positive rates (labels do not exclude each other, so no one-hot distribution)."""

    name = "class_mix"


@dataclass(frozen=True)
class Reference:
    """What the detectors compare with, as arrays (built from a bundle's ReferenceStatistics)."""

    class_shares: np.ndarray  # (K,)
    examples: int  # validation examples behind class_shares
    probabilities: np.ndarray  # (n, K) sample
    scalars: dict[str, np.ndarray]  # confidence, input_length, unknown_token_rate samples
    decisions: np.ndarray | None = None  # multi-label: (n, K) 0/1 answers of the probability sample


def _threshold(maxima: np.ndarray, simulated: int, design_run_length: int) -> float:
    level = math.exp(-simulated / design_run_length)
    return float(np.quantile(maxima, level))


def _streams(classes: int) -> int:
    return int(min(MAX_STREAMS, max(MIN_STREAMS, SIMULATED_CELLS // max(classes, 1))))


def _bootstrap_streams(sample: np.ndarray, rng: np.random.Generator, streams: int) -> np.ndarray:
    """Values of ``streams`` simulated streams, each from its own bootstrap resample of the reference."""
    n = len(sample)
    worlds = rng.integers(n, size=(streams, n))  # each stream's "true" distribution
    picks = rng.integers(n, size=(streams, SIMULATED_REQUESTS))
    return sample[np.take_along_axis(worlds, picks, axis=1)]


def _rank_maxima(sample: np.ndarray, smoothing: float, rng: np.random.Generator, streams: int) -> np.ndarray:
    ordered = np.sort(sample)
    values = _bootstrap_streams(ordered, rng, streams)
    u = percentile_rank(ordered, values, rng.random(values.shape))
    ewma = lfilter([smoothing], [1, -(1 - smoothing)], u - 0.5, axis=1)
    return np.asarray(np.abs(ewma).max(axis=1) / uniform_ewma_sd(smoothing))


def _vector_maxima(
    draw: Callable[[np.ndarray], np.ndarray], center: np.ndarray, weights: np.ndarray, smoothing: float, streams: int
) -> np.ndarray:
    """Run ``streams`` EWMAs of vectors from ``draw(step)``; return each stream's largest statistic."""
    normalizer = len(center) * smoothing / (2 - smoothing)
    state = np.tile(center, (streams, 1))
    maxima = np.zeros(streams)
    for step in range(SIMULATED_REQUESTS):
        state *= 1 - smoothing
        state += smoothing * draw(np.asarray(step))
        gap = state - center
        np.maximum(maxima, (gap * gap * weights).sum(axis=1) / normalizer, out=maxima)
    return maxima


def calibrate(reference: Reference, smoothing: float, design_run_length: int, seed: int = 0) -> dict[str, float]:
    """Thresholds for every detector with a mean run length of ``design_run_length`` in-distribution requests."""
    rng = np.random.default_rng(seed)
    thresholds: dict[str, float] = {}
    classes = len(reference.class_shares)
    streams = _streams(classes)

    for name in SCALAR_DETECTORS:
        maxima = _rank_maxima(coarsen(name, reference.scalars[name]), smoothing, rng, streams)
        thresholds[name] = _threshold(maxima, SIMULATED_REQUESTS, design_run_length)

    if reference.decisions is not None:
        thresholds["class_mix"] = _sample_threshold(reference.decisions, smoothing, design_run_length, rng, streams)
        thresholds["probabilities"] = _sample_threshold(
            reference.probabilities, smoothing, design_run_length, rng, streams
        )
        return thresholds
    shares = smoothed_shares(reference.class_shares)
    worlds = rng.multinomial(reference.examples, shares, size=streams) / reference.examples
    cumulative = np.cumsum(worlds, axis=1)
    cumulative[:, -1] = 1.0
    classes_drawn = np.stack(
        [np.searchsorted(cumulative[s], rng.random(SIMULATED_REQUESTS), side="right") for s in range(streams)]
    )
    classes_drawn = np.minimum(classes_drawn, classes - 1)
    one_hot = np.eye(classes)
    rows = np.arange(streams)

    def class_draw(step: np.ndarray) -> np.ndarray:
        return np.asarray(one_hot[classes_drawn[rows, step]])

    # sum (e - p)^2 / p over K classes is normalized by (K - 1), the vector helper by K
    maxima = _vector_maxima(class_draw, shares, 1.0 / shares, smoothing, streams) * classes / (classes - 1)
    thresholds["class_mix"] = _threshold(maxima, SIMULATED_REQUESTS, design_run_length)

    thresholds["probabilities"] = _sample_threshold(reference.probabilities, smoothing, design_run_length, rng, streams)
    return thresholds


def _sample_threshold(
    sample: np.ndarray, smoothing: float, design_run_length: int, rng: np.random.Generator, streams: int
) -> float:
    """The threshold of a vector EWMA (ProbabilityDrift) over streams bootstrapped from a reference sample."""
    chosen = _bootstrap_streams(np.arange(len(sample)), rng, streams)  # row indices
    mean = sample.mean(axis=0)
    weights = 1.0 / np.maximum(sample.var(axis=0), VARIANCE_FLOOR)

    def draw(step: np.ndarray) -> np.ndarray:
        return np.asarray(sample[chosen[:, step]])

    maxima = _vector_maxima(draw, mean, weights, smoothing, streams)
    return _threshold(maxima, SIMULATED_REQUESTS, design_run_length)


@dataclass
class DriftDetectors:
    """The five detectors of one served model version."""

    class_mix: ClassMixDrift | LabelMixDrift
    probabilities: ProbabilityDrift
    confidence: ScalarDrift
    input_length: ScalarDrift
    unknown_token_rate: ScalarDrift

    @classmethod
    def build(cls, reference: Reference, smoothing: float, thresholds: dict[str, float], hold: int) -> DriftDetectors:
        class_mix = (
            LabelMixDrift(reference.decisions, smoothing, thresholds["class_mix"], hold)
            if reference.decisions is not None
            else ClassMixDrift(reference.class_shares.tolist(), smoothing, thresholds["class_mix"], hold)
        )
        return cls(
            class_mix=class_mix,
            probabilities=ProbabilityDrift(reference.probabilities, smoothing, thresholds["probabilities"], hold),
            **{
                name: ScalarDrift(name, reference.scalars[name].tolist(), smoothing, thresholds[name], hold, seed=i)
                for i, name in enumerate(SCALAR_DETECTORS)
            },
        )

    def all(self) -> list[Detector]:
        return [self.class_mix, self.probabilities, self.confidence, self.input_length, self.unknown_token_rate]

    def update(
        self,
        predicted: int | np.ndarray,
        probabilities: np.ndarray,
        confidence: float,
        input_length: int,
        unknown_rate: float,
    ) -> list[str]:
        """Feed one prediction to every detector (``predicted``: a class, or a multi-label model's 0/1 label
        vector); return the names of those that alarmed."""
        alarmed = []
        if self.class_mix.update(predicted):  # type: ignore[arg-type]  # each detector takes its model's answer
            alarmed.append("class_mix")
        if self.probabilities.update(probabilities):
            alarmed.append("probabilities")
        if self.confidence.update(confidence):
            alarmed.append("confidence")
        if self.input_length.update(input_length):
            alarmed.append("input_length")
        if self.unknown_token_rate.update(unknown_rate):
            alarmed.append("unknown_token_rate")
        return alarmed
