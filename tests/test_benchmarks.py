"""The benchmark script runs and prints its table (numbers are checked by reading them, never in tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_step_attribution_benchmark_prints_its_table(cifar_root):
    """Variants 1-3 from the same weights on the same batches agree to the last digit (whole-epoch augmentation
    draws the same images); the captured variant says why it cannot run on a CPU; the kernel classes add up."""
    result = subprocess.run(
        [sys.executable, "benchmarks/step_attribution.py", "--only", "1", "2", "3", "5", "--batch-size", "32",
         "--steps", "2", "--rounds", "1", "--log-every", "1", "--device", "cpu", "--data-root", str(cifar_root)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "5 captured: not run here" in result.stdout and "a CUDA graph needs a CUDA device" in result.stderr
    lines = result.stdout.splitlines()
    header = [cell.strip() for cell in next(line for line in lines if line.startswith("| variant")).split("|")[1:-1]]
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if cells and cells[0][:1] in "123":
            rows[cells[0]] = dict(zip(header, cells, strict=True))
    assert list(rows) == ["1 loop", "2 no reads", "3 whole epoch"]
    assert len({row["loss after epoch 1"] for row in rows.values()}) == 1
    assert int(rows["1 loop"]["reads/epoch"]) > 0  # the bar's running numbers, every step here
    assert rows["2 no reads"]["reads/epoch"] == rows["3 whole epoch"]["reads/epoch"] == "0"
    for row in rows.values():
        classes = sum(float(row[key]) for key in header if key.endswith("ms/step") and key != "augment ms/step")
        assert 0 < classes < 1000 * float(row["s/epoch"])  # the profiled operators' time per step, under an epoch's


def test_lr_regret_benchmark_prints_its_tables(cifar_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/lr_regret.py", "--settings", "model.width=0.125", "--batch", "40", "--images",
         "400", "--test-images", "200", "--epochs", "2", "--seeds", "1", "--rules", "lowest", "steepest", "tenth",
         "--grid", "0.1", "0.4", "--data-root", str(cifar_root), "--out", str(tmp_path / "regret.json"), "--",
         "lr_finder.num_iter=30", "device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| model.width=0.125 "))
    best, *regrets = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert len(regrets) == 3  # lowest, steepest, tenth
    best_pair, best_acc = best.split(": ")
    # LRMIN = peak / 20; a grid of two peaks is all edge
    assert best_pair in ("0.005 / 0.1 (grid edge)", "0.02 / 0.4 (grid edge)")
    (lowest_max, _), _, (tenth_max, tenth_acc) = (cell.split("(")[1].rstrip(")").split(": ") for cell in regrets)
    assert float(tenth_max) == pytest.approx(float(lowest_max) / 10, rel=0.01)  # the rules read one curve
    assert float(regrets[2].split()[0]) == pytest.approx(float(best_acc) - float(tenth_acc), abs=0.011)
    assert "could not draw" not in result.stderr
    summary = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.count("|") == 5}
    assert {"lowest", "steepest", "tenth"} <= set(summary)
    saved = json.loads((tmp_path / "regret.json").read_text())["results"]["model.width=0.125"]
    assert len(saved["curve"]["lr"]) == 30 and set(saved["grid"]) == {"0.1", "0.4"}

    # Another rule against the recorded grid: the grid is not trained again, the rule's runs are. A setting that
    # differs only in how the range test runs (here: its default smoothing, spelled out) shares that grid.
    again = subprocess.run(
        [sys.executable, "benchmarks/lr_regret.py", "--settings", "model.width=0.125 lr_finder.smooth_f=0.05",
         "--batch", "40", "--images", "400", "--test-images", "200", "--epochs", "2", "--seeds", "1", "--rules",
         "steepest", "--grid", "0.1", "0.4", "--test-seeds", "2", "--data-root", str(cifar_root), "--grid-from",
         str(tmp_path / "regret.json"), "--out", str(tmp_path / "again.json"), "--", "lr_finder.num_iter=30",
         "device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "model.width=0.125 lr_finder.smooth_f=0.05: the grid as recorded (--grid-from)" in again.stdout
    resaved = json.loads((tmp_path / "again.json").read_text())["results"]["model.width=0.125 lr_finder.smooth_f=0.05"]
    assert resaved["grid"] == saved["grid"]
    first, second = saved["rules"]["steepest"], resaved["rules"]["steepest"]
    assert [test["seed"] for test in second["tests"]] == [0, 1]  # two range tests (lr_finder.seed), two pairs
    assert (second["tests"][0]["pair"], second["tests"][0]["acc"]) == (first["pair"], first["acc"])  # as before
    assert second["acc"] == second["tests"][0]["acc"] + second["tests"][1]["acc"]  # the regret counts both tests
    assert len(resaved["other_test_curves"]) == 1 and resaved["other_test_curves"][0] != resaved["curve"]
