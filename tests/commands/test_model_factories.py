"""Any model, checked: a factory taking **kwargs (torchvision's, timm's) is checked when it is built, timm's
models build offline from the example's YAML, and a key that one option of a sweep lacks is one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO
from hydra import compose, initialize_config_dir

from resnet9.training.engine import build
from resnet9.training.engine.loop import StepSettings

TINY = ["data.limit_train=400", "data.limit_test=200", "data.num_workers=0", "batch_size=40", "epochs=2",
        "optimizer.lr=0.1", "scheduler.lr_min=0.01", "logger=none", "progress=false", "device=cpu"]  # fmt: skip


def run_here(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ".", "RESNET9_CACHE": str(folder / "cache")}
    return subprocess.run([sys.executable, "-m", "resnet9.train", "--config-dir", "conf", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_misspelt_key_of_a_kwargs_factory_is_one_line_naming_target_and_key(synthetic_root, tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tv18.yaml").write_text(
        "_target_: torchvision.models.resnet18\nnum_clases: ${data.num_classes}\n"  # resnet18(**kwargs) -> ResNet
    )
    result = run_here(tmp_path, "model=tv18", f"data.root={synthetic_root}", *TINY, "hydra.run.dir=run")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "error: model.num_clases is not an argument of torchvision.models.resnet18 (nor of what it passes its keys "
        "on to); remove it or check the spelling"
    )


def test_timms_model_builds_offline_from_the_examples_yaml():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        searchpath = f"hydra.searchpath=[file://{REPO / 'examples' / 'conf'}]"  # as --config-dir examples/conf
        cfg = compose(config_name="config", overrides=[searchpath, "model=timm_resnet18", "data=cifar100"])
    assert cfg.model._target_ == "timm.create_model" and cfg.model.pretrained is False
    model = build.model(cfg.model, StepSettings(device=torch.device("cpu")))
    assert type(model).__module__.startswith("timm.") and model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_a_key_one_option_of_a_sweep_lacks_is_one_line_naming_that_option(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tv18.yaml").write_text(
        "_target_: torchvision.models.resnet18\nnum_classes: ${data.num_classes}\n"
    )
    result = run_here(tmp_path, "--multirun", "model=resnet9,tv18", "model.width=0.5", "hydra.sweep.dir=sweep")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "model.width is not a setting of model torchvision.models.resnet18;" in result.stderr
