"""Where a fitgate worker's CPU goes under single-text load (issue 17, part 3).

One fitgate worker (`scripts/serve`, the cached bench model of bench/common.py) under bench/load.py at
concurrency 32, one text per request, twice. First unprofiled: the worker's and the load generator's CPU
seconds per request from /proc (psutil), and the model calls' time and size from the worker's /metrics.
Then under py-spy, counting only samples that hold the GIL (Python running; ONNX Runtime and the
tokenizer release it; py-spy's idle-thread detection counted sleeping threads as busy on this machine).
Each sample goes to the first of ONNX Runtime, tokenization, monitoring, post-processing found anywhere
on its stack; else to the package of its innermost non-stdlib frame (HTTP protocol, BentoML's
middlewares, OpenTelemetry, Starlette, FastAPI, pydantic, fitgate's routes and middlewares, ...); a
stack that is the asyncio loop alone is "event loop".

    python bench/serving_profile.py                       # -> bench/results/serving_profile.{json,md}
    python bench/serving_profile.py --env FITGATE_BATCH_MAX_SIZE=1 --out /tmp/unbatched.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, sms_model
from bench.serving_speed import _free_port, server

# (category, pattern on "function (file:line)"): a sample whose stack holds any of these belongs to it
CLAIMING = [
    ("ONNX Runtime (session.run)", re.compile(r"onnxruntime/")),
    ("tokenization", re.compile(r"tokenizers/|^encode \(.*models/runtime\.py")),
    ("monitoring (confidence, drift)", re.compile(r"service/(monitoring|drift)\.py")),
    ("post-processing (padding, softmax, answers)", re.compile(r"models/runtime\.py|training/(decision|padding)\.py")),
]
# else the innermost frame from one of these packages decides
PACKAGES = [
    ("HTTP protocol (uvicorn, h11/httptools)", re.compile(r"site-packages/(uvicorn|h11|httptools)/")),
    ("OpenTelemetry middleware", re.compile(r"site-packages/opentelemetry/")),
    ("prometheus_client (BentoML's request metrics)", re.compile(r"site-packages/prometheus_client/")),
    ("BentoML (middlewares, context, access log)", re.compile(r"site-packages/(_?bentoml\w*)/")),
    ("pydantic (request and response models)", re.compile(r"site-packages/pydantic\w*/")),
    ("FastAPI (routing, dependencies, serialization)", re.compile(r"site-packages/fastapi/")),
    ("Starlette (routing, requests, responses)", re.compile(r"site-packages/starlette/")),
    ("anyio (thread hand-off)", re.compile(r"site-packages/anyio/")),
    ("fitgate batching (service/predictor.py)", re.compile(r"service/predictor\.py")),
    ("fitgate routes, auth, middlewares (service/)", re.compile(r"/service/\w+\.py")),
    ("logging", re.compile(r"/logging/")),
]
EVENT_LOOP = re.compile(r"asyncio/(base_events|events)\.py|selectors\.py|uvloop")
STDLIB = re.compile(r"/lib/python3\.\d+/(?!site-packages/)")


def categorize(frames: list[str]) -> str:
    """``frames`` from the root to the innermost call, as py-spy's raw format writes them."""
    for name, pattern in CLAIMING:
        if any(pattern.search(f) for f in frames):
            return name
    for frame in reversed(frames):
        for name, pattern in PACKAGES:
            if pattern.search(frame):
                return name
        if EVENT_LOOP.search(frame):
            return "event loop (asyncio: select, callbacks, tasks)"
        if not STDLIB.search(frame):
            return "other"
    return "other"


def worker_of(pid: int) -> psutil.Process:
    """The process that serves requests: the largest child of ``bentoml serve`` (it holds ONNX Runtime)."""
    children = psutil.Process(pid).children(recursive=True)
    return max(children, key=lambda p: p.memory_info().rss)


def load(url: str, texts: Path, concurrency: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "load.py"), url, "--texts", str(texts), "--concurrency",
         str(concurrency), "--seconds", str(seconds), "--warmup", "3"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def model_calls(base: str) -> dict[str, float]:
    """Sums and counts of the worker's model-call histograms (service/monitoring.py), from /metrics."""
    totals = {"calls": 0.0, "texts": 0.0, "seconds": 0.0}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "fitgate_inference_batch_texts_count":
                totals["calls"] += sample.value
            elif sample.name == "fitgate_inference_batch_texts_sum":
                totals["texts"] += sample.value
            elif sample.name == "fitgate_inference_duration_seconds_sum":
                totals["seconds"] += sample.value
    return totals


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the py-spy pass: throughput and CPU only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving_profile.json")
    ns = parser.parse_args()
    model = sms_model()
    tmp = Path(tempfile.mkdtemp(prefix="fitgate-profile-"))
    texts = tmp / "texts.json"
    texts.write_text(json.dumps(model.held_out.texts))
    extra = dict(item.split("=", 1) for item in ns.env)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml-home"),
           "FITGATE_DATA_DIR": str(model.data_dir), "FITGATE_WORKERS": "1", **extra}  # fmt: skip
    port = _free_port()
    command = [str(ROOT / "scripts" / "serve"), "--port", str(port)]
    with server(command, env, "/readyz", port, tmp / "server.log") as (base, pid):
        worker = worker_of(pid)
        # pass 1, unprofiled: throughput and CPU per request of the worker and of the load generator
        client = load(base + "/predict", texts, ns.concurrency, ns.seconds)
        time.sleep(3)
        loader = psutil.Process(client.pid)
        w0, l0, t0, m0 = cpu_seconds(worker), cpu_seconds(loader), time.monotonic(), model_calls(base)
        time.sleep(ns.seconds)
        w1, l1, t1, m1 = cpu_seconds(worker), cpu_seconds(loader), time.monotonic(), model_calls(base)
        calls = {k: m1[k] - m0[k] for k in m0}
        stdout, _ = client.communicate()
        row = json.loads(stdout)
        requests = row["requests"] * (t1 - t0) / row["seconds"]
        print(f"{row['requests_per_second']:.1f} requests/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"worker {1000 * (w1 - w0) / requests:.2f} ms CPU/request (model calls "
              f"{1000 * calls['seconds'] / max(1, calls['texts']):.2f} ms, "
              f"{calls['texts'] / max(1, calls['calls']):.1f} texts each; 0: a server without these metrics), "
              f"load generator {1000 * (l1 - l0) / requests:.2f} ms", flush=True)  # fmt: skip
        if ns.cpu_only:
            return
        # pass 2, sampled: where the worker's CPU goes
        samples_file = tmp / "samples.txt"
        client = load(base + "/predict", texts, ns.concurrency, ns.seconds)
        time.sleep(3)
        subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(worker.pid), "-d",
                        str(int(ns.seconds) - 2), "-r", "250", "--gil", "-f", "raw", "--full-filenames", "-o",
                        str(samples_file)], check=True, capture_output=True)  # fmt: skip
        client.communicate()
    counts: Counter[str] = Counter()
    hottest: dict[str, Counter[str]] = {}
    for line in samples_file.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        category = categorize(frames)
        counts[category] += int(n)
        hottest.setdefault(category, Counter())[frames[-1]] += int(n)
    total = sum(counts.values())
    worker_ms = 1000 * (w1 - w0) / requests
    model_ms = 1000 * calls["seconds"] / max(1, calls["texts"])
    results: dict[str, Any] = {
        "command": "python bench/serving_profile.py" + "".join(f" --env {e}" for e in ns.env),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "concurrency": ns.concurrency,
        "requests_per_second": row["requests_per_second"],
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "worker_cpu_ms_per_request": worker_ms,
        "model_call_ms_per_text": model_ms,
        "texts_per_model_call": calls["texts"] / max(1, calls["calls"]),
        "load_generator_cpu_ms_per_request": 1000 * (l1 - l0) / requests,
        "gil_samples": total,
        "gil_sample_shares": {name: n / total for name, n in counts.most_common()},
        "hottest_frames": {name: [f"{n / total:.3f} {f}" for f, n in c.most_common(5)] for name, c in hottest.items()},
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(results, indent=2))
    lines = [
        f"`{results['command']}` ({results['date']}, {results['machine']}): concurrency {ns.concurrency}, one text per "
        f"request, bench/load.py, {row['requests_per_second']:.0f} requests/s, p50 {row['p50_ms']:.1f} ms, p99 "
        f"{row['p99_ms']:.1f} ms.", "",
        f"- worker CPU per request: **{worker_ms:.2f} ms** (psutil); the load generator's: "
        f"{results['load_generator_cpu_ms_per_request']:.2f} ms",
        f"- model calls (tokenizer + ONNX Runtime + calibration, wall time from fitgate_inference_duration_seconds): "
        f"{model_ms:.2f} ms per text, {results['texts_per_model_call']:.1f} texts per call",
        f"- the rest, the request path, by py-spy ({total} samples of the worker's threads holding the GIL, i.e. "
        "running Python; ONNX Runtime and the tokenizer release it):", "",
        "| Python code running in the worker | share of the GIL samples |", "|---|---|",
    ]  # fmt: skip
    for name, share in results["gil_sample_shares"].items():
        lines.append(f"| {name} | {100 * share:.1f}% |")
    ns.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(ns.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
