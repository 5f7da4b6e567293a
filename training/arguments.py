"""Training arguments: one validated, serializable model shared by the CLI and the service.

Names follow Hugging Face ``TrainingArguments`` where one exists, so users' habits carry
over. Every default lives here, once, with the reason for it; the whole object is saved
into every run directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fitgate.errors import ArgumentsError

ClassWeighting = Literal["auto", "none", "inverse", "effective"]
Task = Literal["auto", "single_label", "multi_label"]
LABEL_SEPARATORS = (";", ",", "|", "/", "+", "\t")  # what a label cell may join several labels with


class TrainingArguments(BaseModel):
    """Everything that decides how a fine-tune runs (data, model, optimisation, imbalance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- data ---------------------------------------------------------------------------
    text_column: str | None = Field(
        None, description="Column holding the text; auto-detected (text, sentence, content, ...) if unset."
    )
    label_column: str | None = Field(
        None, description="Column holding the label; auto-detected (label, class, category, intent, ...) if unset."
    )
    task: Task = Field(
        "auto",
        description="single_label: one label per text; multi_label: several (label cells joined by label_separator, "
        "or JSON lists); auto: multi_label when any label cell holds the separator or a JSON list.",
    )
    label_separator: str = Field(
        ";",
        description=f"What joins several labels in one cell of a multi-label file; one of {list(LABEL_SEPARATORS)}.",
    )
    allow_empty_labels: bool = Field(
        False,
        description="Multi-label only: rows with no label are kept as negatives for every label (e.g. a story with "
        "no topic). Off: such rows are refused, since an empty cell is more often a labelling gap.",
    )
    validation_size: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of rows held out for validation when no validation file is given."
    )
    test_size: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of rows held out for the final test report (0 disables it)."
    )
    max_length: int = Field(
        128,
        ge=8,
        le=512,
        description="Tokens per text; longer texts are truncated. Batches are padded only to their longest text.",
    )
    long_texts: Literal["auto", "truncate", "head_tail", "chunks"] = Field(
        "auto",
        description="Texts longer than max_length tokens: truncate reads their first tokens; head_tail the first "
        "quarter of the window from the head and the rest from the tail; chunks reads them whole in windows sharing "
        "long_text_stride tokens, pooling the windows' answers (mean; max for multi-label), in training, validation, "
        "/predict and batch jobs alike. auto: chunks when at least 10% of the training texts are longer, else "
        "truncate (the data report says which, and why).",
    )
    long_text_stride: int = Field(
        32,
        ge=0,
        le=256,
        description="chunks: tokens each window shares with the next, so no phrase is cut in two "
        "(at most half a window).",
    )
    long_text_max_windows: int = Field(
        8,
        ge=2,
        le=64,
        description="chunks: the most windows one text is read in (the first ones and the last); a longer text's "
        "middle is skipped. Bounds the cost of one text at this many times a short one.",
    )
    max_text_chars: int = Field(
        20_000,
        ge=100,
        description="Rows with a longer text are rejected: such rows are usually a broken file, not data.",
    )
    max_empty_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Empty or whitespace-only texts are dropped and counted; above this share the file is rejected.",
    )

    # --- model --------------------------------------------------------------------------
    base_model: str | None = Field(
        None,
        description="The base model by name (minilm, multilingual-e5-small, or one the operator added in "
        "FITGATE_BASE_MODELS; the CLI also takes a local Hugging Face directory); default: the first that reads "
        "the text, said in the data report.",
    )
    dropout: float | None = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Hidden and attention dropout, overriding the model config (None keeps the config's).",
    )
    freeze_layers: int = Field(
        0, ge=0, description="Freeze the embeddings and the lowest N encoder layers (a remedy for tiny data sets)."
    )
    freeze_word_embeddings: bool | None = Field(
        None,
        description="Keep the word-embedding matrix as pre-trained. None: frozen when the vocabulary holds over "
        "100,000 pieces (multilingual-e5-small's 250k rows are four fifths of its parameters: training them cost "
        "2.05 s per step against 0.95 s frozen, batch 32 on 2 cores, and a fine-tune sees few of the rows).",
    )

    # --- optimisation ---------------------------------------------------------------------
    learning_rate: float = Field(
        1e-4,
        gt=0.0,
        le=1e-2,
        description="Peak AdamW learning rate. MiniLM-sized models want more than BERT-base's 2e-5.",
    )
    num_train_epochs: int = Field(
        3,
        ge=1,
        le=100,
        description="Upper bound on epochs; early stopping may end the run sooner. 3 (the Trainer's default) "
        "matched 6 in macro-F1 on imbalanced banking77 in docs/BENCHMARKS.md at half the time.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs; for smoke runs)."
    )
    per_device_train_batch_size: int = Field(32, ge=1, le=1024, description="Training batch size.")
    per_device_eval_batch_size: int = Field(128, ge=1, le=4096, description="Evaluation batch size.")
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="Decoupled (AdamW) weight decay; never applied to biases or LayerNorm."
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of steps spent warming up the learning rate.")
    lr_scheduler_type: Literal["linear", "cosine"] = Field("linear", description="Decay after warmup.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping by global norm.")
    label_smoothing_factor: float = Field(
        0.1, ge=0.0, lt=0.5, description="Label smoothing; temperature scaling afterwards keeps confidences calibrated."
    )
    layerwise_lr_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Multiply the learning rate by this per layer going down (1.0 = off)."
    )

    # --- evaluation, early stopping, checkpoint selection ---------------------------------
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Evaluate every N steps; default: every epoch, or every long_epoch_eval_steps in long epochs.",
    )
    long_epoch_steps: int = Field(
        1000,
        ge=1,
        description="Without eval_steps, epochs of more optimizer steps than this are evaluated every "
        "long_epoch_eval_steps steps, so early stopping sees several points in a run of few long epochs.",
    )
    long_epoch_eval_steps: int = Field(
        500, ge=1, description="Evaluation interval in steps for epochs longer than long_epoch_steps."
    )
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many evaluations without macro-F1 gain (None disables early stopping)."
    )
    early_stopping_threshold: float = Field(
        0.001, ge=0.0, description="Smallest validation macro-F1 gain that counts as progress."
    )
    plateau_patience: int | None = Field(
        1,
        ge=1,
        description="Once the curve has flattened (see plateau_gain), stop after this many evaluations without "
        "gain instead of early_stopping_patience (None: always wait early_stopping_patience).",
    )
    plateau_gain: float = Field(
        0.005,
        ge=0.0,
        description="The curve counts as flattened when the best evaluation gained less than this validation "
        "macro-F1 over every evaluation before it.",
    )
    load_best_model_at_end: bool = Field(
        True, description="Restore the checkpoint with the best validation macro-F1 at the end."
    )
    train_eval_size: int | None = Field(
        None,
        ge=10,
        description="Training rows re-scored in eval mode at each evaluation (the generalization gap); default: "
        "as many as the validation rows, at least 256 and at most 1000, so both sides of the gap are about "
        "equally noisy and a small data set does not re-score its whole training split every epoch.",
    )

    # --- class imbalance -------------------------------------------------------------------
    class_weighting: ClassWeighting = Field(
        "auto",
        description="Loss class weights: auto = effective when the largest class is over 1.5x the smallest.",
    )
    effective_number_beta: float = Field(
        0.999, gt=0.0, lt=1.0, description="Beta of the effective number of samples (Cui et al. 2019)."
    )
    loss: Literal["cross_entropy", "focal"] = Field("cross_entropy", description="Training loss.")
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focusing parameter of the focal loss.")
    sampler: Literal["length_grouped", "balanced"] = Field(
        "length_grouped",
        description="length_grouped: shuffled batches of similar length; balanced: classes drawn equally often.",
    )
    augment: bool = Field(
        False,
        description="Random token deletion/swap on minority-class examples (off: it did not measurably help here).",
    )
    augment_below_share_of_largest: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="With augment, classes with fewer training examples than this share of the largest class "
        "count as minority classes and are augmented.",
    )
    tune_decision_rule: bool = Field(
        True, description="Tune a binary threshold or per-class logit bias on validation macro-F1."
    )
    calibrate: bool = Field(True, description="Fit a temperature on validation so reported confidences are calibrated.")

    # --- label audit and repair -----------------------------------------------------------
    label_audit: bool = Field(
        True,
        description="Flag rows whose labels look wrong (out-of-sample probabilities and cleanlab) into "
        "label_issues.csv, with the estimated share of noisy labels per class.",
    )
    remedy_attempts: int | None = Field(
        None,
        ge=0,
        le=5,
        description="Repair attempts after a blocked run, each with the remedies for its verdict (0 turns repair "
        "off; unset: the server's FITGATE_REMEDY_MAX_ATTEMPTS, which also caps what a request asks for).",
    )
    clean_flagged_rows: bool = Field(
        True,
        description="Let the repair try an attempt without the training rows the label audit flags as mislabelled "
        "(when it flags a material share; validation and test rows are never left out).",
    )
    excluded_training_rows: list[int] = Field(
        default_factory=list,
        max_length=1_000_000,
        description="Row numbers of the uploaded file (the header is row 1) left out of training; the clean-the-data "
        "remedy sets it from the label audit. Validation and test rows are never left out.",
    )

    # --- runtime ---------------------------------------------------------------------------
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="One seed for splits, sampler, augmentation and initialization (NumPy takes 0 .. 2^32-1).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when available.")
    cpu_bf16: bool = Field(
        False,
        description="On a CPU with native bf16 matrix units (AMX, AVX512-BF16), train and score under bf16 "
        "autocast; fp32 on other CPUs either way. Off by default: its quality has not yet been measured on such "
        "a CPU (GPUs always use bf16).",
    )

    @model_validator(mode="after")
    def _known_separator(self) -> TrainingArguments:
        if self.label_separator not in LABEL_SEPARATORS:
            raise ValueError(
                f"label_separator {self.label_separator!r} is not supported; use one of {list(LABEL_SEPARATORS)} "
                "(or give the labels as a JSON list in JSONL)"
            )
        return self

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> TrainingArguments:
        if self.validation_size + self.test_size >= 0.5:
            raise ValueError(
                f"validation_size + test_size is {self.validation_size + self.test_size:.2f}; "
                "keep it under 0.5 so most rows are left for training"
            )
        return self


def parse_arguments(values: dict[str, object]) -> TrainingArguments:
    """Validate raw values, turning pydantic's errors into one readable ArgumentsError."""
    try:
        return TrainingArguments.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()
        )
        raise ArgumentsError(f"invalid training arguments: {problems}") from exc


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    eval_every: int

    def epoch(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 3)


def plan_schedule(train_rows: int, args: TrainingArguments) -> Schedule:
    """Steps per epoch, the run's length, and how often it is evaluated."""
    steps_per_epoch = math.ceil(train_rows / args.per_device_train_batch_size)
    long_epoch = steps_per_epoch > args.long_epoch_steps
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        total_steps=args.max_steps or steps_per_epoch * args.num_train_epochs,
        eval_every=args.eval_steps or (args.long_epoch_eval_steps if long_epoch else steps_per_epoch),
    )
