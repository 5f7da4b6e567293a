"""What the training loop carries from one step to the next, and what it shows while it runs.

Not in :mod:`training.progress`: that module is imported by the torch-free API process, and the
loop's running loss lives on the training device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.arguments import Schedule
from training.curves import CurvePoint, save_curves
from training.progress import Progress
from training.rundir import CURVES
from training.selection import CheckpointSelector


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
