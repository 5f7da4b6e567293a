"""The fine-tuning run, top to bottom in execution order.

setup -> data -> model -> optimizer and schedule -> evaluation helper -> checkpoint
selection -> loop (evaluate, early stop, keep best; an end-of-epoch checkpoint to resume
from) -> restore best -> calibrate -> final scores -> save. :func:`fine_tune`, at the
bottom, is the outline; the helpers above it are the steps, in the order it takes them.
Writing the run directory belongs to :mod:`training.rundir`, the resume file's contents to
:mod:`training.checkpoint`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from fitgate.devices import usable_cpus
from fitgate.errors import DeviceUnavailable, TrainingCancelled
from fitgate.settings import Settings
from training import batching, evaluation, losses, modeling
from training.arguments import Schedule, TrainingArguments, plan_schedule
from training.audit import audit_run
from training.base_models import BaseModels, choose_base_model
from training.checkpoint import Checkpoint, LossWindow, RandomState, load_checkpoint, remove_checkpoint, save_checkpoint
from training.curves import CurvePoint, save_curves
from training.data import LabelledData, read_labelled_file
from training.decision import decide, softmax
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.rundir import (
    CURVES,
    LABEL_ISSUES,
    TEST_CSV,
    RunDirectory,
    RunResult,
    SplitScores,
    record_test_scores,
    save_run,
)
from training.splits import Splits, load_splits

log = logging.getLogger(__name__)

# --- setup ---------------------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    """The device to train on: ``auto`` takes CUDA when this machine has it."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "the training argument device is 'cuda', but this server has no CUDA device: "
            "use device 'auto' (uses a GPU when there is one) or 'cpu'"
        )
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _configure_runtime(device: torch.device, seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # use every core this process may run on (torch defaults to physical cores only)
        torch.set_num_threads(usable_cpus())


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16): elsewhere bf16 is emulated, slower."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def autocast_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """bf16 (fp16 on GPUs without it) on a GPU; on a CPU, bf16 only when asked for and native, else fp32."""
    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16 and cpu_has_bf16_units() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def mixed_precision(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision when ``dtype`` is set, plain fp32 otherwise (the same rule in training and scoring)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One split, tokenized once: token ids and class indices, row for row."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int]) -> Encoded:
        return Encoded([self.ids[i] for i in rows], [self.labels[i] for i in rows])


@dataclass(frozen=True)
class EncodedSplits:
    label_names: list[str]  # class i is label_names[i]
    train: Encoded
    validation: Encoded
    test: Encoded | None


def encode_splits(splits: Splits, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedSplits:
    """Tokenize every split once; classes are numbered in sorted order of the training labels."""
    label_names = sorted(set(splits.train.labels))
    label_id = {name: i for i, name in enumerate(label_names)}

    def encode(part: LabelledData) -> Encoded:
        return Encoded(batching.encode(tokenizer, part.texts, max_length), [label_id[x] for x in part.labels])

    test = encode(splits.test) if splits.test is not None else None
    return EncodedSplits(label_names, encode(splits.train), encode(splits.validation), test)


TRAIN_EVAL_ROWS = (256, 1000)  # the default training subset: the validation split's size, within these bounds


def train_eval_subset(train: Encoded, size: int, generator: torch.Generator) -> Encoded:
    """The fixed training rows re-scored in eval mode at each evaluation (the generalization gap)."""
    return train.subset(sorted(torch.randperm(len(train), generator=generator)[:size].tolist()))


def train_eval_rows(args: TrainingArguments, validation_rows: int) -> int:
    """``train_eval_size``, or by default as many rows as validation has (within ``TRAIN_EVAL_ROWS``)."""
    low, high = TRAIN_EVAL_ROWS
    return args.train_eval_size or min(high, max(low, validation_rows))


# --- optimizer, schedule, loss ---------------------------------------------------------------


@dataclass
class Optimization:
    """AdamW, its learning-rate schedule and the fp16 loss scaler, stepped together."""

    optimizer: torch.optim.AdamW
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    max_grad_norm: float

    @property
    def learning_rate(self) -> float:
        """The top (head) group's current learning rate."""
        return float(self.scheduler.get_last_lr()[0])

    def step(self, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Backward, clip the global gradient norm, step, and advance the schedule."""
        torch.autograd.backward(self.scaler.scale(loss))  # = Tensor.backward(), which torch leaves untyped
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def build_optimization(
    model: torch.nn.Module,
    args: TrainingArguments,
    total_steps: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> Optimization:
    optimizer = torch.optim.AdamW(
        modeling.parameter_groups(
            model,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            layerwise_lr_decay=args.layerwise_lr_decay,
        ),
        lr=args.learning_rate,
        fused=device.type == "cuda",
    )
    scheduler: LambdaLR = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # bf16 has fp32's range; only fp16 needs its gradients scaled
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    return Optimization(optimizer, scheduler, scaler, args.max_grad_norm)


@dataclass(frozen=True)
class Objective:
    """The training loss: class weights (already on the device), label smoothing, focal or not."""

    weights: torch.Tensor | None
    label_smoothing: float
    focal_gamma: float | None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return losses.classification_loss(
            logits, labels, weights=self.weights, label_smoothing=self.label_smoothing, focal_gamma=self.focal_gamma
        )


def minority_classes(counts: NDArray[np.integer], share_of_largest: float) -> frozenset[int]:
    """Classes with fewer training examples than ``share_of_largest`` times the largest class's."""
    return frozenset(int(c) for c in np.flatnonzero(counts < share_of_largest * counts.max()))


# --- evaluation helper ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationConfig:
    """How the model is scored, the same at every evaluation and for the final scores."""

    batch_size: int
    pad_id: int
    device: torch.device
    autocast: torch.dtype | None  # None: plain fp32


@torch.no_grad()
def score(model: PreTrainedModel, data: Encoded, config: EvaluationConfig) -> tuple[NDArray[np.float32], float]:
    """Logits in input order and the plain (unweighted, unsmoothed) cross-entropy, in eval mode."""
    was_training = model.training
    model.train(False)
    logits = np.zeros((len(data), int(model.config.num_labels or 0)), dtype=np.float32)
    batches = batching.evaluation_batches(data.ids, data.labels, batch_size=config.batch_size, pad_id=config.pad_id)
    for batch in batches:
        with mixed_precision(config.device, config.autocast):
            out = model(
                input_ids=batch.input_ids.to(config.device), attention_mask=batch.attention_mask.to(config.device)
            )
        logits[batch.indices] = out.logits.float().cpu().numpy()
    model.train(was_training)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.tensor(data.labels)).item()
    return logits, loss


def evaluate(
    model: PreTrainedModel,
    validation: Encoded,
    train_subset: Encoded,
    config: EvaluationConfig,
    *,
    step: int,
    epoch: float,
    learning_rate: float,
    train_loss: float | None = None,
    samples_per_second: float | None = None,
) -> CurvePoint:
    """One point of the learning curves: validation and the training subset, both scored in eval mode."""
    val_logits, val_loss = score(model, validation, config)
    sub_logits, sub_loss = score(model, train_subset, config)
    val_labels = np.array(validation.labels)
    k = val_logits.shape[1]
    return CurvePoint(
        step=step,
        epoch=epoch,
        train_loss=train_loss,
        train_eval_loss=sub_loss,
        train_macro_f1=evaluation.macro_f1(np.array(train_subset.labels), sub_logits.argmax(1), k),
        val_loss=val_loss,
        val_macro_f1=evaluation.macro_f1(val_labels, val_logits.argmax(1), k),
        val_accuracy=float((val_logits.argmax(1) == val_labels).mean()),
        learning_rate=learning_rate,
        samples_per_second=samples_per_second,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if config.device.type == "cuda" else None,
    )


# --- checkpoint selection and early stopping --------------------------------------------------


def is_better(point: CurvePoint, best: CurvePoint, threshold: float) -> bool:
    """Higher validation macro-F1 wins; at equal F1 (a small validation set saturates), lower validation loss.

    Without the tie-break an easy task keeps its first perfect epoch, where the loss has barely moved.
    """
    if point.val_macro_f1 > best.val_macro_f1 + threshold:
        return True
    return point.val_macro_f1 >= best.val_macro_f1 and point.val_loss < best.val_loss


class CheckpointSelector:
    """Keeps the best checkpoint offered so far and counts the evaluations since it (early stopping).

    The untrained start (step 0) is never offered: it is the curve's reference point, and any
    trained checkpoint replaces it. Once the curve has flattened (the best evaluation gained less
    than ``plateau_gain`` validation macro-F1 over every evaluation before it), ``plateau_patience``
    evaluations without gain end the run instead of ``patience``: waiting longer on a plateau
    buys a run time, rarely a better checkpoint.
    """

    def __init__(
        self,
        *,
        patience: int | None,
        threshold: float,
        plateau_patience: int | None = None,
        plateau_gain: float = 0.0,
    ) -> None:
        self.patience = patience
        self.threshold = threshold
        self.plateau_patience = plateau_patience
        self.plateau_gain = plateau_gain
        self.best: CurvePoint | None = None
        self.evals_without_gain = 0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._offered: list[CurvePoint] = []

    def offer(self, point: CurvePoint, model: torch.nn.Module) -> bool:
        """Keep a copy of ``model``'s weights if ``point`` beats the best so far; return whether it did."""
        self._offered.append(point)
        if self.best is None or is_better(point, self.best, self.threshold):
            self.best, self.evals_without_gain = point, 0
            self._best_state = copy.deepcopy(model.state_dict())
            return True
        self.evals_without_gain += 1
        return False

    @property
    def best_gain(self) -> float | None:
        """The best evaluation's validation macro-F1 gain over every one offered before it (None: it was first)."""
        if self.best is None:
            return None
        before = [p.val_macro_f1 for p in self._offered if p.step < self.best.step]
        return self.best.val_macro_f1 - max(before) if before else None

    @property
    def on_plateau(self) -> bool:
        gain = self.best_gain
        return self.plateau_patience is not None and gain is not None and gain < self.plateau_gain

    @property
    def should_stop(self) -> bool:
        if self.patience is None:
            return False
        limit = min(self.patience, self.plateau_patience or self.patience) if self.on_plateau else self.patience
        return self.evals_without_gain >= limit

    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The kept copy of the best weights (for the resume checkpoint; :meth:`restore_best` loads them)."""
        return self._best_state

    def resume(
        self,
        best: CurvePoint | None,
        evals_without_gain: int,
        best_weights: dict[str, torch.Tensor] | None,
        curves: list[CurvePoint],
    ) -> None:
        """Take the selection up where a checkpoint of the same run left it (``curves``: its points so far)."""
        self.best, self.evals_without_gain, self._best_state = best, evals_without_gain, best_weights
        self._offered = [p for p in curves if p.step > 0]

    def restore_best(self, model: torch.nn.Module) -> CurvePoint:
        """Load the best weights back into ``model``; return their curve point."""
        if self.best is None or self._best_state is None:
            raise RuntimeError("no checkpoint was offered, so there is none to restore")
        model.load_state_dict(self._best_state)
        return self.best


# --- loop state ------------------------------------------------------------------------------


@dataclass
class RunningLoss:
    """The training objective and throughput since the last evaluation.

    The losses are summed where they are computed (float64, on the device) and read once per
    evaluation: a ``loss.item()`` per step would make the host wait for every GPU step.
    """

    summed_before: float = 0.0  # the part already read back (a resumed window's)
    count: int = 0
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)
    on_device: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, samples: int) -> None:
        term = loss.detach().to(torch.float64)
        self.on_device = term if self.on_device is None else self.on_device + term
        self.count += 1
        self.samples += samples

    @property
    def total(self) -> float:
        """The summed loss (a host sync when it is still on the device)."""
        if self.on_device is not None:
            self.summed_before += float(self.on_device)
            self.on_device = None
        return self.summed_before

    @property
    def mean(self) -> float:
        return self.total / self.count

    def samples_per_second(self) -> float:
        return self.samples / (time.perf_counter() - self.started)


@dataclass
class LoopState:
    """Everything the loop carries from one step to the next."""

    selector: CheckpointSelector
    curves: list[CurvePoint]
    step: int = 0
    window: RunningLoss = field(default_factory=RunningLoss)
    epochs_completed: int = 0  # epochs whose every batch was trained (the checkpoint is written after each)


def training_progress(state: LoopState, schedule: Schedule, eta_seconds: float | None = None) -> Progress:
    """Where the loop is, and the latest validation scores: what a client polling the job sees."""
    latest = state.curves[-1]
    return Progress(
        "training",
        epoch=schedule.epoch(state.step),
        step=state.step,
        total_steps=schedule.total_steps,
        eta_seconds=eta_seconds,
        metrics={"val_macro_f1": latest.val_macro_f1, "val_loss": latest.val_loss},
    )


def save_live_curves(state: LoopState, output_dir: Path) -> None:
    """The curves so far, for whoever watches the run (``GET /jobs/{id}/curves``); ``save_run`` writes the last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    best = state.selector.best
    save_curves(state.curves, best.step if best else None, output_dir / CURVES)


# --- the resume checkpoint ----------------------------------------------------------------------


def checkpoint_of(
    state: LoopState,
    model: torch.nn.Module,
    optimization: Optimization,
    generator: torch.Generator,
    *,
    args: TrainingArguments,
    data_sha256: dict[str, str],
    train_seconds: float,
) -> Checkpoint:
    """The run as it stands between two epochs (references, not copies: it is written right away)."""
    window = state.window
    return Checkpoint(
        arguments=args.model_dump(mode="json"),
        data_sha256=data_sha256,
        epochs_completed=state.epochs_completed,
        step=state.step,
        train_seconds=train_seconds,
        curves=list(state.curves),
        best=state.selector.best,
        evals_without_gain=state.selector.evals_without_gain,
        best_weights=state.selector.best_weights,
        window=LossWindow(window.total, window.count, window.samples, time.perf_counter() - window.started),
        model=model.state_dict(),
        optimizer=optimization.optimizer.state_dict(),
        scheduler=optimization.scheduler.state_dict(),
        scaler=optimization.scaler.state_dict(),
        random=RandomState.capture(generator),
    )


def restore_checkpoint(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimization: Optimization,
    selector: CheckpointSelector,
    generator: torch.Generator,
) -> LoopState:
    """Put a freshly built run back where the checkpoint left it; the loop state to go on with.

    The random generators are restored last, after everything that draws from them while a
    run is built (the training subset, the head's initialization).
    """
    model.load_state_dict(checkpoint.model)
    optimization.optimizer.load_state_dict(checkpoint.optimizer)  # also the learning rates the schedule set
    optimization.scheduler.load_state_dict(checkpoint.scheduler)
    if checkpoint.scaler:  # empty from a run without fp16 loss scaling (CPU, bf16)
        optimization.scaler.load_state_dict(checkpoint.scaler)
    selector.resume(checkpoint.best, checkpoint.evals_without_gain, checkpoint.best_weights, checkpoint.curves)
    window = checkpoint.window
    checkpoint.random.restore(generator)
    return LoopState(
        selector=selector,
        curves=list(checkpoint.curves),
        step=checkpoint.step,
        window=RunningLoss(window.total, window.count, window.samples, time.perf_counter() - window.seconds),
        epochs_completed=checkpoint.epochs_completed,
    )


def _resumable(output_dir: Path, args: TrainingArguments, data_sha256: dict[str, str]) -> Checkpoint | None:
    checkpoint = load_checkpoint(output_dir)
    if checkpoint is not None and not checkpoint.matches(args, data_sha256):
        log.warning("%s holds a checkpoint of other arguments or data; training starts over", output_dir)
        return None
    return checkpoint


def _marked_resumed(on_progress: ProgressCallback, epoch: int) -> ProgressCallback:
    """Progress that says the run resumed, on every report after the resume."""

    def progress(progress: Progress) -> None:
        on_progress(replace(progress, resumed_at_epoch=epoch))

    return progress


# --- calibration and final scores --------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The temperature and decision bias fitted on validation: what the exported model applies."""

    temperature: float
    class_bias: NDArray[np.float64]

    def scores(self, logits: NDArray[np.float32], labels: NDArray[np.intp], label_names: list[str]) -> SplitScores:
        k = len(label_names)
        raw_pred = logits.argmax(axis=1)
        pred = decide(logits, self.temperature, self.class_bias)
        return SplitScores(
            macro_f1=evaluation.macro_f1(labels, pred, k),
            accuracy=float((pred == labels).mean()),
            ece_before_calibration=evaluation.expected_calibration_error(softmax(logits), raw_pred, labels),
            ece_after_calibration=evaluation.expected_calibration_error(
                softmax(logits, self.temperature), pred, labels
            ),
            per_class=evaluation.per_class_table(labels, pred, label_names),
            confusion=evaluation.confusion(labels, pred, k).tolist(),
        )


def calibrate(
    logits: NDArray[np.float32], labels: NDArray[np.intp], train_counts: NDArray[np.intp], args: TrainingArguments
) -> Calibration:
    """Fit the temperature, then the decision rule under it (each only when its argument asks for it)."""
    temperature = evaluation.fit_temperature(logits, labels) if args.calibrate else 1.0
    bias = (
        evaluation.tune_class_bias(logits, labels, temperature, train_counts / train_counts.sum())
        if args.tune_decision_rule
        else np.zeros(len(train_counts))
    )
    return Calibration(temperature, bias)


def _sha256_of_files(**paths: Path | None) -> dict[str, str]:
    return {role: hashlib.sha256(Path(p).read_bytes()).hexdigest() for role, p in paths.items() if p is not None}


# --- the run ---------------------------------------------------------------------------------


def fine_tune(
    data_path: Path,
    output_dir: Path,
    args: TrainingArguments,
    *,
    validation_path: Path | None = None,
    test_path: Path | None = None,
    on_progress: ProgressCallback = ignore_progress,
    should_cancel: CancelCheck = never_cancelled,
    score_test: bool = True,
    resume: bool = False,
    base_models: BaseModels | None = None,
) -> RunResult:
    """Fine-tune ``args.base_model`` on a labelled file and write the run directory.

    With ``score_test`` off, the test rows are kept unscored in the run directory: a repair
    loop judges its attempts on validation only and scores the test split once, for the
    attempt it exports (``score_test_split``).

    Every epoch that ends with training still to do leaves a checkpoint in ``output_dir``.
    With ``resume``, a run interrupted after one goes on from its checkpoint and ends as the
    uninterrupted run would have (on CPU, bit for bit); its progress reports then carry
    ``resumed_at_epoch``, the 1-based epoch it goes on with. Without a checkpoint of the
    same arguments and data (the run stopped during its first epoch, say) it starts over.

    The base model is ``args.base_model`` (a name in ``base_models``, the operator's catalogue, or a local
    directory) or, unset, the first in the catalogue that reads the texts; either way one that cannot read
    them is refused with ``UnreadableText`` before anything trains.
    """
    started = time.perf_counter()
    on_progress(Progress("loading"))
    data_sha256 = _sha256_of_files(train=data_path, validation=validation_path, test=test_path)
    checkpoint = _resumable(Path(output_dir), args, data_sha256) if resume else None
    if checkpoint is None:
        remove_checkpoint(Path(output_dir))  # another run's: never resumed, so not kept either

    # setup
    device = pick_device(args.device)
    _configure_runtime(device, args.seed)
    autocast = autocast_dtype(device, args.cpu_bf16)

    # data
    splits, data_report = load_splits(Path(data_path), args, validation_path, test_path)
    catalogue = (base_models or BaseModels.from_settings(Settings())).including(args.base_model)
    choice = choose_base_model(splits.train.texts, args.base_model, catalogue)
    data_report.base_model = choice.to_dict()
    base_model = str(choice.path)
    tokenizer = modeling.load_tokenizer(base_model)
    data = encode_splits(splits, tokenizer, args.max_length)
    generator = torch.Generator().manual_seed(args.seed)  # the subset, then the sampler and augmentation
    train_subset = train_eval_subset(data.train, train_eval_rows(args, len(data.validation)), generator)

    # model
    model = modeling.load_classifier(base_model, data.label_names, dropout=args.dropout, seed=args.seed)
    modeling.freeze_lower_layers(model, args.freeze_layers)
    modeling.freeze_word_embeddings(model, args.freeze_word_embeddings)
    cast(torch.nn.Module, model).to(device)  # in place; transformers types .to() by its dtype overload only
    model.train()

    # optimizer, schedule, loss
    counts = np.bincount(data.train.labels, minlength=len(data.label_names))
    weights = losses.class_weights(counts.tolist(), args.class_weighting, args.effective_number_beta)
    objective = Objective(
        weights=weights.to(device) if weights is not None else None,
        label_smoothing=args.label_smoothing_factor,
        focal_gamma=args.focal_gamma if args.loss == "focal" else None,
    )
    augment_classes = minority_classes(counts, args.augment_below_share_of_largest) if args.augment else frozenset()
    schedule = plan_schedule(len(data.train), args)
    optimization = build_optimization(model, args, schedule.total_steps, device, autocast)
    config = EvaluationConfig(args.per_device_eval_batch_size, int(tokenizer.pad_token_id or 0), device, autocast)

    def evaluate_at(step: int, window: RunningLoss | None = None) -> CurvePoint:
        return evaluate(
            model,
            data.validation,
            train_subset,
            config,
            step=step,
            epoch=schedule.epoch(step),
            learning_rate=optimization.learning_rate,
            train_loss=window.mean if window else None,
            samples_per_second=window.samples_per_second() if window else None,
        )

    # loop, from the start or from the checkpoint
    selector = CheckpointSelector(
        patience=args.early_stopping_patience,
        threshold=args.early_stopping_threshold,
        plateau_patience=args.plateau_patience,
        plateau_gain=args.plateau_gain,
    )
    if checkpoint is None:
        state = LoopState(selector=selector, curves=[evaluate_at(0)])
        trained_before = 0.0
    else:
        state = restore_checkpoint(checkpoint, model, optimization, selector, generator)
        trained_before = checkpoint.train_seconds
        on_progress = _marked_resumed(on_progress, state.epochs_completed + 1)
        on_progress(training_progress(state, schedule))
        del checkpoint  # its tensors were copied into the model and the optimizer; the best weights stay
    save_live_curves(state, Path(output_dir))  # after a resume: drops points evaluated after the checkpoint
    train_started = time.perf_counter()
    while state.step < schedule.total_steps and not state.selector.should_stop:
        for batch in batching.training_batches(
            data.train.ids,
            data.train.labels,
            batch_size=args.per_device_train_batch_size,
            pad_id=config.pad_id,
            generator=generator,
            balanced=args.sampler == "balanced",
            augment_classes=augment_classes,
        ):
            if should_cancel():
                raise TrainingCancelled(
                    f"cancelled at step {state.step} of {schedule.total_steps}; nothing was exported"
                )
            with mixed_precision(device, autocast):
                logits = model(
                    input_ids=batch.input_ids.to(device, non_blocking=True),
                    attention_mask=batch.attention_mask.to(device, non_blocking=True),
                ).logits
            loss = objective(logits, batch.labels.to(device, non_blocking=True))
            optimization.step(loss, model.parameters())
            state.step += 1
            state.window.add(loss, len(batch.indices))

            if state.step % schedule.eval_every == 0 or state.step == schedule.total_steps:
                point = evaluate_at(state.step, state.window)
                state.curves.append(point)
                state.selector.offer(point, model)
                state.window = RunningLoss()
                save_live_curves(state, Path(output_dir))
            elapsed = trained_before + time.perf_counter() - train_started
            on_progress(training_progress(state, schedule, elapsed / state.step * (schedule.total_steps - state.step)))
            if state.step >= schedule.total_steps or state.selector.should_stop:
                break
        else:  # the epoch ran out with training still to do: the point a run resumes from
            state.epochs_completed += 1
            save_checkpoint(
                checkpoint_of(
                    state,
                    model,
                    optimization,
                    generator,
                    args=args,
                    data_sha256=data_sha256,
                    train_seconds=trained_before + time.perf_counter() - train_started,
                ),
                Path(output_dir),
            )
    train_seconds = trained_before + time.perf_counter() - train_started

    # restore the selected checkpoint, then calibrate on validation
    on_progress(Progress("calibrating", step=state.step, total_steps=schedule.total_steps))
    selected = state.selector.restore_best(model) if args.load_best_model_at_end else state.curves[-1]
    val_logits, _ = score(model, data.validation, config)
    val_labels = np.array(data.validation.labels)
    calibration = calibrate(val_logits, val_labels, counts, args)

    # final scores
    val_scores = calibration.scores(val_logits, val_labels, data.label_names)
    test_scores = None
    if data.test is not None and score_test:
        test_logits, _ = score(model, data.test, config)
        test_scores = calibration.scores(test_logits, np.array(data.test.labels), data.label_names)

    # label audit: which training and validation rows' labels disagree with their texts
    label_audit = None
    if args.label_audit:
        on_progress(Progress("auditing", step=state.step, total_steps=schedule.total_steps))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        label_audit = audit_run(
            base_model,
            splits.train,
            splits.validation,
            data.label_names,
            Path(output_dir) / LABEL_ISSUES,
            args.seed,
            device=str(device),  # the embeddings pass rides on the training device
        ).to_dict()

    # save
    on_progress(Progress("saving", step=state.step, total_steps=schedule.total_steps))
    result = RunResult(
        output_dir=Path(output_dir),
        base_model=base_model,
        data_sha256=data_sha256,
        label_names=data.label_names,
        curves=state.curves,
        best_step=selected.step,
        stopped_early=state.selector.should_stop,
        temperature=calibration.temperature,
        class_bias=[float(b) for b in calibration.class_bias],
        class_weights=weights.tolist() if weights is not None else None,
        validation=val_scores,
        test=test_scores,
        data_report=data_report,
        split_sizes={
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(data.test) if data.test is not None else 0,
        },
        train_class_counts=counts.tolist(),
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        device=str(device),
        label_audit=label_audit,
    )
    unscored_test = splits.test if splits.test is not None and test_scores is None else None
    save_run(result, model.cpu(), tokenizer, args, splits.validation, val_logits, unscored_test)
    remove_checkpoint(Path(output_dir))  # the run is complete: nothing left to resume
    on_progress(
        Progress(
            "done",
            epoch=schedule.epoch(state.step),
            step=state.step,
            total_steps=schedule.total_steps,
            metrics={"val_macro_f1": val_scores.macro_f1},
        )
    )
    return result


def score_test_split(path: Path) -> SplitScores | None:
    """Score a finished run's kept test rows with its saved model and calibration, and record them.

    Returns None when the run has no unscored test rows (no test split, or scored already).
    """
    from transformers import AutoModelForSequenceClassification

    run = RunDirectory.open(path)
    if not (run.path / TEST_CSV).is_file() or run.report.get("test") is not None:
        return None
    test = read_labelled_file(run.path / TEST_CSV, max_text_chars=10**9)[0]
    args = run.arguments
    device = pick_device(args.device)
    tokenizer = modeling.load_tokenizer(str(run.model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    cast(torch.nn.Module, model).to(device)
    index = {name: i for i, name in enumerate(run.label_names)}
    data = Encoded(batching.encode(tokenizer, test.texts, args.max_length), [index[y] for y in test.labels])
    config = EvaluationConfig(
        args.per_device_eval_batch_size, int(tokenizer.pad_token_id or 0), device, autocast_dtype(device, args.cpu_bf16)
    )
    logits, _ = score(model, data, config)
    scores = Calibration(run.temperature, run.class_bias).scores(logits, np.array(data.labels), run.label_names)
    record_test_scores(run.path, scores)
    return scores
