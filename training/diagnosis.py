"""Fit diagnosis: read a run's learning curves and validation predictions, return verdicts.

Fit is judged relative to the task, not by absolute scores: the curve's own start (an
untrained head scores about ln K), how much of its improvement validation loss gave back,
and the best trivial baseline (majority class, stratified random) on the same labels.
Each finding carries its evidence and a remedy from the seed documents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from fitgate.settings import Settings
from training.curves import CurvePoint
from training.evaluation import label_macro_f1, macro_f1
from training.rundir import RunDirectory

Verdict = Literal[
    "overfit",
    "underfit",
    "no_skill",
    "degenerate",
    "below_baseline",
    "insufficient_validation",
    "accuracy_below_majority",
    "calibration_worse",
    "baseline_unchecked",
]

REMEDIES: dict[Verdict, str] = {
    "overfit": "add data or augmentation (--augment), strengthen regularization (--weight-decay, --dropout), "
    "and keep early stopping with best-checkpoint restore on",
    "underfit": "raise the learning rate or train longer, unfreeze layers (--freeze-layers 0), "
    "and check that the labels match the texts",
    "no_skill": "check that labels are consistent with the texts, add data, or raise the learning rate",
    "degenerate": "add examples of the missing classes, weight them (--class-weighting inverse) "
    "or resample per batch (--sampler balanced)",
    "insufficient_validation": "add labelled examples of these classes or raise --validation-size",
    "below_baseline": "train longer or with a higher learning rate, fix the labels label_issues.csv lists, or serve "
    "a simple classifier: a fine-tuned model should earn its cost",
    "accuracy_below_majority": "if the large class matters, turn off the tuned decision rule (--no-tune-decision-rule) "
    "or use milder class weights; macro-F1 trades some accuracy for the small classes on purpose",
    "calibration_worse": "read the model's confidences with care, or turn calibration off (--no-calibrate)",
    "baseline_unchecked": "keep the label audit on (--label-audit): it fits the simple classifier the gate "
    "compares with",
}


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    blocking: bool
    message: str
    evidence: dict[str, Any]
    remedy: str


@dataclass(frozen=True)
class Diagnosis:
    selected_step: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(f.blocking for f in self.findings)

    @property
    def blocking_verdicts(self) -> list[Verdict]:
        return [f.verdict for f in self.findings if f.blocking]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "blocking": self.blocking_verdicts, **asdict(self)}

    def summary(self) -> str:
        head = (
            "PASSED: the model may be exported"
            if self.passed
            else ("BLOCKED (" + ", ".join(self.blocking_verdicts) + "): the model will not be exported")
        )
        lines = [f"verdict: {head}"]
        for f in self.findings:
            tag = "blocks" if f.blocking else "warning"
            lines.append(f"  - {f.verdict} [{tag}]: {f.message}\n    remedy: {f.remedy}")
        return "\n".join(lines)


# --- baselines and confidence ---------------------------------------------------------------


def trivial_baseline_macro_f1(labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Expected macro-F1 of predictors that ignore the text, on these labels.

    Multi-label (a 0/1 matrix): per label, answering it always (F1 2p/(1+p)) or at random with its
    prior p (F1 p), macro-averaged over the labels: the per-label prior the model must beat.
    """
    if labels.ndim == 2:
        prior = labels.mean(axis=0) if len(labels) else np.zeros(num_classes)
        return {"always": float(np.mean(2 * prior / (1 + prior))), "by_prior": float(prior.mean())}
    prior = np.bincount(labels, minlength=num_classes) / len(labels)
    majority = float(2 * prior.max() / (1 + prior.max()) / num_classes)
    stratified = float(prior[prior > 0].sum() / num_classes)  # per-class F1 = p_k when guessing by the prior
    uniform = float(np.sum(2 * prior / num_classes / (prior + 1 / num_classes)) / num_classes)
    return {"majority": majority, "stratified": stratified, "uniform": uniform}


def bootstrap_macro_f1(
    labels: np.ndarray, predictions: np.ndarray, k: int, samples: int, seed: int
) -> tuple[float, float]:
    """One-sided 95% lower bound and the point estimate of macro-F1 (percentile bootstrap)."""
    rng = np.random.default_rng(seed)
    n = len(labels)

    def score(rows: np.ndarray | slice) -> float:
        if labels.ndim == 2:  # multi-label: rows resampled with all their labels
            return label_macro_f1(labels[rows], predictions[rows])
        return macro_f1(labels[rows], predictions[rows], k)

    stats = [score(idx) for idx in rng.integers(0, n, size=(samples, n))]
    return float(np.quantile(stats, 0.05)), score(slice(None))


# --- the rules ------------------------------------------------------------------------------


def _overfit(curve: list[CurvePoint], sel: CurvePoint, s: Settings) -> Finding | None:
    start = curve[0]
    upto = [p for p in curve if p.step <= sel.step]
    at_min = min(upto, key=lambda p: p.val_loss)
    improvement = start.val_loss - at_min.val_loss
    gap = sel.train_macro_f1 - sel.val_macro_f1
    giveback = (sel.val_loss - at_min.val_loss) / improvement if improvement > 1e-6 else 0.0
    train_kept_falling = sel.train_eval_loss < at_min.train_eval_loss
    diverged = train_kept_falling and giveback > s.gate_loss_giveback
    severely_diverged = train_kept_falling and giveback > s.gate_severe_loss_giveback
    memorized = sel.train_macro_f1 >= s.gate_memorized_train_f1 and gap > s.gate_memorized_f1_gap
    if not ((gap > s.gate_max_f1_gap and diverged) or severely_diverged or memorized or gap > s.gate_severe_f1_gap):
        return None
    return Finding(
        "overfit",
        True,
        f"at the exported checkpoint (epoch {sel.epoch:g}) training macro-F1 is {sel.train_macro_f1:.3f} but "
        f"validation only {sel.val_macro_f1:.3f} (gap {gap:.3f}); "
        + (
            f"validation loss was {at_min.val_loss:.3f} at epoch {at_min.epoch:g} and is {sel.val_loss:.3f} now "
            f"(gave back {giveback:.0%} of its improvement) while training loss fell from "
            f"{at_min.train_eval_loss:.3f} to {sel.train_eval_loss:.3f}"
            if at_min.step < sel.step
            else "the training data is memorised: validation does not confirm what training scores"
        ),
        {
            "epoch": sel.epoch,
            "f1_gap": gap,
            "f1_gap_threshold": s.gate_max_f1_gap,
            "severe_f1_gap_threshold": s.gate_severe_f1_gap,
            "memorized": memorized,
            "memorized_train_f1_threshold": s.gate_memorized_train_f1,
            "memorized_gap_threshold": s.gate_memorized_f1_gap,
            "val_loss_min": at_min.val_loss,
            "val_loss_min_epoch": at_min.epoch,
            "val_loss_at_checkpoint": sel.val_loss,
            "val_loss_giveback": giveback,
            "giveback_threshold": s.gate_loss_giveback,
            "severe_giveback_threshold": s.gate_severe_loss_giveback,
            "train_loss_kept_falling": train_kept_falling,
        },
        REMEDIES["overfit"],
    )


def _underfit(curve: list[CurvePoint], sel: CurvePoint, train_baseline: float, s: Settings) -> Finding | None:
    start = curve[0]
    drop = 1.0 - sel.train_eval_loss / start.train_eval_loss if start.train_eval_loss > 0 else 0.0
    floor = train_baseline + s.gate_train_f1_margin
    if drop >= s.gate_min_train_loss_drop and sel.train_macro_f1 >= floor:
        return None
    reasons = []
    if drop < s.gate_min_train_loss_drop:
        reasons.append(
            f"training loss fell only {drop:.0%} from its start ({start.train_eval_loss:.3f} -> "
            f"{sel.train_eval_loss:.3f}; at least {s.gate_min_train_loss_drop:.0%} expected)"
        )
    if sel.train_macro_f1 < floor:
        reasons.append(
            f"training macro-F1 is {sel.train_macro_f1:.3f}, below the floor {floor:.3f} "
            f"(best trivial baseline {train_baseline:.3f} + {s.gate_train_f1_margin})"
        )
    return Finding(
        "underfit",
        True,
        f"the model did not learn the training data at epoch {sel.epoch:g}: " + "; ".join(reasons),
        {
            "epoch": sel.epoch,
            "train_loss_start": start.train_eval_loss,
            "train_loss_at_checkpoint": sel.train_eval_loss,
            "train_loss_drop": drop,
            "min_train_loss_drop": s.gate_min_train_loss_drop,
            "train_macro_f1": sel.train_macro_f1,
            "train_macro_f1_floor": floor,
        },
        REMEDIES["underfit"],
    )


def _no_skill(labels: np.ndarray, predictions: np.ndarray, k: int, s: Settings, seed: int) -> Finding | None:
    baselines = trivial_baseline_macro_f1(labels, k)
    best_name, best = max(baselines.items(), key=lambda kv: kv[1])
    lower, point = bootstrap_macro_f1(labels, predictions, k, s.gate_bootstrap_samples, seed)
    if lower > best + s.gate_skill_margin:
        return None
    return Finding(
        "no_skill",
        True,
        f"validation macro-F1 is {point:.3f}, but its 95% lower bound {lower:.3f} does not beat the best trivial "
        f"baseline ({best_name}, {best:.3f}) by the required {s.gate_skill_margin}",
        {
            "val_macro_f1": point,
            "val_macro_f1_lower_bound": lower,
            "baselines": baselines,
            "margin": s.gate_skill_margin,
            "bootstrap_samples": s.gate_bootstrap_samples,
        },
        REMEDIES["no_skill"],
    )


def _class_support(labels: np.ndarray, predictions: np.ndarray, names: list[str], s: Settings) -> list[Finding]:
    k = len(names)
    if labels.ndim == 2:  # multi-label: per label, rows carrying it, rows answered with it, rows both
        support, predicted = labels.sum(axis=0), predictions.sum(axis=0)
        hits = (labels.astype(bool) & predictions.astype(bool)).sum(axis=0)
    else:
        support = np.bincount(labels, minlength=k)
        predicted = np.bincount(predictions, minlength=k)
        hits = np.bincount(labels[labels == predictions], minlength=k)
    findings = []
    kind = "labels" if labels.ndim == 2 else "classes"
    dead = [i for i in range(k) if support[i] >= s.gate_min_class_support and hits[i] == 0]
    always = []
    if labels.ndim == 2:
        # a label answered for every row (while some rows lack it) has collapsed the other way
        always = [
            i for i in range(k) if support[i] >= s.gate_min_class_support and predicted[i] == len(labels) > support[i]
        ]
    if always:
        shown = ", ".join(f"{names[i]!r} (on {support[i]} of {len(labels)} rows)" for i in always[:10])
        findings.append(
            Finding(
                "degenerate",
                True,
                f"{len(always)} labels are answered for every validation text, whatever it says: {shown}",
                {"labels_always_predicted": [names[i] for i in always], "rows": len(labels)},
                REMEDIES["degenerate"],
            )
        )
    if dead:
        shown = ", ".join(f"{names[i]!r} ({support[i]} examples, predicted {predicted[i]} times)" for i in dead[:10])
        findings.append(
            Finding(
                "degenerate",
                True,
                f"{len(dead)} {kind} are never recognised on validation (recall 0): {shown}",
                {
                    "classes": [names[i] for i in dead],
                    "support": [int(support[i]) for i in dead],
                    "min_support": s.gate_min_class_support,
                },
                REMEDIES["degenerate"],
            )
        )
    thin = [i for i in range(k) if support[i] < s.gate_min_class_support]
    if thin:
        shown = ", ".join(f"{names[i]!r} ({support[i]})" for i in thin[:10])
        findings.append(
            Finding(
                "insufficient_validation",
                False,
                f"{len(thin)} {kind} have fewer than {s.gate_min_class_support} validation examples, too few to "
                f"judge whether they are recognised: {shown}; the degenerate check skipped them",
                {"classes": [names[i] for i in thin], "support": [int(support[i]) for i in thin]},
                REMEDIES["insufficient_validation"],
            )
        )
    return findings


def diagnose(
    curve: list[CurvePoint],
    selected_step: int,
    val_labels: np.ndarray,
    val_predictions: np.ndarray,
    train_labels: np.ndarray,
    label_names: list[str],
    settings: Settings,
    seed: int = 0,
) -> Diagnosis:
    """All verdicts for the checkpoint at ``selected_step`` (the one that would be exported)."""
    k = len(label_names)
    sel = next(p for p in curve if p.step == selected_step)
    train_baseline = max(trivial_baseline_macro_f1(train_labels, k).values())
    findings = [
        f
        for f in (
            _overfit(curve, sel, settings),
            _underfit(curve, sel, train_baseline, settings),
            _no_skill(val_labels, val_predictions, k, settings, seed),
        )
        if f is not None
    ]
    findings += _class_support(val_labels, val_predictions, label_names, settings)
    return Diagnosis(selected_step, findings)


AUDIT_CITED_NOISE_SHARE = 0.05  # a finding names the label audit when it flags at least this share of rows
AUDIT_EXPLAINS = ("overfit", "underfit", "no_skill")  # verdicts that wrong labels cause


def cite_audit(diagnosis: Diagnosis, audit: dict[str, Any] | None) -> Diagnosis:
    """Add the label audit's evidence to the findings it explains: wrong labels are memorised (overfit)
    or cannot be learned (underfit, no skill), and the team can fix them from label_issues.csv."""
    if not audit:
        return diagnosis
    share = float(audit["estimated_noise_share"])
    if not audit["labels_unrelated"] and share < AUDIT_CITED_NOISE_SHARE:
        return diagnosis
    if audit["labels_unrelated"]:
        note = (
            f"the label audit finds the labels unrelated to the texts: a classifier of the texts' embeddings scores "
            f"macro-F1 {audit['out_of_sample_macro_f1']:.3f} on rows it did not see, no better than guessing without "
            f"the text ({audit['baseline_macro_f1']:.3f}); check that the label column belongs to these texts"
        )
    else:
        noisiest = sorted(audit["noise_share_by_class"].items(), key=lambda kv: -kv[1])[:3]
        note = (
            f"the label audit flags {share:.0%} of the training and validation labels as likely wrong "
            f"(most in {', '.join(f'{name!r} {v:.0%}' for name, v in noisiest)}); "
            "label_issues.csv lists them with suggested labels"
        )
    cited = [
        replace(
            f,
            message=f"{f.message}; {note}",
            evidence={**f.evidence, "label_noise_share": share, "labels_unrelated": audit["labels_unrelated"]},
        )
        if f.verdict in AUDIT_EXPLAINS
        else f
        for f in diagnosis.findings
    ]
    return replace(diagnosis, findings=cited)


def baseline_finding(model_f1: float, audit: dict[str, Any] | None, s: Settings) -> Finding | None:
    """The baseline check: a fine-tuned model must beat a simple classifier of the same texts on the same rows.

    The simple classifier is the label audit's: a K-fold logistic regression on the frozen base
    model's sentence embeddings and TF-IDF, each validation row scored by a fit that never saw it.
    """
    simple = audit.get("simple_validation_macro_f1") if audit else None
    if simple is None:
        return Finding(
            "baseline_unchecked",
            False,
            "the label audit was off, so the model was not compared with a simple classifier of the same texts",
            {},
            REMEDIES["baseline_unchecked"],
        )
    assert audit is not None
    # below, not "not above": where both are perfect (an easy task) nothing can be above, and a model that
    # matches the simple classifier elsewhere is a tie, not a loss (docs/GATE.md)
    if model_f1 >= simple + s.gate_baseline_margin:
        return None
    return Finding(
        "below_baseline",
        True,
        f"validation macro-F1 is {model_f1:.3f}, below the {simple:.3f} of a simple classifier (logistic regression "
        "on the base model's sentence embeddings and TF-IDF) on the same rows: it would serve better than this model",
        {
            "val_macro_f1": model_f1,
            "simple_val_macro_f1": float(simple),
            "margin": s.gate_baseline_margin,
            "simple_classifier": audit.get("method"),
            "validation_rows": audit.get("validation_rows"),
        },
        REMEDIES["below_baseline"],
    )


def serving_warnings(labels: np.ndarray, predictions: np.ndarray, validation: dict[str, Any]) -> list[Finding]:
    """Warnings a team should read before serving: accuracy below the majority answer, calibration made worse."""
    findings = []
    single_label = labels.ndim == 1  # multi-label has no majority answer to compare with
    majority = float(np.bincount(labels).max() / len(labels)) if len(labels) and single_label else 0.0
    accuracy = float((labels == predictions).mean()) if len(labels) and single_label else 0.0
    if accuracy < majority:
        findings.append(
            Finding(
                "accuracy_below_majority",
                False,
                f"validation accuracy {accuracy:.3f} is below always answering the largest class ({majority:.3f}): "
                "the model favours the small classes at the large one's expense",
                {"accuracy": accuracy, "majority_accuracy": majority},
                REMEDIES["accuracy_below_majority"],
            )
        )
    before, after = validation.get("ece_before_calibration"), validation.get("ece_after_calibration")
    if before is not None and after is not None and after > before:
        findings.append(
            Finding(
                "calibration_worse",
                False,
                f"the confidences are less calibrated after calibration and the decision rule (expected "
                f"calibration error {before:.3f} -> {after:.3f} on validation)",
                {"ece_before_calibration": before, "ece_after_calibration": after},
                REMEDIES["calibration_worse"],
            )
        )
    return findings


def diagnose_run(run: RunDirectory, settings: Settings) -> Diagnosis:
    """Diagnose a finished run directory with the operator's thresholds, citing its label audit.

    Besides the curves' verdicts: the baseline check against the label audit's simple classifier
    (blocking), and the warnings on accuracy and calibration.
    """
    curve, selected = run.curves
    diagnosis = diagnose(
        curve,
        selected,
        run.validation_labels,
        run.validation_predictions,
        run.train_labels,
        run.label_names,
        settings,
        seed=run.arguments.seed,
    )
    report = run.report
    audit = report.get("label_audit")
    validation = report.get("validation") or {}
    baseline = baseline_finding(float(validation.get("macro_f1", 0.0)), audit, settings)
    extra = [baseline] if baseline else []
    extra += serving_warnings(run.validation_labels, run.validation_predictions, validation)
    return cite_audit(replace(diagnosis, findings=[*diagnosis.findings, *extra]), audit)
