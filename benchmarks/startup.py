"""How long a command takes to answer before any work: --help, --version, --cfg job, --info, a TAB press, the
imports.

    python benchmarks/startup.py                                # this checkout
    python benchmarks/startup.py --baseline /tmp/old-checkout   # and another checkout, side by side

Each row runs in a fresh process from an empty folder, `--repeats` times interleaved across the checkouts;
a cell is the median wall time in seconds. The console commands (`resnet9-train`) exist only where this
environment installed them (this checkout); a baseline without them runs `python -m resnet9.train`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def commands(has_console_scripts: bool) -> dict[str, list[str]]:
    """The rows: what a user types, as an argv."""
    train = [str(BIN / "resnet9-train")] if has_console_scripts else [sys.executable, "-m", "resnet9.train"]
    return {
        "--help": [*train, "--help"],
        "--cfg job": [*train, "--cfg", "job"],
        "--info": [*train, "--info"],
        "TAB (-sc query=bash)": [*train, "-sc", "query=bash"],
        "--version": [*train, "--version"],
        "python -m resnet9.train --help": [sys.executable, "-m", "resnet9.train", "--help"],
        "python -m resnet9.train --version": [sys.executable, "-m", "resnet9.train", "--version"],
        "import resnet9.train": [sys.executable, "-c", "import resnet9.train"],
    }


def seconds(argv: list[str], checkout: Path) -> float:
    path = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])  # checkout first
    env = {**os.environ, "PYTHONPATH": path, "COMP_LINE": "resnet9-train epo", "COMP_POINT": "17"}
    with tempfile.TemporaryDirectory() as empty:
        started = time.perf_counter()
        result = subprocess.run(argv, cwd=empty, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {checkout}: {result.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", action="append", default=[], type=Path, help="another checkout to compare")
    args = parser.parse_args()
    checkouts = {"this checkout": REPO, **{str(path): path.resolve() for path in args.baseline}}
    rows = {name: {} for name in commands(True)}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for label, checkout in checkouts.items():
            console = checkout == REPO and (BIN / "resnet9-train").exists()
            for row, argv in zip(rows, commands(console).values(), strict=True):
                times.setdefault((row, label), []).append(seconds(argv, checkout))
    for (row, label), measured in times.items():
        rows[row][label] = f"{statistics.median(measured):.2f}"
    print(f"Seconds to answer (median of {args.repeats}), fresh process, {os.cpu_count()} CPUs:")
    print(tabulate([[row, *cells.values()] for row, cells in rows.items()], headers=["", *checkouts],
                   tablefmt="github"))  # fmt: skip


if __name__ == "__main__":
    main()
