"""The keys docs/reliability.md lists as free to change on a resume are accepted in a changed value; any other
change is refused. The list is read from the page itself."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from resnet9 import __version__
from resnet9.core.errors import UsageError
from resnet9.training.engine.state import CHECKPOINT_FORMAT, read_resumable

REPO = Path(__file__).resolve().parents[2]
# A value a run may have trained with, and another a resume may give, for each key the page lists. `device` and
# `data.num_workers` change only under conditions of their own (tests/training/test_state.py).
CHANGES = {
    "progress": ("true", "false"),
    "log_every": ("10", "1"),
    "logger": ("wandb", "none"),
    "data.root": ("/a", "/b"),
    "warmup": ("auto", "true"),
    "augment.whole_epoch": ("auto", "true"),
    "cuda_graph": ("false", "true"),
}


def documented_free_keys() -> list[str]:
    text = " ".join((REPO / "docs" / "reliability.md").read_text().split())
    listed = re.search(r"Free to change on a resume: (.*?)`device` as long as", text)
    assert listed is not None, "docs/reliability.md no longer lists what a resume may change"
    return re.findall(r"`([^`]+)`", listed.group(1))


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A last.pt as a run of `overrides` leaves it, as far as the comparison of configs reads it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": __version__, "config": OmegaConf.to_container(cfg),
        "lr_min": 0.01, "lr_max": 0.1, "train_state": {"record": {"lr_source": "config"}}, "device_type": "cpu",
    }  # fmt: skip
    torch.save(checkpoint, tmp_path / "last.pt")
    return tmp_path / "last.pt"


def test_the_page_lists_the_keys_checked_here():
    assert documented_free_keys() == list(CHANGES)


@pytest.mark.parametrize("key", list(CHANGES))
def test_each_documented_free_key_may_change_on_a_resume(key, tmp_path):
    before, after = CHANGES[key]
    path = saved_run(tmp_path, f"{key}={before}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        now = compose(config_name="config", overrides=[f"{key}={after}"])
    assert read_resumable(path, now, torch.device("cpu"))["lr_max"] == 0.1


def test_a_key_not_listed_may_not_change(tmp_path):
    path = saved_run(tmp_path, "eval_tta=false")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        now = compose(config_name="config", overrides=["eval_tta=true"])
    with pytest.raises(UsageError, match="eval_tta=False there, True now"):
        read_resumable(path, now, torch.device("cpu"))
