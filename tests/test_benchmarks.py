"""The benchmark script runs and prints its table (numbers are checked by reading them, never in tests)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_prints_its_table(cifar_root):
    result = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--width", "0.125", "--batch-size", "32", "--steps", "2",
         "--rounds", "1", "--workers", "1", "--device", "cpu", "--data-root", str(cifar_root)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for row in ("(a) bare model", "(b) device-resident loader", "(c) albumentations DataLoader",
                "(d) device-resident, whole epoch at once", "ratio (b)/(a)", "ratio (d)/(a)"):  # fmt: skip
        assert f"| {row}" in out
    ratio = float(out.split("ratio (b)/(a)")[1].split("|")[1])
    assert ratio > 0
