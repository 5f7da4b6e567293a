"""Does freezing lower layers help the overfit remedy? The 200-row sms_spam overfit scenario of
bench/gate_scenarios.py, retrained with the overfit remedy's arguments, with and without frozen layers.

    python bench/overfit_freeze.py     # prints test macro-F1 per variant (training/remedies.py cites it)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gate_scenarios import SCENARIOS, SOURCES
from bench.repair_scenarios import scenario_files
from training.arguments import TrainingArguments
from training.data import read_labelled_file
from training.loop import fine_tune

REMEDY: dict[str, Any] = dict(
    load_best_model_at_end=True,
    early_stopping_patience=2,
    weight_decay=0.1,
    dropout=0.2,
    label_smoothing_factor=0.1,
    num_train_epochs=8,
)


def main() -> None:
    full = read_labelled_file(SOURCES["sms_spam"])[0]
    base = dict(SCENARIOS["overfit"].arguments)
    variants: dict[str, dict[str, Any]] = {
        "no_freeze": {**base, **REMEDY},
        "no_freeze+rule": {**base, **REMEDY, "tune_decision_rule": True, "calibrate": True},
        "freeze2": {**base, **REMEDY, "freeze_layers": 2},
    }
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        train, validation, test, _ = scenario_files("sms_spam", "overfit", full, 0, tmp)
        for variant, overrides in variants.items():
            args = TrainingArguments.model_validate({"seed": 0, "test_size": 0.0, "label_audit": False, **overrides})
            result = fine_tune(train, tmp / variant, args, validation_path=validation, test_path=test)
            assert result.test is not None
            print(variant, round(result.test.macro_f1, 3), round(result.validation.macro_f1, 3), flush=True)


if __name__ == "__main__":
    main()
