"""The fine-tuning run, top to bottom in execution order: the conductor.

setup -> data -> model -> optimizer and schedule -> evaluation helper -> checkpoint
selection -> loop (evaluate, early stop, keep best; an end-of-epoch checkpoint to resume
from) -> restore best -> calibrate -> final scores -> save. :func:`fine_tune` is the outline;
each step is one concern in its own module: the device and mixed precision in
:mod:`training.precision`, tokenizing in :mod:`training.encoding`, the optimizer step in
:mod:`training.optimization`, the loss, scoring and calibration of a task in
:mod:`training.tasks.single_label`, checkpoint selection and early stopping in
:mod:`training.selection`, the loop's running state in :mod:`training.loopstate`, resuming in
:mod:`training.resume` (the checkpoint file's contents in :mod:`training.checkpoint`), and
writing the run directory in :mod:`training.rundir`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from fitgate.errors import JobCancelled
from fitgate.settings import Settings
from training import batching, modeling
from training.arguments import TrainingArguments, plan_schedule
from training.audit import audit_run
from training.base_models import BaseModels, choose_base_model
from training.checkpoint import remove_checkpoint, save_checkpoint
from training.curves import CurvePoint
from training.encoding import encode_splits, encode_texts, train_eval_rows, train_eval_subset
from training.loopstate import LoopState, RunningLoss, save_live_curves, training_progress
from training.optimization import build_optimization
from training.precision import autocast_dtype, configure_runtime, mixed_precision, pick_device
from training.progress import CancelCheck, Progress, ProgressCallback, ignore_progress, never_cancelled
from training.resume import checkpoint_of, marked_resumed, restore_checkpoint, resumable
from training.rundir import LABEL_ISSUES, TEST_CSV, RunDirectory, RunResult, SplitScores, record_test_scores, save_run
from training.scoring import EvaluationConfig, evaluate, score
from training.selection import CheckpointSelector
from training.splits import load_splits
from training.tasks.base import task_named


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
    checkpoint = resumable(Path(output_dir), args, data_sha256) if resume else None
    if checkpoint is None:
        remove_checkpoint(Path(output_dir))  # another run's: never resumed, so not kept either

    # setup
    device = pick_device(args.device)
    configure_runtime(device, args.seed)
    autocast = autocast_dtype(device, args.cpu_bf16)

    # data
    splits, data_report = load_splits(Path(data_path), args, validation_path, test_path)
    catalogue = (base_models or BaseModels.from_settings(Settings())).including(args.base_model)
    choice = choose_base_model(splits.train.texts, args.base_model, catalogue)
    data_report.base_model = choice.to_dict()
    base_model = str(choice.path)
    tokenizer = modeling.load_tokenizer(base_model)
    data = encode_splits(splits, tokenizer, args, multi_label=data_report.task == "multi_label")
    data_report.long_texts = data.long_texts
    generator = torch.Generator().manual_seed(args.seed)  # the subset, then the sampler and augmentation
    train_subset = train_eval_subset(data.train, train_eval_rows(args, len(data.validation)), generator)

    task = task_named(data_report.task)

    # model
    model = modeling.load_classifier(
        base_model, data.label_names, dropout=args.dropout, seed=args.seed, problem_type=task.problem_type
    )
    modeling.freeze_lower_layers(model, args.freeze_layers)
    modeling.freeze_word_embeddings(model, args.freeze_word_embeddings)
    counts = task.class_counts(data.train.targets, len(data.label_names))
    task.initialize_head(cast(torch.nn.Module, model), counts, len(data.train))
    cast(torch.nn.Module, model).to(device)  # in place; transformers types .to() by its dtype overload only
    model.train()

    # optimizer, schedule, loss
    objective, weights = task.loss(counts, len(data.train), args, device)
    augment_classes = task.minority_classes(counts, args.augment_below_share_of_largest) if args.augment else None
    sampling_classes = task.sampling_classes(data.train.targets)
    schedule = plan_schedule(len(data.train), args)
    optimization = build_optimization(model, args, schedule.total_steps, device, autocast)
    config = EvaluationConfig(
        args.per_device_eval_batch_size, int(tokenizer.pad_token_id or 0), device, autocast, data.windowing.pooling
    )

    def evaluate_at(step: int, window: RunningLoss | None = None) -> CurvePoint:
        return evaluate(
            model,
            task,
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
        on_progress = marked_resumed(on_progress, state.epochs_completed + 1)
        on_progress(training_progress(state, schedule))
        del checkpoint  # its tensors were copied into the model and the optimizer; the best weights stay
    save_live_curves(state, Path(output_dir))  # after a resume: drops points evaluated after the checkpoint
    train_started = time.perf_counter()
    while state.step < schedule.total_steps and not state.selector.should_stop:
        for batch in batching.training_batches(
            data.train.ids,
            sampling_classes,
            batch_size=args.per_device_train_batch_size,
            pad_id=config.pad_id,
            generator=generator,
            balanced=args.sampler == "balanced",
            augment_classes=augment_classes or frozenset(),
        ):
            if should_cancel():
                raise JobCancelled(f"cancelled at step {state.step} of {schedule.total_steps}; nothing was exported")
            with mixed_precision(device, autocast):
                logits = model(
                    input_ids=batch.input_ids.to(device, non_blocking=True),
                    attention_mask=batch.attention_mask.to(device, non_blocking=True),
                ).logits
            targets = task.batch_targets(data.train.targets[np.asarray(batch.indices)])
            loss = objective(logits, targets.to(device, non_blocking=True))
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
    val_logits = score(model, data.validation, config)
    rule = task.calibrate(val_logits, data.validation.targets, counts, args)

    # final scores
    val_scores = task.scores(rule, val_logits, data.validation.targets, data.label_names)
    test_scores = None
    if data.test is not None and score_test:
        test_scores = task.scores(rule, score(model, data.test, config), data.test.targets, data.label_names)

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
        temperature=rule.temperature,
        class_bias=rule.class_bias or [0.0] * len(data.label_names),
        class_weights=weights,
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
        task=task.name,
        label_temperatures=rule.label_temperatures or None,
        thresholds=rule.thresholds or None,
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
    test = run.read_rows(TEST_CSV)
    args = run.arguments
    device = pick_device(args.device)
    tokenizer = modeling.load_tokenizer(str(run.model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    cast(torch.nn.Module, model).to(device)
    data = encode_texts(tokenizer, test, run.label_names, run.windowing, examples=False)
    config = EvaluationConfig(
        args.per_device_eval_batch_size,
        int(tokenizer.pad_token_id or 0),
        device,
        autocast_dtype(device, args.cpu_bf16),
        run.windowing.pooling,
    )
    task = task_named(run.report.get("task", "single_label"))
    scores = task.scores(run.decision_rule, score(model, data, config), data.targets, run.label_names)
    record_test_scores(run.path, scores)
    return scores
