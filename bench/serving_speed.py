"""Serving speed on CPU: fitgate's /predict vs Infinity vs a Hugging Face pipeline server vs raw ONNX Runtime.

The same fine-tuned MiniLM (bench/common.py) served five ways on this machine, one after the other:
(a) fitgate (`scripts/serve`, 1 worker; also with batching off), (b) Infinity (`infinity_emb v2`, in its
own virtual environment from bench/infinity_env), the same checkpoint, its torch engine and its ONNX
engine (`optimum`, given fitgate's exported graphs; recorded as not run, with the error, when it does not
start), (c) `pipeline("text-classification")` in a FastAPI app under uvicorn, (d) ONNX Runtime in-process
on batches of 64 texts, the practical limit (no HTTP). Load comes from wrk (bench/wrk.py, a separate C
process): single-text requests at concurrency 1, 8 and 32, and 64-text requests at concurrency 4.
Loopback only, bounded in time.

    python bench/serving_speed.py --quick     # ~6 minutes
    python bench/serving_speed.py             # the figures in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk
from bench.common import ROOT, SmsModel, sms_model
from models.bundle import load_spec
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
        tree = []
        if process.poll() is None:  # still running: not a server that failed to start
            tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        psutil.wait_procs(tree, timeout=30)


def measure(
    url: str, texts: list[str], seconds: float, body: Callable[[list[str]], dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for concurrency, batch in CASES:
        row = wrk.run(url, texts, concurrency, seconds, batch=batch, body=body)
        print(f"  concurrency {concurrency}, {batch} text(s): {row['requests_per_second']:.1f} req/s, "
              f"{row['texts_per_second']:.1f} texts/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"{row['errors']} errors", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def infinity_model_dir(model: SmsModel, into: Path) -> Path:
    """The checkpoint fitgate trained, as a Hugging Face directory, with fitgate's exported graphs for the ONNX
    engine (named as Infinity looks for them: `model.onnx`, and `*quantize*` for the int8 one it prefers on CPU)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in (model.run_dir / rundir.MODEL_DIR).iterdir():
        shutil.copy2(f, into / f.name)
    spec = load_spec(model.bundle_dir)
    shutil.copy2(model.bundle_dir / spec.onnx_fp32, into / "model.onnx")
    if spec.onnx_int8:
        shutil.copy2(model.bundle_dir / spec.onnx_int8, into / "model_quantized.onnx")
    return into


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
    base_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml-home")}
    results: dict[str, Any] = {
        "command": "python bench/serving_speed.py" + (" --quick" if ns.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "seconds_per_case": seconds,
        "load_generator": "wrk -t1 (bench/wrk.py)",
        "servers": {},
        "not_run": {},
    }
    fitgate_body: Callable[[list[str]], dict[str, Any]] = lambda batch: {"texts": batch}  # noqa: E731
    infinity_body: Callable[[list[str]], dict[str, Any]] = lambda batch: {"input": batch, "model": "sms"}  # noqa: E731
    infinity = ROOT / "bench" / ".cache" / "infinity-venv" / "bin"
    if not (infinity / "infinity_emb").exists():
        subprocess.run([str(ROOT / "bench" / "infinity_env")], check=True)
    infinity_dir = infinity_model_dir(model, tmp / "infinity-model")
    infinity_env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    fitgate_env = {**base_env, "FITGATE_DATA_DIR": str(model.data_dir), "FITGATE_WORKERS": "1"}
    variants: dict[str, tuple[list[str], dict[str, str], str, Callable[[list[str]], dict[str, Any]]]] = {
        # name: (command without the port, environment, readiness path, request body)
        "fitgate": ([str(ROOT / "scripts" / "serve"), "--port"], fitgate_env, "/readyz", fitgate_body),
        "fitgate_unbatched": ([str(ROOT / "scripts" / "serve"), "--port"],
                              {**fitgate_env, "FITGATE_BATCH_MAX_SIZE": "1"}, "/readyz", fitgate_body),
        **{f"infinity_{engine}": ([str(infinity / "infinity_emb"), "v2", "--model-id", str(infinity_dir),
                                   "--served-model-name", "sms", "--engine", engine, "--device", "cpu", "--port"],
                                  infinity_env, "/health", infinity_body) for engine in ("torch", "optimum")},
        "pipeline": ([sys.executable, "-m", "uvicorn", "bench.pipeline_server:app", "--host", "127.0.0.1",
                      "--log-level", "warning", "--port"],
                     {**base_env, "FITGATE_BENCH_MODEL": str(model.run_dir / rundir.MODEL_DIR)}, "/predict",
                     fitgate_body),
    }  # fmt: skip
    for name, (command, env, ready, body) in variants.items():
        port = _free_port()
        print(f"{name} ...", flush=True)
        try:
            with server([*command, str(port)], env, ready, port, tmp / f"{name}.log") as (url, _):
                path = "/classify" if name.startswith("infinity") else "/predict"
                results["servers"][name] = measure(url + path, texts, seconds, body)
        except RuntimeError as exc:  # a server that does not start is reported, not skipped silently
            results["not_run"][name] = str(exc)[-1500:]
            print(f"  did not start: {str(exc)[-400:]}", flush=True)
        write(ns.out, results)
    print("raw ONNX Runtime ...", flush=True)
    results["raw_onnx"] = raw_onnx(model, texts, seconds)
    write(ns.out, results)
    print(ns.out.with_suffix(".md").read_text())


def _case(rows: list[dict[str, Any]], concurrency: int, batch: int = 1) -> dict[str, Any]:
    return next(r for r in rows if (r["concurrency"], r["batch"]) == (concurrency, batch))


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"`{results['command']}` ({results['date']}, {results['machine']}; {results['seconds_per_case']:.0f} s "
             f"per case after 3 s of warm-up; load from {results['load_generator']})", "",
             "| server | concurrency | texts/request | requests/s | texts/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results["servers"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['batch']} | {r['requests_per_second']:.1f} | "
                f"{r['texts_per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
            )
    for name, error in results.get("not_run", {}).items():
        last = [line for line in error.splitlines() if line.strip()][-2:]
        lines += ["", f"{name} did not start: `{' / '.join(x.strip() for x in last)[-300:]}`"]
    servers = results["servers"]
    if "fitgate" not in servers:
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        return
    fit32 = _case(servers["fitgate"], 32)
    if "pipeline" in servers:
        pipe32 = _case(servers["pipeline"], 32)
        ratio = fit32["requests_per_second"] / pipe32["requests_per_second"]
        lines += ["", f"fitgate vs pipeline at concurrency 32: {ratio:.2f}x the throughput (target >= 3x: "
                  f"{'met' if ratio >= 3 else 'NOT met'}); p99 {fit32['p99_ms']:.0f} ms vs {pipe32['p99_ms']:.0f} ms "
                  f"({'no worse: met' if fit32['p99_ms'] <= pipe32['p99_ms'] else 'worse: NOT met'})."]  # fmt: skip
    engines = {name: _case(rows, 32) for name, rows in servers.items() if name.startswith("infinity")}
    if engines:
        best_name, best = max(engines.items(), key=lambda item: item[1]["texts_per_second"])
        ratio = fit32["texts_per_second"] / best["texts_per_second"]
        p99 = "no worse: met" if fit32["p99_ms"] <= best["p99_ms"] else "worse: NOT met"
        lines += ["", f"fitgate vs Infinity's best engine ({best_name}) at concurrency 32: {ratio:.2f}x the texts/s "
                  f"(target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}); p99 {fit32['p99_ms']:.0f} ms vs "
                  f"{best['p99_ms']:.0f} ms ({p99})."]  # fmt: skip
    if "raw_onnx" in results:
        raw = results["raw_onnx"]["texts_per_second"]
        graph = results["raw_onnx"]["graph"]
        single = fit32["texts_per_second"] / raw
        best = max(r["texts_per_second"] for r in servers["fitgate"])
        lines += ["", f"Raw ONNX Runtime in-process ({graph}, batches of 64): {raw:.1f} texts/s. fitgate, single-text "
                  f"requests at concurrency 32: {fit32['texts_per_second']:.1f} texts/s = {single:.2f}x "
                  f"(target >= 0.6x: "
                  f"{'met' if single >= 0.6 else 'NOT met'}), p99 {fit32['p99_ms']:.0f} ms (target <= 250 ms: "
                  f"{'met' if fit32['p99_ms'] <= 250 else 'NOT met'}); fitgate's best case {best:.1f} texts/s = "
                  f"{best / raw:.2f}x (target >= 0.7x: {'met' if best / raw >= 0.7 else 'NOT met'})."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
