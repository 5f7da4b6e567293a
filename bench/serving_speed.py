"""Serving speed on CPU: fitgate's /predict vs a Hugging Face pipeline behind FastAPI vs raw ONNX Runtime.

The same fine-tuned MiniLM (bench/common.py) served three ways on this machine:
(a) fitgate (`bentoml serve`, 1 worker; also with batching off), (b) `pipeline("text-classification")`
in a FastAPI app under uvicorn, (c) ONNX Runtime in-process on batches of 64 length-sorted texts, the
practical limit (no HTTP). Load comes from bench/load.py in a separate process: single-text requests
at concurrency 1, 8 and 32, and 64-text requests at concurrency 4. Loopback only, bounded in time.

    python bench/serving_speed.py --quick     # ~5 minutes
    python bench/serving_speed.py             # the figures in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SmsModel, sms_model
from training import rundir

CASES = [(1, 1), (8, 1), (32, 1), (4, 64)]  # (concurrency, texts per request)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], ready_path: str, port: int, log: Path) -> Iterator[tuple[str, int]]:
    """Start a server process, wait until ``ready_path`` answers, yield its URL and pid, stop its process tree."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + ready_path, timeout=2).status_code in (200, 405):
                    break
            time.sleep(0.5)
        yield base, process.pid
    finally:
        tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        psutil.wait_procs(tree, timeout=30)


def measure(url: str, texts_file: Path, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for concurrency, batch in CASES:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "load.py"), url, "--texts", str(texts_file),
             "--concurrency", str(concurrency), "--batch", str(batch), "--seconds", str(seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(out.stdout)
        print(f"  concurrency {concurrency}, {batch} text(s): {row['requests_per_second']:.1f} req/s, "
              f"{row['texts_per_second']:.1f} texts/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"{row['errors']} errors", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def raw_onnx(model: SmsModel, texts: list[str], seconds: float) -> dict[str, float | str]:
    classifier = model.classifier()
    batch = 64
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(0, len(texts), batch):
            classifier.predict(texts[i : i + batch])
            done += len(texts[i : i + batch])
    elapsed = time.perf_counter() - started
    return {"texts_per_second": done / elapsed, "batch": batch, "graph": classifier.served_graph}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 s per case instead of 20")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving_speed.json")
    ns = parser.parse_args()
    seconds = 6.0 if ns.quick else 20.0
    model = sms_model()
    texts = model.held_out.texts
    tmp = Path(tempfile.mkdtemp(prefix="fitgate-serving-"))
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps(texts))
    base_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml-home")}
    results: dict[str, Any] = {
        "command": "python bench/serving_speed.py" + (" --quick" if ns.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "seconds_per_case": seconds,
        "servers": {},
    }
    variants = {
        "fitgate": {"FITGATE_DATA_DIR": str(model.data_dir), "FITGATE_WORKERS": "1"},
        "fitgate_unbatched": {"FITGATE_DATA_DIR": str(model.data_dir), "FITGATE_WORKERS": "1",
                              "FITGATE_BATCH_MAX_SIZE": "1"},
        "pipeline": {"FITGATE_BENCH_MODEL": str(model.run_dir / rundir.MODEL_DIR)},
    }  # fmt: skip
    for name, extra in variants.items():
        port = _free_port()
        if name.startswith("fitgate"):
            command = [str(ROOT / "scripts" / "serve"), "--port", str(port)]  # the launcher users run
            ready = "/readyz"
        else:
            command = [sys.executable, "-m", "uvicorn", "bench.pipeline_server:app", "--host", "127.0.0.1",
                       "--port", str(port), "--log-level", "warning"]  # fmt: skip
            ready = "/predict"
        print(f"{name} ...", flush=True)
        with server(command, {**base_env, **extra}, ready, port, tmp / f"{name}.log") as (url, _):
            results["servers"][name] = measure(url + "/predict", texts_file, seconds)
        write(ns.out, results)
    print("raw ONNX Runtime ...", flush=True)
    results["raw_onnx"] = raw_onnx(model, texts, seconds)
    write(ns.out, results)
    print(ns.out.with_suffix(".md").read_text())


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"`{results['command']}` ({results['date']}, {results['machine']}; {results['seconds_per_case']:.0f} s "
             "per case after 3 s of warm-up)", "",
             "| server | concurrency | texts/request | requests/s | texts/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results["servers"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['batch']} | {r['requests_per_second']:.1f} | "
                f"{r['texts_per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
            )
    servers = results["servers"]
    if "fitgate" in servers and "pipeline" in servers:
        fit32 = next(r for r in servers["fitgate"] if (r["concurrency"], r["batch"]) == (32, 1))
        pipe32 = next(r for r in servers["pipeline"] if (r["concurrency"], r["batch"]) == (32, 1))
        ratio = fit32["requests_per_second"] / pipe32["requests_per_second"]
        lines += ["", f"fitgate vs pipeline at concurrency 32: {ratio:.2f}x the throughput (target >= 3x: "
                  f"{'met' if ratio >= 3 else 'NOT met'}); p99 {fit32['p99_ms']:.0f} ms vs {pipe32['p99_ms']:.0f} ms "
                  f"({'no worse: met' if fit32['p99_ms'] <= pipe32['p99_ms'] else 'worse: NOT met'})."]  # fmt: skip
    if "raw_onnx" in results and "fitgate" in servers:
        best = max(r["texts_per_second"] for r in servers["fitgate"])
        raw = results["raw_onnx"]["texts_per_second"]
        graph = results["raw_onnx"]["graph"]
        lines += ["", f"Raw ONNX Runtime in-process ({graph}, batches of 64): {raw:.1f} texts/s; "
                  f"fitgate's best {best:.1f} texts/s = {best / raw:.2f}x (target >= 0.7x: "
                  f"{'met' if best / raw >= 0.7 else 'NOT met'})."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
