"""The end-of-epoch checkpoint a running job resumes from after its worker died or lost its lease.

One file per run directory (:data:`training.rundir.CHECKPOINT`), replaced atomically after each
epoch, so only the last epoch is kept and a reader never sees half of one. It holds everything
the loop needs to go on as if it had never stopped: the weights, AdamW's moments, the schedule,
the fp16 scaler, every random generator, the curves so far and the checkpoint selection (the
best weights included). ``fine_tune`` writes it and deletes it once the run is saved.

The file holds tensors and plain Python values only, so it loads with ``weights_only=True``:
reading it runs no pickled code even if someone else wrote it.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from pydantic import ValidationError

from training.arguments import TrainingArguments
from training.curves import CurvePoint
from training.rundir import CHECKPOINT

log = logging.getLogger(__name__)

FORMAT = 1  # raised when the contents change: a checkpoint of another format is not resumed

# what torch.load raises for a file that is not a checkpoint this module wrote
_UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError)


@dataclass(frozen=True)
class RandomState:
    """Every random number generator a training step draws from, so a resumed epoch draws the same numbers."""

    generator: torch.Tensor  # the run's own generator: sampler order, balancing, augmentation
    torch_cpu: torch.Tensor  # torch's global generator: dropout on CPU
    torch_cuda: list[torch.Tensor]  # one per CUDA device (dropout on GPU); empty without CUDA
    numpy: tuple[str, list[int], int, int, float]  # np.random's legacy state, the key as plain ints
    python: tuple[Any, ...]  # random.getstate()

    @classmethod
    def capture(cls, generator: torch.Generator) -> RandomState:
        kind, key, pos, has_gauss, cached = cast(tuple[str, Any, int, int, float], np.random.get_state())
        return cls(
            generator=generator.get_state(),
            torch_cpu=torch.get_rng_state(),
            torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=(kind, [int(k) for k in key], int(pos), int(has_gauss), float(cached)),
            python=random.getstate(),
        )

    def restore(self, generator: torch.Generator) -> None:
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_cpu)
        # another machine may have another number of GPUs: its dropout then differs, training still resumes
        if self.torch_cuda and torch.cuda.is_available() and len(self.torch_cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(self.torch_cuda)
        kind, key, pos, has_gauss, cached = self.numpy
        np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
        random.setstate(self.python)


@dataclass(frozen=True)
class LossWindow:
    """The loop's running training loss since the last evaluation, which may span an epoch boundary."""

    total: float
    count: int
    samples: int
    seconds: float  # since the window opened: its throughput goes on from there


@dataclass(frozen=True)
class Checkpoint:
    """A run at the end of an epoch."""

    arguments: dict[str, Any]  # TrainingArguments.model_dump(mode="json"): a resume trains the same run
    data_sha256: dict[str, str]  # of the data files, by role: a resume trains on the same data
    epochs_completed: int
    step: int
    train_seconds: float  # training time up to here; the resumed run adds its own
    curves: list[CurvePoint]
    best: CurvePoint | None  # the checkpoint selection: best point, evaluations since, best weights
    evals_without_gain: int
    best_weights: dict[str, torch.Tensor] | None
    window: LossWindow
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]  # empty when the scaler is off (fp32 and bf16)
    random: RandomState

    def matches(self, args: TrainingArguments, data_sha256: dict[str, str]) -> bool:
        """Whether this checkpoint belongs to a run of ``args`` on the same data."""
        return self.arguments == args.model_dump(mode="json") and self.data_sha256 == data_sha256


def save_checkpoint(checkpoint: Checkpoint, run_dir: Path) -> Path:
    """Replace the run's checkpoint, atomically and durably: after a crash the old one or the new one is there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as f:
            torch.save(_to_plain(checkpoint), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(run_dir, os.O_RDONLY)  # the rename itself survives a power cut once the directory is synced
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's checkpoint; None when there is none, or it cannot be read (then the run starts over)."""
    plain = _read(run_dir / CHECKPOINT, mmap=False)
    if plain is None:
        return None
    try:
        return _from_plain(plain)
    except _UNREADABLE as exc:
        log.warning("%s is not a checkpoint this version can resume (%s); training starts over", run_dir, exc)
        return None


def checkpoint_arguments(run_dir: Path) -> TrainingArguments | None:
    """The arguments of the run that wrote ``run_dir``'s checkpoint, without reading its tensors; None if none."""
    plain = _read(run_dir / CHECKPOINT, mmap=True)  # mapped: the weights are never read from disk
    if plain is None:
        return None
    try:
        return TrainingArguments.model_validate(plain["arguments"])
    except (KeyError, ValidationError) as exc:
        log.warning("%s holds a checkpoint of other arguments (%s); it is not resumed", run_dir, exc)
        return None


def remove_checkpoint(run_dir: Path) -> None:
    """A finished (or restarted) run does not need its checkpoint: free the disk it takes."""
    path = run_dir / CHECKPOINT
    path.unlink(missing_ok=True)
    _temporary(path).unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _read(path: Path, *, mmap: bool) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        plain = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except _UNREADABLE as exc:
        log.warning("cannot read the checkpoint %s (%s); training starts over", path, exc)
        return None
    if not isinstance(plain, dict) or plain.get("format") != FORMAT:
        log.warning("%s is not a checkpoint of format %d; training starts over", path, FORMAT)
        return None
    return cast(dict[str, Any], plain)


def _to_plain(c: Checkpoint) -> dict[str, Any]:
    """Tensors, dicts, lists and scalars only (what ``weights_only`` loading accepts); nothing is copied."""
    return {
        "format": FORMAT,
        "arguments": c.arguments,
        "data_sha256": c.data_sha256,
        "epochs_completed": c.epochs_completed,
        "step": c.step,
        "train_seconds": c.train_seconds,
        "curves": [asdict(p) for p in c.curves],
        "best": asdict(c.best) if c.best is not None else None,
        "evals_without_gain": c.evals_without_gain,
        "best_weights": c.best_weights,
        "window": asdict(c.window),
        "model": c.model,
        "optimizer": c.optimizer,
        "scheduler": c.scheduler,
        "scaler": c.scaler,
        "random": {
            "generator": c.random.generator,
            "torch_cpu": c.random.torch_cpu,
            "torch_cuda": c.random.torch_cuda,
            "numpy": c.random.numpy,
            "python": c.random.python,
        },
    }


def _from_plain(plain: dict[str, Any]) -> Checkpoint:
    best = plain["best"]
    return Checkpoint(
        arguments=plain["arguments"],
        data_sha256=plain["data_sha256"],
        epochs_completed=int(plain["epochs_completed"]),
        step=int(plain["step"]),
        train_seconds=float(plain["train_seconds"]),
        curves=[CurvePoint(**p) for p in plain["curves"]],
        best=CurvePoint(**best) if best is not None else None,
        evals_without_gain=int(plain["evals_without_gain"]),
        best_weights=plain["best_weights"],
        window=LossWindow(**plain["window"]),
        model=plain["model"],
        optimizer=plain["optimizer"],
        scheduler=plain["scheduler"],
        scaler=plain["scaler"],
        random=RandomState(**plain["random"]),
    )
