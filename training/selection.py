"""Which checkpoint a run keeps, and when it stops early."""

from __future__ import annotations

import copy

import torch

from training.curves import CurvePoint


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
