"""The label audit: which rows' labels disagree with their texts, and how noisy each class is.

Every training and validation row gets out-of-sample class probabilities — from a model that
never saw that row — and ``cleanlab`` (confident learning, Northcutt et al. 2021) flags the rows
whose given label is unlikely under them. Out-of-sample is what makes the flags honest: a
fine-tuned model scores its own training rows after memorising them, labels and all.

How the probabilities are made (``docs/BENCHMARKS.md`` compares the ways measured): K-fold
logistic regression on two views of each text side by side, the frozen base model's mean-pooled
sentence embedding (all-MiniLM-L6-v2 is a sentence-embedding model) and TF-IDF word and bigram
weights. One forward pass over the data (on the training device), then seconds of scikit-learn.
Of the ways measured (docs/BENCHMARKS.md §7), the combination with C = 10 and cleanlab's
``filter_by="both"`` (a row must fail both the per-class and the noise-rate pruning) had the
highest recall at a precision above 0.85 on both data sets; the embeddings alone at C = 1 are
cheaper (on sms_spam also more precise), but miss more errors.

The logistic regression is the audit's cost with many classes (77 on banking77: a million
weights, most of the audit's time). Two things make it cheaper without changing what it finds:
the features are float32 (the same flags, about a fifth less time), and each fold stops after
``MAX_ITERATIONS`` L-BFGS steps instead of converging to a tolerance (40 to 45 steps). The flags
need the rows ranked by how unlikely their labels are, not the optimum's last digits: at 30 steps
precision and recall stay within 0.01 of the converged fit's on both benchmark sets, at 20 the
precision drops by 0.05 on banking77. A step cap, unlike a looser tolerance, bounds the cost on
any data and cannot stop after the first step (a tolerance of 3e-3 does on banking77).

Multi-label data (a 0/1 matrix of labels per row) takes the same path per label: one-vs-rest
logistic regression on the same features, K-fold, and cleanlab's multi-label issue finder
(``cleanlab.multilabel_classification``); the suggested labels are those whose out-of-sample
probability reaches 0.5.

The same probabilities answer a second question: whether the labels are predictable from the
texts at all. When the out-of-sample classifier does no better than guessing without reading
the text, no training recipe can help, and the remedy policy says so instead of retrying.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from fitgate.spreadsheet import write_csv_for_people
from training.data import LabelledData
from training.evaluation import label_macro_f1, macro_f1

log = logging.getLogger(__name__)

FOLDS = 5
REGULARIZATION_C = 10.0  # inverse L2 strength of the logistic regression; C = 1 and 10 compared in bench/label_audit.py
MAX_ITERATIONS = 30  # L-BFGS steps per fold: the converged fit's flags, nearly, in ~3/4 of its time (see above)
FILTER_BY = "both"
EMBEDDING_BATCH = 64
MAX_EMBEDDING_TOKENS = 128  # sentence embeddings need the gist, not every token of a long text
UNRELATED_MARGIN = 0.05  # out-of-sample macro-F1 within this of the trivial baseline: labels unrelated to texts
MAX_LISTED = 5000  # rows written to label_issues.csv at most, lowest quality first
METHOD = "5-fold logistic regression (30 L-BFGS steps) on MiniLM embeddings + TF-IDF, cleanlab filter_by=both"
ISSUE_COLUMNS = ["row", "split", "text", "given_label", "suggested_label", "quality_score"]


@dataclass(frozen=True)
class AuditedRows:
    """The rows the audit looks at: training and validation together, with their place in the upload."""

    texts: list[str]
    labels: NDArray[np.intp]  # class index; for multi-label rows a 0/1 matrix, rows x labels
    rows: list[int | None]  # row number in the uploaded file (as in error messages), when known
    splits: list[str]  # "train" or "validation"


@dataclass(frozen=True)
class LabelAudit:
    """What the audit found; saved in the report and the job's result."""

    method: str
    rows_audited: int
    flagged: int
    estimated_noise_share: float
    noise_share_by_class: dict[str, float]
    out_of_sample_macro_f1: float
    baseline_macro_f1: float
    labels_unrelated: bool
    seconds: float
    # the audit's classifier fitted on the training rows alone, scored on the validation rows: the gate's baseline
    validation_rows: int = 0
    simple_validation_macro_f1: float | None = None
    flagged_training_rows: int = 0
    training_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sentence_embeddings(
    base_model: str, texts: Sequence[str], max_length: int = MAX_EMBEDDING_TOKENS, device: str = "cpu"
) -> NDArray[Any]:
    """Mean-pooled, L2-normalised last hidden states of the frozen base model (no classification head).

    ``device`` is a torch device string ("cpu", "cuda", "cuda:0"): the training run passes its own.
    """
    import torch

    from training.modeling import load_encoder, load_tokenizer

    tokenizer = load_tokenizer(base_model)
    model = load_encoder(base_model)
    cast(torch.nn.Module, model).to(device)  # in place; transformers types .to() by its dtype overload only
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: little padding
    out: NDArray[Any] | None = None
    with torch.inference_mode():
        for start in range(0, len(order), EMBEDDING_BATCH):
            chunk = order[start : start + EMBEDDING_BATCH]
            batch = tokenizer(
                [texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=1)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[chunk] = pooled.float().cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def text_features(texts: Sequence[str], embeddings: NDArray[Any]) -> Any:
    """Embeddings and TF-IDF (words and bigrams) side by side: a sparse float32 matrix, one row per text."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32).fit_transform(texts)
    return hstack([csr_matrix(embeddings, dtype=np.float32), tfidf], dtype=np.float32).tocsr()


def out_of_sample_probabilities(
    features: Any,
    labels: NDArray[np.intp],
    num_classes: int,
    seed: int,
    regularization: float = REGULARIZATION_C,
    max_iterations: int = MAX_ITERATIONS,
) -> NDArray[np.float64]:
    """Class probabilities for every row from a logistic regression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    counts = np.bincount(labels, minlength=num_classes)
    folds = int(max(2, min(FOLDS, counts[counts > 0].min())))
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float64)
    # a class with fewer rows than folds is missing from some folds' training part; its column stays 0 there
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # one BLAS thread: L-BFGS's vector updates over ~a million weights gain nothing from a second thread (same wall
    # time, twice the CPU, measured) and slow down badly when another process holds a core
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # "the least populated class has only 1 member" (handled above); not converged: MAX_ITERATIONS, by design
        warnings.simplefilter("ignore")
        for fit, held_out in splitter.split(np.zeros(len(labels)), labels):
            classifier = LogisticRegression(C=regularization, max_iter=max_iterations)
            classifier.fit(features[fit], labels[fit])
            probabilities[np.ix_(held_out, classifier.classes_)] = classifier.predict_proba(features[held_out])
    return probabilities


def simple_classifier_macro_f1(
    features: Any, labels: NDArray[np.intp], trained_on: NDArray[np.bool_], scored_on: NDArray[np.bool_], k: int
) -> float | None:
    """Macro-F1 on the ``scored_on`` rows of the same logistic regression fitted on the ``trained_on`` rows only.

    The gate's baseline (docs/GATE.md): the fine-tuned model's competitor learns from exactly the rows the
    model learned from, so a larger separate validation file cannot lend it data the model never saw.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    if not scored_on.any() or len(np.unique(labels[trained_on])) < 2:
        return None
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # not converged: MAX_ITERATIONS, by design
        classifier = LogisticRegression(C=REGULARIZATION_C, max_iter=MAX_ITERATIONS)
        classifier.fit(features[trained_on], labels[trained_on])
        predicted = classifier.predict(features[scored_on])
    return macro_f1(labels[scored_on], predicted, k)


def find_issues(
    labels: NDArray[np.intp], probabilities: NDArray[np.float64], filter_by: str = FILTER_BY
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """cleanlab's flags (confident learning, ``FILTER_BY``) and label quality scores (self-confidence)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes with few examples; the flags stay valid
        flagged = find_label_issues(labels, probabilities, filter_by=filter_by, n_jobs=1)
        quality = get_label_quality_scores(labels, probabilities)
    return np.asarray(flagged, dtype=bool), np.asarray(quality, dtype=np.float64)


def audit_labels(
    data: AuditedRows,
    label_names: list[str],
    features: Any,
    output: Path,
    *,
    method: str,
    seed: int,
    started: float | None = None,
) -> LabelAudit:
    """Flag the rows whose labels look wrong, write ``output`` (label_issues.csv), return the summary."""
    started = time.perf_counter() if started is None else started
    if data.labels.ndim == 2:
        return audit_label_sets(data, label_names, features, output, method=method, seed=seed, started=started)
    k = len(label_names)
    probabilities = out_of_sample_probabilities(features, data.labels, k, seed)
    flagged, quality = find_issues(data.labels, probabilities)
    suggested = probabilities.argmax(axis=1)
    write_issues(output, data, label_names, flagged, quality, suggested)
    prior = np.bincount(data.labels, minlength=k) / len(data.labels)
    baseline = float(prior[prior > 0].sum() / k)  # stratified guessing: the best macro-F1 without the text
    oos_f1 = macro_f1(data.labels, suggested, k)
    in_validation = np.array([split == "validation" for split in data.splits], dtype=bool)
    in_training = ~in_validation
    return LabelAudit(
        method=method,
        rows_audited=len(data.labels),
        flagged=int(flagged.sum()),
        estimated_noise_share=float(flagged.mean()),
        noise_share_by_class={
            name: float(flagged[data.labels == i].mean()) if (data.labels == i).any() else 0.0
            for i, name in enumerate(label_names)
        },
        out_of_sample_macro_f1=oos_f1,
        baseline_macro_f1=baseline,
        labels_unrelated=oos_f1 <= max(baseline, 1.0 / k) + UNRELATED_MARGIN,
        seconds=time.perf_counter() - started,
        validation_rows=int(in_validation.sum()),
        simple_validation_macro_f1=simple_classifier_macro_f1(features, data.labels, in_training, in_validation, k),
        flagged_training_rows=int(flagged[in_training].sum()),
        training_rows=int(in_training.sum()),
    )


MULTI_LABEL_METHOD = (
    "5-fold one-vs-rest logistic regression (30 L-BFGS steps) on MiniLM embeddings + TF-IDF, "
    "cleanlab multilabel_classification"
)
LABEL_SET_SEPARATOR = ";"  # how label_issues.csv writes a row's labels


def out_of_sample_label_probabilities(
    features: Any, targets: NDArray[np.intp], seed: int, train_rows: NDArray[np.bool_] | None = None
) -> NDArray[np.float64]:
    """Per-label probabilities for every row from one-vs-rest logistic regressions fitted on the other folds
    (or, with ``train_rows``, fitted on those rows and applied to all)."""
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    n, k = targets.shape
    probabilities = np.zeros((n, k), dtype=np.float64)
    if train_rows is not None:
        fits = [(np.flatnonzero(train_rows), np.arange(n))]
    else:
        fits = list(KFold(n_splits=min(FOLDS, n), shuffle=True, random_state=seed).split(np.zeros(n)))
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # not converged (MAX_ITERATIONS, by design); labels absent from a fold
        for fit, held_out in fits:
            probabilities[held_out] = _one_vs_rest(features[fit], targets[fit], features[held_out])
    return probabilities


def _one_vs_rest(features: Any, targets: NDArray[np.intp], scored: Any) -> NDArray[np.float64]:
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((scored.shape[0], targets.shape[1]), dtype=np.float64)
    for j in range(targets.shape[1]):
        column = targets[:, j]
        if column.min() == column.max():  # a label always (or never) present here: its prior is all there is
            out[:, j] = float(column[0]) if len(column) else 0.0
            continue
        classifier = LogisticRegression(C=REGULARIZATION_C, max_iter=MAX_ITERATIONS)
        classifier.fit(features, column)
        out[:, j] = classifier.predict_proba(scored)[:, 1]
    return out


def audit_label_sets(
    data: AuditedRows,
    label_names: list[str],
    features: Any,
    output: Path,
    *,
    method: str,
    seed: int,
    started: float,
) -> LabelAudit:
    """The multi-label audit: cleanlab's multi-label issue finder on out-of-sample per-label probabilities."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    targets = data.labels
    given = [np.flatnonzero(row).tolist() for row in targets]
    probabilities = out_of_sample_label_probabilities(features, targets, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about labels with few examples; the flags stay valid
        flagged = np.asarray(find_label_issues(given, probabilities, filter_by=FILTER_BY, n_jobs=1), dtype=bool)
        quality = np.asarray(get_label_quality_scores(given, probabilities), dtype=np.float64)
    suggested = probabilities >= 0.5
    write_issues(output, data, label_names, flagged, quality, suggested)
    prior = targets.mean(axis=0)
    baseline = float(np.mean(2 * prior / (1 + prior)))  # answering every label always: the best without the text
    oos_f1 = label_macro_f1(targets, suggested)
    in_validation = np.array([split == "validation" for split in data.splits], dtype=bool)
    in_training = ~in_validation
    simple = None
    if in_validation.any() and in_training.any():
        fitted = out_of_sample_label_probabilities(features, targets, seed, train_rows=in_training)
        simple = label_macro_f1(targets[in_validation], fitted[in_validation] >= 0.5)
    return LabelAudit(
        method=method if method != METHOD else MULTI_LABEL_METHOD,
        rows_audited=len(targets),
        flagged=int(flagged.sum()),
        estimated_noise_share=float(flagged.mean()),
        noise_share_by_class={
            name: float(flagged[targets[:, j] == 1].mean()) if targets[:, j].any() else 0.0
            for j, name in enumerate(label_names)
        },
        out_of_sample_macro_f1=oos_f1,
        baseline_macro_f1=baseline,
        labels_unrelated=oos_f1 <= baseline + UNRELATED_MARGIN,
        seconds=time.perf_counter() - started,
        validation_rows=int(in_validation.sum()),
        simple_validation_macro_f1=simple,
        flagged_training_rows=int(flagged[in_training].sum()),
        training_rows=int(in_training.sum()),
    )


def write_issues(
    path: Path,
    data: AuditedRows,
    label_names: list[str],
    flagged: NDArray[np.bool_],
    quality: NDArray[np.float64],
    suggested: NDArray[Any],
) -> None:
    """The flagged rows, most doubtful first: what a team opens to fix its labels (several labels joined by
    ``LABEL_SET_SEPARATOR`` for multi-label rows)."""

    def named(value: Any) -> str:
        if np.ndim(value) == 1:
            return LABEL_SET_SEPARATOR.join(label_names[j] for j in np.flatnonzero(value))
        return label_names[int(value)]

    order = sorted(np.flatnonzero(flagged).tolist(), key=lambda i: quality[i])[:MAX_LISTED]
    write_csv_for_people(
        path,
        ISSUE_COLUMNS,
        (
            [
                data.rows[i] if data.rows[i] is not None else "",
                data.splits[i],
                data.texts[i],
                named(data.labels[i]),
                named(suggested[i]),
                f"{quality[i]:.4f}",
            ]
            for i in order
        ),
    )


def audited_rows(train: LabelledData, validation: LabelledData, label_names: list[str]) -> AuditedRows:
    """Training and validation rows together (the test split stays untouched until export)."""
    parts = (("train", train), ("validation", validation))
    return AuditedRows(
        texts=[t for _, part in parts for t in part.texts],
        labels=np.concatenate([part.targets(label_names) for _, part in parts]),
        rows=[part.row(i) for _, part in parts for i in range(len(part))],
        splits=[name for name, part in parts for _ in range(len(part))],
    )


def audit_run(
    base_model: str,
    train: LabelledData,
    validation: LabelledData,
    label_names: list[str],
    output: Path,
    seed: int,
    device: str = "cpu",
) -> LabelAudit:
    """The audit of one run: embeddings of the frozen base model (on ``device``), K-fold logistic regression,
    cleanlab."""
    started = time.perf_counter()
    data = audited_rows(train, validation, label_names)
    features = text_features(data.texts, sentence_embeddings(base_model, data.texts, device=device))
    audit = audit_labels(data, label_names, features, output, method=METHOD, seed=seed, started=started)
    log.info(
        "label audit: %d of %d rows flagged (%.1f%%) in %.1fs",
        audit.flagged,
        audit.rows_audited,
        100 * audit.estimated_noise_share,
        audit.seconds,
    )
    return audit
