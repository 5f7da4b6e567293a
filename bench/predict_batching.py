"""The gain from batching concurrent /predict requests, measured on a real server.

Builds a MiniLM bundle with a short fine-tune on the example SMS data (the model's quality
does not matter here, its size does), then runs `bentoml serve` twice: once with batching
off (FITGATE_BATCH_MAX_SIZE=1) and once with the defaults, and sends single-text requests
from an async client at a fixed concurrency for a fixed time. Loopback only, bounded.

    python bench/predict_batching.py --concurrency 32 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitgate.settings import Settings
from models.gate import open_registry, release
from models.names import ModelName
from training.arguments import TrainingArguments
from training.data import read_labelled_file
from training.loop import fine_tune

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sms_spam_sample.csv"
NAME = ModelName.parse("bench/sms")


def build_bundle(data_dir: Path) -> None:
    os.environ["FITGATE_DATA_DIR"] = str(data_dir)
    settings = Settings()
    run = data_dir / "run"
    fine_tune(EXAMPLE, run, TrainingArguments(max_steps=40, eval_steps=20, early_stopping_patience=None))
    release(run, NAME, settings, open_registry(settings), promote=True)


async def load(url: str, texts: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            started = time.perf_counter()
            r = await client.post("/predict", json={"texts": [rng.choice(texts)], "model": str(NAME)})
            latencies.append(time.perf_counter() - started)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/predict", json={"texts": ["warm up"], "model": str(NAME)})
        began = time.perf_counter()
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
        "requests_per_second": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def serve(data_dir: Path, port: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FITGATE_DATA_DIR": str(data_dir), "FITGATE_TRAINING_ENABLED": "false",
           "BENTOML_DO_NOT_TRACK": "True", **extra}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.app:FitgateService", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server and its workers (BentoML workers run in sessions of their own)."""
    tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    psutil.wait_procs(tree, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--out", type=Path, default=Path("bench/results/predict_batching.json"))
    ns = parser.parse_args()
    texts = read_labelled_file(EXAMPLE)[0].texts
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        build_bundle(data_dir)
        for label, extra in (("batching off", {"FITGATE_BATCH_MAX_SIZE": "1"}), ("batching on (defaults)", {})):
            proc = serve(data_dir, ns.port, extra)
            try:
                result = asyncio.run(load(f"http://127.0.0.1:{ns.port}", texts, ns.concurrency, ns.seconds))
            finally:
                stop(proc)
            rows.append({"mode": label, "concurrency": ns.concurrency, **result})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows}, indent=2))
    print("| mode | concurrency | requests | errors | requests/s | p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['requests_per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
