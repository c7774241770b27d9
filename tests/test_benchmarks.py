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


def test_lr_regret_benchmark_prints_its_table(cifar_root):
    result = subprocess.run(
        [sys.executable, "benchmarks/lr_regret.py", "--widths", "0.125", "--batches", "40", "--images", "400",
         "--test-images", "200", "--epochs", "2", "--seeds", "1", "--peaks", "0.1", "0.4", "--data-root",
         str(cifar_root), "--", "lr_finder.num_iter=30", "device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| model.width=0.125 batch_size=40"))
    derived, derived_acc, best_pair, best_acc, regret = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert best_pair in ("0.005 / 0.1", "0.02 / 0.4")  # LRMIN = peak / 20
    assert float(regret) == round(float(best_acc) - float(derived_acc), 2) and "could not draw" not in result.stderr
