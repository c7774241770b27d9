"""The benchmark script runs and prints its table (numbers are checked by reading them, never in tests)."""

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnet9.data import datasets

REPO = Path(__file__).resolve().parents[2]


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
    for row in rows.values():  # the profiled epoch's operators, by class: convolutions are there, and a share
        classes = {key: float(row[key]) for key in header if key.endswith("ms/step") and key != "augment ms/step"}
        assert classes["conv forward ms/step"] > 0 and classes["conv backward ms/step"] > 0
        assert classes["conv forward ms/step"] < sum(classes.values())


@pytest.mark.slow
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

    # Files measured on different bases print together, the base saying where they differ
    other = json.loads((tmp_path / "again.json").read_text())
    other["args"]["test_images"] = 300
    (tmp_path / "other.json").write_text(json.dumps(other))
    printed = subprocess.run(
        [sys.executable, "benchmarks/lr_regret.py", "--from", str(tmp_path / "regret.json"),
         str(tmp_path / "other.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "400 training / 200 or 300 test images, 2 epochs, 1 seeds" in printed.stdout
    assert "| model.width=0.125 " in printed.stdout and "| model.width=0.125 lr_finder.smooth_f=0.05 " in printed.stdout


def test_reencoding_damages_the_pixels_by_the_quality_asked_and_keeps_the_layout(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import reencode

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
    psnr = {quality: reencode.damage(smooth, reencode.reencoded(smooth, quality))[0] for quality in (50, 95)}
    assert 10 < psnr[50] < psnr[95] < math.inf  # lossy, and less so at a higher quality
    labels = np.arange(4) % 10
    reencode.write_batch(tmp_path / "batch", "b", smooth, labels)
    with open(tmp_path / "batch", "rb") as file:  # as the loader reads it: its safe unpickler, bytes keys
        batch = datasets._BatchUnpickler(file, encoding="bytes").load()
    images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows of R, G, B planes
    assert np.array_equal(images, smooth) and batch[b"labels"] == labels.tolist()


@pytest.mark.slow
def test_the_evidence_runner_keeps_each_parts_summary_and_builds_the_table_from_the_files(cifar_root, tmp_path):
    """Issue 14's GPU script, dry-run small on the CPU: the q50 copy is made and trained on, the options sweep runs,
    and the README's table is printed from the summary files alone."""
    out, work = tmp_path / "results", tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "benchmarks/evidence.py", "--data-root", str(cifar_root), "--out", str(out), "--work",
         str(work), "--parts", "q50", "options", "--seeds", "1", "--option-seeds", "1", "--options",
         "eval_tta=false,true", "--", "data.limit_train=400", "data.limit_test=200", "batch_size=100",
         "model.width=0.125", "epochs=1", "scheduler.peak_epoch=0.5", "optimizer.lr=0.1", "scheduler.lr_min=0.01",
         "device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PSNR" in result.stdout and datasets.load(work / "data-q50", download=False).train_images.shape[0] == 50_000
    assert sorted(path.name for path in out.iterdir()) == ["options", "q50"]  # the data and sweeps stay in work
    for part, settings in (("q50", 1), ("options", 2)):
        assert json.loads((out / part / "meta.json").read_text())["exit_status"] == 0
        assert len(json.loads((out / part / "summary.json").read_text())) == settings
    table = subprocess.run([sys.executable, "benchmarks/evidence.py", "--table", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith(("| q50", "| options"))]
    assert len(rows) == 3 and "| eval_tta=True | 1 |" in table and "(all jobs)" in table


@pytest.mark.slow
def test_the_device_check_runs_its_rules_and_graph_stages_end_to_end_on_a_cpu(cifar_root, tmp_path):
    """The lent GPU's call is rare and short: its script's plumbing (sweeps, verdict, summary, what comes back
    from the machine: at most 8 files, none deeper than 2 folders) is rehearsed here."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "DATA_ROOT": str(cifar_root), "PYTHON": sys.executable,
           "WHEELS": str(tmp_path / "no-wheels"), "RESNET9_CACHE": str(tmp_path / "cache"),
           "STAGES": "rules graph", "BUDGET_S": "400", "WANDB_MODE": "offline"}  # fmt: skip
    small = ["device=cpu", "model.width=0.0625", "data.limit_train=512", "batch_size=128", "data.limit_test=256",
             "epochs=2", "lr_finder.num_iter=30", "data.num_workers=0"]  # fmt: skip
    result = subprocess.run(["bash", "benchmarks/device_check.sh", "5", *small], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=420)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert {path.name for path in out.iterdir()} == {"log.txt", "summary.txt", "verdict.txt", "runs.tgz"}
    verdict = (out / "verdict.txt").read_text()
    assert "steepest: " in verdict and "lowest: " in verdict and "verdict: steepest - lowest = " in verdict
    lost = "must not stay the default" in verdict
    summary = (out / "summary.txt").read_text()
    runs = [line for line in summary.splitlines() if line.startswith(("| rules", "| graph"))]
    assert len(runs) == 9 + 3 * lost, summary  # 2 rules x 3 seeds, 3 captured seeds (+ the candidate's 3)
    assert "| rules/0 (seed=0 lr_finder.rule=steepest) |" in summary
    assert "| graph/2 (seed=2 cuda_graph=True) |" in summary
    first = float(next(line for line in runs if line.startswith("| rules/0 ")).split("|")[11])
    assert 0 < first < 400  # the fresh process's first run: from the process's start to the end of job 0
    assert "== every complete run" in (out / "log.txt").read_text()
    with tarfile.open(out / "runs.tgz") as archive:
        names = set(archive.getnames())
    assert {"./rules/0/metrics.json", "./graph/2/metrics.json", "./rules/summary.md", "./rules.log"} <= names


@pytest.mark.parametrize(("steepest", "expected"), [(0.909, 0), (0.915, 0), (0.907, 3), (None, 2)])
def test_the_rule_verdict_keeps_the_default_unless_it_loses_more_than_the_margin(tmp_path, steepest, expected):
    """Rows made by the sweep report's own summary: lowest at 91.0 % over two seeds."""
    from resnet9.report import summarize

    jobs = {"lr_finder.rule=lowest": [{"status": "completed", "final_test_acc": a} for a in (0.909, 0.911)]}
    if steepest is not None:
        jobs["lr_finder.rule=steepest"] = [{"status": "completed", "final_test_acc": steepest}] * 2
    (tmp_path / "summary.json").write_text(json.dumps(summarize(jobs)))
    result = subprocess.run([sys.executable, "benchmarks/rule_verdict.py", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == expected, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("verdict: ")


def test_pipeline_cost_benchmark_prints_its_table(cifar_root):
    """The three paths, one row each, with a positive rate; the device engine's is the unit of the last column."""
    result = subprocess.run(
        [sys.executable, "benchmarks/pipeline_cost.py", "--images", "200", "--batch-size", "50", "--rounds", "1",
         "--data-root", str(cifar_root)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| (")]  # fmt: skip
    assert [row[0][:3] for row in rows] == ["(1)", "(2)", "(3)"]
    assert all(float(row[2].replace(",", "")) > 0 for row in rows) and rows[0][4] == "1.0"
