"""The loop's side of the end-of-epoch checkpoint: capture a run into one, put a run back from one.

The file's contents and where it lives are :mod:`training.checkpoint`'s; this module binds them to
the loop's state, optimizer and checkpoint selection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from training.arguments import TrainingArguments
from training.checkpoint import Checkpoint, LossWindow, RandomState, load_checkpoint
from training.loopstate import LoopState, RunningLoss
from training.optimization import Optimization
from training.progress import Progress, ProgressCallback
from training.selection import CheckpointSelector

log = logging.getLogger(__name__)


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


def resumable(output_dir: Path, args: TrainingArguments, data_sha256: dict[str, str]) -> Checkpoint | None:
    """The checkpoint in ``output_dir`` if it is of these arguments and data; None otherwise."""
    checkpoint = load_checkpoint(output_dir)
    if checkpoint is not None and not checkpoint.matches(args, data_sha256):
        log.warning("%s holds a checkpoint of other arguments or data; training starts over", output_dir)
        return None
    return checkpoint


def marked_resumed(on_progress: ProgressCallback, epoch: int) -> ProgressCallback:
    """Progress that says the run resumed, on every report after the resume."""

    def progress(progress: Progress) -> None:
        on_progress(replace(progress, resumed_at_epoch=epoch))

    return progress
