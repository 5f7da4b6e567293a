"""Where a fitgate training run's wall time goes, for trying default arguments before a full train_quality run.

Runs the fitgate recipe of ``bench/train_quality.py`` (same data sets, same splits) with argument
overrides and prints one JSON line per seed: test macro-F1, wall and training seconds, epochs, and
the seconds spent in evaluation, the resume checkpoints, the label audit and writing the run.

    python bench/train_time_breakdown.py banking77_imbalanced 0 '{"num_train_epochs": 4}'
    python bench/train_time_breakdown.py banking77_imbalanced 0,1 '{"num_train_epochs": 3, "train_eval_size": 256}'
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_quality

import training.loop as loop
from training.arguments import TrainingArguments
from training.splits import load_splits

TIMED = ("evaluate", "save_checkpoint", "audit_run", "save_run")


def timed(spent: dict[str, float], name: str) -> None:
    """Wrap ``training.loop.<name>`` so its calls add their seconds to ``spent[name]``.

    ``fine_tune`` calls each of ``TIMED`` by the name it imported into :mod:`training.loop`, so the
    wrapper goes there, not into the module that defines the function.
    """
    inner: Callable[..., Any] = getattr(loop, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    setattr(loop, name, wrapper)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    name, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    spent: dict[str, float] = {}
    for fn in TIMED:
        timed(spent, fn)
    train_path, test_path, minority = train_quality.source(name)
    for seed in seeds:
        spent.clear()
        args = TrainingArguments(seed=seed, **overrides)
        splits, _ = load_splits(train_path, args, None, test_path)
        with tempfile.TemporaryDirectory() as tmp:
            r = train_quality.run_fitgate(splits, minority, args, Path(tmp))
        print(
            json.dumps(
                {
                    "data": name,
                    "seed": seed,
                    "overrides": overrides,
                    "macro_f1": round(r["macro_f1"], 4),
                    "wall_seconds": round(r["wall_seconds"], 1),
                    "train_seconds": round(r["train_seconds"], 1),
                    "epochs_run": r["epochs_run"],
                    "selected_epoch": r["selected_epoch"],
                    **{f"{k}_seconds": round(v, 1) for k, v in spent.items()},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
