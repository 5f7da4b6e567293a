"""Batch scoring of large files: throughput vs raw ONNX Runtime and vs a client looping over /predict, peak memory
vs file size, and a kill -9 mid-file then resume.

The model is MiniLM fine-tuned on sms_spam (``bench/common.py``, cached); the files repeat the 5,574 sms_spam
texts in order (with an ``id`` column) to the row counts asked for. Each arm runs in its own process, so its peak
RSS (GNU time's ``%M``) is its own:
- ``fitgate``: ``fitgate predict FILE --model bench/sms-drift --out OUT.csv`` (the code a POST /batch job runs:
  counting, reading, scoring in chunks, writing parts, joining); wall seconds of the whole command.
- ``raw``: the same graph (the one the runtime picks: int8 on CPU when the bundle kept it), the same session
  options and the bundle's tokenizer, over texts read into memory first (not timed), in batches of 64; two
  orders: file order, and sorted by length over the whole file (the least padding any loop can get). Nothing is
  written. The ratio is fitgate's rows/s over the better raw order's.
- ``http``: a real server (scripts/serve, default settings) and a client posting 64 texts per request from 1, 2
  and 4 threads over the first ``--http-rows`` rows; the best concurrency is reported.
- ``resume``: ``fitgate predict`` on the ``--resume-rows`` file, killed with SIGKILL once it has written a few
  parts, then run again to the end; its output is compared row by row with an uninterrupted run's.
- ``job`` (``--job``): the big file as curl sends it: POST /batch to a real server with its trainer, GET /jobs/{id}
  polled for progress every 2 s, the output downloaded and checked (every id once, in input order).

    python bench/batch_throughput.py --rows 1000000 --small-rows 100000
    python bench/batch_throughput.py --rows 20000 --small-rows 5000 --http-rows 2000 --resume-rows 20000  # smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
PY = sys.executable


def write_file(path: Path, rows: int) -> Path:
    from bench.common import DATASETS

    with (DATASETS / "sms_spam" / "sms_spam.csv").open(newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", texts[i % len(texts)]] for i in range(rows))
    return path


def timed(command: list[str], env: dict[str, str], kill_when: Any = None) -> dict[str, Any]:
    """Run ``command``; wall seconds and peak RSS (MiB) of the process; ``kill_when()`` true: SIGKILL it."""
    started = time.perf_counter()
    # GNU time forks and execs the command and reports its peak RSS: measured by wait4 here, a child's peak would
    # include this (large) process's pages it shares between fork and exec
    command = ["/usr/bin/time", "-f", "PEAK_RSS_KB=%M", *command]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed = False
    if kill_when is not None:
        while process.poll() is None:
            if kill_when():
                for child in psutil.Process(process.pid).children():  # the scoring process, under GNU time
                    child.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
    output = process.stdout.read().decode() if process.stdout else ""
    status = process.wait()
    if not killed and status != 0:
        raise RuntimeError(f"{command} failed: {output[-2000:]}")
    peaks = [int(line.split("=", 1)[1]) for line in output.splitlines() if line.startswith("PEAK_RSS_KB=")]
    lines = [line for line in output.splitlines() if not line.startswith("PEAK_RSS_KB=")]
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peaks[-1] / 1024 if peaks else None,
            "output": "\n".join(lines), "killed": killed}  # fmt: skip


def raw_arm(bundle: str, source: str, order: str) -> None:
    """In a child process: score ``source`` with ONNX Runtime and nothing else; print rows/s as JSON."""
    import numpy as np

    from models.runtime import OnnxClassifier, load_tokenizer
    from training.padding import pad_batch

    classifier = OnnxClassifier(Path(bundle))
    classifier.load()  # only to pick the graph and session options exactly as the runtime does
    spec = classifier.spec
    session = classifier._session
    assert session is not None
    tokenizer = load_tokenizer(Path(bundle) / "tokenizer", spec.windowing())
    with open(source, newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    names = {i.name for i in session.get_inputs()}
    started = time.perf_counter()
    ids = [e.ids for e in tokenizer.encode_batch(texts)] if order == "sorted" else None
    index = sorted(range(len(texts)), key=lambda i: len(ids[i])) if ids is not None else list(range(len(texts)))
    answered = 0
    for start in range(0, len(index), 64):
        chunk = index[start : start + 64]
        batch = (
            [ids[i] for i in chunk]
            if ids is not None
            else [e.ids for e in tokenizer.encode_batch([texts[i] for i in chunk])]
        )
        input_ids, mask = pad_batch(batch, spec.pad_id)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        answered += int(session.run(["logits"], feed)[0].argmax(axis=1).size)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": answered, "seconds": seconds, "graph": classifier.served_graph}))


@contextmanager
def served(data_dir: Path, training: bool) -> Iterator[str]:
    """A real server (scripts/serve, default settings) on ``data_dir``; yields its URL once ready."""
    import httpx

    from tests.ports import free_port

    port = free_port()
    env = {
        **os.environ, "FITGATE_DATA_DIR": str(data_dir), "FITGATE_PORT": str(port),
        "FITGATE_TRAINING_ENABLED": str(training).lower(), "BENTOML_DO_NOT_TRACK": "True",
        "FITGATE_PREPARE_BASE_MODELS": "false",
    }  # fmt: skip
    server = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def http_arm(data_dir: Path, source: Path, rows: int) -> dict[str, Any]:
    import httpx

    with source.open(newline="", encoding="utf-8") as f:
        texts = [r["text"] for _, r in zip(range(rows), csv.DictReader(f), strict=False)]
    with served(data_dir, training=False) as url:
        batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
        results = {}
        for threads in (1, 2, 4):
            queue = list(batches)
            lock = threading.Lock()

            def work(queue: list[list[str]], lock: threading.Lock) -> None:
                with httpx.Client(timeout=120) as client:
                    while True:
                        with lock:
                            if not queue:
                                return
                            batch = queue.pop()
                        r = client.post(f"{url}/predict", json={"texts": batch})
                        r.raise_for_status()

            started = time.perf_counter()
            pool = [threading.Thread(target=work, args=(queue, lock)) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            results[threads] = len(texts) / (time.perf_counter() - started)
        best = max(results, key=lambda k: results[k])
        return {"rows": len(texts), "rows_per_second_by_concurrency": results, "best_concurrency": best,
                "rows_per_second": results[best]}  # fmt: skip


def job_arm(data_dir: Path, source: Path, rows: int, name: str, work: Path) -> dict[str, Any]:
    """The file through curl's path: POST /batch, poll GET /jobs/{id} (progress, ETA), download the output."""
    import httpx

    with served(data_dir, training=True) as url, httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        with source.open("rb") as f:
            r = client.post(f"{url}/batch", files={"file": (source.name, f, "text/csv")},
                            data={"model": name, "parameters": json.dumps({"output_format": "csv"})})  # fmt: skip
        r.raise_for_status()
        uploaded = time.perf_counter() - started
        job_id = r.json()["job_id"]
        snapshots: list[dict[str, Any]] = []
        while True:
            job = client.get(f"{url}/jobs/{job_id}").json()
            progress = job.get("progress") or {}
            if progress.get("phase") == "scoring":
                snapshots.append({k: progress.get(k) for k in ("rows_done", "rows_total", "rows_per_second",
                                                               "eta_seconds")})  # fmt: skip
            if job["status"] in ("succeeded", "failed", "cancelled", "blocked"):
                break
            time.sleep(2)
        finished = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"batch job {job_id} ended {job['status']}: {job.get('error')}")
        out = work / "job-output.csv"
        with client.stream("GET", f"{url}/jobs/{job_id}/output") as download, out.open("wb") as f:
            download.raise_for_status()
            for block in download.iter_bytes():
                f.write(block)
        downloaded = time.perf_counter() - started
    with out.open(newline="", encoding="utf-8") as f:
        ids = [r["id"] for r in csv.DictReader(f)]
    return {
        "rows": rows, "upload_seconds": round(uploaded, 1), "seconds_to_succeeded": round(finished, 1),
        "seconds_with_download": round(downloaded, 1), "rows_per_second": round(rows / finished, 1),
        "progress_polls": len(snapshots), "first_progress": snapshots[0] if snapshots else None,
        "rows_out": len(ids), "distinct_ids": len(set(ids)), "in_order": ids == [f"r{i}" for i in range(rows)],
    }  # fmt: skip


@dataclass(frozen=True)
class Model:
    data_dir: Path  # a fitgate data directory whose registry serves the model
    bundle_dir: Path


def minilm_model() -> tuple[Path, Path, str]:
    from bench.common import NAME, sms_model

    model = sms_model()
    return model.data_dir, model.bundle_dir, str(NAME)


def tiny_model() -> tuple[Path, Path, str]:
    """The tests' tiny random BERT fine-tuned on their toy task, released (cached in bench/.cache)."""
    from fitgate.settings import Settings
    from models.gate import release
    from models.names import ModelName
    from models.registry import open_registry
    from tests.conftest import keyword_rows, save_random_bert, write_csv
    from training.arguments import TrainingArguments
    from training.loop import fine_tune
    from training.modeling import default_base_model

    key = ROOT / "bench" / ".cache" / "batch-tiny"
    name = ModelName.parse("bench/tiny")
    settings = Settings(data_dir=key / "data")
    registry = open_registry(settings)
    if registry.current(name) is None:
        base = save_random_bert(key / "base", default_base_model(), num_hidden_layers=2, intermediate_size=64)
        args = TrainingArguments(base_model=str(base), learning_rate=5e-3, num_train_epochs=4, max_length=32)
        fine_tune(write_csv(key / "train.csv", keyword_rows(300)), key / "run", args)
        release(key / "run", name, settings, registry, promote=True)
    return key / "data", registry.bundle_path(name), str(name)


def read_rows(path: Path) -> list[tuple[str, str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["row"], r["id"], r["label"]) for r in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000, help="the smaller file of the RSS comparison")
    parser.add_argument("--http-rows", type=int, default=5_000)
    parser.add_argument("--resume-rows", type=int, default=100_000)
    parser.add_argument("--raw-rows", type=int, default=None, help="rows the raw arms score (default: --rows)")
    parser.add_argument(
        "--model", choices=("minilm", "tiny"), default="minilm",
        help="minilm: MiniLM fine-tuned on sms_spam; tiny: the tests' 2-layer random BERT, fine-tuned on a toy task "
        "(for memory and resume on files too large for MiniLM's speed here)",
    )  # fmt: skip
    parser.add_argument("--job", action="store_true", help="also score the big file as a POST /batch job on a server")
    parser.add_argument("--raw", nargs=3, metavar=("BUNDLE", "FILE", "ORDER"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.raw:
        raw_arm(*ns.raw)
        return 0
    data_dir, bundle_dir, name = minilm_model() if ns.model == "minilm" else tiny_model()
    model = Model(data_dir, bundle_dir)
    env = {**os.environ, "FITGATE_DATA_DIR": str(model.data_dir), "PYTHONPATH": str(ROOT)}
    results: dict[str, Any] = {
        "model": ns.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python bench/batch_throughput.py " + " ".join(sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory(prefix="batch-bench-", dir=ROOT.parent) as tmp:
        work = Path(tmp)
        big, small = write_file(work / "big.csv", ns.rows), write_file(work / "small.csv", ns.small_rows)
        raw_source = big if ns.raw_rows in (None, ns.rows) else write_file(work / "raw.csv", ns.raw_rows)

        def predict(source: Path, out: Path) -> list[str]:
            return [PY, "-m", "cli", "predict", str(source), "--model", name, "--out", str(out), "--quiet"]

        for arm, source in (("fitgate_small", small), ("fitgate", big)):
            run = timed(predict(source, work / f"{arm}.csv"), env)
            rows = ns.small_rows if arm == "fitgate_small" else ns.rows
            results[arm] = {"rows": rows, "seconds": round(run["seconds"], 1),
                             "rows_per_second": round(rows / run["seconds"], 1),
                             "peak_rss_mib": round(run["peak_rss_mib"], 1)}  # fmt: skip
            print(arm, results[arm], flush=True)
        for order in ("file", "sorted"):
            run = timed([PY, str(Path(__file__)), "--raw", str(model.bundle_dir), str(raw_source), order], env)
            measured = json.loads(run["output"].strip().splitlines()[-1])
            results[f"raw_{order}"] = {
                "rows": measured["rows"], "seconds": round(measured["seconds"], 1),
                "rows_per_second": round(measured["rows"] / measured["seconds"], 1),
                "graph": measured["graph"], "peak_rss_mib": round(run["peak_rss_mib"], 1),
            }  # fmt: skip
            print(f"raw_{order}", results[f"raw_{order}"], flush=True)
        best_raw = max(results["raw_file"]["rows_per_second"], results["raw_sorted"]["rows_per_second"])
        results["ratio_to_raw"] = round(results["fitgate"]["rows_per_second"] / best_raw, 3)
        results["rss_ratio_big_to_small"] = round(
            results["fitgate"]["peak_rss_mib"] / results["fitgate_small"]["peak_rss_mib"], 3
        )

        # kill -9 mid-file, then the same command again
        resume_source = small if ns.resume_rows == ns.small_rows else write_file(work / "resume.csv", ns.resume_rows)
        clean = work / "fitgate_small.csv" if resume_source == small else work / "resume-clean.csv"
        if resume_source != small:
            timed(predict(resume_source, clean), env)
        out = work / "resumed.csv"
        parts = work / ".resumed.csv.parts"
        killed = timed(predict(resume_source, out), env, kill_when=lambda: len(list(parts.glob("part-*.csv"))) >= 5)
        written = len(list(parts.glob("part-*.csv")))
        timed(predict(resume_source, out), env)
        got, want = read_rows(out), read_rows(clean)
        ids = [r[1] for r in got]
        results["resume"] = {
            "rows": ns.resume_rows, "killed": killed["killed"], "parts_written_before_the_kill": written,
            "rows_out": len(got), "lost": len({r[1] for r in want} - set(ids)), "duplicated": len(ids) - len(set(ids)),
            "identical_to_an_uninterrupted_run": got == want,
        }  # fmt: skip
        print("resume", results["resume"], flush=True)
        results["http"] = http_arm(model.data_dir, big, ns.http_rows)
        print("http", results["http"], flush=True)
        if ns.job:
            results["job"] = job_arm(model.data_dir, big, ns.rows, name, work)
            print("job", results["job"], flush=True)
    (OUT / f"batch_throughput_{ns.model}.json").write_text(json.dumps(results, indent=2))
    (OUT / f"batch_throughput_{ns.model}.md").write_text(render(results))
    return 0


def render(r: dict[str, Any]) -> str:
    f, s = r["fitgate"], r["fitgate_small"]
    http = r["http"]
    lines = [
        f"{r['machine']}; "
        + ("MiniLM fine-tuned on sms_spam" if r["model"] == "minilm" else "the tests' 2-layer random BERT, toy task")
        + f", graph {r['raw_file']['graph']}; `{r['command']}`",
        "",
        "| arm | rows | seconds | rows/s | vs best raw | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    best = max(r["raw_file"]["rows_per_second"], r["raw_sorted"]["rows_per_second"])
    arms = (
        ("fitgate predict (batch job path)", f), ("fitgate predict, small file", s),
        ("raw ONNX Runtime, file order", r["raw_file"]), ("raw ONNX Runtime, sorted by length", r["raw_sorted"]),
    )  # fmt: skip
    for name, row in arms:
        lines.append(f"| {name} | {row['rows']:,} | {row['seconds']:,.1f} | {row['rows_per_second']:,.0f} | "
                     f"{row['rows_per_second'] / best:.2f}x | {row['peak_rss_mib']:,.0f} |")  # fmt: skip
    lines.append(f"| client over /predict, {http['best_concurrency']} threads x 64 texts | {http['rows']:,} | – | "
                 f"{http['rows_per_second']:,.0f} | {http['rows_per_second'] / best:.2f}x | – |")  # fmt: skip
    res = r["resume"]
    lines += [
        "",
        f"Throughput vs raw ONNX Runtime: **{r['ratio_to_raw']:.2f}x** (target >= 0.9x). Peak RSS, {f['rows']:,} vs "
        f"{s['rows']:,} rows: {f['peak_rss_mib']:,.0f} vs {s['peak_rss_mib']:,.0f} MiB "
        f"({r['rss_ratio_big_to_small']:.2f}x). /predict rows/s by client threads: "
        + ", ".join(f"{k}: {v:,.0f}" for k, v in http["rows_per_second_by_concurrency"].items()) + ".",
        f"kill -9 after {res['parts_written_before_the_kill']} parts of {res['rows']:,} rows, then rerun: "
        f"{res['rows_out']:,} rows out, {res['lost']} lost, {res['duplicated']} duplicated, identical to an "
        f"uninterrupted run: {res['identical_to_an_uninterrupted_run']}.",
    ]  # fmt: skip
    if "job" in r:
        j = r["job"]
        lines.append(
            f"The same {j['rows']:,}-row file as a POST /batch job on a server (upload {j['upload_seconds']:,.0f} s, "
            f"succeeded after {j['seconds_to_succeeded']:,.0f} s: {j['rows_per_second']:,.0f} rows/s end to end, "
            f"download included {j['seconds_with_download']:,.0f} s); {j['progress_polls']} progress polls while "
            f"scoring; output {j['rows_out']:,} rows, {j['distinct_ids']:,} distinct ids, in input order: "
            f"{j['in_order']}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
