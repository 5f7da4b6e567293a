"""Closed-loop HTTP load from wrk (C, Debian's `wrk`): N connections POST JSON bodies for S seconds.

Why not bench/load.py (httpx) for throughput figures: on a 2-core machine its Python client took 2-2.5 ms
of CPU per request (bench/serving_profile.py), a fifth of what the server under test needs, taken from
the same two cores; wrk takes a few microseconds. load.py stays for the runs that read each answer
(bench/load_during_promotions.py counts the model versions that answered).

Bodies are built in Python (one JSON document per line, texts sampled with a fixed seed), read by wrk's
Lua at start, and sent round-robin. A request counts as failed on any socket error or a non-2xx status.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i + 1
  return wrk.format("POST", nil, headers, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %d, "duration_us": %d, "failed": %d, "status_errors": %d, ' ..
    '"p50_us": %.1f, "p99_us": %.1f}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    texts: list[str],
    concurrency: int,
    seconds: float,
    batch: int = 1,
    warmup: float = 3.0,
    body: Callable[[list[str]], dict[str, Any]] = lambda texts: {"texts": texts},
) -> dict[str, Any]:
    """Warm up for ``warmup`` s, then measure ``seconds`` s; the same keys as bench/load.py's rows."""
    if not available():
        raise RuntimeError("wrk is not installed: apt-get install wrk (Debian)")
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="fitgate-wrk-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(body(rng.sample(texts, batch))) + "\n" for _ in range(2000)))
    script = work / "post.lua"
    script.write_text(LUA)
    env = {"WRK_BODIES": str(bodies), "PATH": "/usr/bin:/bin"}

    def wrk(duration: float) -> dict[str, Any]:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "60s", "-s", str(script),
             url],
            capture_output=True, text=True, check=True, env=env, timeout=duration + 120,
        )  # fmt: skip
        line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT "))
        return dict(json.loads(line.removeprefix("WRK_RESULT ")))

    if warmup > 0:
        wrk(warmup)
    result = wrk(seconds)
    elapsed = result["duration_us"] / 1e6
    ok = result["requests"] - result["status_errors"]
    return {
        "concurrency": concurrency,
        "batch": batch,
        "requests": ok,
        "errors": result["failed"],
        "seconds": elapsed,
        "requests_per_second": ok / elapsed,
        "texts_per_second": ok * batch / elapsed,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "load_generator": "wrk",
    }
