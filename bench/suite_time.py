"""How long the README's test command takes on a fresh clone, as CI runs it: install included (issue 27's target:
at most 10 minutes on 2 cores), optionally with a CPU burner on every core (slower is fine there, red is not).

    python bench/suite_time.py                 # alone
    python bench/suite_time.py --burners 2     # with two busy loops holding both cores of a 2-core machine
    python bench/suite_time.py --quick         # scripts/test --quick in this checkout (installed, no clone)

Clones HEAD of this checkout into a temporary folder with ../shared beside it (a link to this checkout's), runs
`bash .ci/run` there with CI=true, and writes bench/results/suite_time[_burn<N>].md (docs/TESTING.md includes it):
the wall time, pytest's own time, the outcome line and the slowest tests as pytest reported them.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def burn() -> subprocess.Popen[bytes]:
    """One busy loop: a core held by another process, as on a shared CI runner."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_quick() -> tuple[float, int, str]:
    """Wall seconds, exit code and output of the quick tier in this checkout."""
    start = time.monotonic()
    done = subprocess.run(["scripts/test", "--quick", "--durations=10"], cwd=ROOT, capture_output=True, text=True)
    return time.monotonic() - start, done.returncode, done.stdout + done.stderr


def run_suite(burners: int) -> tuple[float, int, str]:
    """Wall seconds, exit code and output of `bash .ci/run` in a fresh clone of HEAD."""
    with tempfile.TemporaryDirectory(prefix="fitgate-suite-") as tmp:
        clone = Path(tmp) / "fitgate"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        shared = ROOT.parent / "shared"
        if shared.exists():
            (Path(tmp) / "shared").symlink_to(shared)
        busy = [burn() for _ in range(burners)]
        try:
            start = time.monotonic()
            done = subprocess.run(
                ["bash", ".ci/run"], cwd=clone, env={**os.environ, "CI": "true"}, capture_output=True, text=True
            )
            return time.monotonic() - start, done.returncode, done.stdout + done.stderr
        finally:
            for process in busy:
                process.kill()
                process.wait()


def slowest(output: str) -> list[str]:
    """pytest's --durations lines, as printed."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None)
    if start is None:
        return []
    return [line for line in lines[start + 1 :] if re.match(r"^\d+\.\d+s ", line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burners", type=int, default=0, help="busy loops beside the suite (one per core to load)")
    parser.add_argument("--quick", action="store_true", help="time scripts/test --quick here instead")
    args = parser.parse_args()
    wall, code, output = run_quick() if args.quick else run_suite(args.burners)
    outcome = next((line.strip("= ") for line in reversed(output.splitlines()) if " in " in line and "=" in line), "")
    pytest_seconds = re.search(r" in ([\d.]+)s", outcome)
    option = "--quick" if args.quick else f"--burners {args.burners}" if args.burners else ""
    name = "suite_time" + ("_quick" if args.quick else f"_burn{args.burners}" if args.burners else "")
    command = f"python bench/suite_time.py {option}".strip()
    report = [
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores"
        f"{f', {args.burners} busy loops beside it' if args.burners else ''})\n",
        "| fresh clone + `bash .ci/run` | of which pytest | install and apt | exit code | outcome |"
        if not args.quick
        else "| `scripts/test --quick` | of which pytest | start-up | exit code | outcome |",
        "|---|---|---|---|---|",
        f"| {wall / 60:.1f} min ({wall:.0f} s) | "
        + (f"{float(pytest_seconds[1]):.0f} s | {wall - float(pytest_seconds[1]):.0f} s" if pytest_seconds else "? | ?")
        + f" | {code} | {outcome} |",
        "",
        "Slowest tests (pytest --durations):",
        "",
        "```",
        *slowest(output)[:10],
        "```",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(report))
    (RESULTS / f"{name}.log").write_text(output[-200_000:])
    print("\n".join(report))
    sys.exit(code)


if __name__ == "__main__":
    main()
