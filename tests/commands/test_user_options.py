"""A researcher's own options from a folder outside the package: the shipped example (examples/), run as a user
would from a fresh working folder on the installed package, and the trust line between a config a person runs
and a checkpoint read from disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

EXAMPLE = REPO / "examples"
SMALL = ["data.limit_train=400", "data.limit_test=200", "data.num_workers=0", "batch_size=40", "epochs=2",
         "lr_finder.num_iter=30", "progress=false", "logger=none"]  # fmt: skip
USER_OPTIONS = ["model=tiny", "optimizer=rmsprop", "scheduler=step", "data=cats_dogs", "augment=color",
                "callbacks=grad_norm"]  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """A fresh working folder holding a copy of examples/ (its configs and mylab.py), nothing else."""
    folder = tmp_path_factory.mktemp("lab")
    shutil.copytree(EXAMPLE, folder, dirs_exist_ok=True)
    return folder


def run_in(folder: Path, module: str, *args: str, pythonpath: bool = True) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` from `folder`, as a user types it there (PYTHONPATH=. for their module)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RESNET9_CACHE": str(folder / "cache")}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = "."
    return subprocess.run([sys.executable, "-m", module, *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def user_run(lab, synthetic_root) -> Path:
    """One run with a user option in every group (model, optimizer, schedule, data, augment, callbacks)."""
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", *USER_OPTIONS, f"data.root={synthetic_root}",
                    *SMALL, "scheduler.drop_every=1", "lr_finder.end_lr=1", "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return lab / "run"


def test_a_user_option_in_every_group_trains_and_is_recorded(user_run):
    record = json.loads((user_run / "metrics.json").read_text())
    config = record["config"]
    assert record["status"] == "completed" and record["classes"] == ["cat", "dog"]
    assert config["model"]["_target_"] == "mylab.TinyNet" and config["model"]["num_classes"] == 2
    assert config["optimizer"]["_target_"] == "torch.optim.RMSprop"
    assert config["scheduler"]["_target_"] == "mylab.step_decay"
    assert config["data"]["_target_"] == "mylab.cats_dogs" and record["n_test"] == 40  # 20 cats, 20 dogs of 200
    assert config["augment"]["train"][-1]["_target_"] == "albumentations.ColorJitter"
    assert record["lr_source"].startswith("range test")  # the derived LRs reach a user's schedule too
    lrs = record["lr_per_step"]  # step_decay: LRMAX for one epoch (2 steps of 40 of the 80 images), then halved
    assert lrs == pytest.approx([record["lr_max"]] * 2 + [max(record["lr_max"] / 2, record["lr_min"])] * 2)
    for row in record["epochs"]:  # both callbacks' values, in the order the option names them
        assert row["grad_norm"] > 0 and row["weight_norm"] > 0
    shown = [line for line in (user_run / "train.log").read_text().splitlines() if " callbacks: " in line]
    assert len(shown) == len(record["epochs"]) and " callbacks: grad_norm " in shown[0] and " weight_norm " in shown[0]
    assert record["final_test_acc"] >= 0.5  # two well-separated synthetic classes


def test_a_user_model_evaluates_with_its_config_folder_and_is_refused_without(lab, user_run):
    checkpoint = str(user_run / "last.pt")
    allowed = run_in(lab, "resnet9.evaluate", "--config-dir", "conf", f"checkpoint={checkpoint}",
                     "hydra.run.dir=eval", "device=cpu")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    results = json.loads((lab / "eval" / "evaluation.json").read_text())
    assert set(results["per_class_acc"]) == {"cat", "dog"} and (lab / "eval" / "gradcam.png").is_file()

    refused = run_in(lab, "resnet9.evaluate", f"checkpoint={checkpoint}", "hydra.run.dir=eval2")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "model._target_=mylab.TinyNet is named neither by resnet9 nor by your config folder" in line
    assert line.endswith("pass the --config-dir that names its model (the one it trained with))")
    assert not (lab / "eval2" / "evaluation.json").exists()

    predicted = run_in(lab, "resnet9.predict", "--config-dir", "conf", "--checkpoint", checkpoint, "--json",
                       str(REPO / "docs" / "gradcam_width025.png"))  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    (row,) = json.loads(predicted.stdout)
    assert set(row["probabilities"]) == {"cat", "dog"} and sum(row["probabilities"].values()) == pytest.approx(1)


def test_a_crafted_checkpoint_naming_another_callable_builds_nothing(lab, user_run, tmp_path):
    """A checkpoint is a file from disk: even with the user's own config folder, a target that folder does not
    name is never imported or called (here one that would leave a marker file)."""
    (lab / "planted.py").write_text(
        "from pathlib import Path\nPath('marker').write_text('imported')\n"
        "def build(**kwargs):\n    Path('marker').write_text('called')\n"
    )
    checkpoint = torch.load(user_run / "last.pt", weights_only=True)
    checkpoint["config"]["model"] = {"_target_": "planted.build", "num_classes": 2}
    torch.save(checkpoint, tmp_path / "crafted.pt")
    for command in (["resnet9.evaluate", "--config-dir", "conf", f"checkpoint={tmp_path}/crafted.pt",
                     "hydra.run.dir=eval3"],
                    ["resnet9.predict", "--config-dir", "conf", "--checkpoint", f"{tmp_path}/crafted.pt",
                     str(REPO / "docs" / "gradcam_width025.png")]):  # fmt: skip
        result = run_in(lab, *command)
        assert result.returncode == 2
        assert "planted.build is named neither by resnet9 nor by your config folder" in result.stderr
        assert not (lab / "marker").exists()


BAD_TARGETS = [
    (
        "unknown argument",
        "+model.depth=3",
        "error: model.depth is not an argument of mylab.TinyNet(num_classes, width, in_channels); remove it or check "
        "the spelling",
    ),
    (
        "missing module",
        "model._target_=mymodels.TinyNet",
        "error: model._target_=mymodels.TinyNet cannot be imported (no module 'mymodels'); put its folder on "
        "PYTHONPATH (e.g. PYTHONPATH=. when it sits where you run) or check the spelling",
    ),
    (
        "missing argument",
        "~model.num_classes",
        "error: model.num_classes is missing: mylab.TinyNet(num_classes, width, in_channels) requires it; add "
        "model.num_classes=<value>",
    ),
    ("missing class", "model._target_=mylab.HugeNet", "error: model._target_=mylab.HugeNet: mylab has no 'HugeNet'"),
    (
        "a name resnet9 0.2 gave",
        "scheduler._target_=resnet9.training.schedule.one_cycle",
        "error: scheduler._target_=resnet9.training.schedule.one_cycle was renamed "
        "resnet9.training.engine.schedule.one_cycle (resnet9 moved its modules); write that",
    ),
]


@pytest.mark.parametrize("case, override, line", BAD_TARGETS, ids=[case for case, _, _ in BAD_TARGETS])
def test_a_bad_target_or_argument_is_one_line_before_any_work(lab, case, override, line):
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", "model=tiny", override, "data.root=nowhere",
                    f"hydra.run.dir=bad-{case.replace(' ', '-')}")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line] or result.stderr.strip().startswith(line), result.stderr
    assert not (lab / "nowhere").exists()  # no download was tried: nothing ran before the check


def test_a_sweep_over_a_built_in_and_a_user_option_reports_two_settings(lab, synthetic_root):
    result = run_in(lab, "resnet9.train", "--multirun", "--config-dir", "conf", "model=resnet9,tiny",
                    "model.width=0.125", f"data.root={synthetic_root}", *SMALL, "optimizer.lr=0.1",
                    "scheduler.lr_min=0.01", "hydra.sweep.dir=sweep")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((lab / "sweep" / "summary.json").read_text())
    rows = summary["rows"] if isinstance(summary, dict) else summary
    assert sorted(row["setting"] for row in rows) == ["model=resnet9", "model=tiny"]
