"""Poisoned /predict requests among valid ones from two teams, at load, against a real server (tokens configured).

The heavier sibling of the load rounds in tests/service/test_hostile.py: ``--clients`` threads send for
``--seconds``; one request in ``--poison-every`` is poisoned (a lone surrogate, 5,000-deep JSON, an over-long text,
too many texts, bytes that are not UTF-8), the rest are valid requests for team-a's and team-b's models. Counts:
valid requests not answered 200 (target 0), poisoned requests not answered their 4xx (target 0), any 5xx (target 0),
valid latency, and whether the server is ready and its log free of unexpected errors afterwards.

    python bench/hostile_load.py --clients 32 --seconds 60

Writes bench/results/hostile_load.md (docs/SECURITY.md includes it). The model is the tests' tiny random BERT: the
benchmark measures isolation, not throughput (bench/serving_speed.py does that).
"""

from __future__ import annotations

import argparse
import itertools
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.report import machine
from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from tests.conftest import keyword_rows, save_random_bert, write_csv
from tests.service.conftest import bearer, make_server
from tests.service.test_hostile import POISONS
from training.arguments import TrainingArguments
from training.loop import fine_tune
from training.modeling import default_base_model

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
MODELS = {"team-a": "team-a/spam", "team-b": "team-b/other"}


def _serve(tmp: Path) -> Any:
    base = save_random_bert(tmp / "tiny", default_base_model(), num_hidden_layers=2, intermediate_size=64)
    args = TrainingArguments(base_model=str(base), learning_rate=5e-3, num_train_epochs=4, max_length=32)
    fine_tune(write_csv(tmp / "train.csv", keyword_rows(300)), tmp / "run", args)
    server = make_server(tmp, base, anonymous_predict=False, FITGATE_TRAINING_ENABLED="false")
    settings = Settings(data_dir=server.data_dir)
    for name in MODELS.values():
        release(tmp / "run", ModelName.parse(name), settings, open_registry(settings), promote=True)
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--poison-every", type=int, default=5, help="one request in N is poisoned")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = _serve(Path(tmp))
        counter = itertools.count()
        lock = threading.Lock()
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        deadline = time.monotonic() + options.seconds

        def client(_: int) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                while time.monotonic() < deadline:
                    n = next(counter)
                    team = ("team-a", "team-b")[n % 2]
                    if n % options.poison_every == 0:
                        request, want = POISONS[(n // options.poison_every) % len(POISONS)]
                        kind = "poisoned"
                    else:
                        request, want = {"json": {"texts": [f"win cash now {n}", "lunch?"], "model": MODELS[team]}}, 200
                        kind = "valid"
                    request = dict(request)
                    headers = {**bearer("team-a" if kind == "poisoned" else team), **request.pop("headers", {})}
                    started = time.perf_counter()
                    status = http.post("/predict", headers=headers, **request).status_code
                    took = time.perf_counter() - started
                    with lock:
                        outcomes[kind] += 1
                        outcomes[f"{kind} wrong status"] += status != want
                        outcomes["5xx"] += status >= 500
                        if kind == "valid" and status == 200:
                            latencies.append(took)

        with ThreadPoolExecutor(options.clients) as pool:
            list(pool.map(client, range(options.clients)))
        ready = httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        log = (server.data_dir / "server.log").read_text(errors="replace")
        clean_log = "unexpected error" not in log and "Traceback" not in log
        server.kill(signal.SIGTERM)

    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    command = f"python bench/hostile_load.py --clients {options.clients} --seconds {options.seconds:g}"
    lines = [
        f"`{command}`: the tiny random BERT, tokens configured, two teams.",
        "",
        machine(),
        "| requests | valid | poisoned | valid not answered 200 | poisoned not answered its 4xx | 5xx "
        "| valid p50 / p95 | ready after | log clean |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {outcomes['valid'] + outcomes['poisoned']:,} | {outcomes['valid']:,} | {outcomes['poisoned']:,} "
        f"| {outcomes['valid wrong status']} | {outcomes['poisoned wrong status']} | {outcomes['5xx']} "
        f"| {quantiles[49] * 1000:.0f} / {quantiles[94] * 1000:.0f} ms | {'yes' if ready else 'NO'} "
        f"| {'yes' if clean_log else 'NO'} |",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostile_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
