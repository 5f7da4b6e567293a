"""Serving footprint: memory, start time and loaded libraries of an inference-only fitgate worker.

Serves one promoted model (bench/common.py's MiniLM, or ``--data-dir``) from two checkouts in one
invocation, ``--before DIR`` (an older commit) and this one, with training off and one worker
(FITGATE_TRAINING_ENABLED=false, FITGATE_WORKERS=1), alternating the two (before, current, before,
current, ...) for ``--rounds`` rounds, and measures each start:

- seconds from starting ``bentoml serve`` to the first ``GET /readyz`` that answers 200 (polled every
  50 ms), and to the first ``POST /predict`` that answers 200 (sent as soon as /readyz is ready);
- memory of the serving worker and of the whole process tree (the arbiter and its children), with
  the model loaded (read after the first /predict) and again after ``--requests`` more: RSS, and
  USS and PSS where the kernel gives them (``psutil.Process.memory_full_info``);
- which heavy libraries the worker has mapped (/proc/<pid>/maps): libtorch, the ``onnx`` package's
  extension, ONNX Runtime, tokenizers. An inference worker needs only the last two.

Each checkout runs with ``cwd`` and ``PYTHONPATH`` set to it, so its own code is imported (checked
and recorded: where ``service.app`` resolves from), on this checkout's interpreter and packages
(.venv/bin/bentoml); the older checkout needs no .venv of its own. Loopback only.

    git worktree add /tmp/fitgate-before <commit>
    .venv/bin/python bench/serving_footprint.py --before /tmp/fitgate-before            # 3 rounds
    .venv/bin/python bench/serving_footprint.py --before /tmp/fitgate-before --rounds 1 \\
        --skip-current --data-dir DIR --out /tmp/footprint                                # one side

Writes serving_footprint.json (every run, medians, machine, command) and serving_footprint.md to
bench/results/ (``--out`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENTOML = ROOT / ".venv" / "bin" / "bentoml"  # the interpreter and packages both checkouts run on
POLL_SECONDS = 0.05
START_TIMEOUT_SECONDS = 300.0
# Evidence of what a worker imported, by a substring of a mapped file's path. Pure-Python packages
# (transformers) leave no trace in the maps; torch and onnx do, through their extension modules.
LIBRARIES = {
    "libtorch": "libtorch",
    "onnx": "onnx/onnx_cpp2py_export",
    "onnxruntime": "onnxruntime_pybind11_state",
    "tokenizers": "tokenizers/tokenizers",
}
# Short, fixed texts: the requests only have to exercise the predict path once the model is loaded.
TEXTS = [
    "WINNER!! You have been selected to receive a 900 prize reward. Call now to claim.",
    "Are you coming to lunch today? I'll be at the usual place around 1.",
    "Free entry in 2 a weekly competition to win FA Cup final tickets. Text FA to 87121.",
    "Sorry, I'll call you later, in a meeting right now.",
]


@dataclass(frozen=True)
class Checkout:
    label: str  # "before" or "current"
    path: Path


# --- the process tree -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_worker(proc: psutil.Process) -> bool:
    """bentoml 1.4 starts the service in a child ``python -m _bentoml_impl.worker.service ... --worker-id N``
    (the arbiter, ``bentoml serve`` itself, imports the service module too, but serves nothing)."""
    with contextlib.suppress(psutil.Error):
        cmdline = proc.cmdline()
        return "_bentoml_impl.worker.service" in cmdline and "--worker-id" in cmdline
    return False


def find_worker(root: psutil.Process) -> psutil.Process:
    """The one serving worker among ``root``'s descendants (FITGATE_WORKERS=1)."""
    workers = [p for p in root.children(recursive=True) if _is_worker(p)]
    if len(workers) != 1:
        found = [" ".join(p.cmdline()) for p in root.children(recursive=True)]
        raise RuntimeError(f"expected one process with --worker-id under pid {root.pid}, found {found}")
    return workers[0]


def memory(proc: psutil.Process) -> dict[str, int | None]:
    """RSS, and USS and PSS where /proc/<pid>/smaps can be read, in bytes."""
    try:
        full = proc.memory_full_info()
    except psutil.AccessDenied:
        return {"rss": int(proc.memory_info().rss), "uss": None, "pss": None}
    return {"rss": int(full.rss), "uss": getattr(full, "uss", None), "pss": getattr(full, "pss", None)}


def tree_memory(root: psutil.Process) -> dict[str, Any]:
    """The worker's memory, and the sums over the tree (RSS counts shared pages once per process; PSS does not)."""
    worker = find_worker(root)
    procs = [root, *root.children(recursive=True)]
    each = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            each[proc.pid] = memory(proc)
    total: dict[str, int | None] = {}
    for key in ("rss", "uss", "pss"):
        values = [m[key] for m in each.values()]
        total[key] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    return {"worker": each[worker.pid], "tree": total, "processes": len(each)}


def mapped_libraries(pid: int) -> dict[str, Any]:
    """Which of LIBRARIES the process has mapped, with the matching files, and how many shared objects in all."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5])
    found = {name: sorted(p for p in paths if pattern in p) for name, pattern in LIBRARIES.items()}
    return {
        "mapped": {name: bool(files) for name, files in found.items()},
        "files": {name: [Path(f).name for f in files] for name, files in found.items() if files},
        "shared_objects": sum(1 for p in paths if ".so" in Path(p).name),
    }


def stop(root: psutil.Process) -> None:
    """SIGTERM the whole tree, children included (circus may not outlive its workers cleanly), then SIGKILL."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = [*root.children(recursive=True), root]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=30)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _log(tmp: Path, run: int, checkout: Checkout) -> Path:
    return tmp / f"run{run}-{checkout.label}.log"


@contextlib.contextmanager
def started(checkout: Checkout, data_dir: Path, tmp: Path, run: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``bentoml serve`` from ``checkout`` (its code on PYTHONPATH and as cwd); yields the process and its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FITGATE_", "BENTOML_"))}
    env.update({
        "PYTHONPATH": str(checkout.path),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(tmp / f"bentoml-home-{run}"),
        "FITGATE_DATA_DIR": str(data_dir),
        "FITGATE_WORKERS": "1",
        "FITGATE_TRAINING_ENABLED": "false",
    })  # fmt: skip
    # the arguments of scripts/serve, without its `cd` to its own checkout and its .venv
    command = [str(BENTOML), "serve", "service.app:FitgateService", "--host", "127.0.0.1", "--port", str(port)]
    with _log(tmp, run, checkout).open("wb") as out:
        process = subprocess.Popen(command, cwd=checkout.path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop(psutil.Process(process.pid))


# --- one start, measured --------------------------------------------------------------------------


def measure(checkout: Checkout, data_dir: Path, tmp: Path, run: int, requests: int) -> dict[str, Any]:
    """Start the service, time /readyz and the first /predict, then read memory and maps; stop it."""
    row: dict[str, Any] = {"checkout": checkout.label, "run": run}
    t0 = time.monotonic()
    with started(checkout, data_dir, tmp, run) as (process, url), httpx.Client(base_url=url, timeout=60) as http:
        while True:
            if process.poll() is not None:
                tail = _log(tmp, run, checkout).read_text(errors="replace")[-3000:]
                row["error"] = f"server exited with {process.returncode}:\n{tail}"
                return row
            if time.monotonic() - t0 > START_TIMEOUT_SECONDS:
                row["error"] = f"/readyz not ready after {START_TIMEOUT_SECONDS:.0f} s"
                return row
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(POLL_SECONDS)
        row["ready_s"] = time.monotonic() - t0
        first = http.post("/predict", json={"texts": TEXTS[:1]})
        if first.status_code != 200:
            row["error"] = f"first /predict answered {first.status_code}: {first.text[:500]}"
            return row
        row["first_predict_s"] = time.monotonic() - t0
        root = psutil.Process(process.pid)
        worker = find_worker(root)
        row["worker_cmdline"] = " ".join(worker.cmdline())
        row["worker_cwd"] = worker.cwd()
        row["worker_pythonpath"] = worker.environ().get("PYTHONPATH")
        row["memory_loaded"] = tree_memory(root)
        for i in range(requests):
            r = http.post("/predict", json={"texts": TEXTS[i % 2 :] * 4})  # 6 or 8 texts a request
            r.raise_for_status()
        row["memory_after_predict"] = tree_memory(root)
        row["libraries"] = mapped_libraries(worker.pid)
        row["libraries_arbiter"] = mapped_libraries(root.pid)
        row["served"] = {k: first.json()[k] for k in ("model", "version")}
    return row


# --- the comparison -------------------------------------------------------------------------------


def _git(path: Path, *args: str) -> str:
    # --no-optional-locks: read-only, not even the index refresh `git status` would write
    out = subprocess.run(["git", "--no-optional-locks", "-C", str(path), *args], capture_output=True, text=True)
    return out.stdout.strip()


def describe(checkout: Checkout) -> dict[str, Any]:
    """Commit, uncommitted files, and where ``service.app`` resolves from with the checkout on PYTHONPATH."""
    probe = "import importlib.util as u; print(u.find_spec('service.app').origin)"
    python = str(BENTOML.parent / "python")
    env = {**os.environ, "PYTHONPATH": str(checkout.path)}
    origin = subprocess.run([python, "-c", probe], cwd=checkout.path, env=env, capture_output=True, text=True)
    return {
        "path": str(checkout.path),
        "commit": _git(checkout.path, "rev-parse", "--short", "HEAD"),
        "uncommitted_files": len(_git(checkout.path, "status", "--porcelain").splitlines()),
        "service_app_imported_from": origin.stdout.strip() or origin.stderr.strip()[-300:],
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores": os.cpu_count(),
        "memory_bytes": int(psutil.virtual_memory().total),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


METRICS = {  # name in the summary: (path into a run's row, unit divisor, unit)
    "ready_s": (("ready_s",), 1.0, "s"),
    "first_predict_s": (("first_predict_s",), 1.0, "s"),
    "worker_rss_loaded_mib": (("memory_loaded", "worker", "rss"), 2**20, "MiB"),
    "worker_rss_mib": (("memory_after_predict", "worker", "rss"), 2**20, "MiB"),
    "worker_uss_mib": (("memory_after_predict", "worker", "uss"), 2**20, "MiB"),
    "worker_pss_mib": (("memory_after_predict", "worker", "pss"), 2**20, "MiB"),
    "tree_rss_mib": (("memory_after_predict", "tree", "rss"), 2**20, "MiB"),
    "tree_pss_mib": (("memory_after_predict", "tree", "pss"), 2**20, "MiB"),
}


def _dig(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def summarize(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label in labels:
        ok = [r for r in runs if r["checkout"] == label and "error" not in r]
        side: dict[str, Any] = {"runs": len(ok), "failed": sum(1 for r in runs if r["checkout"] == label) - len(ok)}
        for name, (path, divisor, _) in METRICS.items():
            values = [v / divisor for v in (_dig(r, path) for r in ok) if v is not None]
            side[name] = {"median": statistics.median(values) if values else None, "values": values}
        for lib in LIBRARIES:
            side[f"{lib}_mapped"] = sorted({bool(_dig(r, ("libraries", "mapped", lib))) for r in ok})
        # the arbiter imports the service module to read its configuration, so its imports cost memory too
        arbiter = {bool(_dig(r, ("libraries_arbiter", "mapped", "libtorch"))) for r in ok}
        side["arbiter_libtorch_mapped"] = sorted(arbiter)
        summary[label] = side
    return summary


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_footprint.json").write_text(json.dumps(results, indent=2) + "\n")
    labels = list(results["summary"])
    m = results["machine"]
    lines = [
        f"`{results['command']}` ({results['date']}, {m['cpu']}, {m['cores_usable']} cores; "
        f"{results['rounds']} round(s), {results['requests']} /predict requests before the second reading)",
        "",
        "| " + " | ".join(["metric", *(f"{x} ({results['checkouts'][x]['commit']})" for x in labels)]) + " |",
        "|---" * (1 + len(labels)) + "|",
    ]
    for name, (_, _, unit) in METRICS.items():
        cells = []
        for label in labels:
            stat = results["summary"][label][name]
            all_values = ", ".join(f"{v:.2f}" if unit == "s" else f"{v:.0f}" for v in stat["values"])
            median = stat["median"]
            cells.append("n/a" if median is None else f"{median:.2f} ({all_values})" if unit == "s"
                         else f"{median:.0f} ({all_values})")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mapped = {f"{lib} mapped in the worker": f"{lib}_mapped" for lib in LIBRARIES}
    mapped["libtorch mapped in the arbiter"] = "arbiter_libtorch_mapped"
    for title, key in mapped.items():
        cells = ["/".join("yes" if v else "no" for v in results["summary"][x][key]) or "n/a" for x in labels]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    failed = {x: results["summary"][x]["failed"] for x in labels if results["summary"][x]["failed"]}
    if failed:
        lines += ["", f"Failed starts (see the JSON for their logs): {failed}"]
    lines += ["", "Median (all values). Memory after the /predict requests; `tree` sums every process of "
              "`bentoml serve` (its RSS counts shared pages in each process, its PSS once)."]  # fmt: skip
    (out / "serving_footprint.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the older commit")
    parser.add_argument("--skip-current", action="store_true", help="measure only --before (to test this script)")
    parser.add_argument("--rounds", type=int, default=3, help="starts of each checkout, alternating (default 3)")
    parser.add_argument("--requests", type=int, default=5, help="/predict requests before the second reading")
    parser.add_argument("--data-dir", type=Path, help="a data directory with a promoted model "
                        "(default: bench/common.py's sms_model(), trained on first use)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ns = parser.parse_args()
    if not (ns.before / "service" / "app.py").is_file():
        parser.error(f"--before {ns.before}: no service/app.py there; give a fitgate checkout (git worktree add)")
    if ns.rounds < 1:
        parser.error(f"--rounds {ns.rounds}: give 1 or more")
    if ns.data_dir is None:
        sys.path.insert(0, str(ROOT))
        from bench.common import sms_model  # trains for minutes on first use; not needed with --data-dir

        ns.data_dir = sms_model().data_dir
    data_dir = ns.data_dir.resolve()
    checkouts = [Checkout("before", ns.before.resolve())]
    if not ns.skip_current:
        checkouts.append(Checkout("current", ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="fitgate-footprint-"))
    results: dict[str, Any] = {
        "command": shlex.join(["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "data_dir": str(data_dir),
        "rounds": ns.rounds,
        "requests": ns.requests,
        "checkouts": {c.label: describe(c) for c in checkouts},
        "logs": str(tmp),
        "runs": [],
    }
    run = 0
    for round_ in range(ns.rounds):
        for checkout in checkouts:
            run += 1
            print(f"round {round_ + 1}, {checkout.label} ({checkout.path}) ...", flush=True)
            try:
                row = measure(checkout, data_dir, tmp, run, ns.requests)
            except (httpx.HTTPError, psutil.Error, RuntimeError, OSError) as exc:  # one failed start, not the rest
                row = {"checkout": checkout.label, "run": run, "error": f"{type(exc).__name__}: {exc}"}
            results["runs"].append(row)
            if "error" in row:
                print(f"  failed: {row['error'][-600:]}", flush=True)
            else:
                w = row["memory_after_predict"]["worker"]
                print(f"  ready {row['ready_s']:.2f} s, first predict {row['first_predict_s']:.2f} s, worker RSS "
                      f"{w['rss'] / 2**20:.0f} MiB, mapped: {row['libraries']['mapped']}", flush=True)  # fmt: skip
            results["summary"] = summarize(results["runs"], [c.label for c in checkouts])
            write(ns.out, results)
    print((ns.out / "serving_footprint.md").read_text())


if __name__ == "__main__":
    main()
