"""Export speed: ONNX Runtime fp32 and int8 vs PyTorch eager on CPU, and what each scores on held-out data.

The same fine-tuned MiniLM (bench/common.py): its PyTorch checkpoint and the bundle's two graphs.
Latency is the median of repeated calls on fixed-shape inputs (batch 1 and 32, sequence 32 and 128,
padded); macro-F1 is on the sms_spam messages the model never saw, each path using its own logits.
Each path is timed alone in its own process with its default threading, as it would be served,
and the paths take turns over several rounds, so a slow spell of the shared machine hits all of them.

    python bench/export_speed.py --quick
    python bench/export_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, sms_model
from models.export import torch_logits
from models.runtime import load_tokenizer, run_logits, session_options
from training import rundir
from training.decision import decide
from training.evaluation import macro_f1
from training.windows import Windowing

SHAPES = [(1, 32), (1, 128), (32, 32), (32, 128)]


def time_path(path: str, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of one path for every shape, in this process alone (the child's job)."""
    model = sms_model()
    spec = json.loads((model.bundle_dir / "bundle.json").read_text())
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if path == "pytorch_eager":
        eager = AutoModelForSequenceClassification.from_pretrained(model.run_dir / rundir.MODEL_DIR).eval()

        def call(ids: np.ndarray, mask: np.ndarray) -> None:
            with torch.inference_mode():
                eager(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    else:
        session = ort.InferenceSession(  # path is "onnx_fp32" or "onnx_int8": the bundle names the file
            str(model.bundle_dir / spec[path]), session_options(), providers=["CPUExecutionProvider"]
        )

        def call(ids: np.ndarray, mask: np.ndarray) -> None:
            session.run(["logits"], {"input_ids": ids, "attention_mask": mask})

    times: dict[str, list[float]] = {}
    for batch, length in SHAPES:
        ids = np.random.default_rng(0).integers(1000, 20000, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        call(ids, mask)  # warm-up
        times[f"{batch}x{length}"] = []
        for _ in range(repeats):
            started = time.perf_counter()
            call(ids, mask)
            times[f"{batch}x{length}"].append(time.perf_counter() - started)
    return times


def latency_rows(paths: list[str], repeats: int, rounds: int) -> list[dict[str, Any]]:
    """Each path timed in its own process, the paths taking turns for ``rounds`` rounds.

    One process per path keeps one runtime's idle threads from taking the cores from another
    (in one process, PyTorch eager measured markedly slower beside idle ONNX Runtime sessions),
    and alternating rounds spreads a slow spell of the shared machine over every path.
    """
    times: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(rounds):
        for path in paths:
            child = subprocess.run(
                [sys.executable, __file__, "--time-path", path, "--repeats", str(repeats // rounds)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            for shape, values in json.loads(child.stdout.strip().splitlines()[-1]).items():
                times[path].setdefault(shape, []).extend(values)
    rows = []
    for batch, length in SHAPES:
        median = {p: float(np.median(times[p][f"{batch}x{length}"])) for p in paths}
        row: dict[str, Any] = {"batch": batch, "sequence": length, "pytorch_eager_ms": median["pytorch_eager"] * 1e3}
        for name in paths[1:]:
            row[f"{name}_ms"] = median[name] * 1e3
            row[f"{name}_speedup"] = median["pytorch_eager"] / median[name]
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 1,000 evaluation texts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export_speed.json")
    parser.add_argument("--time-path", help=argparse.SUPPRESS)  # internal: the child that times one path
    parser.add_argument("--repeats", type=int, default=0, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.time_path:
        print(json.dumps(time_path(ns.time_path, ns.repeats)))
        return
    repeats, rounds = (12, 2) if ns.quick else (60, 4)
    model = sms_model()  # trained and exported once, before the children need it
    spec = json.loads((model.bundle_dir / "bundle.json").read_text())
    labels = spec["labels"]
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    eager = AutoModelForSequenceClassification.from_pretrained(model.run_dir / rundir.MODEL_DIR).eval()
    sessions = {
        name: ort.InferenceSession(str(model.bundle_dir / spec[name]), session_options(),
                                   providers=["CPUExecutionProvider"])
        for name in ("onnx_fp32", "onnx_int8") if spec[name]
    }  # fmt: skip
    rows = latency_rows(["pytorch_eager", *sessions], repeats, rounds)

    texts = model.held_out.texts[:1000] if ns.quick else model.held_out.texts
    truth = np.array([labels.index(t) for t in model.held_out.labels[: len(texts)]])
    tokenizer = load_tokenizer(model.bundle_dir / "tokenizer", Windowing("truncate", spec["max_length"]))
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    bias = np.array(spec["class_bias"])
    quality: dict[str, float] = {}
    for name, session in sessions.items():
        logits = run_logits(session, ids, spec.get("pad_id", 0))
        quality[name] = macro_f1(truth, decide(logits, spec["temperature"], bias), len(labels))
    eager_logits = torch_logits(eager, ids)  # the same length-sorted batches of 64 the export's parity check uses
    quality["pytorch_eager"] = macro_f1(truth, decide(eager_logits, spec["temperature"], bias), len(labels))
    results = {
        "command": "python bench/export_speed.py" + (" --quick" if ns.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "repeats": repeats,
        "rounds": rounds,
        "evaluation_texts": len(texts),
        "latency": rows,
        "macro_f1": quality,
        "fusion": spec.get("fusion") or {"fused": False, "reason": "exported before fitgate fused graphs"},
    }
    write(ns.out, results)
    print(ns.out.with_suffix(".md").read_text())


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    int8 = "onnx_int8" in results["macro_f1"]
    lines = [f"`{results['command']}` ({results['date']}, {results['machine']}; "
             f"median of {results['repeats']} calls per path in {results['rounds']} alternating rounds, "
             "each path in its own process)",
             "", "| batch | sequence | PyTorch eager ms | ONNX fp32 ms | fp32 speed-up |"
             + (" ONNX int8 ms | int8 speed-up |" if int8 else ""),
             "|---|---|---|---|---|" + ("---|---|" if int8 else "")]  # fmt: skip
    for r in results["latency"]:
        line = (f"| {r['batch']} | {r['sequence']} | {r['pytorch_eager_ms']:.2f} | {r['onnx_fp32_ms']:.2f} | "
                f"{r['onnx_fp32_speedup']:.2f}x |")  # fmt: skip
        if int8:
            line += f" {r['onnx_int8_ms']:.2f} | {r['onnx_int8_speedup']:.2f}x |"
        lines.append(line)
    q = results["macro_f1"]
    lines += ["", f"Macro-F1 on {results['evaluation_texts']:,} held-out sms_spam messages: "
              + ", ".join(f"{k} {v:.4f}" for k, v in q.items()) + "."]  # fmt: skip
    b1 = next(r for r in results["latency"] if (r["batch"], r["sequence"]) == (1, 128))
    verdicts = [f"fp32 at batch 1 / sequence 128: {b1['onnx_fp32_speedup']:.2f}x eager (target >= 2x: "
                f"{'met' if b1['onnx_fp32_speedup'] >= 2 else 'NOT met'})"]  # fmt: skip
    if int8:
        loss = (q["pytorch_eager"] - q["onnx_int8"]) * 100
        ok = b1["onnx_int8_speedup"] >= 3 and loss <= 1
        verdicts.append(f"int8 {b1['onnx_int8_speedup']:.2f}x with {loss:.2f} points of macro-F1 lost "
                        f"(target >= 3x and <= 1 point: {'met' if ok else 'NOT met'})")  # fmt: skip
    lines += ["", "; ".join(verdicts) + "."]
    fusion = results.get("fusion") or {}
    lines += ["", "Graph: " + (
        "fused by fitgate's export into " + ", ".join(f"{n} x{k}" for n, k in fusion["operators"].items())
        if fusion.get("fused") else f"not fused ({fusion.get('reason', 'no record')})") + "."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
