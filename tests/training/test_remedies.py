"""The remedy policy: each blocked verdict maps to the seed's remedies, each change with its reason, and
some blocks are not retried at all. The gate's thresholds are not arguments, so no remedy can touch them."""

from __future__ import annotations

import pytest

from training.arguments import TrainingArguments
from training.diagnosis import Diagnosis, Finding, Verdict
from training.remedies import AuditEvidence, Remedy, remedy_for

DEFAULTS = TrainingArguments()


def blocked(*verdicts: Verdict) -> Diagnosis:
    return Diagnosis(10, [Finding(v, True, f"{v} found", {}, "a remedy") for v in verdicts])


def changed(remedy: Remedy) -> dict[str, object]:
    return {c.argument: c.after for c in remedy.changes}


def test_overfit_turns_on_early_stopping_and_restore_and_strengthens_regularization() -> None:
    args = TrainingArguments(
        dropout=0.0, weight_decay=0.0, early_stopping_patience=None, load_best_model_at_end=False, num_train_epochs=15
    )
    remedy = remedy_for(blocked("overfit"), args)
    assert remedy.retry and remedy.arguments is not None
    after = changed(remedy)
    assert after["load_best_model_at_end"] is True
    assert after["early_stopping_patience"] == DEFAULTS.early_stopping_patience
    assert after["weight_decay"] == 0.1 and after["dropout"] == 0.2
    assert after["num_train_epochs"] == 8  # half of 15, rounded up
    assert "freeze_layers" not in after and "augment" not in after  # plenty of data: capacity is not the issue
    assert all(c.reason for c in remedy.changes)


def test_overfit_does_not_freeze_layers_or_augment() -> None:
    """Measured on the 200-row sms_spam overfit scenario: freezing lower layers cost test macro-F1."""
    after = changed(remedy_for(blocked("overfit"), TrainingArguments()))
    assert "freeze_layers" not in after and "augment" not in after


def test_underfit_restores_the_default_learning_rate_removes_the_step_cap_and_unfreezes() -> None:
    args = TrainingArguments(learning_rate=1e-7, max_steps=60, freeze_layers=2, weight_decay=0.3, num_train_epochs=2)
    remedy = remedy_for(blocked("underfit"), args)
    after = changed(remedy)
    assert after["learning_rate"] == DEFAULTS.learning_rate
    assert after["max_steps"] is None
    assert after["freeze_layers"] == 0
    assert after["weight_decay"] == DEFAULTS.weight_decay
    assert after["num_train_epochs"] == DEFAULTS.num_train_epochs


def test_underfit_at_or_above_the_default_learning_rate_raises_it_and_never_lowers_it() -> None:
    assert changed(remedy_for(blocked("underfit"), TrainingArguments(learning_rate=1e-4, max_steps=5)))[
        "learning_rate"
    ] == pytest.approx(3e-4)
    high = remedy_for(blocked("underfit"), TrainingArguments(learning_rate=5e-3, max_steps=5))
    assert "learning_rate" not in changed(high)  # already above the cap: kept, the other changes still apply
    assert high.retry


def test_degenerate_weights_classes_balances_batches_and_tunes_the_decision_rule() -> None:
    args = TrainingArguments(class_weighting="none", tune_decision_rule=False, learning_rate=1e-6, max_steps=30)
    after = changed(remedy_for(blocked("degenerate"), args))
    assert (after["class_weighting"], after["sampler"], after["tune_decision_rule"]) == ("inverse", "balanced", True)
    assert after["learning_rate"] == DEFAULTS.learning_rate  # it hardly trained: the underfit remedies apply too


def test_degenerate_after_a_full_run_changes_only_the_imbalance_handling() -> None:
    after = changed(remedy_for(blocked("degenerate"), TrainingArguments()))
    assert set(after) == {"class_weighting", "sampler"}


def test_labels_unrelated_to_the_texts_are_not_retried_and_the_reason_names_the_evidence() -> None:
    audit = AuditEvidence(
        labels_unrelated=True, out_of_sample_macro_f1=0.49, baseline_macro_f1=0.5, estimated_noise_share=0.45
    )
    remedy = remedy_for(blocked("no_skill", "underfit"), TrainingArguments(), audit)
    assert not remedy.retry and remedy.arguments is None
    assert "does not predict from the text" in remedy.reason
    assert "0.490" in remedy.reason and "0.500" in remedy.reason and "label_issues.csv" in remedy.reason


def test_when_every_remedy_is_already_applied_there_is_no_retry() -> None:
    applied = TrainingArguments(class_weighting="inverse", sampler="balanced")
    remedy = remedy_for(blocked("degenerate"), applied)
    assert not remedy.retry and "already" in remedy.reason


def test_a_passed_run_needs_no_remedy() -> None:
    assert not remedy_for(Diagnosis(10, []), TrainingArguments()).retry


def test_a_remedy_changes_training_arguments_only_and_keeps_the_data_split() -> None:
    args = TrainingArguments(seed=7, validation_size=0.2, test_size=0.1, learning_rate=1e-7)
    remedy = remedy_for(blocked("underfit", "overfit", "degenerate"), args)
    assert remedy.arguments is not None
    for kept in ("seed", "validation_size", "test_size", "text_column", "label_column", "max_length"):
        assert getattr(remedy.arguments, kept) == getattr(args, kept)
    assert remedy.to_dict()["retry"] is True
