"""The remedy policy: from a blocked run's diagnosis, the next attempt's arguments, or why none can help.

Seed 001 pairs every diagnosis with its remedies; this module applies them, so a product team
gets a repaired run instead of a line of advice. It is a pure function of the diagnosis, the
run's arguments and the label audit, and it only ever changes how the
model is trained: the gate's thresholds live in ``Settings`` and are the same for every attempt.

    overfit     best-checkpoint restore and early stopping on, stronger weight decay, dropout and
                label smoothing, fewer epochs. Not freezing lower layers nor augmenting, though the
                seed lists smaller capacity and augmentation: on the 200-row sms_spam overfit
                scenario, freezing 2 of MiniLM's 6 layers cost 6.5 points of test macro-F1 (0.912
                vs 0.977, bench/overfit_freeze.py) and freezing 3 with augmentation 22 (0.756, the
                first bench/repair_scenarios.py smoke run)
    underfit    learning rate back to at least the default (higher when it already was), no step
    no_skill    cap, at least the default number of epochs, nothing frozen, less regularization
    degenerate  class weighting, the balanced sampler and the tuned decision rule, plus the
                underfit changes when the run hardly trained
    no retry    labels the audit finds unrelated to the texts, or every remedy for the verdict
                already in the arguments
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from training.arguments import TrainingArguments
from training.diagnosis import Diagnosis

DEFAULTS = TrainingArguments()
OVERFIT_WEIGHT_DECAY = 0.1  # 10x the default: the usual upper end for fine-tuning BERT-family models
OVERFIT_DROPOUT = 0.2
OVERFIT_EPOCHS = 3  # with early stopping on, an upper bound that is rarely reached
UNDERFIT_LEARNING_RATE_STEP = 3.0  # when the learning rate already was at least the default
MAX_LEARNING_RATE = 1e-3  # higher diverges for BERT-family models with AdamW


@dataclass(frozen=True)
class AuditEvidence:
    """What the label audit found, as far as the policy is concerned (``training/audit.py``)."""

    labels_unrelated: bool  # an out-of-sample classifier on the texts does no better than ignoring them
    out_of_sample_macro_f1: float
    baseline_macro_f1: float
    estimated_noise_share: float  # share of audited rows whose given label looks wrong

    def describe(self) -> str:
        return (
            f"a classifier trained on the texts' embeddings reaches macro-F1 {self.out_of_sample_macro_f1:.3f} on "
            f"rows it did not see, against {self.baseline_macro_f1:.3f} for guessing without reading the text, "
            f"and the audit flags {self.estimated_noise_share:.0%} of the labels as likely wrong"
        )


@dataclass(frozen=True)
class Change:
    argument: str
    before: Any
    after: Any
    reason: str


@dataclass(frozen=True)
class Remedy:
    """The next attempt (``arguments``), or ``None`` with the reason no retry can help."""

    verdicts: list[str]
    arguments: TrainingArguments | None
    changes: list[Change] = field(default_factory=list)
    reason: str = ""

    @property
    def retry(self) -> bool:
        return self.arguments is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": self.verdicts,
            "retry": self.retry,
            "reason": self.reason,
            "changes": [c.__dict__ for c in self.changes],
        }


class _Draft:
    """Collects changes; a change to a value the arguments already have is not a change."""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self.values: dict[str, Any] = {}
        self.changes: list[Change] = []

    def current(self, name: str) -> Any:
        return self.values.get(name, getattr(self.args, name))

    def set(self, name: str, value: Any, reason: str) -> None:
        if self.current(name) == value:
            return
        before = getattr(self.args, name)
        self.changes = [c for c in self.changes if c.argument != name]
        self.values[name] = value
        if value != before:
            self.changes.append(Change(name, before, value, reason))


def remedy_for(diagnosis: Diagnosis, args: TrainingArguments, audit: AuditEvidence | None = None) -> Remedy:
    """The next attempt's arguments for a blocked run, each change with its reason; or why not to retry."""
    verdicts: list[str] = list(diagnosis.blocking_verdicts)
    if not verdicts:
        return Remedy(verdicts, None, reason="the run passed the gate: there is nothing to repair")
    if audit is not None and audit.labels_unrelated and {"no_skill", "underfit", "degenerate"} & set(verdicts):
        return Remedy(
            verdicts,
            None,
            reason="the label column does not predict from the text: " + audit.describe() + "; no training "
            "recipe can learn such labels: check that the label column belongs to these texts "
            "(label_issues.csv lists the rows whose labels look most wrong)",
        )

    draft = _Draft(args)
    if "overfit" in verdicts:
        _against_overfitting(draft, args)
    if {"underfit", "no_skill"} & set(verdicts) or ("degenerate" in verdicts and _hardly_trained(args)):
        _against_underfitting(draft, args)
    if "degenerate" in verdicts:
        _against_degenerate(draft)
    if not draft.changes:
        return Remedy(
            verdicts,
            None,
            reason=f"every remedy fitgate applies for {', '.join(verdicts)} is already in this run's arguments; "
            "the data itself needs attention (more examples, or labels that match the texts)",
        )
    next_args = TrainingArguments.model_validate({**args.model_dump(), **draft.values})
    return Remedy(verdicts, next_args, draft.changes, reason=f"retrying with the remedies for {', '.join(verdicts)}")


def _hardly_trained(args: TrainingArguments) -> bool:
    return args.learning_rate < DEFAULTS.learning_rate or args.max_steps is not None


def _against_overfitting(draft: _Draft, args: TrainingArguments) -> None:
    draft.set("load_best_model_at_end", True, "export the checkpoint validation liked best, not the last one")
    patience = args.early_stopping_patience
    draft.set(
        "early_stopping_patience",
        min(patience, DEFAULTS.early_stopping_patience or 2) if patience else DEFAULTS.early_stopping_patience,
        "stop once validation macro-F1 stops improving, before the training data is memorized",
    )
    draft.set("weight_decay", max(args.weight_decay, OVERFIT_WEIGHT_DECAY), "stronger L2 regularization")
    draft.set("dropout", max(args.dropout or 0.0, OVERFIT_DROPOUT), "more dropout")
    draft.set(
        "label_smoothing_factor",
        max(args.label_smoothing_factor, DEFAULTS.label_smoothing_factor),
        "soft targets: overconfident memorization costs loss",
    )
    draft.set(
        "num_train_epochs",
        min(args.num_train_epochs, max(OVERFIT_EPOCHS, math.ceil(args.num_train_epochs / 2))),
        "fewer passes over the same examples",
    )
    if args.max_steps is not None:
        draft.set("max_steps", None, "the epoch count bounds the run (early stopping ends it sooner)")


def _against_underfitting(draft: _Draft, args: TrainingArguments) -> None:
    default_lr = DEFAULTS.learning_rate
    learning_rate = (
        default_lr
        if args.learning_rate < default_lr
        else max(args.learning_rate, min(args.learning_rate * UNDERFIT_LEARNING_RATE_STEP, MAX_LEARNING_RATE))
    )
    draft.set("learning_rate", learning_rate, "training loss barely fell: larger steps")
    if args.max_steps is not None:
        draft.set("max_steps", None, "train for whole epochs, not a capped number of steps")
    draft.set(
        "num_train_epochs",
        max(args.num_train_epochs, DEFAULTS.num_train_epochs),
        "train longer (early stopping still ends the run once validation stops improving)",
    )
    draft.set("freeze_layers", 0, "train every layer")
    draft.set("weight_decay", min(args.weight_decay, DEFAULTS.weight_decay), "less regularization")
    if args.dropout is not None and DEFAULTS.dropout is not None:
        draft.set("dropout", min(args.dropout, DEFAULTS.dropout), "less dropout")


def _against_degenerate(draft: _Draft) -> None:
    draft.set("class_weighting", "inverse", "weight the loss so the small classes count as much as the large")
    draft.set("sampler", "balanced", "draw every class equally often in each batch")
    draft.set("tune_decision_rule", True, "move the decision threshold towards the classes the model neglects")
