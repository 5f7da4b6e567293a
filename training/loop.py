"""The fine-tuning run, top to bottom in execution order.

setup -> data -> model -> optimizer and schedule -> evaluation helper -> loop (evaluate,
early stop, keep best) -> restore best -> calibrate -> final scores -> save.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

import fitgate
from fitgate.errors import FitgateError, TrainingCancelled
from fitgate.files import write_text_atomic
from training import batching, evaluation, losses, modeling
from training.arguments import TrainingArguments
from training.curves import CurvePoint, plot_confusion, plot_curves, save_curves
from training.data import DataReport, LabelledData, read_labelled_file, write_labelled_csv
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.splits import Splits, remove_overlap, split_data

log = logging.getLogger(__name__)

LONG_EPOCH_STEPS = 1000  # epochs longer than this are also evaluated every EVAL_EVERY_LONG steps
EVAL_EVERY_LONG = 500
AUGMENT_BELOW_SHARE_OF_LARGEST = 0.5  # classes smaller than this share of the largest get augmented
VALIDATION_CSV = "validation.csv"
VALIDATION_LOGITS = "validation_logits.npy"


@dataclass(frozen=True)
class SplitScores:
    """Scores of the final model (calibrated, decision rule applied) on one split."""

    macro_f1: float
    accuracy: float
    ece_before_calibration: float
    ece_after_calibration: float
    per_class: list[evaluation.ClassScores]
    confusion: list[list[int]]


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced; the run directory holds the same as files."""

    output_dir: Path
    base_model: str
    data_sha256: dict[str, str]
    label_names: list[str]
    curves: list[CurvePoint]
    best_step: int
    stopped_early: bool
    temperature: float
    class_bias: list[float]
    class_weights: list[float] | None
    validation: SplitScores
    test: SplitScores | None
    data_report: DataReport
    split_sizes: dict[str, int]
    train_class_counts: list[int]
    train_seconds: float
    total_seconds: float
    device: str


# --- setup ---------------------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise FitgateError("device 'cuda' was requested but no CUDA GPU is available; use device 'auto' or 'cpu'")
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
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None  # CPU autocast to bf16 is slower than fp32 on most CPUs and hurts accuracy
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --- data ---------------------------------------------------------------------------------


def load_splits(
    data_path: Path,
    args: TrainingArguments,
    validation_path: Path | None = None,
    test_path: Path | None = None,
) -> tuple[Splits, DataReport]:
    """Read the file(s) and split; separate validation/test files replace the carved splits."""
    read = dict(
        text_column=args.text_column,
        label_column=args.label_column,
        max_text_chars=args.max_text_chars,
        max_empty_share=args.max_empty_share,
    )
    data, report = read_labelled_file(data_path, **read)  # type: ignore[arg-type]
    given_val = read_labelled_file(validation_path, **read)[0] if validation_path else None  # type: ignore[arg-type]
    given_test = read_labelled_file(test_path, **read)[0] if test_path else None  # type: ignore[arg-type]
    splits = (
        split_data(
            data,
            validation_size=0.0 if given_val else args.validation_size,
            test_size=0.0 if given_test else args.test_size,
            seed=args.seed,
        )
        if not (given_val and given_test)
        else Splits(data, given_val, given_test)
    )
    validation = given_val or splits.validation
    test = given_test or splits.test
    train, leaked = remove_overlap(splits.train, [p for p in (given_val, given_test) if p is not None])
    if leaked:
        log.warning("dropped %d training rows whose text also appears in the validation/test file", leaked)
    unknown = sorted({*validation.labels, *(test.labels if test else [])} - set(train.labels))
    if unknown:
        raise FitgateError(
            f"labels {unknown[:5]} appear in the validation/test data but never in training; "
            "add training examples for them or remove them"
        )
    return Splits(train, validation, test), report


# --- evaluation helper ----------------------------------------------------------------------


@torch.no_grad()
def score(
    model: PreTrainedModel,
    ids: list[list[int]],
    labels: list[int],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> tuple[np.ndarray, float]:
    """Logits in input order and the plain (unweighted, unsmoothed) cross-entropy, in eval mode."""
    was_training = model.training
    model.eval()
    logits = np.zeros((len(ids), int(model.config.num_labels or 0)), dtype=np.float32)
    for batch in batching.evaluation_batches(ids, labels, batch_size=batch_size, pad_id=pad_id):
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))
        logits[batch.indices] = out.logits.float().cpu().numpy()
    model.train(was_training)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.tensor(labels)).item()
    return logits, loss


def _split_scores(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bias: np.ndarray, names: list[str]
) -> SplitScores:
    k = len(names)
    raw_pred = logits.argmax(axis=1)
    pred = evaluation.predict(logits, temperature, bias)
    return SplitScores(
        macro_f1=evaluation.macro_f1(labels, pred, k),
        accuracy=float((pred == labels).mean()),
        ece_before_calibration=evaluation.expected_calibration_error(evaluation.softmax(logits), raw_pred, labels),
        ece_after_calibration=evaluation.expected_calibration_error(
            evaluation.softmax(logits, temperature), pred, labels
        ),
        per_class=evaluation.per_class_table(labels, pred, names),
        confusion=evaluation.confusion(labels, pred, k).tolist(),
    )


# --- the run ---------------------------------------------------------------------------------


def is_better(point: CurvePoint, best: CurvePoint, threshold: float) -> bool:
    """Higher validation macro-F1 wins; at equal F1 (a small validation set saturates), lower validation loss.

    Without the tie-break an easy task keeps its first perfect epoch, where the loss has barely moved.
    """
    if point.val_macro_f1 > best.val_macro_f1 + threshold:
        return True
    return point.val_macro_f1 >= best.val_macro_f1 and point.val_loss < best.val_loss


def fine_tune(
    data_path: Path,
    output_dir: Path,
    args: TrainingArguments,
    *,
    validation_path: Path | None = None,
    test_path: Path | None = None,
    on_progress: ProgressCallback = ignore_progress,
    should_cancel: CancelCheck = never_cancelled,
) -> RunResult:
    """Fine-tune ``args.base_model`` on a labelled file and write the run directory."""
    started = time.perf_counter()
    on_progress(Progress("loading"))
    device = pick_device(args.device)
    _configure_runtime(device, args.seed)
    autocast = _autocast_dtype(device)

    # data
    splits, data_report = load_splits(Path(data_path), args, validation_path, test_path)
    label_names = sorted(set(splits.train.labels))
    label_id = {name: i for i, name in enumerate(label_names)}
    base_model = args.base_model or modeling.default_base_model()
    tokenizer = modeling.load_tokenizer(base_model)
    pad_id = int(tokenizer.pad_token_id or 0)

    def encoded(part: LabelledData) -> tuple[list[list[int]], list[int]]:
        return batching.encode(tokenizer, part.texts, args.max_length), [label_id[x] for x in part.labels]

    train_ids, train_y = encoded(splits.train)
    val_ids, val_y = encoded(splits.validation)
    generator = torch.Generator().manual_seed(args.seed)
    subset = sorted(torch.randperm(len(train_ids), generator=generator)[: args.train_eval_size].tolist())
    sub_ids, sub_y = [train_ids[i] for i in subset], [train_y[i] for i in subset]

    # model
    model = modeling.load_classifier(base_model, label_names, dropout=args.dropout, seed=args.seed)
    modeling.freeze_lower_layers(model, args.freeze_layers)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() as the dtype overload only
    model.train()

    # optimizer, schedule, loss
    counts = np.bincount(train_y, minlength=len(label_names))
    weights = losses.class_weights(counts.tolist(), args.class_weighting, args.effective_number_beta)
    weights_on_device = weights.to(device) if weights is not None else None
    focal_gamma = args.focal_gamma if args.loss == "focal" else None
    augment_classes = (
        frozenset(int(c) for c in np.flatnonzero(counts < AUGMENT_BELOW_SHARE_OF_LARGEST * counts.max()))
        if args.augment
        else frozenset()
    )
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
    steps_per_epoch = math.ceil(len(train_ids) / args.per_device_train_batch_size)
    total_steps = args.max_steps or steps_per_epoch * args.num_train_epochs
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    eval_every = args.eval_steps or (steps_per_epoch if steps_per_epoch <= LONG_EPOCH_STEPS else EVAL_EVERY_LONG)

    def evaluate(step: int, train_loss: float | None, samples_per_second: float | None) -> CurvePoint:
        run = dict(batch_size=args.per_device_eval_batch_size, pad_id=pad_id, device=device, autocast=autocast)
        val_logits, val_loss = score(model, val_ids, val_y, **run)  # type: ignore[arg-type]
        sub_logits, sub_loss = score(model, sub_ids, sub_y, **run)  # type: ignore[arg-type]
        k = len(label_names)
        return CurvePoint(
            step=step,
            epoch=round(step / steps_per_epoch, 3),
            train_loss=train_loss,
            train_eval_loss=sub_loss,
            train_macro_f1=evaluation.macro_f1(np.array(sub_y), sub_logits.argmax(1), k),
            val_loss=val_loss,
            val_macro_f1=evaluation.macro_f1(np.array(val_y), val_logits.argmax(1), k),
            val_accuracy=float((val_logits.argmax(1) == np.array(val_y)).mean()),
            learning_rate=float(scheduler.get_last_lr()[0]),
            samples_per_second=samples_per_second,
            peak_gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        )

    # loop
    curves = [evaluate(0, None, None)]
    best = curves[0]
    best_state = copy.deepcopy(model.state_dict())
    evals_without_gain = 0
    stopped_early = False
    step = 0
    loss_sum, loss_count, samples, window_start = 0.0, 0, 0, time.perf_counter()
    train_started = time.perf_counter()
    while step < total_steps and not stopped_early:
        for batch in batching.training_batches(
            train_ids,
            train_y,
            batch_size=args.per_device_train_batch_size,
            pad_id=pad_id,
            generator=generator,
            balanced=args.sampler == "balanced",
            augment_classes=augment_classes,
        ):
            if should_cancel():
                raise TrainingCancelled(f"cancelled at step {step} of {total_steps}; nothing was exported")
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                logits = model(
                    input_ids=batch.input_ids.to(device, non_blocking=True),
                    attention_mask=batch.attention_mask.to(device, non_blocking=True),
                ).logits
            loss = losses.classification_loss(
                logits,
                batch.labels.to(device, non_blocking=True),
                weights=weights_on_device,
                label_smoothing=args.label_smoothing_factor,
                focal_gamma=focal_gamma,
            )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            loss_sum += loss.item()  # a device sync per step; cheap next to the backward pass
            loss_count += 1
            samples += len(batch.indices)

            if step % eval_every == 0 or step == total_steps:
                throughput = samples / (time.perf_counter() - window_start)
                point = evaluate(step, loss_sum / loss_count, throughput)
                curves.append(point)
                if best.step == 0 or is_better(point, best, args.early_stopping_threshold):
                    best, evals_without_gain = point, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    evals_without_gain += 1
                    stopped_early = (
                        args.early_stopping_patience is not None and evals_without_gain >= args.early_stopping_patience
                    )
                loss_sum, loss_count, samples, window_start = 0.0, 0, 0, time.perf_counter()
            elapsed = time.perf_counter() - train_started
            on_progress(
                Progress(
                    "training",
                    epoch=round(step / steps_per_epoch, 3),
                    step=step,
                    total_steps=total_steps,
                    eta_seconds=elapsed / step * (total_steps - step),
                    metrics={"val_macro_f1": curves[-1].val_macro_f1, "val_loss": curves[-1].val_loss},
                )
            )
            if step >= total_steps or stopped_early:
                break
    train_seconds = time.perf_counter() - train_started

    # restore the selected checkpoint, then calibrate on validation
    on_progress(Progress("calibrating", step=step, total_steps=total_steps))
    if args.load_best_model_at_end:
        model.load_state_dict(best_state)
        selected_step = best.step
    else:
        selected_step = curves[-1].step
    run = dict(batch_size=args.per_device_eval_batch_size, pad_id=pad_id, device=device, autocast=autocast)
    val_logits, _ = score(model, val_ids, val_y, **run)  # type: ignore[arg-type]
    val_labels = np.array(val_y)
    temperature = evaluation.fit_temperature(val_logits, val_labels) if args.calibrate else 1.0
    bias = (
        evaluation.tune_class_bias(val_logits, val_labels, temperature, counts / counts.sum())
        if args.tune_decision_rule
        else np.zeros(len(label_names))
    )
    val_scores = _split_scores(val_logits, val_labels, temperature, bias, label_names)
    test_scores = None
    if splits.test is not None:
        test_ids, test_y = encoded(splits.test)
        test_logits, _ = score(model, test_ids, test_y, **run)  # type: ignore[arg-type]
        test_scores = _split_scores(test_logits, np.array(test_y), temperature, bias, label_names)

    # save
    on_progress(Progress("saving", step=step, total_steps=total_steps))
    output_dir = Path(output_dir)
    result = RunResult(
        output_dir=output_dir,
        base_model=base_model,
        data_sha256={
            role: hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for role, p in (("train", data_path), ("validation", validation_path), ("test", test_path))
            if p is not None
        },
        label_names=label_names,
        curves=curves,
        best_step=selected_step,
        stopped_early=stopped_early,
        temperature=temperature,
        class_bias=[float(b) for b in bias],
        class_weights=weights.tolist() if weights is not None else None,
        validation=val_scores,
        test=test_scores,
        data_report=data_report,
        split_sizes={
            "train": len(train_ids),
            "validation": len(val_ids),
            "test": len(splits.test) if splits.test is not None else 0,
        },
        train_class_counts=counts.tolist(),
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        device=str(device),
    )
    save_run(result, model.cpu(), tokenizer, args, splits.validation, val_logits)
    on_progress(
        Progress(
            "done",
            epoch=round(step / steps_per_epoch, 3),
            step=step,
            total_steps=total_steps,
            metrics={"val_macro_f1": val_scores.macro_f1},
        )
    )
    return result


def save_run(
    result: RunResult,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: TrainingArguments,
    validation: LabelledData,
    validation_logits: np.ndarray,
) -> None:
    """Write the selected model, the arguments, the curves, the plots and the report.

    The validation rows and their logits are kept too: diagnosis, the ONNX parity check
    and the drift reference statistics are all computed on them.
    """
    out = result.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_labelled_csv(validation, out / VALIDATION_CSV)
    np.save(out / VALIDATION_LOGITS, validation_logits)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "arguments.json").write_text(args.model_dump_json(indent=2))
    save_curves(result.curves, result.best_step, out / "curves.json")
    plot_curves(result.curves, result.best_step, out / "learning_curves.png", title=f"fitgate run: {out.name}")
    final = result.test or result.validation
    plot_confusion(
        np.array(final.confusion),
        result.label_names,
        out / "confusion_matrix.png",
        title="confusion matrix (" + ("test" if result.test else "validation") + ")",
    )
    report = asdict(result)
    report["output_dir"] = str(out)
    report["fitgate_version"] = fitgate.__version__
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))  # last: its presence means complete
