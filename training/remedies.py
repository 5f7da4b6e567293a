"""The remedy search: from every attempt so far, the next attempt's arguments, or why none can help.

Seed 001 pairs every diagnosis with its remedies; this module applies them, so a product team
gets a repaired run instead of a line of advice. It only ever changes how the model is trained
and which training rows it learns from: the gate's thresholds live in ``Settings`` and are the
same for every attempt.

The next attempt depends on all the attempts before it, not on the last verdict alone:

- **Fixes are kept.** An argument a remedy moved keeps moving the same way, never back: a run
  whose overfitting was fixed by regularization and that now underfits gets a higher learning
  rate, not its weight decay back (the search that forgot this oscillated overfit -> underfit ->
  overfit on a 200-row banking77 upload).
- **Combined findings are treated by their cause.** Degenerate *and* underfit: the model hardly
  trained, so it is trained properly first; imbalance remedies wait until it has. Degenerate with
  a trained model: one imbalance remedy per attempt, in measured doses (class weights, then the
  balanced sampler, then the tuned decision rule): all three at once exported a model below
  always answering the majority class.
- **Clean the data** (seed 001's first remedy for noisy labels): when the label audit flags a
  material share of the training rows (``Settings.remedy_clean_min_flagged_share``) and the run
  is overfit, lacks skill, or scores below the simple classifier, the next attempt trains without
  the flagged *training* rows (validation and test rows stay as uploaded, so the score that
  decides stays honest). A run that passed is given the same one attempt when its audit flags that
  share: wrong labels lower a model without blocking it, and the repair exports the better of the
  two on validation. ``clean_flagged_rows=false`` turns it off.
- **The defaults are a candidate.** When the arguments a user chose differ from fitgate's
  defaults and the targeted remedies run out or stop helping, the defaults get an attempt.
- **It stops when it cannot improve**: a remedy that left the same findings and did not raise
  validation macro-F1 is not dosed again; and labels the audit finds unrelated to the texts are
  not retried at all.

Not freezing lower layers nor augmenting for overfitting, though the seed lists smaller capacity
and augmentation: on the 200-row sms_spam overfit scenario, freezing 2 of MiniLM's 6 layers cost
6.5 points of test macro-F1 (bench/overfit_freeze.py) and freezing 3 with augmentation 22.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from training.arguments import TrainingArguments

DEFAULTS = TrainingArguments()
OVERFIT_WEIGHT_DECAY = 0.1  # 10x the default: the usual upper end for fine-tuning BERT-family models
OVERFIT_DROPOUT = 0.2
OVERFIT_EPOCHS = 3  # with early stopping on, an upper bound that is rarely reached
UNDERFIT_LEARNING_RATE_STEP = 3.0  # when the learning rate already was at least the default
MAX_LEARNING_RATE = 1e-3  # higher diverges for BERT-family models with AdamW
MIN_GAIN = 0.005  # validation macro-F1 a further dose of the same remedy must have bought
MAX_DROPPED_SHARE_OF_CLASS = 0.5  # the clean-up never takes more than half of a class's training rows
IMBALANCED = 1.5  # largest over smallest class: below it, a class the model never predicts is not an imbalance
MAX_EPOCHS_FOR_SKILL = 12  # the most epochs the search asks for when a trained model still lacks skill

# What the upload and the user decide, never a remedy: the data, its split, the model, the budget.
NOT_REMEDIES = frozenset(
    {
        "text_column",
        "label_column",
        "validation_size",
        "test_size",
        "max_length",
        "max_text_chars",
        "max_empty_share",
        "base_model",
        "per_device_eval_batch_size",
        "label_audit",
        "remedy_attempts",
        "clean_flagged_rows",
        "seed",
        "device",
        "cpu_bf16",
        "excluded_training_rows",
    }
)
LACKS_SKILL = frozenset({"underfit", "no_skill", "below_baseline"})


@dataclass(frozen=True)
class AuditEvidence:
    """What the label audit of an attempt found, as far as the search is concerned (``training/audit.py``)."""

    labels_unrelated: bool  # an out-of-sample classifier on the texts does no better than ignoring them
    out_of_sample_macro_f1: float
    baseline_macro_f1: float
    estimated_noise_share: float  # share of audited rows whose given label looks wrong
    flagged_training_share: float = 0.0
    droppable_rows: tuple[int, ...] = ()  # flagged training rows (upload row numbers) the clean-up may leave out

    def describe(self) -> str:
        return (
            f"a classifier trained on the texts' embeddings reaches macro-F1 {self.out_of_sample_macro_f1:.3f} on "
            f"rows it did not see, against {self.baseline_macro_f1:.3f} for guessing without reading the text, "
            f"and the audit flags {self.estimated_noise_share:.0%} of the labels as likely wrong"
        )


@dataclass(frozen=True)
class Tried:
    """One finished attempt, as the search reads it."""

    arguments: TrainingArguments
    verdicts: list[str]  # blocking verdicts; empty when the attempt passed
    validation_macro_f1: float
    audit: AuditEvidence | None = None
    imbalance: float = 1.0  # the largest training class's examples over the smallest's

    @property
    def passed(self) -> bool:
        return not self.verdicts


@dataclass(frozen=True)
class Change:
    argument: str
    before: Any
    after: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """As the attempts' log records it: a list of rows left out is summarised by its length."""
        values = self.__dict__.copy()
        for side in ("before", "after"):
            if isinstance(values[side], list):
                values[side] = f"{len(values[side])} rows"
        return values


@dataclass(frozen=True)
class Remedy:
    """The next attempt (``arguments``), or ``None`` with the reason no further attempt can help.

    ``seen`` is what the search read from the attempts (the log's first half), ``changes`` what it
    changes and why, ``kept`` the fixes of earlier attempts it keeps.
    """

    verdicts: list[str]
    arguments: TrainingArguments | None
    changes: list[Change] = field(default_factory=list)
    reason: str = ""
    seen: str = ""
    kept: list[str] = field(default_factory=list)

    @property
    def retry(self) -> bool:
        return self.arguments is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": self.verdicts,
            "retry": self.retry,
            "seen": self.seen,
            "reason": self.reason,
            "kept": self.kept,
            "changes": [c.to_dict() for c in self.changes],
        }


# --- the arguments' history -----------------------------------------------------------------------


def _direction(before: Any, after: Any) -> int:
    """+1 up, -1 down, 0 unchanged. None is "off" (no cap, no early stopping): off -> on is up, on -> off down;
    a switch turned on is up; any other change of a non-number (a mode) counts as up."""
    if before == after:
        return 0
    if isinstance(before, bool) or isinstance(after, bool):
        return 1 if after else -1
    if before is None or after is None:
        return 1 if before is None else -1
    if isinstance(before, int | float) and isinstance(after, int | float):
        return 1 if after > before else -1
    return 1


def moved(history: list[Tried]) -> dict[str, tuple[int, int]]:
    """Per argument, the direction remedies moved it and the attempt (1-based) that first did."""
    out: dict[str, tuple[int, int]] = {}
    for number, (a, b) in enumerate(itertools.pairwise(history), start=2):
        for name in TrainingArguments.model_fields:
            if name in NOT_REMEDIES or name in out:
                continue
            step = _direction(getattr(a.arguments, name), getattr(b.arguments, name))
            if step:
                out[name] = (step, number)
    return out


class _Draft:
    """Collects changes; refuses one that would move an argument back the way an earlier attempt moved it."""

    def __init__(self, args: TrainingArguments, history: list[Tried]) -> None:
        self.args = args
        self.moved = moved(history)
        self.values: dict[str, Any] = {}
        self.changes: list[Change] = []
        self.kept: list[str] = []

    def current(self, name: str) -> Any:
        return self.values.get(name, getattr(self.args, name))

    def set(self, name: str, value: Any, reason: str) -> bool:
        """Apply a change unless it is none or would undo an earlier attempt's; return whether it applied."""
        before = getattr(self.args, name)
        if self.current(name) == value:
            return False
        if name in self.moved:
            direction, number = self.moved[name]
            if _direction(before, value) != direction or not isinstance(value, int | float | type(None)):
                self.kept.append(f"{name} stays {before!r} (attempt {number} moved it there)")
                return False
        self.changes = [c for c in self.changes if c.argument != name]
        self.values[name] = value
        self.changes.append(Change(name, before, value, reason))
        return True

    def arguments(self) -> TrainingArguments:
        return TrainingArguments.model_validate({**self.args.model_dump(), **self.values})


# --- the remedies, each a dose ----------------------------------------------------------------------


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


IMBALANCE_DOSES: list[tuple[str, Any, str]] = [
    ("class_weighting", "inverse", "weight the loss so the small classes count as much as the large"),
    ("sampler", "balanced", "draw every class equally often in each batch"),
    ("tune_decision_rule", True, "move the decision threshold towards the classes the model neglects"),
]


def _against_imbalance(draft: _Draft) -> None:
    """The first imbalance remedy not yet applied: one per attempt, so none overshoots."""
    for name, value, reason in IMBALANCE_DOSES:
        if draft.set(name, value, reason):
            return


def _clean(draft: _Draft, audit: AuditEvidence) -> bool:
    rows = sorted(set(draft.current("excluded_training_rows")) | set(audit.droppable_rows))
    return draft.set(
        "excluded_training_rows",
        rows,
        f"the label audit flags {audit.flagged_training_share:.0%} of the training rows as likely mislabelled: train "
        f"without the {len(audit.droppable_rows)} it is surest of (validation and test rows stay as uploaded)",
    )


def may_clean(args: TrainingArguments, audit: AuditEvidence | None, min_flagged_share: float) -> bool:
    """Whether the clean-up applies: asked for, not done yet, and a material share of training rows flagged."""
    return (
        args.clean_flagged_rows
        and not args.excluded_training_rows
        and audit is not None
        and bool(audit.droppable_rows)
        and audit.flagged_training_share >= min_flagged_share
    )


def defaults_for(args: TrainingArguments) -> TrainingArguments:
    """fitgate's default recipe on the user's data, split and model: the candidate the user's own recipe faces."""
    return TrainingArguments.model_validate(
        {name: getattr(args, name) for name in TrainingArguments.model_fields if name in NOT_REMEDIES}
    )


# --- the search ------------------------------------------------------------------------------------


def _seen(history: list[Tried]) -> str:
    last = history[-1]
    now = ", ".join(last.verdicts) or "passed"
    text = f"attempt {len(history)}: {now} (validation macro-F1 {last.validation_macro_f1:.3f})"
    if len(history) > 1:
        before = history[-2]
        fixed = [v for v in before.verdicts if v not in last.verdicts]
        if fixed:
            text += f"; the previous attempt's {', '.join(fixed)} is fixed"
        trend = last.validation_macro_f1 - before.validation_macro_f1
        text += f"; {'up' if trend >= 0 else 'down'} {abs(trend):.3f} from attempt {len(history) - 1}"
    return text


def _stalled(history: list[Tried]) -> bool:
    """The last remedy left the same findings and bought no validation macro-F1."""
    if len(history) < 2:
        return False
    last, before = history[-1], history[-2]
    return (
        set(last.verdicts) == set(before.verdicts) and last.validation_macro_f1 < before.validation_macro_f1 + MIN_GAIN
    )


def next_attempt(history: list[Tried], user_args: TrainingArguments, min_flagged_share: float) -> Remedy:
    """The next attempt after ``history`` (every attempt so far, oldest first), each change with its reason.

    ``user_args`` are the arguments the job was submitted with; ``min_flagged_share`` the share of
    flagged training rows that makes the clean-up worth an attempt.
    """
    last = history[-1]
    verdicts, args, audit = list(last.verdicts), last.arguments, last.audit
    seen = _seen(history)
    if last.passed:
        if any(t.arguments.excluded_training_rows for t in history) or not may_clean(args, audit, min_flagged_share):
            return Remedy(verdicts, None, reason="the run passed the gate: there is nothing to repair", seen=seen)
        assert audit is not None  # may_clean
        draft = _Draft(args, history)
        _clean(draft, audit)
        return Remedy(
            verdicts,
            draft.arguments(),
            draft.changes,
            reason="it passed, but with labels the audit doubts: one attempt without them, and the better of the two "
            "on validation is exported",
            seen=seen,
        )
    if any(t.passed for t in history[:-1]):
        return Remedy(
            verdicts,
            None,
            reason="an earlier attempt passed the gate and is exported; the clean-up it tried did not pass",
            seen=seen,
        )
    if audit is not None and audit.labels_unrelated and {"no_skill", "underfit", "degenerate"} & set(verdicts):
        return Remedy(
            verdicts,
            None,
            reason="the label column does not predict from the text: " + audit.describe() + "; no training "
            "recipe can learn such labels: check that the label column belongs to these texts "
            "(label_issues.csv lists the rows whose labels look most wrong)",
            seen=seen,
        )

    draft = _Draft(args, history)
    treated = "" if _stalled(history) else _treat(draft, args, verdicts, audit, min_flagged_share, last.imbalance)
    if draft.changes:
        return Remedy(verdicts, draft.arguments(), draft.changes, reason=treated, seen=seen, kept=draft.kept)
    defaults = defaults_for(user_args)
    if all(t.arguments != defaults.model_copy(update={"excluded_training_rows": t.arguments.excluded_training_rows})
           for t in history):  # fmt: skip
        restart = defaults.model_copy(update={"excluded_training_rows": args.excluded_training_rows})
        changes = [
            Change(name, getattr(args, name), getattr(restart, name), "fitgate's default")
            for name in TrainingArguments.model_fields
            if getattr(args, name) != getattr(restart, name)
        ]
        why = "the remedies stopped helping" if _stalled(history) else "no targeted remedy is left"
        return Remedy(
            verdicts,
            restart,
            changes,
            reason=f"{why}: fitgate's default arguments are the last candidate",
            seen=seen,
            kept=draft.kept,
        )
    stop = (
        f"the remedies for {', '.join(verdicts)} left the same findings and did not raise validation macro-F1 "
        f"({history[-2].validation_macro_f1:.3f} -> {last.validation_macro_f1:.3f}): a further attempt is unlikely "
        "to do better"
        if _stalled(history)
        else f"every remedy fitgate applies for {', '.join(verdicts)} is already in this run's arguments "
        "or would undo what an earlier attempt fixed"
    )
    return Remedy(verdicts, None, reason=stop + "; the data itself needs attention", seen=seen, kept=draft.kept)


def _treat(
    draft: _Draft,
    args: TrainingArguments,
    verdicts: list[str],
    audit: AuditEvidence | None,
    min_flagged_share: float,
    imbalance: float,
) -> str:
    """Apply the remedies for what caused the findings; return the reasoning in a sentence."""
    found = set(verdicts)
    noisy = may_clean(args, audit, min_flagged_share) and audit is not None
    if "overfit" in found:
        _against_overfitting(draft, args)
        if noisy and audit is not None:
            _clean(draft, audit)
            return "overfit with labels the audit doubts: regularize, and train without the doubted rows"
        return "overfit: regularize and stop early"
    if "underfit" in found:
        _against_underfitting(draft, args)
        if imbalance >= IMBALANCED and args.class_weighting == "none":
            # training macro-F1 below the floor on imbalanced classes with an unweighted loss is the majority
            # class winning: the default weighting is part of training properly (banking77's 1:20 scenario)
            draft.set("class_weighting", DEFAULTS.class_weighting, "imbalanced classes: the default class weights")
        return (
            "degenerate because it hardly trained: train it properly first, imbalance remedies wait"
            if "degenerate" in found
            else "underfit: larger steps and longer training, keeping earlier fixes"
        )
    if noisy and audit is not None and found & LACKS_SKILL:
        _clean(draft, audit)
        return "lacks skill with labels the audit doubts: train without the doubted rows first"
    if "degenerate" in found and imbalance >= IMBALANCED:
        _against_imbalance(draft)
        return "degenerate with a trained model on imbalanced classes: the next imbalance remedy, one at a time"
    if found & (LACKS_SKILL | {"degenerate"}):
        _against_underfitting(draft, args)
        draft.set(
            "num_train_epochs",
            min(MAX_EPOCHS_FOR_SKILL, max(2 * args.num_train_epochs, DEFAULTS.num_train_epochs)),
            "it trained but has not learned enough yet: twice the epochs (early stopping still ends it sooner)",
        )
        return (
            "degenerate on balanced classes: not an imbalance but too little training, so larger steps and longer"
            if "degenerate" in found
            else "lacks skill: larger steps and longer training, keeping earlier fixes"
        )
    return ""


THIN_CLASS_ROWS = 20  # fewer training examples than this is "too few" when the search gives up
SLOPE_TARGET_F1 = 0.8  # the F1 the advice extrapolates to when no class with enough data shows what is reachable


def more_examples_advice(names: list[str], train_counts: list[int], validation_f1: list[float]) -> str:
    """Which classes have too few training examples, and about how many more would help.

    The estimate reads the per-class learning curve across classes: validation F1 against the
    log of each class's training examples, fitted by a line. Where F1 rises with examples, the
    line says how many a thin class needs to reach what the well-fed classes score (at least
    ``SLOPE_TARGET_F1``); where it shows no slope, the advice is the floor ``THIN_CLASS_ROWS``.
    """
    import numpy as np

    thin = [i for i, n in enumerate(train_counts) if n < THIN_CLASS_ROWS]
    if not thin:
        return ""
    counts = np.array(train_counts, dtype=float)
    f1 = np.array(validation_f1, dtype=float)
    seen = counts > 0
    fed = [i for i in range(len(names)) if i not in thin]
    target = max(SLOPE_TARGET_F1, float(np.median(f1[fed]))) if fed else SLOPE_TARGET_F1
    slope = 0.0
    if seen.sum() >= 4 and np.ptp(np.log(counts[seen])) > 0:
        slope, intercept = np.polyfit(np.log(counts[seen]), f1[seen], 1)
    worst = sorted(thin, key=lambda i: train_counts[i])[:10]
    if slope > 0.01:
        needed = {i: math.exp((min(target, 0.99) - intercept) / slope) for i in worst}
        more = {i: max(1, math.ceil(min(needed[i], 100 * THIN_CLASS_ROWS) - train_counts[i])) for i in worst}
        how = (
            f"across classes, validation F1 rises {slope * math.log(2):.2f} per doubling of training examples, so "
            f"to reach F1 {min(target, 0.99):.2f} these need about"
        )
    else:
        more = {i: THIN_CLASS_ROWS - train_counts[i] for i in worst}
        how = f"the classes' scores show no trend to extrapolate; bring each to at least {THIN_CLASS_ROWS}:"
    shown = ", ".join(f"{names[i]!r} ({train_counts[i]} now, +{more[i]})" for i in worst)
    rest = f" and {len(thin) - len(worst)} more" if len(thin) > len(worst) else ""
    return (
        f"{len(thin)} classes have fewer than {THIN_CLASS_ROWS} training examples, which no training recipe makes "
        f"up for; {how} {shown}{rest}"
    )
