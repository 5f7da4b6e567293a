"""Gate scenarios: healthy, overfit, underfit and degenerate runs of the bundled MiniLM, and their verdicts.

Each scenario fine-tunes with fitgate's loop, then runs the gate exactly as the service
does (diagnosis with default operator settings). A scenario meets its expectation when
the verdict matches: healthy must pass; the others must be blocked for their reason.

    python bench/gate_scenarios.py                   # sms_spam and banking77, every scenario
    python bench/gate_scenarios.py --datasets sms_spam --scenarios overfit underfit
    python bench/gate_scenarios.py --datasets chnsenticorp_htl --out bench/results/gate_scenarios_chinese.json
    python bench/gate_scenarios.py --datasets reuters21578 --scenarios healthy underfit permuted degenerate overfit \
        --out bench/results/gate_scenarios_reuters.json

Reuters-21578 is multi-label (several topics per story, some none): its rows are read with their label sets
(stories with no topic kept), every scenario trains with ``task=multi_label``, and ``degenerate`` is "one label
collapsed": the training rows all carry the most frequent topic (``earn``), the separate validation rows only
where they truly do, so a model that learned the training labels answers it for every text.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitgate.settings import Settings
from models.gate import diagnose_and_record
from training.arguments import TrainingArguments
from training.data import LabelledData, read_labelled_file, write_labelled_csv
from training.loop import fine_tune
from training.rundir import RunDirectory

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCES = {
    "sms_spam": DATASETS / "sms_spam" / "sms_spam.csv",
    "banking77": DATASETS / "banking77" / "banking77_train.csv",
    # Chinese: no base model named, so fitgate chooses multilingual-e5-small (minilm cannot read it)
    "chnsenticorp_htl": DATASETS / "chnsenticorp_htl" / "chnsenticorp_htl_all.csv",
    "reuters21578": DATASETS / "reuters21578" / "reuters21578_train.csv",
}
HEALTHY_ROWS = {"sms_spam": 2000, "banking77": 4000, "chnsenticorp_htl": 1000, "reuters21578": 1500}  # capped for time
UNDERFIT_ROWS = {"chnsenticorp_htl": 2000, "reuters21578": 1500}  # 2 cores: the 12-layer model, Reuters' long stories
MULTI_LABEL = {"reuters21578": {"task": "multi_label", "allow_empty_labels": True}}  # arguments every scenario adds
COLLAPSED_LABEL = "earn"  # reuters21578's degenerate scenario: on every training row


@dataclass(frozen=True)
class Scenario:
    expected: str  # "pass", a verdict, or "any" when the run's own verdict decides
    arguments: dict[str, object]
    describe: str


SCENARIOS = {
    "healthy": Scenario("pass", {}, "default settings"),
    "overfit": Scenario(
        "overfit",
        dict(
            dropout=0.0,
            weight_decay=0.0,
            label_smoothing_factor=0.0,
            early_stopping_patience=None,
            load_best_model_at_end=False,
            num_train_epochs=15,
            class_weighting="none",
            tune_decision_rule=False,
            calibrate=False,
        ),
        "~200 training rows, 30% labels shuffled, no dropout/decay/early stop, last of 15 epochs exported",
    ),
    "overfit_restored": Scenario(
        "any",
        dict(
            dropout=0.0,
            weight_decay=0.0,
            label_smoothing_factor=0.0,
            early_stopping_patience=None,
            load_best_model_at_end=True,
            num_train_epochs=15,
            class_weighting="none",
        ),
        "the same data and settings with best-checkpoint restore on: the best epoch's own verdict decides",
    ),
    "underfit": Scenario("underfit", dict(learning_rate=1e-7, max_steps=60), "learning rate 1e-7, 60 steps"),
    "permuted": Scenario(
        "no_skill|underfit|degenerate",
        {},
        "the healthy rows with their labels permuted at random: nothing to learn, so nothing may ship",
    ),
    "degenerate": Scenario(
        "degenerate|no_skill",
        dict(learning_rate=1e-6, max_steps=30, class_weighting="none", tune_decision_rule=False),
        "1:20 subsample, unweighted loss, 30 steps at learning rate 1e-6",
    ),
}


def _by_class(data: LabelledData) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(data.texts, data.labels, strict=True):
        groups[label].append(text)
    return groups


def _flatten(groups: dict[str, list[str]], rng: random.Random, multi_label: bool = False) -> LabelledData:
    rows = [(t, label) for label, texts in groups.items() for t in texts]
    rng.shuffle(rows)
    return LabelledData([t for t, _ in rows], [label for _, label in rows], multi_label=multi_label)


def scenario_data(
    dataset: str, scenario: str, full: LabelledData, seed: int
) -> tuple[LabelledData, LabelledData | None]:
    """Training rows for a scenario, and a separate validation set where the scenario needs one."""
    rng = random.Random(seed)
    groups = _by_class(full)
    if full.multi_label and scenario in ("healthy", "underfit"):  # a seeded sample: label sets are too many to stratify
        cap = (HEALTHY_ROWS if scenario == "healthy" else UNDERFIT_ROWS)[dataset]
        return full.subset(sorted(rng.sample(range(len(full)), min(cap, len(full))))), None
    if scenario == "healthy":
        cap = HEALTHY_ROWS[dataset]
        if cap is None:
            return full, None
        share = cap / len(full)
        return _flatten({k: rng.sample(v, max(3, round(len(v) * share))) for k, v in groups.items()}, rng), None
    if scenario.startswith("overfit"):
        # as measured in the issue: 200 training rows with 30% of labels shuffled, 600 clean validation rows
        labels = sorted(groups)[:10] if dataset == "banking77" else sorted(groups)
        pool = _flatten({k: groups[k] for k in labels}, rng)
        rows = list(zip(pool.texts, pool.labels, strict=True))
        train = [(t, rng.choice(labels) if rng.random() < 0.3 else y) for t, y in rows[:200]]
        validation = rows[200:800]
        if full.multi_label:  # validation keeps the stories whose topics all occur in training
            seen = {topic for _, y in train for topic in y.split(";")}
            validation = [(t, y) for t, y in rows[200:] if set(filter(None, y.split(";"))) <= seen][:600]
        return (
            LabelledData([t for t, _ in train], [y for _, y in train]),
            LabelledData([t for t, _ in validation], [y for _, y in validation]),
        )
    if scenario == "underfit":
        if dataset in UNDERFIT_ROWS:
            share = UNDERFIT_ROWS[dataset] / len(full)
            return _flatten({k: rng.sample(v, max(3, round(len(v) * share))) for k, v in groups.items()}, rng), None
        return full, None
    if scenario == "permuted":
        healthy, _ = scenario_data(dataset, "healthy", full, seed)
        labels = list(healthy.labels)
        rng.shuffle(labels)
        return LabelledData(healthy.texts, labels), None
    if full.multi_label:  # degenerate, one label collapsed: every training row carries it, validation as it is
        healthy, _ = scenario_data(dataset, "healthy", full, seed)
        cut = len(healthy) * 4 // 5
        collapsed = [";".join(sorted({*healthy.label_set(i), COLLAPSED_LABEL})) for i in range(cut)]
        seen = {topic for i in range(cut) for topic in healthy.label_set(i)}
        kept = [i for i in range(cut, len(healthy)) if set(healthy.label_set(i)) <= seen]  # topics training has
        return (
            LabelledData(healthy.texts[:cut], collapsed, multi_label=True),
            LabelledData([healthy.texts[i] for i in kept], [healthy.labels[i] for i in kept], multi_label=True),
        )
    # degenerate: the largest classes, the first kept whole and the others cut to 1/20 of its size
    labels = sorted(groups, key=lambda k: -len(groups[k]))[: 2 if dataset == "sms_spam" else 10]
    big = len(groups[labels[0]])
    subsample = {
        k: groups[k] if i == 0 else rng.sample(groups[k], min(len(groups[k]), max(5, big // 20)))
        for i, k in enumerate(labels)
    }
    return _flatten(subsample, rng), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sms_spam", "banking77"], choices=list(SOURCES))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help="keep the other scenarios' rows already in --out")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gate_scenarios.json"))
    ns = parser.parse_args()

    settings = Settings()
    rows = []
    if ns.append and ns.out.exists():  # a rerun replaces its own scenarios' rows
        rows = [r for r in json.loads(ns.out.read_text())["rows"] if r["scenario"] not in ns.scenarios]
    for dataset in ns.datasets:
        if not SOURCES[dataset].exists():
            sys.exit(f"{SOURCES[dataset]} not found: this benchmark needs ../shared/datasets beside the checkout")
        full, _ = read_labelled_file(SOURCES[dataset], allow_empty_labels=dataset in MULTI_LABEL)
        for name in ns.scenarios:
            scenario = SCENARIOS[name]
            data, validation = scenario_data(dataset, name, full, ns.seed)
            split = {"test_size": 0.0} if validation is not None else {}
            extra = MULTI_LABEL.get(dataset, {})
            args = TrainingArguments.model_validate({"seed": ns.seed, **split, **scenario.arguments, **extra})
            print(f"{dataset} / {name}: {len(data)} rows ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = write_labelled_csv(data, Path(tmp) / "data.csv")
                val_path = write_labelled_csv(validation, Path(tmp) / "val.csv") if validation else None
                result = fine_tune(path, Path(tmp) / "run", args, validation_path=val_path)
                diagnosis = diagnose_and_record(RunDirectory.open(Path(tmp) / "run"), settings)
            blocking = diagnosis.blocking_verdicts
            verdict = "pass" if diagnosis.passed else "blocked: " + ", ".join(blocking)
            if scenario.expected == "pass":
                met = diagnosis.passed
            elif scenario.expected == "any":
                met = True
            else:
                met = any(v in scenario.expected.split("|") for v in blocking)
            sel = next(p for p in result.curves if p.step == result.best_step)
            rows.append(
                {
                    "dataset": dataset,
                    "scenario": name,
                    "base_model": result.data_report.base_model.get("name"),
                    "describe": scenario.describe,
                    "expected": scenario.expected,
                    "verdict": verdict,
                    "met": met,
                    "rows": len(data),
                    "exported_epoch": sel.epoch,
                    "train_macro_f1": sel.train_macro_f1,
                    "val_macro_f1": sel.val_macro_f1,
                    "seconds": time.perf_counter() - started,
                    "findings": [f.message for f in diagnosis.findings],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            write_results(ns.out, rows)  # after every scenario: a stopped run keeps what it measured


def write_results(out: Path, rows: list[dict[str, object]]) -> None:
    """The rows as JSON, and beside it the table docs/BENCHMARKS.md includes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"`{meta['command']}` ({meta['date']})",
        "",
        "| data set | scenario | expected | verdict | met | exported epoch | train / val macro-F1 | time (s) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['dataset']} ({r['base_model']}) | {r['scenario']} | {str(r['expected']).replace('|', ' or ')} | "
            f"{r['verdict']} | {'yes' if r['met'] else '**no**'} | {r['exported_epoch']:g} | "
            f"{r['train_macro_f1']:.3f} / {r['val_macro_f1']:.3f} | {r['seconds']:.0f} |"
            for r in rows
        ),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    lines = [
        f"`{meta['command']}` ({meta['date']})",
        "",
        "| data set | scenario | expected | verdict | met | exported epoch | train / val macro-F1 | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']}{' (' + str(r['base_model']) + ')' if r.get('base_model') else ''} | {r['scenario']} "
            f"| {str(r['expected']).replace('|', ' or ')} | {r['verdict']} | {'yes' if r['met'] else 'NO'} "
            f"| {r['exported_epoch']:g} | {r['train_macro_f1']:.3f} / {r['val_macro_f1']:.3f} | {r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
