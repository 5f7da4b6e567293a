"""Model quality and training time: fitgate defaults vs the seed-000 recipe, same splits, one run.

The seed-000 recipe, implemented correctly (its argmax and label-map bugs fixed): fixed
padding to 128 tokens, AdamW lr 2e-5 without weight decay, batch 16, 5 epochs, unweighted
cross-entropy, no validation-based stopping, the last epoch evaluated. Both recipes start
from the bundled all-MiniLM-L6-v2 and see the same train/validation/test rows.

    python bench/train_quality.py --datasets sms_spam banking77 --recipes fitgate naive
    python bench/train_quality.py --quick      # minutes: 600 sms_spam rows, one epoch each
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import evaluation, modeling
from training.arguments import TrainingArguments
from training.data import LabelledData, write_labelled_csv
from training.loop import fine_tune, load_splits
from training.splits import Splits

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCES = {
    "sms_spam": (DATASETS / "sms_spam" / "sms_spam.csv", None, "spam"),
    "banking77": (DATASETS / "banking77" / "banking77_train.csv", DATASETS / "banking77" / "banking77_test.csv", None),
}


def _scores(
    logits: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    minority: str | None,
    temperature: float = 1.0,
    bias: np.ndarray | None = None,
) -> dict[str, float]:
    bias = np.zeros(len(names)) if bias is None else bias
    pred = evaluation.predict(logits, temperature, bias)
    table = evaluation.per_class_table(labels, pred, names)
    recalls = {c.label: c.recall for c in table}
    return {
        "macro_f1": evaluation.macro_f1(labels, pred, len(names)),
        "accuracy": float((pred == labels).mean()),
        "minority_recall": recalls[minority] if minority else min(recalls.values()),
        "ece": evaluation.expected_calibration_error(evaluation.softmax(logits, temperature), pred, labels),
    }


def run_naive(splits: Splits, minority: str | None, epochs: int, seed: int) -> dict[str, float]:
    """Seed 000's loop, bugs fixed: fixed length 128, lr 2e-5, batch 16, last epoch kept."""
    torch.manual_seed(seed)
    base = modeling.default_base_model()
    tokenizer = modeling.load_tokenizer(base)
    names = sorted(set(splits.train.labels))
    label_id = {n: i for i, n in enumerate(names)}

    def tensors(part: LabelledData) -> TensorDataset:
        enc = tokenizer(part.texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        return TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor([label_id[x] for x in part.labels]))

    model = modeling.load_classifier(base, names, dropout=None, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    train = tensors(splits.train)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for ids, mask, y in DataLoader(train, batch_size=16, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    train_seconds = time.perf_counter() - started
    model.eval()
    assert splits.test is not None
    test = tensors(splits.test)
    with torch.no_grad():
        logits = torch.cat(
            [model(input_ids=i, attention_mask=m).logits for i, m, _ in DataLoader(test, batch_size=64)]
        ).numpy()
    scores = _scores(logits, test.tensors[2].numpy(), names, minority)
    return {
        **scores,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "samples_per_second": epochs * len(train) / train_seconds,
    }


def run_fitgate(splits: Splits, minority: str | None, args: TrainingArguments, work: Path) -> dict[str, float]:
    assert splits.test is not None
    paths = [
        write_labelled_csv(p, work / f"{n}.csv")
        for n, p in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
    ]
    started = time.perf_counter()
    result = fine_tune(paths[0], work / "run", args, validation_path=paths[1], test_path=paths[2])
    wall = time.perf_counter() - started
    test = result.test
    assert test is not None
    recalls = {c.label: c.recall for c in test.per_class}
    samples = sum(p.samples_per_second or 0 for p in result.curves[1:]) / max(1, len(result.curves) - 1)
    return {
        "macro_f1": test.macro_f1,
        "accuracy": test.accuracy,
        "minority_recall": recalls[minority] if minority else min(recalls.values()),
        "ece": test.ece_after_calibration,
        "ece_before_calibration": test.ece_before_calibration,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "samples_per_second": samples,
        "epochs_run": result.curves[-1].epoch,
        "selected_epoch": next(p.epoch for p in result.curves if p.step == result.best_step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sms_spam", "banking77"], choices=sorted(SOURCES))
    parser.add_argument("--recipes", nargs="+", default=["fitgate", "naive"], choices=["fitgate", "naive"])
    parser.add_argument("--quick", action="store_true", help="600 sms_spam rows, one epoch per recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_quality.json"))
    ns = parser.parse_args()
    if ns.quick:
        ns.datasets = ["sms_spam"]

    rows = []
    for name in ns.datasets:
        train_path, test_path, minority = SOURCES[name]
        if not train_path.exists():
            sys.exit(f"{train_path} not found: this benchmark needs ../shared/datasets beside the checkout")
        args = TrainingArguments(seed=ns.seed, **({"num_train_epochs": 1} if ns.quick else {}))
        splits, _ = load_splits(train_path, args, None, test_path)
        if ns.quick:
            splits = Splits(
                *(
                    LabelledData(p.texts[:n], p.labels[:n])
                    for p, n in ((splits.train, 600), (splits.validation, 200), (splits.test, 200))
                )
            )  # type: ignore[union-attr]
        for recipe in ns.recipes:
            print(f"running {recipe} on {name} ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                if recipe == "fitgate":
                    scores = run_fitgate(splits, minority, args, Path(tmp))
                else:
                    scores = run_naive(splits, minority, 1 if ns.quick else 5, ns.seed)
            rows.append({"dataset": name, "recipe": recipe, **scores})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    meta = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("| data set | recipe | test macro-F1 | accuracy | minority recall | ECE | wall time (s) | samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['recipe']} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
            f"{r['minority_recall']:.4f} | {r['ece']:.4f} | {r['wall_seconds']:.0f} | {r['samples_per_second']:.1f} |"
        )


if __name__ == "__main__":
    main()
