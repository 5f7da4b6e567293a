"""How a run reports where it is, and how it is told to stop.

The CLI renders progress as a tqdm bar; the service stores it for ``GET /jobs/{id}``.
``fine_tune`` reports loading to done; ``models.gate.release`` goes on with diagnosing,
exporting and registering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Phase = Literal[
    "loading", "training", "calibrating", "auditing", "saving", "done", "diagnosing", "exporting", "registering",
    "resuming",  # written by the job queue when another trainer takes a job over, until its process reports
]  # fmt: skip


@dataclass(frozen=True)
class Progress:
    phase: Phase
    epoch: float = 0.0
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    attempt: int = 1  # which training attempt of the job (a repair attempt follows a blocked one)
    attempts_allowed: int = 1
    attempt_reason: str | None = None  # why this attempt runs: the remedies it applies
    # the 1-based epoch a run interrupted after a finished epoch goes on with (None: never resumed);
    # set on every report after the resume, so a client polling sees it whatever the phase
    resumed_at_epoch: int | None = None


class ProgressCallback(Protocol):
    # positional-only: any one-argument callable is a callback (a list's append, in tests)
    def __call__(self, progress: Progress, /) -> None: ...


CancelCheck = Callable[[], bool]


def never_cancelled() -> bool:
    return False


def ignore_progress(progress: Progress) -> None:
    """The default callback: a run without an observer."""
