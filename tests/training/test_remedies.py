"""The remedy search: the next attempt follows from every attempt so far, keeps what fixed a finding, treats
combined findings by their cause, doses imbalance remedies one at a time, cleans the data when the audit
doubts a material share of the training labels, tries fitgate's defaults, and stops when it cannot improve.
The gate's thresholds are not arguments, so no remedy can touch them."""

from __future__ import annotations

import pytest

from training.arguments import TrainingArguments
from training.remedies import AuditEvidence, Remedy, Tried, defaults_for, more_examples_advice, next_attempt

DEFAULTS = TrainingArguments()
CLEAN_SHARE = 0.05
NO_REGULARIZATION = TrainingArguments(
    dropout=0.0,
    weight_decay=0.0,
    label_smoothing_factor=0.0,
    early_stopping_patience=None,
    load_best_model_at_end=False,
    num_train_epochs=15,
)


def audit(flagged_share: float = 0.0, rows: tuple[int, ...] = (), unrelated: bool = False) -> AuditEvidence:
    return AuditEvidence(
        labels_unrelated=unrelated,
        out_of_sample_macro_f1=0.49 if unrelated else 0.8,
        baseline_macro_f1=0.5,
        estimated_noise_share=flagged_share,
        flagged_training_share=flagged_share,
        droppable_rows=rows,
    )


def attempt(
    args: TrainingArguments,
    *verdicts: str,
    f1: float = 0.5,
    audit: AuditEvidence | None = None,
    imbalance: float = 25.0,
) -> Tried:
    return Tried(args, list(verdicts), f1, audit, imbalance)


def search(*history: Tried, user: TrainingArguments | None = None) -> Remedy:
    return next_attempt(list(history), user or history[0].arguments, CLEAN_SHARE)


def changed(remedy: Remedy) -> dict[str, object]:
    return {c.argument: c.after for c in remedy.changes}


def following(remedy: Remedy) -> TrainingArguments:
    assert remedy.retry and remedy.arguments is not None, remedy.reason
    return remedy.arguments


# --- one finding at a time ------------------------------------------------------------------------


def test_overfit_turns_on_early_stopping_and_restore_and_strengthens_regularization() -> None:
    remedy = search(attempt(NO_REGULARIZATION, "overfit"))
    after = changed(remedy)
    assert after["load_best_model_at_end"] is True
    assert after["early_stopping_patience"] == DEFAULTS.early_stopping_patience
    assert after["weight_decay"] == 0.1 and after["dropout"] == 0.2
    assert after["num_train_epochs"] == 8  # half of 15, rounded up
    assert "freeze_layers" not in after and "augment" not in after  # measured: freezing cost test macro-F1
    assert all(c.reason for c in remedy.changes)
    assert "attempt 1: overfit" in remedy.seen and remedy.reason.startswith("overfit")


def test_underfit_restores_the_default_learning_rate_removes_the_step_cap_and_unfreezes() -> None:
    args = TrainingArguments(learning_rate=1e-7, max_steps=60, freeze_layers=2, weight_decay=0.3, num_train_epochs=2)
    after = changed(search(attempt(args, "underfit")))
    assert after["learning_rate"] == DEFAULTS.learning_rate
    assert after["max_steps"] is None
    assert after["freeze_layers"] == 0
    assert after["weight_decay"] == DEFAULTS.weight_decay
    assert after["num_train_epochs"] == DEFAULTS.num_train_epochs


def test_underfit_at_or_above_the_default_learning_rate_raises_it() -> None:
    args = TrainingArguments(learning_rate=1e-4, max_steps=5)
    assert changed(search(attempt(args, "underfit")))["learning_rate"] == pytest.approx(3e-4)


# --- combined findings, by their cause ------------------------------------------------------------


def test_degenerate_because_it_hardly_trained_is_trained_properly_first_and_imbalance_waits() -> None:
    args = TrainingArguments(class_weighting="none", learning_rate=1e-6, max_steps=30)
    remedy = search(attempt(args, "underfit", "no_skill", "degenerate"))
    after = changed(remedy)
    assert after["learning_rate"] == DEFAULTS.learning_rate
    assert not {"sampler", "tune_decision_rule"} & set(after)
    assert after.get("class_weighting", "none") in {"none", DEFAULTS.class_weighting}, "the default, not a dose"
    assert "hardly trained" in remedy.reason


def test_underfit_on_imbalanced_classes_with_an_unweighted_loss_gets_the_default_class_weights() -> None:
    args = TrainingArguments(class_weighting="none", learning_rate=1e-6, max_steps=30)
    after = changed(search(attempt(args, "underfit", "no_skill", imbalance=20.0)))
    assert after["class_weighting"] == DEFAULTS.class_weighting and after["learning_rate"] == DEFAULTS.learning_rate
    balanced = changed(search(attempt(args, "underfit", "no_skill", imbalance=1.1)))
    assert "class_weighting" not in balanced


def test_degenerate_with_a_trained_model_gets_one_imbalance_remedy_per_attempt() -> None:
    """All three at once exported a model below always answering the majority class (issue 30)."""
    user = TrainingArguments(class_weighting="none", tune_decision_rule=False)
    first = search(attempt(user, "degenerate"))
    assert changed(first) == {"class_weighting": "inverse"}
    second = search(attempt(user, "degenerate", f1=0.3), attempt(following(first), "degenerate", f1=0.4))
    assert changed(second) == {"sampler": "balanced"}
    third_args = following(second)
    third = search(
        attempt(user, "degenerate", f1=0.3),
        attempt(following(first), "degenerate", f1=0.4),
        attempt(third_args, "degenerate", f1=0.45),
    )
    assert changed(third) == {"tune_decision_rule": True}


def test_degenerate_on_balanced_classes_is_too_little_training_not_an_imbalance() -> None:
    """banking77, 4,000 rows over 77 balanced classes, 3 epochs: a class goes unpredicted because the model is
    still learning; class weights change nothing there, larger steps and more epochs do."""
    remedy = search(attempt(DEFAULTS, "degenerate", "below_baseline", imbalance=1.2))
    after = changed(remedy)
    assert after["learning_rate"] > DEFAULTS.learning_rate
    assert after["num_train_epochs"] == 2 * DEFAULTS.num_train_epochs
    assert "class_weighting" not in after and "balanced classes" in remedy.reason


def test_overfit_fixed_then_underfit_keeps_the_regularization_and_raises_the_learning_rate() -> None:
    """The oscillation the last-verdict-only policy fell into: overfit -> underfit -> overfit again."""
    second = following(search(attempt(NO_REGULARIZATION, "overfit", f1=0.6)))
    remedy = search(attempt(NO_REGULARIZATION, "overfit", f1=0.6), attempt(second, "underfit", f1=0.4))
    third = following(remedy)
    assert third.weight_decay == second.weight_decay == 0.1, "the fix for overfitting is kept"
    assert third.dropout == second.dropout and third.label_smoothing_factor == second.label_smoothing_factor
    assert third.num_train_epochs == second.num_train_epochs, "epochs went down for overfit: never back up"
    assert third.learning_rate > second.learning_rate, "so the learning rate goes up instead"
    assert any("weight_decay stays" in k for k in remedy.kept)
    assert "overfit is fixed" in remedy.seen


def test_a_changed_argument_never_moves_back_across_attempts() -> None:
    history = [attempt(NO_REGULARIZATION, "overfit", f1=0.6)]
    for verdicts in (("underfit",), ("overfit",), ("underfit",)):
        remedy = search(*history)
        if not remedy.retry:
            break
        history.append(attempt(following(remedy), *verdicts, f1=0.6 + 0.05 * len(history)))
    weight_decays = [t.arguments.weight_decay for t in history]
    assert weight_decays == sorted(weight_decays), weight_decays
    epochs = [t.arguments.num_train_epochs for t in history]
    assert epochs == sorted(epochs, reverse=True), epochs


# --- when to stop, and the defaults as a candidate -------------------------------------------------


def test_a_remedy_that_left_the_same_finding_and_no_gain_is_not_dosed_again() -> None:
    user = TrainingArguments()
    second = following(search(attempt(user, "underfit", f1=0.40)))
    remedy = search(attempt(user, "underfit", f1=0.40), attempt(second, "underfit", f1=0.40))
    assert not remedy.retry
    assert "did not raise validation macro-F1" in remedy.reason and "0.400 -> 0.400" in remedy.reason


def test_when_the_targeted_remedies_stop_helping_the_defaults_are_the_last_candidate() -> None:
    user = TrainingArguments(learning_rate=1e-4, warmup_ratio=0.0, lr_scheduler_type="cosine")
    second = following(search(attempt(user, "underfit", f1=0.40)))
    remedy = search(attempt(user, "underfit", f1=0.40), attempt(second, "underfit", f1=0.39))
    assert following(remedy) == defaults_for(user)
    assert "default" in remedy.reason


def test_the_defaults_keep_the_users_data_split_model_and_seed() -> None:
    user = TrainingArguments(seed=7, validation_size=0.2, test_size=0.1, max_length=64, learning_rate=1e-7)
    defaults = defaults_for(user)
    for kept in ("seed", "validation_size", "test_size", "max_length", "text_column", "label_column", "base_model"):
        assert getattr(defaults, kept) == getattr(user, kept)
    assert defaults.learning_rate == DEFAULTS.learning_rate


def test_labels_unrelated_to_the_texts_are_not_retried_and_the_reason_names_the_evidence() -> None:
    remedy = search(attempt(DEFAULTS, "no_skill", "underfit", audit=audit(0.45, unrelated=True)))
    assert not remedy.retry and remedy.arguments is None
    assert "does not predict from the text" in remedy.reason
    assert "0.490" in remedy.reason and "0.500" in remedy.reason and "label_issues.csv" in remedy.reason


def test_a_passed_run_with_trusted_labels_needs_no_further_attempt() -> None:
    assert not search(attempt(DEFAULTS, audit=audit(0.01, rows=(5,)))).retry


# --- clean the data -------------------------------------------------------------------------------


def test_overfit_on_doubted_labels_also_trains_without_the_flagged_training_rows() -> None:
    remedy = search(attempt(NO_REGULARIZATION, "overfit", audit=audit(0.2, rows=(12, 7, 30))))
    after = following(remedy)
    assert after.excluded_training_rows == [7, 12, 30]
    assert after.weight_decay == 0.1
    assert "doubted rows" in remedy.reason
    assert remedy.to_dict()["changes"][-1]["after"] == "3 rows", "the log summarises the rows; the job lists them"


def test_lacking_skill_on_doubted_labels_cleans_first() -> None:
    remedy = search(attempt(DEFAULTS, "below_baseline", audit=audit(0.2, rows=(4, 9))))
    assert changed(remedy) == {"excluded_training_rows": [4, 9]}


def test_a_passed_run_on_doubted_labels_gets_one_attempt_without_them() -> None:
    remedy = search(attempt(DEFAULTS, f1=0.8, audit=audit(0.2, rows=(4, 9))))
    assert following(remedy).excluded_training_rows == [4, 9]
    assert "better of the two" in remedy.reason
    cleaned = attempt(following(remedy), f1=0.85, audit=audit(0.1, rows=(11,)))
    assert not search(attempt(DEFAULTS, f1=0.8, audit=audit(0.2, rows=(4, 9))), cleaned).retry, "once only"


def test_a_clean_up_that_is_blocked_after_a_passing_attempt_ends_the_search() -> None:
    """The passing attempt is exported; the search does not spend more attempts repairing the optional one."""
    passed = attempt(DEFAULTS, f1=0.8, audit=audit(0.2, rows=(4, 9)))
    cleaned = attempt(following(search(passed)), "overfit", f1=0.7)
    remedy = search(passed, cleaned)
    assert not remedy.retry and "earlier attempt passed" in remedy.reason


def test_cleaning_is_skipped_below_the_material_share_or_when_turned_off() -> None:
    assert "excluded_training_rows" not in changed(search(attempt(DEFAULTS, "overfit", audit=audit(0.02, rows=(4,)))))
    off = TrainingArguments(clean_flagged_rows=False)
    assert "excluded_training_rows" not in changed(search(attempt(off, "overfit", audit=audit(0.3, rows=(4,)))))


def test_a_remedy_changes_training_arguments_only_and_keeps_the_data_split() -> None:
    args = TrainingArguments(seed=7, validation_size=0.2, test_size=0.1, learning_rate=1e-7)
    remedy = search(attempt(args, "underfit", "overfit", "degenerate"))
    for kept in ("seed", "validation_size", "test_size", "text_column", "label_column", "max_length"):
        assert getattr(following(remedy), kept) == getattr(args, kept)


# --- what more data would do ----------------------------------------------------------------------


def test_thin_classes_are_named_with_how_many_more_examples_the_per_class_curve_asks_for() -> None:
    advice = more_examples_advice(
        ["a", "b", "c", "d", "e", "f"], [3, 5, 40, 80, 120, 200], [0.1, 0.2, 0.6, 0.7, 0.8, 0.85]
    )
    assert "2 classes have fewer than 20 training examples" in advice
    assert "'a' (3 now, +" in advice and "'b' (5 now, +" in advice and "per doubling" in advice
    flat = more_examples_advice(["a", "b", "c", "d", "e"], [3, 50, 60, 70, 80], [0.5] * 5)
    assert "'a' (3 now, +17)" in flat and "no trend" in flat
    assert more_examples_advice(["a", "b"], [50, 60], [0.9, 0.9]) == ""
