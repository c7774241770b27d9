"""End-to-end: the real `python -m resnet9.train` in subprocesses, on small subsets at small width."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_CIFAR, requires_real_data
from hydra import compose, initialize_config_dir
from PIL import Image
from wandb_records import read_run

from resnet9.core import jobcache
from resnet9.models.resnet9 import ResNet9
from resnet9.train import train

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def small_run(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}", "data.limit_train=400", "data.limit_test=200", "data.num_workers=0",
        "epochs=2", "batch_size=40", "model.width=0.125",
        "lr_finder.num_iter=30", "log_every=1", "progress=false", *extra,
    ]  # fmt: skip


def wandb_run_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))


def test_train_writes_every_result_and_a_readable_offline_wandb_run(run_cli, cifar_root, tmp_path):
    """debug=fast_dev_run: every code path (a range test, EMA, flip TTA, W&B offline, the figures) in one small
    run of 2 epochs, whose LR peak follows its length; under umask 022."""
    out = tmp_path / "run"
    result = run_cli("resnet9.train", "debug=fast_dev_run", f"data.root={cifar_root}", "lr_finder.cache=true",
                     "progress=false", f"hydra.run.dir={out}", umask=0o022)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the range test says what it does, its bar obeys progress=false, and the library's own line is gone
    log = (out / "train.log").read_text()
    assert "LR range test: 30 training steps, LR 1e-05 to 10, to derive LRMIN/LRMAX (no cached result" in log
    assert "LR range test:" not in result.stderr and "See the graph" not in result.stdout + result.stderr
    assert " callbacks: " not in log  # every key of the trainer's own epoch row is known to the console line
    # files and folders as the umask says (readable by the team), not private to their owner
    cache_entry = next((tmp_path / "cache" / "lr_find").iterdir())
    assert {oct(path.stat().st_mode & 0o777) for path in (out / "metrics.json", out / "last.pt")} == {"0o644"}
    assert oct(cache_entry.stat().st_mode & 0o777) == "0o755"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    for row in metrics["epochs"]:
        assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s"} <= row.keys()
        assert 0 <= row["test_acc"] <= 1 and row["train_loss"] > 0
        assert row["images_per_s"] == pytest.approx(400 / row["train_time_s"])  # 10 steps of 40 images
    # the code the run trained with: this checkout's commit, and whether it had uncommitted changes
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert metrics["code"]["commit"] == head.strip() and isinstance(metrics["code"]["dirty"], bool)
    assert metrics["final_test_acc"] == metrics["epochs"][-1]["test_acc"]
    assert metrics["best_test_acc"] == max(r["test_acc"] for r in metrics["epochs"])
    assert 0 < metrics["lr_min"] < metrics["lr_max"] and metrics["lr_source"] == "range test"
    assert metrics["steps_per_epoch"] == 10 and len(metrics["lr_per_step"]) == 20
    assert metrics["lr_per_step"][0] == pytest.approx(metrics["lr_min"])
    assert int(np.argmax(metrics["lr_per_step"])) == 3  # the peak: 5/24 of the run's 20 steps, rounded
    assert metrics["lr_per_step"][3] == pytest.approx(metrics["lr_max"])
    assert metrics["lr_per_step"][-1] == pytest.approx(metrics["lr_min"])
    assert (metrics["n_train"], metrics["n_test"]) == (400, 200)

    assert "Total params: 26,350" in (out / "model_summary.txt").read_text()
    assert [row["ema"] for row in metrics["epochs"]] == [False, True]  # ema.start_epoch=2
    assert metrics["config"]["eval_tta"] is True
    for png in ("curves.png", "lr_finder.png"):
        assert Image.open(out / png).size[0] > 500
    finder = json.loads((out / "lr_finder.json").read_text())
    assert (finder["lr_min"], finder["lr_max"]) == (metrics["lr_min"], metrics["lr_max"])

    checkpoint = torch.load(out / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 2
    model = ResNet9(width=0.0625)
    model.load_state_dict(checkpoint["model"])  # loads into the configured architecture

    (run_file,) = wandb_run_files(out)
    run = read_run(run_file)
    assert run["run"].project == "resnet9" and run["run"].job_type == "train"
    config = run["config"]
    assert {"model", "optimizer", "scheduler", "epochs", "batch_size"} <= config.keys()
    # the derived LRs are in the config (W&B groups and filters by config), Hydra's _target_ keys are not
    assert (config["lr_min"], config["lr_max"], config["lr_source"]) == (
        metrics["lr_min"], metrics["lr_max"], "range test"
    )  # fmt: skip
    assert "_target_" not in config["optimizer"] and config["optimizer"]["momentum"] == 0.9
    assert config["code"] == metrics["code"]
    epoch_rows = [row for row in run["history"] if "epoch/test_acc" in row]
    assert [row["epoch/epoch"] for row in epoch_rows] == [1, 2]
    assert [row["epoch/test_acc"] for row in epoch_rows] == [r["test_acc"] for r in metrics["epochs"]]
    lr_rows = [row["train/lr"] for row in run["history"] if "train/lr" in row]
    assert lr_rows == pytest.approx(metrics["lr_per_step"])  # one LR per step
    assert all("train/loss" in row for row in run["history"] if "train/lr" in row)  # log_every=1
    assert run["summary"]["best_test_acc"] == metrics["best_test_acc"]
    assert run["summary"]["lr_max"] == metrics["lr_max"]
    assert {"lr_finder/_type", "lr_finder/curve/_type"} <= set(run["summary"])  # the figure and the curve's table
    # epoch metrics against the epoch; the summary keeps the highest test accuracy as well as the last one
    assert ("epoch/*", "epoch/epoch") in {(m.glob_name, m.step_metric) for m in run["metrics"]}
    test_acc = [m.summary for m in run["metrics"] if m.name == "epoch/test_acc"]
    assert any(s.max for s in test_acc) and any(s.last for s in test_acc)
    assert "stats" not in run["types"]  # system metrics (logger.system_metrics=auto) are for GPU runs only
    assert "exit" in run["types"]  # the run was finished


def test_a_sweep_gives_one_wandb_group_per_setting_short_names_and_one_range_test(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "resnet9.train", "--multirun", *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5"),
        "lr_finder.scale=0.5,1.0", "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep / str(n) for n in range(4)]  # scale 0.5 with seeds 0, 1; then scale 1.0 with seeds 0, 1
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert all(m["status"] == "completed" for m in metrics)
    assert metrics[0]["lr_max"] == pytest.approx(0.5 * metrics[2]["lr_max"])  # swept relative to the derived LR
    cached = [json.loads((job / "lr_finder.json").read_text())["cached"] for job in jobs]
    assert cached == [False, True, True, True]  # the range test ran once; the other jobs reused it
    assert all((job / "lr_finder.png").is_file() for job in jobs)
    described = json.loads((sweep / "sweep.json").read_text())
    assert described["id"] == f"sweep-{tmp_path.name}_sweep" and described["varies"] == ["lr_finder.scale", "seed"]
    assert described["command"][-2:] == ["lr_finder.scale=0.5,1.0", "seed=0,1"]  # what a rerun must repeat

    records = [read_run(wandb_run_files(job)[0]) for job in jobs]
    assert all("exit" in record["types"] for record in records)  # closed beside the next job, then joined
    runs = [record["run"] for record in records]
    sweep_id = f"sweep-{tmp_path.name}_sweep"
    assert [run.display_name for run in runs] == [
        "lr_finder.scale=0.5 seed=0", "lr_finder.scale=0.5 seed=1", "lr_finder.scale=1.0 seed=0",
        "lr_finder.scale=1.0 seed=1",
    ]  # fmt: skip
    # seeds of a setting share a group, so W&B's grouped view averages seeds, never the settings compared
    assert [run.run_group for run in runs] == [f"{sweep_id}: lr_finder.scale=0.5"] * 2 + [
        f"{sweep_id}: lr_finder.scale=1.0"
    ] * 2
    assert all(list(run.tags) == [sweep_id] and run.job_type == "train" for run in runs)
    assert len({run.run_id for run in runs}) == 4

    # The sweep report: files in the sweep folder, and a W&B run of its own, job type "report"
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(row["setting"], row["n"]) for row in rows] == [("lr_finder.scale=0.5", 2), ("lr_finder.scale=1.0", 2)]
    assert Image.open(sweep / "test_accuracy.png").size[0] > 500
    (report_file,) = sorted((sweep / "report").glob("wandb/offline-run-*/run-*.wandb"))
    report = read_run(report_file)
    assert (report["run"].display_name, report["run"].job_type, report["run"].run_group) == (
        "report", "report", sweep_id
    )  # fmt: skip
    assert {"sweep/summary/_type", "sweep/test_accuracy/_type"} <= set(report["summary"])
    # the README's one sync line reaches every run of the sweep: the four jobs and the report
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 5
    again = run_cli("resnet9.report", str(sweep))  # a later report, e.g. with other options, is logged again
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list(sweep.glob("report/wandb/offline-run-*"))) == 2


def test_failed_training_is_recorded_and_the_wandb_run_still_finishes(run_cli, cifar_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "resnet9.train", *small_run(cifar_root, "optimizer.lr=1e12", "scheduler.lr_min=1e11"), f"hydra.run.dir={out}"
    )
    assert result.returncode != 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("training diverged: the loss became")
    assert result.stderr.strip().splitlines() == [f"error: {metrics['error']}"]  # one line, with the fix
    run = read_run(wandb_run_files(out)[0])
    assert "exit" in run["types"]


@pytest.mark.parametrize("engine", ["device", "albumentations"])
def test_same_seed_same_result(synthetic_root, tmp_path, engine):
    """Deterministic given the seed, on either engine (albumentations in two DataLoader workers)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*small_run(synthetic_root, "logger=none", "data.num_workers=2"), "device=cpu",
                       "optimizer.lr=0.05", "scheduler.lr_min=0.005", f"augment.engine={engine}"],
        )  # fmt: skip
    results = []
    jobcache.shared.clear()  # run "a" reads the data from disk; run "b", in the same process, reuses it
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        train(cfg, tmp_path / name)
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert jobcache.shared.hits["data"] == 1
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[row[k] for k in keys] for row in results[0]["epochs"]] == [
        [row[k] for k in keys] for row in results[1]["epochs"]
    ]
    cfg.seed = 1
    (tmp_path / "c").mkdir()
    train(cfg, tmp_path / "c")
    other = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert other["epochs"][0]["train_loss"] != results[0]["epochs"][0]["train_loss"]


@pytest.mark.slow
@requires_real_data
def test_one_epoch_on_5000_real_images_beats_chance(run_cli, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "resnet9.train", f"data.root={SHARED_CIFAR}", "data.limit_train=5000", "epochs=1", "scheduler.peak_epoch=0.5",
        "batch_size=128", "model.width=0.125", "optimizer.lr=0.4", "scheduler.lr_min=0.04", "logger=none",
        "progress=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 10_000  # the whole real test set
    assert metrics["final_test_acc"] > 0.2  # twice chance (0.10); 29.75% measured here (Page's peak 0.4)


def wandb_login_exists() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())


@pytest.mark.skipif(wandb_login_exists(), reason="a W&B login exists here: online mode would really start")
def test_online_mode_without_login_fails_in_one_line_and_never_prompts(cifar_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "resnet9.train", *small_run(cifar_root, "optimizer.lr=0.1", "scheduler.lr_min=0.01"),
         "logger.mode=online", f"hydra.run.dir={out}"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: logger.mode=online but W&B has no login here; run `wandb login`")
    assert line.endswith("or use logger.mode=offline (upload later with wandb sync) or logger=none")
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    assert not (out / "model_summary.txt").exists()  # it failed before any work: no data load, no model
