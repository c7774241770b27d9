"""A researcher's everyday parts, from a folder of their own (a copy of examples/): any torch schedule by name,
stepped per batch or per epoch, with LRMIN reaching the key the YAML points at it; callbacks that end a run
early and keep the best checkpoint, resumed exactly."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_user_options import run_in

TINY = ["model.width=0.0625", "data.limit_train=400", "data.limit_test=200", "data.num_workers=0", "batch_size=40",
        "optimizer.lr=0.1", "logger=none", "progress=false", "device=cpu"]  # fmt: skip
STEPS = 10  # 400 images at batch 40


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "examples", folder, dirs_exist_ok=True)
    return folder


def trained(lab: Path, root: Path, name: str, *args: str) -> dict:
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", f"data.root={root}", *TINY, *args,
                    f"hydra.run.dir={name}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((lab / name / "metrics.json").read_text())


def per_epoch(record: dict) -> list[float]:
    lrs = record["lr_per_step"]
    assert all(lr == lrs[i - i % STEPS] for i, lr in enumerate(lrs))  # constant within each epoch
    return lrs[::STEPS]


def test_a_stock_steplr_from_a_user_folder_steps_after_every_epoch(lab, synthetic_root):
    record = trained(lab, synthetic_root, "steplr", "scheduler=torch_step", "scheduler.step_size=1", "epochs=3")
    assert record["config"]["scheduler"]["_target_"] == "torch.optim.lr_scheduler.StepLR"
    assert per_epoch(record) == pytest.approx([0.1, 0.05, 0.025]) and record["lr_min"] is None
    assert record["status"] == "completed" and len(record["lr_per_step"]) == 3 * STEPS


def test_cosine_annealing_takes_lrmin_as_its_floor(lab, synthetic_root):
    record = trained(lab, synthetic_root, "cosine", "scheduler=cosine_annealing", "scheduler.lr_min=0.01",
                     "epochs=3")  # fmt: skip
    lr_min, lr_max = record["lr_min"], record["lr_max"]
    expected = [lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert (lr_min, lr_max) == (0.01, 0.1) and per_epoch(record) == pytest.approx(expected)


@pytest.mark.slow  # (make test-full; make test stays under 10 minutes on 2 cores)
def test_reduce_on_plateau_steps_on_a_row_key_and_a_wrong_key_is_one_line(lab, synthetic_root):
    # `epoch` never falls, so in mode min every epoch after the first is one without improvement
    record = trained(lab, synthetic_root, "plateau", "scheduler=plateau", "scheduler.monitor=epoch",
                     "scheduler.patience=0", "scheduler.factor=0.5", "scheduler.lr_min=0.03", "epochs=4")  # fmt: skip
    assert per_epoch(record) == pytest.approx([0.1, 0.1, 0.05, 0.03])  # halved, then held at LRMIN (min_lr)
    wrong = run_in(lab, "resnet9.train", "--config-dir", "conf", f"data.root={synthetic_root}", *TINY,
                   "scheduler=plateau", "scheduler.monitor=test_los", "scheduler.lr_min=0.01", "epochs=2",
                   "hydra.run.dir=plateau_wrong")  # fmt: skip
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr[-2000:]
    assert "scheduler.monitor=test_los is not a number of the epoch's row; choose one of" in wrong.stderr


EARLY = ["callbacks=early_stop", "callbacks.early_stopping.monitor=epoch", "callbacks.early_stopping.mode=min",
         "callbacks.early_stopping.patience=2", "+callbacks.best.monitor=epoch", "+callbacks.best.mode=min",
         "+callbacks.best._target_=resnet9.training.recording.callbacks.BestCheckpoint", "epochs=6"]  # fmt: skip


@pytest.fixture(scope="module")
def stopped_early(lab, synthetic_root) -> dict:
    """`epoch` never improves in mode min: best at epoch 1, two epochs without improvement, stopped after 3."""
    return trained(lab, synthetic_root, "early", *EARLY)


def test_early_stopping_ends_the_run_completed_at_the_right_epoch(lab, stopped_early):
    assert stopped_early["status"] == "completed" and len(stopped_early["epochs"]) == 3
    assert stopped_early["stopped_early"]["epoch"] == 3
    assert "epoch did not improve by more than 0.005 for 2 epochs" in stopped_early["stopped_early"]["reason"]
    assert stopped_early["final_test_acc"] == stopped_early["epochs"][-1]["test_acc"]
    assert all("grad_norm" in row for row in stopped_early["epochs"])  # the user's own callback beside it
    assert "stopped early after epoch 3: epoch did not improve" in (lab / "early" / "train.log").read_text()


def test_a_rerun_of_an_early_stopped_folder_trains_no_further(lab, synthetic_root, stopped_early):
    again = trained(lab, synthetic_root, "early", *EARLY)
    assert len(again["epochs"]) == 3 and again["epochs"] == stopped_early["epochs"]


def test_best_pt_is_the_best_epochs_checkpoint_and_evaluate_takes_it(lab, stopped_early):
    result = run_in(lab, "resnet9.evaluate", "--config-dir", "conf", "checkpoint=early/best.pt", "device=cpu",
                    "hydra.run.dir=eval_best")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((lab / "eval_best" / "evaluation.json").read_text())
    assert evaluation["epoch"] == 1 and evaluation["test_acc"] == stopped_early["epochs"][0]["test_acc"]


def test_a_killed_run_resumes_with_its_callbacks_state_and_stops_where_the_uninterrupted_one_did(
    lab, synthetic_root, stopped_early
):
    """Without the early stopper's state (best at epoch 1) the resumed run would stop after epoch 4, not 3."""
    command = [sys.executable, "-m", "resnet9.train", "--config-dir", "conf", f"data.root={synthetic_root}", *TINY,
               *EARLY, "hydra.run.dir=killed"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ".", "RESNET9_CACHE": str(lab / "cache")}
    process = subprocess.Popen(command, cwd=lab, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_first_epoch(process, lab / "killed")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    resumed = trained(lab, synthetic_root, "killed", *EARLY)
    assert resumed["resumed_from_epoch"] == 2 and resumed["stopped_early"] == stopped_early["stopped_early"]
    keys = ("epoch", "train_loss", "test_loss", "test_acc", "lr", "grad_norm")
    assert [[row[k] for k in keys] for row in resumed["epochs"]] == [
        [row[k] for k in keys] for row in stopped_early["epochs"]
    ]


def _wait_for_first_epoch(process: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "metrics.json").exists() and json.loads((out / "metrics.json").read_text())["epochs"]:
            return  # epoch 2 has begun (metrics.json is written after last.pt, atomically)
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.02)
    raise AssertionError("the run never finished its first epoch")
