"""Drift detectors: calibrated false-alarm rate, O(1) state, detection of real shifts, reset rules."""

from __future__ import annotations

import numpy as np
import pytest

from service.drift import ClassMixDrift, DriftDetectors, Reference, ScalarDrift, calibrate

SMOOTHING = 0.01


def _reference(rng: np.random.Generator, n: int = 600) -> Reference:
    """A binary model's validation outputs: 85% class 0, confident, short texts, a few unknown tokens."""
    classes = (rng.random(n) < 0.15).astype(int)
    confidence = np.clip(1 - rng.exponential(0.03, n), 0.5, 1.0)
    probabilities = np.where(
        classes[:, None] == 0, np.stack([confidence, 1 - confidence], 1), np.stack([1 - confidence, confidence], 1)
    )
    return Reference(
        class_shares=np.bincount(classes, minlength=2) / n,
        examples=n,
        probabilities=probabilities,
        scalars={
            "confidence": confidence,
            "input_length": rng.integers(6, 60, n).astype(float),
            "unknown_token_rate": np.where(rng.random(n) < 0.05, 0.1, 0.0),
        },
    )


@pytest.fixture(scope="module")
def reference() -> Reference:
    return _reference(np.random.default_rng(7))


@pytest.fixture(scope="module")
def thresholds(reference: Reference) -> dict[str, float]:
    return calibrate(reference, SMOOTHING, design_run_length=20_000, seed=0)


def _feed(detectors: DriftDetectors, reference: Reference, rows: np.ndarray) -> None:
    s = reference.scalars
    for j in rows:
        predicted = int(np.argmax(reference.probabilities[j]))
        detectors.update(
            predicted,
            reference.probabilities[j],
            float(s["confidence"][j]),
            int(s["input_length"][j]),
            float(s["unknown_token_rate"][j]),
        )


def test_percentiles_of_reference_draws_are_uniform_even_for_tied_values() -> None:
    rng = np.random.default_rng(0)
    values = [0.0] * 900 + [0.1] * 100  # 90% ties at zero, like the unknown-token rate
    detector = ScalarDrift("unknown_token_rate", values, SMOOTHING, threshold=4.0, hold=10)
    u = np.array([detector.percentile(v) for v in rng.choice(values, 20_000)])
    assert abs(u.mean() - 0.5) < 0.01
    assert abs(np.mean(u < 0.25) - 0.25) < 0.015


def test_the_o1_class_statistic_equals_the_direct_formula_across_renormalization() -> None:
    rng = np.random.default_rng(1)
    shares = [0.5, 0.3, 0.2]
    detector = ClassMixDrift(shares, smoothing=0.5, threshold=1e12, hold=1)  # scale drops below 1e-100 fast
    direct = np.array(shares)
    for c in rng.choice(3, size=1000, p=[0.2, 0.3, 0.5]):
        detector.update(int(c))
        direct = 0.5 * direct + 0.5 * np.eye(3)[c]
    expected = ((direct - shares) ** 2 / shares).sum() / detector.normalizer
    assert detector.statistic == pytest.approx(expected, rel=1e-9)
    assert len(detector._f) == 3  # state is one number per class, whatever the traffic


def test_in_distribution_traffic_rarely_alarms(reference: Reference, thresholds: dict[str, float]) -> None:
    detectors = DriftDetectors.build(reference, SMOOTHING, thresholds, hold=1000)
    rows = np.random.default_rng(2).integers(len(reference.probabilities), size=50_000)
    _feed(detectors, reference, rows)
    # calibrated for 20,000 requests between false alarms; a broken calibration alarms hundreds of times
    alarms = {d.name: d.alarms for d in detectors.all()}
    assert all(count <= 8 for count in alarms.values()), alarms


def test_a_shifted_class_mix_is_detected_and_stays_detected_while_it_lasts(
    reference: Reference, thresholds: dict[str, float]
) -> None:
    detectors = DriftDetectors.build(reference, SMOOTHING, thresholds, hold=300)
    rng = np.random.default_rng(3)
    predicted = np.argmax(reference.probabilities, axis=1)
    minority = np.flatnonzero(predicted == 1)
    majority = np.flatnonzero(predicted == 0)
    _feed(detectors, reference, rng.choice(majority, 200))  # warm, then the minority share triples to 45%
    shifted = np.where(rng.random(1500) < 0.45, rng.choice(minority, 1500), rng.choice(majority, 1500))
    first_alarm = None
    for i, j in enumerate(shifted):
        _feed(detectors, reference, np.array([j]))
        if first_alarm is None and detectors.class_mix.alarms:
            first_alarm = i
        if first_alarm is not None and i > first_alarm + 300:
            assert detectors.class_mix.detected  # re-alarms within the hold period while drift persists
    assert first_alarm is not None and first_alarm < 500
    assert detectors.class_mix.alarms >= 2


def test_detected_clears_after_the_hold_period_once_drift_ends(
    reference: Reference, thresholds: dict[str, float]
) -> None:
    detector = ScalarDrift(
        "confidence", reference.scalars["confidence"].tolist(), SMOOTHING, thresholds["confidence"], hold=200
    )
    for _ in range(400):
        detector.update(0.5)  # far below every reference confidence
    assert detector.alarms >= 1 and detector.detected
    rng = np.random.default_rng(4)
    for value in rng.choice(reference.scalars["confidence"], 250):
        detector.update(float(value))
    assert not detector.detected


def test_a_half_standard_deviation_drop_in_mean_confidence_is_found_within_a_few_hundred_requests(
    reference: Reference, thresholds: dict[str, float]
) -> None:
    confidence = reference.scalars["confidence"]
    detector = ScalarDrift("confidence", confidence.tolist(), SMOOTHING, thresholds["confidence"], hold=10)
    rng = np.random.default_rng(5)
    lowered = rng.choice(confidence, 3000) - 0.5 * confidence.std()
    first = next((i for i, value in enumerate(lowered) if detector.update(float(value))), None)
    assert first is not None and first < 400
