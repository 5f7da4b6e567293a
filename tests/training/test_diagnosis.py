"""Diagnosis rules on hand-written learning curves: each verdict fires on its shape and only then."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitgate.settings import Settings
from training.curves import CurvePoint
from training.diagnosis import (
    baseline_finding,
    bootstrap_macro_f1,
    diagnose,
    serving_warnings,
    trivial_baseline_macro_f1,
)

SETTINGS = Settings()


def _curve(rows: list[tuple[float, float, float, float]]) -> list[CurvePoint]:
    """rows of (train loss, train macro-F1, validation loss, validation macro-F1), one per epoch from 0."""
    return [
        CurvePoint(
            step=10 * i,
            epoch=float(i),
            train_loss=None if i == 0 else tl,
            train_eval_loss=tl,
            train_macro_f1=tf,
            val_loss=vl,
            val_macro_f1=vf,
            val_accuracy=vf,
            learning_rate=1e-4,
            samples_per_second=None,
            peak_gpu_memory_mb=None,
        )
        for i, (tl, tf, vl, vf) in enumerate(rows)
    ]


def _good_predictions(k: int = 2, n: int = 400, accuracy: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    wrong = rng.random(n) > accuracy
    return labels, np.where(wrong, (labels + 1) % k, labels)


def _verdicts(curve: list[CurvePoint], step: int, labels: np.ndarray, preds: np.ndarray, k: int = 2) -> set[str]:
    names = [f"c{i}" for i in range(k)]
    diagnosis = diagnose(curve, step, labels, preds, labels, names, SETTINGS)
    return {f.verdict for f in diagnosis.findings if f.blocking}


LN2 = math.log(2)


def test_healthy_binary_run_passes() -> None:
    curve = _curve(
        [(LN2, 0.45, LN2, 0.45), (0.20, 0.93, 0.22, 0.92), (0.08, 0.97, 0.12, 0.95), (0.05, 0.98, 0.13, 0.95)]
    )
    labels, preds = _good_predictions()
    assert _verdicts(curve, 20, labels, preds) == set()


def test_hard_noisy_many_class_run_with_low_scores_and_a_gap_passes() -> None:
    """Train macro-F1 well under 0.6 and a 0.12 gap are healthy on a 20-class noisy task."""
    k = 20
    ln_k = math.log(k)
    curve = _curve([(ln_k, 0.02, ln_k, 0.02), (2.2, 0.35, 2.4, 0.28), (1.9, 0.50, 2.3, 0.38), (1.8, 0.52, 2.3, 0.40)])
    labels, preds = _good_predictions(k=k, n=2000, accuracy=0.42)
    assert _verdicts(curve, 30, labels, preds, k=k) == set()


def test_last_epoch_of_a_memorising_run_is_overfit() -> None:
    """The seed-001 shape: validation loss bottoms at epoch 2 and climbs while training loss keeps falling."""
    curve = _curve(
        [
            (LN2, 0.4, LN2, 0.4),
            (0.5, 0.7, 0.50, 0.66),
            (0.3, 0.85, 0.35, 0.72),
            (0.05, 0.99, 0.60, 0.70),
            (0.003, 1.0, 0.89, 0.70),
        ]
    )
    labels, preds = _good_predictions(accuracy=0.72)
    assert "overfit" in _verdicts(curve, 40, labels, preds)
    # the best checkpoint of the same run is judged on its own numbers
    assert "overfit" not in _verdicts(curve, 20, labels, preds)


def test_validation_loss_back_above_its_start_is_overfit_even_with_a_small_gap() -> None:
    curve = _curve([(LN2, 0.5, LN2, 0.5), (0.4, 0.8, 0.45, 0.8), (0.1, 0.88, 0.80, 0.80)])
    labels, preds = _good_predictions(accuracy=0.8)
    assert "overfit" in _verdicts(curve, 20, labels, preds)


def test_memorised_noisy_training_data_is_overfit_even_while_validation_loss_holds() -> None:
    """banking77 gate scenario: 200 rows, 30% shuffled labels, last of 15 epochs: train 0.995, validation 0.767."""
    ln10 = math.log(10)
    curve = _curve([(ln10, 0.1, ln10, 0.1), (1.0, 0.8, 1.1, 0.70), (0.1, 0.99, 0.95, 0.76), (0.05, 0.995, 0.96, 0.767)])
    labels, preds = _good_predictions(k=10, n=600, accuracy=0.77)
    assert "overfit" in _verdicts(curve, 30, labels, preds, k=10)


def test_a_large_gap_alone_is_not_overfit_while_validation_loss_holds() -> None:
    curve = _curve([(LN2, 0.5, LN2, 0.5), (0.3, 0.90, 0.45, 0.72), (0.2, 0.93, 0.44, 0.74)])
    labels, preds = _good_predictions(accuracy=0.75)
    assert "overfit" not in _verdicts(curve, 20, labels, preds)


def test_flat_training_loss_is_underfit() -> None:
    curve = _curve([(LN2, 0.45, LN2, 0.45), (0.68, 0.46, 0.69, 0.45)])
    labels = np.array([0, 1] * 200)
    preds = np.zeros(400, dtype=int)
    verdicts = _verdicts(curve, 10, labels, preds)
    assert "underfit" in verdicts


def test_majority_class_predictor_has_no_skill_and_is_degenerate() -> None:
    curve = _curve([(LN2, 0.47, LN2, 0.47), (0.3, 0.47, 0.3, 0.47)])
    labels = np.array([0] * 380 + [1] * 20)
    preds = np.zeros(400, dtype=int)
    verdicts = _verdicts(curve, 10, labels, preds)
    assert {"no_skill", "degenerate"} <= verdicts


def test_a_class_with_too_few_validation_examples_is_a_warning_not_a_block() -> None:
    curve = _curve([(LN2, 0.3, LN2, 0.3), (0.1, 0.97, 0.12, 0.95)])
    labels = np.array([0] * 200 + [1] * 200 + [2] * 3)
    preds = np.where(labels == 2, 0, labels)  # the 3-example class is never found
    names = ["a", "b", "rare"]
    diagnosis = diagnose(curve, 10, labels, preds, labels, names, SETTINGS)
    assert diagnosis.passed
    (warning,) = [f for f in diagnosis.findings if f.verdict == "insufficient_validation"]
    assert not warning.blocking and "'rare' (3)" in warning.message


def test_every_finding_carries_evidence_and_a_remedy() -> None:
    curve = _curve([(LN2, 0.47, LN2, 0.47), (0.68, 0.47, 0.69, 0.47)])
    labels = np.array([0] * 380 + [1] * 20)
    diagnosis = diagnose(curve, 10, labels, np.zeros(400, dtype=int), labels, ["ham", "spam"], SETTINGS)
    assert not diagnosis.passed
    for finding in diagnosis.findings:
        assert finding.evidence and finding.remedy and finding.message
    assert "BLOCKED" in diagnosis.summary() and "remedy:" in diagnosis.summary()
    assert "'spam' (20 examples, predicted 0 times)" in diagnosis.summary()


def test_thresholds_come_from_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITGATE_GATE_MIN_TRAIN_LOSS_DROP", "0.99")
    curve = _curve([(LN2, 0.45, LN2, 0.45), (0.20, 0.93, 0.22, 0.92)])
    labels, preds = _good_predictions()
    diagnosis = diagnose(curve, 10, labels, preds, labels, ["a", "b"], Settings())
    assert diagnosis.blocking_verdicts == ["underfit"]


def test_trivial_baselines_match_their_closed_forms() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    b = trivial_baseline_macro_f1(labels, 2)
    assert b["majority"] == pytest.approx((2 * 0.9 / 1.9) / 2)
    assert b["stratified"] == pytest.approx(0.5)


def test_bootstrap_lower_bound_sits_below_the_point_estimate() -> None:
    labels, preds = _good_predictions(accuracy=0.8)
    lower, point = bootstrap_macro_f1(labels, preds, 2, 500, seed=0)
    assert 0.7 < lower < point < 0.85


def test_findings_that_wrong_labels_explain_cite_the_label_audit() -> None:
    from training.diagnosis import Diagnosis, Finding, cite_audit

    diagnosis = Diagnosis(
        5,
        [
            Finding("no_skill", True, "validation macro-F1 is 0.41", {}, "check labels"),
            Finding("degenerate", True, "class b is never predicted", {}, "weight it"),
        ],
    )
    audit = {
        "estimated_noise_share": 0.12,
        "labels_unrelated": False,
        "noise_share_by_class": {"a": 0.05, "b": 0.3},
        "out_of_sample_macro_f1": 0.7,
        "baseline_macro_f1": 0.5,
    }
    cited = cite_audit(diagnosis, audit)
    no_skill, degenerate = cited.findings
    assert "label audit flags 12%" in no_skill.message and "'b' 30%" in no_skill.message
    assert "label_issues.csv" in no_skill.message and no_skill.evidence["label_noise_share"] == 0.12
    assert degenerate.message == "class b is never predicted"  # wrong labels do not explain a neglected class
    unrelated = cite_audit(diagnosis, {**audit, "labels_unrelated": True}).findings[0]
    assert "unrelated to the texts" in unrelated.message and "0.700" in unrelated.message
    assert cite_audit(diagnosis, {**audit, "estimated_noise_share": 0.01}) == diagnosis  # too little to cite


# --- the baseline check and the warnings a team reads before serving --------------------------------

AUDIT = {"simple_validation_macro_f1": 0.76, "method": "logistic regression", "validation_rows": 400}


def test_a_model_below_the_simple_classifier_on_the_same_rows_is_blocked_with_both_numbers() -> None:
    """Issue 30's repaired export: macro-F1 0.53 where TF-IDF + logistic regression reached 0.76."""
    finding = baseline_finding(0.53, AUDIT, SETTINGS)
    assert finding is not None and finding.verdict == "below_baseline" and finding.blocking
    assert "0.530" in finding.message and "0.760" in finding.message
    assert finding.evidence["simple_val_macro_f1"] == 0.76 and finding.remedy


def test_a_model_that_matches_or_beats_the_simple_classifier_passes_the_baseline_check() -> None:
    assert baseline_finding(0.80, AUDIT, SETTINGS) is None
    perfect = {**AUDIT, "simple_validation_macro_f1": 1.0}
    assert baseline_finding(1.0, perfect, SETTINGS) is None, "an easy task: nothing can be above 1.0"
    stricter = baseline_finding(0.80, AUDIT, Settings(gate_baseline_margin=0.05))
    assert stricter is not None and stricter.blocking


def test_without_the_label_audit_the_baseline_check_is_a_warning_that_it_did_not_run() -> None:
    finding = baseline_finding(0.9, None, SETTINGS)
    assert finding is not None and finding.verdict == "baseline_unchecked" and not finding.blocking


def test_accuracy_below_the_majority_answer_and_worse_calibration_are_flagged_not_blocked() -> None:
    labels = np.array([0] * 92 + [1] * 8)
    predictions = np.array([0] * 60 + [1] * 32 + [1] * 8)  # catches every minority row, at the majority's cost
    found = serving_warnings(labels, predictions, {"ece_before_calibration": 0.32, "ece_after_calibration": 0.36})
    assert [f.verdict for f in found] == ["accuracy_below_majority", "calibration_worse"]
    assert not any(f.blocking for f in found)
    assert "0.680" in found[0].message and "0.920" in found[0].message
    assert serving_warnings(labels, labels, {"ece_before_calibration": 0.1, "ece_after_calibration": 0.05}) == []


# --- multi-label: the same rules, per label --------------------------------------------------------


def _label_predictions(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 4)) < [0.4, 0.3, 0.2, 0.1]).astype(np.intp)
    flips = rng.random(targets.shape) < 0.03
    return targets, (targets.astype(bool) ^ flips)


def _label_verdicts(targets: np.ndarray, decided: np.ndarray) -> dict[str, object]:
    curve = _curve([(LN2, 0.3, LN2, 0.3), (0.2, 0.9, 0.25, 0.88)])
    diagnosis = diagnose(curve, 10, targets, decided, targets, ["a", "b", "c", "d"], SETTINGS)
    return {f.verdict: f for f in diagnosis.findings if f.blocking}


def test_a_healthy_multi_label_run_passes() -> None:
    assert _label_verdicts(*_label_predictions()) == {}


def test_a_multi_label_label_never_predicted_is_degenerate_naming_it() -> None:
    targets, decided = _label_predictions()
    decided[:, 2] = False
    found = _label_verdicts(targets, decided)
    assert set(found) == {"degenerate"} and "'c'" in found["degenerate"].message  # type: ignore[attr-defined]


def test_a_multi_label_label_predicted_for_every_text_is_degenerate() -> None:
    targets, decided = _label_predictions()
    decided[:, 3] = True
    found = _label_verdicts(targets, decided)
    assert "degenerate" in found and "answered for every validation text" in found["degenerate"].message  # type: ignore[attr-defined]


def test_multi_label_answers_that_ignore_the_text_have_no_skill_against_the_per_label_prior() -> None:
    targets, _ = _label_predictions()
    rng = np.random.default_rng(5)
    guesses = rng.random(targets.shape) < targets.mean(axis=0)  # each label at its prior, text unread
    assert "no_skill" in _label_verdicts(targets, guesses)


def test_a_multi_label_label_with_too_few_validation_rows_is_named_as_a_warning() -> None:
    targets, decided = _label_predictions()
    targets[:, 3] = 0
    targets[:2, 3] = 1
    curve = _curve([(LN2, 0.3, LN2, 0.3), (0.2, 0.9, 0.25, 0.88)])
    diagnosis = diagnose(curve, 10, targets, decided, targets, ["a", "b", "c", "d"], SETTINGS)
    thin = [f for f in diagnosis.findings if f.verdict == "insufficient_validation"]
    assert thin and not thin[0].blocking and thin[0].evidence["classes"] == ["d"]
