"""A closed-loop HTTP load generator, run as its own process: N concurrent clients POST /predict for S seconds.

    python bench/load.py http://127.0.0.1:3000/predict --concurrency 32 --seconds 15 --batch 1 --texts texts.json

Prints one JSON object: requests, texts, errors, seconds, requests/s, texts/s, p50 and p99 latency (ms),
and how many answers each model version gave (fitgate's responses name their version).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


async def run(
    url: str, texts: list[str], concurrency: int, seconds: float, batch: int, warmup: float, model: str | None = None
) -> dict[str, Any]:
    latencies: list[float] = []
    versions: dict[str, int] = {}
    error_kinds: dict[str, int] = {}
    error_at: list[float] = []  # seconds after the warm-up, to line failures up with promotions
    errors = 0
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def client(http: httpx.AsyncClient, seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while (now := time.perf_counter()) < stop:
            body: dict[str, Any] = {"texts": rng.sample(texts, batch), **({"model": model} if model else {})}
            sent = time.perf_counter()
            version, kind = None, ""
            try:
                r = await http.post(url, json=body)
                ok = r.status_code == 200 and len(r.json()["predictions"]) == batch
                version = r.json().get("version") if ok else None
                kind = "" if ok else f"{r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                ok, kind = False, type(exc).__name__
            done = time.perf_counter()
            if now >= start:  # warm-up requests are not counted
                if ok:
                    latencies.append(done - sent)
                    if version:
                        versions[version] = versions.get(version, 0) + 1
                else:
                    errors += 1
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    error_at.append(round(sent - start, 2))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http, i) for i in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "batch": batch,
        "requests": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "requests_per_second": len(latencies) / seconds,
        "texts_per_second": len(latencies) * batch / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "versions": versions,
        "error_kinds": error_kinds,
        "error_sent_at_s": error_at[:100],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts to sample requests from")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--model", help="model name to ask for (default: the service's default model)")
    ns = parser.parse_args()
    texts = json.loads(ns.texts.read_text())
    print(json.dumps(asyncio.run(run(ns.url, texts, ns.concurrency, ns.seconds, ns.batch, ns.warmup, ns.model))))


if __name__ == "__main__":
    main()
