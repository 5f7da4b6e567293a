"""Refresh docs/BENCHMARKS.md (and the README's figures) from the benchmark results: the machine block
and every included table.

The page's prose is written by people; its figures are not. Each table sits between
``<!-- include bench/results/NAME.md -->`` and ``<!-- end include -->`` and is replaced by that
file, which the benchmark script wrote; ``<!-- machine -->`` ... ``<!-- end machine -->`` is
replaced by this machine's description. bench/run_all calls this last.

    python bench/report.py            # rewrite docs/BENCHMARKS.md and README.md in place
    python bench/report.py --check    # exit 1 if a table differs from its results file (nothing written)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "BENCHMARKS.md"
PAGES = (
    PAGE,
    ROOT / "README.md",
    ROOT / "docs" / "RELIABILITY.md",
    ROOT / "docs" / "SECURITY.md",
    ROOT / "docs" / "TESTING.md",
)  # pages that quote figures from bench/results
INCLUDE = re.compile(r"(<!-- include (\S+) -->\n)(.*?)(<!-- end include -->)", re.S)
MACHINE = re.compile(r"(<!-- machine -->\n)(.*?)(<!-- end machine -->)", re.S)


def machine() -> str:
    """CPU model, cores, memory, GPU and the library versions the figures depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    try:
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
            or "none"
        )
    except (OSError, subprocess.TimeoutExpired):
        gpu = "none"
    libraries = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "onnxruntime", "bentoml"))
    return (
        f"**Machine:** {cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{kib / 2**20:.0f} GiB RAM, GPU: {gpu}. {libraries}, Python {platform.python_version()}.\n"
    )


def render(page: str, with_machine: bool = True) -> str:
    def table(match: re.Match[str]) -> str:
        source = ROOT / match.group(2)
        body = source.read_text() if source.exists() else f"*{match.group(2)} has not been produced yet.*\n"
        return match.group(1) + body.rstrip("\n") + "\n" + match.group(4)

    page = INCLUDE.sub(table, page)
    return MACHINE.sub(lambda m: m.group(1) + machine() + m.group(3), page) if with_machine else page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the tables are up to date")
    ns = parser.parse_args()
    if ns.check:  # the machine block describes where the figures were made, not where this runs
        stale = [page for page in PAGES if render(page.read_text(), with_machine=False) != page.read_text()]
        sys.exit(f"{', '.join(map(str, stale))} differ from bench/results: run python bench/report.py" if stale else 0)
    for page in PAGES:
        new = render(page.read_text())
        page.write_text(new)
        print(f"wrote {page}: {len(INCLUDE.findall(new))} tables included")


if __name__ == "__main__":
    main()
