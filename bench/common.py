"""What several benchmarks share: the data sets and one fine-tuned SMS spam model, trained once and cached."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from models.runtime import OnnxClassifier
from training import rundir
from training.arguments import TrainingArguments
from training.data import LabelledData, read_labelled_file, write_labelled_csv
from training.loop import fine_tune

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = ROOT / "bench" / ".cache" / "drift"
NAME = ModelName.parse("bench/sms-drift")


@dataclass(frozen=True)
class SmsModel:
    data_dir: Path  # a fitgate data directory whose registry serves the model (FITGATE_DATA_DIR)
    run_dir: Path  # the training run: run_dir / "model" is the Hugging Face checkpoint
    bundle_dir: Path
    validation: LabelledData
    held_out: LabelledData  # sms_spam rows the model never saw

    def classifier(self, precision: str = "auto") -> OnnxClassifier:
        classifier = OnnxClassifier(self.bundle_dir, precision=precision)
        classifier.load()
        return classifier


def sms_model(rows: int = 2000, epochs: int = 3) -> SmsModel:
    """MiniLM fine-tuned on ``rows`` shuffled sms_spam rows and released through the gate (cached)."""
    full = read_labelled_file(DATASETS / "sms_spam" / "sms_spam.csv")[0]
    key = CACHE / f"rows{rows}-epochs{epochs}"
    run_dir = key / "run"
    settings = Settings(data_dir=key / "data")
    registry = open_registry(settings)
    order = list(range(len(full.texts)))
    random.Random(0).shuffle(order)
    train = LabelledData([full.texts[i] for i in order[:rows]], [full.labels[i] for i in order[:rows]])
    held_out = LabelledData([full.texts[i] for i in order[rows:]], [full.labels[i] for i in order[rows:]])
    if registry.current(NAME) is None:
        if not (run_dir / rundir.REPORT).is_file():
            key.mkdir(parents=True, exist_ok=True)
            csv = write_labelled_csv(train, key / "train.csv")
            print(f"fine-tuning MiniLM on {rows} sms_spam rows for {epochs} epochs ...", flush=True)
            fine_tune(csv, run_dir, TrainingArguments(num_train_epochs=epochs))
        release(run_dir, NAME, settings, registry, promote=True)  # export again: delete data/ after export changes
    validation = read_labelled_file(run_dir / rundir.VALIDATION_CSV)[0]
    return SmsModel(key / "data", run_dir, registry.bundle_path(NAME), validation, held_out)
