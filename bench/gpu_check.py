"""The GPU check: one prepared run for a session that is lent a GPU, and its CPU smoke twin in the test suite.

fitgate's main training target is a GPU, and GPUs are lent to sessions only now and then. This
script measures everything a GPU changes, in one go, in under 8 minutes on one H200, and writes
one JSON and one markdown table (``bench/results/gpu_check.{json,md}``):

1. **Training throughput** of fitgate's own optimisation step (``training.optimization``: AdamW, the
   loss, autocast) on fixed-length batches at sequence 128: samples/s, peak memory, and the model
   FLOPs utilisation computed from the parameter count (6 x non-embedding parameters x tokens per
   second, over the GPU's dense bf16 peak). For the bundled MiniLM and for a randomly initialised
   BERT-base-sized config (12 layers, hidden 768: nothing is downloaded), each with the switches
   that matter on a GPU: a host sync per step (``loss.item()``, the old loop) vs none (today's
   loop), and ``torch.compile``.
2. **A full fine-tune** of MiniLM on ``sms_spam`` with fitgate's defaults, on the GPU: macro-F1
   and wall time, to compare with the CPU figure in docs/BENCHMARKS.md.
3. **Serving**: the run exported to ONNX; ONNX Runtime's throughput on each available provider
   (CUDA and CPU) and their agreement with PyTorch and with each other.

``--smoke`` runs the same code on the CPU with the tiny test BERT and a few hundred rows, in
seconds: ``tests/bench/test_gpu_check.py`` runs it, so the script cannot rot between GPU
sessions.

    python bench/gpu_check.py                          # on the GPU machine: < 8 minutes
    python bench/gpu_check.py --smoke --base-model DIR --out /tmp/gpu_check.json   # CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitgate.settings import Settings
from models.export import build_bundle, torch_logits
from models.gate import diagnose_and_record
from models.runtime import encode, load_tokenizer, run_logits, session_options
from training import modeling
from training.arguments import TrainingArguments
from training.data import LabelledData, read_labelled_file, write_labelled_csv
from training.loop import fine_tune
from training.optimization import build_optimization
from training.precision import autocast_dtype, mixed_precision, pick_device
from training.rundir import RunDirectory
from training.tasks.single_label import Objective

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SEQUENCE = 128
# dense bf16 peak of the GPUs a session may be lent, in FLOP/s (vendor datasheets, without sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12}


@dataclass(frozen=True)
class Throughput:
    model: str
    variant: str
    batch_size: int
    sequence: int
    precision: str
    parameters: int
    non_embedding_parameters: int
    samples_per_second: float
    peak_memory_mb: float | None
    mfu: float | None  # model FLOPs utilisation, None where the device's peak is not known (CPUs)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables: what the 6·N·tokens FLOPs estimate counts (Kaplan et al. 2020)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def random_bert(layers: int, hidden: int, vocab_size: int, num_labels: int) -> PreTrainedModel:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    config.num_labels = num_labels
    return BertForSequenceClassification(config)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float | None]]:
    """The peak memory of the block in MiB: allocated GPU memory, or on the CPU the process's peak RSS."""
    found: list[float | None] = [None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield found
    if device.type == "cuda":
        found[0] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        found[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_training(
    name: str, model: PreTrainedModel, variant: str, batch_size: int, steps: int, device: torch.device
) -> Throughput:
    """Samples/s of fitgate's optimisation step on random fixed-length batches (after warm-up steps)."""
    torch.manual_seed(0)
    model = model.to(device).train()  # type: ignore[arg-type]  # transformers types .to() by its dtype overload
    autocast = autocast_dtype(device)
    args = TrainingArguments()
    optimization = build_optimization(model, args, total_steps=10 * steps, device=device, autocast=autocast)
    objective = Objective(weights=None, label_smoothing=args.label_smoothing_factor, focal_gamma=None)
    forward: Any = torch.compile(model, dynamic=False) if variant == "torch.compile" else model
    vocab, labels = int(model.config.vocab_size), int(model.config.num_labels or 2)
    ids = torch.randint(1000, vocab, (batch_size, SEQUENCE), device=device)
    mask = torch.ones_like(ids)
    targets = torch.randint(0, labels, (batch_size,), device=device)
    sync_each_step = variant == "loss.item() per step"

    def step() -> torch.Tensor:
        with mixed_precision(device, autocast):
            logits = forward(input_ids=ids, attention_mask=mask).logits
        loss = objective(logits, targets)
        optimization.step(loss, model.parameters())
        return loss

    warmup = max(3, steps // 5)
    with peak_memory(device) as peak:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for _ in range(steps):
            loss = step()
            if sync_each_step:
                loss.item()
            else:
                total += loss.detach()
        total.item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    samples_per_second = steps * batch_size / seconds
    n_body = non_embedding_parameters(model)
    flops = peak_flops(device)
    return Throughput(
        model=name,
        variant=variant,
        batch_size=batch_size,
        sequence=SEQUENCE,
        precision=str(autocast).replace("torch.", "") if autocast else "fp32",
        parameters=sum(p.numel() for p in model.parameters()),
        non_embedding_parameters=n_body,
        samples_per_second=samples_per_second,
        peak_memory_mb=peak[0],
        mfu=6 * n_body * samples_per_second * SEQUENCE / flops if flops else None,
    )


def sms_rows(limit: int | None) -> tuple[LabelledData, LabelledData]:
    """sms_spam shuffled with a fixed seed: training rows, and held-out rows for serving."""
    full = read_labelled_file(DATASETS / "sms_spam" / "sms_spam.csv")[0]
    order = list(range(len(full.texts)))
    random.Random(0).shuffle(order)
    cut = limit or int(0.9 * len(order))
    rest = order[cut : cut + (limit or len(order))]
    pick = order[:cut]
    return (
        LabelledData([full.texts[i] for i in pick], [full.labels[i] for i in pick]),
        LabelledData([full.texts[i] for i in rest], [full.labels[i] for i in rest]),
    )


def fine_tune_sms(work: Path, args: TrainingArguments, limit: int | None) -> tuple[RunDirectory, dict[str, Any]]:
    train, held_out = sms_rows(limit)
    csv = write_labelled_csv(train, work / "train.csv")
    started = time.perf_counter()
    result = fine_tune(csv, work / "run", args)
    selected = next(p for p in result.curves if p.step == result.best_step)
    figures = {
        "rows": len(train.texts),
        "device": result.device,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": result.train_seconds,
        "epochs_run": result.curves[-1].epoch,
        "selected_epoch": selected.epoch,
        "validation_macro_f1": result.validation.macro_f1,
        "test_macro_f1": result.test.macro_f1 if result.test else None,
    }
    return RunDirectory.open(work / "run"), {**figures, "held_out": held_out.texts}


def serving(run: RunDirectory, texts: list[str], work: Path, settings: Settings) -> dict[str, Any]:
    """ONNX Runtime on every provider this machine has: texts/s, and agreement with PyTorch and each other."""
    spec = build_bundle(run, diagnose_and_record(run, settings), work / "bundle", settings)
    tokenizer = load_tokenizer(work / "bundle" / "tokenizer", spec.windowing())
    ids = encode(tokenizer, texts, tokenizer.token_to_id("[UNK]"), spec.windowing()).ids
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir).eval()
    reference = torch_logits(model, ids)
    results: dict[str, Any] = {"texts": len(texts), "providers": {}}
    logits_of: dict[str, np.ndarray] = {}
    for provider in [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]:
        session = ort.InferenceSession(str(work / "bundle" / spec.onnx_fp32), session_options(), providers=[provider])
        run_logits(session, ids[:64], spec.pad_id)  # warm-up: CUDA kernels, memory arenas
        started = time.perf_counter()
        logits = run_logits(session, ids, spec.pad_id)
        seconds = time.perf_counter() - started
        logits_of[provider] = logits
        results["providers"][provider] = {
            "texts_per_second": len(ids) / seconds,
            "argmax_agreement_with_pytorch": float((logits.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_logit_diff_vs_pytorch": float(np.abs(logits - reference).max()),
        }
    if len(logits_of) == 2:
        cuda, cpu = logits_of["CUDAExecutionProvider"], logits_of["CPUExecutionProvider"]
        results["cuda_vs_cpu"] = {
            "argmax_agreement": float((cuda.argmax(1) == cpu.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(cuda - cpu).max()),
        }
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"GPU check on {report['device_name']} ({report['mode']}; `{report['command']}`, {report['date']}).",
        "",
        "| model | variant | batch | precision | non-embedding params | samples/s | peak memory (MiB) | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in report["throughput"]:
        memory = f"{t['peak_memory_mb']:.0f}" if t["peak_memory_mb"] is not None else "n/a"
        mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "n/a (CPU)"
        lines.append(
            f"| {t['model']} | {t['variant']} | {t['batch_size']} | {t['precision']} | "
            f"{t['non_embedding_parameters'] / 1e6:.2f}M | {t['samples_per_second']:,.0f} | {memory} | {mfu} |"
        )
    ft = report["fine_tune"]
    how = "defaults" if report["mode"] == "full" else "1 epoch, no label audit"
    lines += [
        "",
        f"Fine-tune of sms_spam ({ft['rows']} rows, {how}, on {ft['device']}): validation macro-F1 "
        f"{ft['validation_macro_f1']:.4f}, test macro-F1 {ft['test_macro_f1']:.4f}, {ft['wall_seconds']:.0f} s wall "
        f"({ft['epochs_run']:g} epochs, epoch {ft['selected_epoch']:g} selected).",
        "",
        "| ONNX Runtime provider | texts/s | argmax agreement with PyTorch | max abs logit diff |",
        "|---|---|---|---|",
    ]
    for provider, s in report["serving"]["providers"].items():
        lines.append(
            f"| {provider} | {s['texts_per_second']:,.0f} | {s['argmax_agreement_with_pytorch']:.4f} | "
            f"{s['max_abs_logit_diff_vs_pytorch']:.2e} |"
        )
    if "cuda_vs_cpu" in report["serving"]:
        c = report["serving"]["cuda_vs_cpu"]
        lines.append(f"\nCUDA vs CPU: argmax agreement {c['argmax_agreement']:.4f}, max abs logit diff "
                     f"{c['max_abs_logit_diff']:.2e}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few hundred rows: seconds")
    parser.add_argument("--base-model", type=Path, help="the model to fine-tune (default: the bundled MiniLM)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    ns = parser.parse_args()
    device = torch.device("cpu") if ns.smoke else pick_device("auto")
    if not ns.smoke and device.type != "cuda":
        sys.exit("no CUDA device here: run with --smoke for the CPU check, or on a machine with a GPU")
    base = str(ns.base_model) if ns.base_model else modeling.default_base_model()
    vocab = modeling.load_tokenizer(base).vocab_size
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "mode": "smoke, CPU" if ns.smoke else "full",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }

    # 1. training throughput
    # (label, a model directory or (layers, hidden) of a random BERT, batch size on the GPU)
    models: list[tuple[str, str | tuple[int, int], int]] = [
        ("MiniLM (bundled)" if not ns.base_model else "base model", base, 256)
    ]
    if not ns.smoke:
        models.append(("BERT-base-sized, random", (12, 768), 128))
    variants = ["loss.item() per step", "no host sync"] + ([] if ns.smoke else ["torch.compile"])
    steps = 4 if ns.smoke else 30
    report["throughput"] = []
    for label, source, batch in models:
        for variant in variants:
            model = (
                modeling.load_classifier(source, ["a", "b"], dropout=0.1, seed=0)
                if isinstance(source, str)
                else random_bert(source[0], source[1], vocab_size=vocab, num_labels=2)
            )
            found = measure_training(label, model, variant, 8 if ns.smoke else batch, steps, device)
            report["throughput"].append(asdict(found))
            print(json.dumps(asdict(found)), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # 2. a full fine-tune, 3. serving from its export
    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            base_model=base, device=device.type, **({"num_train_epochs": 1, "label_audit": False} if ns.smoke else {})
        )
        run, fine = fine_tune_sms(Path(tmp), args, 300 if ns.smoke else None)
        held_out = fine.pop("held_out")
        report["fine_tune"] = fine
        print(json.dumps(fine), flush=True)
        report["serving"] = serving(run, held_out[: 200 if ns.smoke else 2000], Path(tmp), settings)
        print(json.dumps(report["serving"]), flush=True)

    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    ns.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
