"""/predict under load while a model is promoted three times: failed requests, latency, memory growth.

A real fitgate server (the cached SMS model of bench/common.py, registered four times as four
versions), bench/load.py at concurrency 64 from a separate process, a promotion every quarter of
the run, and the server's resident memory (all its processes) sampled every second. Loopback only.

    python bench/load_during_promotions.py --seconds 60      # quick
    python bench/load_during_promotions.py --seconds 300     # the figures in docs/RELIABILITY.md
    python bench/load_during_promotions.py --seconds 120 --promotions 0   # control: the same load, no swap
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, sms_model
from bench.serving_speed import _free_port, server
from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry

NAME = ModelName.parse("bench/load")


def rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--promotions", type=int, default=3, choices=range(4), help="0: the control run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_during_promotions.json")
    ns = parser.parse_args()
    model = sms_model()
    tmp = Path(tempfile.mkdtemp(prefix="fitgate-load-"))
    settings = Settings(data_dir=tmp / "data")
    registry = open_registry(settings)
    versions = [release(model.run_dir, NAME, settings, registry, promote=(i == 0)).version for i in range(4)]
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps(model.held_out.texts))
    port = _free_port()
    env = {**os.environ, "FITGATE_DATA_DIR": str(settings.data_dir), "BENTOML_HOME": str(tmp / "home"),
           "BENTOML_DO_NOT_TRACK": "True"}  # fmt: skip
    command = [str(ROOT / "scripts" / "serve"), "--port", str(port)]  # the launcher users run
    samples: list[tuple[float, float]] = []
    promotions: list[dict[str, Any]] = []
    with server(command, env, "/readyz", port, tmp / "server.log") as (url, pid):
        load = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "load.py"), url + "/predict", "--texts", str(texts_file),
             "--concurrency", str(ns.concurrency), "--seconds", str(ns.seconds), "--warmup", "10"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append((time.monotonic() - started, rss_mb(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for i, version in enumerate(versions[1 : 1 + ns.promotions], start=1):
            time.sleep(max(0.0, 10 + ns.seconds * i / 4 - (time.monotonic() - started)))
            r = httpx.post(f"{url}/models/bench/load/promote", json={"version": version}, timeout=30)
            promotions.append(
                {"at_s": round(time.monotonic() - started, 1), "version": version, "status": r.status_code}
            )
        out, _ = load.communicate(timeout=ns.seconds + 120)
        stop.set()
    result = json.loads(out)
    after_warmup = [rss for t, rss in samples if t >= 10 + min(30.0, ns.seconds / 5)]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0] * 100 if len(after_warmup) > 1 else None
    report = {
        "command": f"python bench/load_during_promotions.py --seconds {ns.seconds:g} --promotions {ns.promotions}",
        "date": time.strftime("%Y-%m-%d"),
        "load": result,
        "promotions": promotions,
        "versions_in_order": versions,
        "rss_mb_first_after_warmup": after_warmup[0] if after_warmup else None,
        "rss_mb_last": after_warmup[-1] if after_warmup else None,
        "rss_mb_max": max(rss for _, rss in samples) if samples else None,
        "rss_growth_percent": growth,
        "rss_mb_every_5s": [(round(t), round(mb)) for t, mb in samples[::5]],
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
