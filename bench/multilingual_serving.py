"""Export and serving cost of a multilingual model: bundle build, int8 guard, disk, worker memory, texts/s.

Takes the run directories ``bench/chinese_quality.py`` left (chnsenticorp_htl: ``fitgate`` on
multilingual-e5-small and ``fitgate_english`` on minilm, trained on the same rows), builds each one's
bundle exactly as the service does (``models.export.build_bundle``: ONNX export, parity check, int8
with its accuracy guard), then loads each bundle in a fresh process with the serving runtime
(``models.runtime.OnnxClassifier``, ONNX Runtime and ``tokenizers`` only) and measures its resident
memory after loading and after scoring the test texts in batches of 64, and its texts/s. The
TF-IDF baseline's texts/s on the same texts is measured in this process.

    python bench/multilingual_serving.py          # after bench/chinese_quality.py (about 5 min)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".cache" / "chinese_quality"
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("FITGATE_DATA_DIR", str(WORK / "fitgate-data"))
RUNS = {
    "multilingual-e5-small": WORK / "chnsenticorp_htl" / "fitgate",
    "minilm": WORK / "chnsenticorp_htl" / "fitgate_english",
}

CHILD = """
import json, sys, time, psutil
from pathlib import Path
import numpy as np
from models.runtime import OnnxClassifier
from training.data import read_labelled_file
from training.evaluation import macro_f1
bundle, test = Path(sys.argv[1]), Path(sys.argv[2])
process = psutil.Process()
before = process.memory_info().rss
model = OnnxClassifier(bundle, threads=2)
model.load()
loaded = process.memory_info().rss
data, _ = read_labelled_file(test)
started = time.perf_counter()
chosen = []
for i in range(0, len(data.texts), 64):
    chosen.extend(model.predict(data.texts[i:i + 64]).decided.tolist())
seconds = time.perf_counter() - started
labels = model.spec.labels
truth = [labels.index(x) for x in data.labels]
print(json.dumps({"graph": model.served_graph, "rss_before_mib": before / 2**20, "rss_loaded_mib": loaded / 2**20,
                  "rss_after_mib": process.memory_info().rss / 2**20, "texts_per_second": len(data.texts) / seconds,
                  "served_test_macro_f1": macro_f1(np.array(truth), np.array(chosen), len(labels))}))
"""


def bundle_of(name: str, run_dir: Path) -> dict[str, Any]:
    from fitgate.settings import Settings
    from models.export import build_bundle
    from models.gate import diagnose_and_record
    from training.rundir import RunDirectory

    run = RunDirectory.open(run_dir / "run")
    settings = Settings()
    diagnosis = diagnose_and_record(run, settings)
    dest = run_dir / "bundle"
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    started = time.perf_counter()
    spec = build_bundle(run, diagnosis, dest, settings)
    seconds = time.perf_counter() - started
    sizes = {p.name: p.stat().st_size for p in dest.glob("*.onnx")}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(dest), str(run_dir / "test.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    served = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "model": name,
        "gate_passed": diagnosis.passed,
        "build_seconds": seconds,
        "fp32_mb": sizes.get("model.onnx", 0) / 1e6,
        "int8_mb": sizes.get("model.int8.onnx", 0) / 1e6,
        "int8": spec.quantization,
        "parity_max_abs_diff": spec.parity["max_abs_probability_diff"],
        **served,
    }


def tfidf_speed() -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from training.data import read_labelled_file

    train, _ = read_labelled_file(RUNS["multilingual-e5-small"] / "train.csv")
    test, _ = read_labelled_file(RUNS["multilingual-e5-small"] / "test.csv")
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    model = LogisticRegression(C=16.0, class_weight="balanced", max_iter=3000).fit(
        vectorizer.fit_transform(train.texts), train.labels
    )
    started = time.perf_counter()
    for i in range(0, len(test.texts), 64):
        model.predict(vectorizer.transform(test.texts[i : i + 64]))
    return {
        "model": "char TF-IDF + LR (scikit-learn)",
        "texts_per_second": len(test.texts) / (time.perf_counter() - started),
    }


def markdown(rows: list[dict[str, Any]], tfidf: dict[str, Any]) -> str:
    lines = [
        "`python bench/multilingual_serving.py`: chnsenticorp_htl's 776 test texts, batches of 64, 2 threads; "
        "bundles built by the service's exporter from `bench/chinese_quality.py`'s runs.",
        "",
        "| base model | bundle build s | ONNX fp32 MB | int8 MB | int8 kept (val macro-F1 fp32 → int8) | served graph "
        "| worker RSS loaded MiB | after scoring MiB | texts/s | served test macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["int8"]
        kept = (f"{'yes' if q.get('kept') else 'no'} ({q['val_macro_f1_fp32']:.4f} → {q['val_macro_f1_int8']:.4f})"
                if "val_macro_f1_int8" in q else f"no ({q.get('reason')})")  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['build_seconds']:.0f} | {r['fp32_mb']:.0f} | {r['int8_mb']:.0f} | {kept} "
            f"| {r['graph']} | {r['rss_loaded_mib']:.0f} | {r['rss_after_mib']:.0f} | {r['texts_per_second']:.0f} "
            f"| {r['served_test_macro_f1']:.4f} |"
        )
    lines.append(f"| {tfidf['model']} | – | – | – | – | – | – | – | {tfidf['texts_per_second']:.0f} | – |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [bundle_of(name, run_dir) for name, run_dir in RUNS.items() if (run_dir / "run").exists()]
    tfidf = tfidf_speed()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multilingual_serving.json").write_text(
        json.dumps({"rows": rows, "tfidf": tfidf}, indent=2, default=str)
    )
    (RESULTS / "multilingual_serving.md").write_text(markdown(rows, tfidf))
    print(markdown(rows, tfidf))


if __name__ == "__main__":
    main()
