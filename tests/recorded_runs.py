"""Numbers recorded before the TrainState redesign (commit 4e807b6), and how to compare today's runs with them.

tests/recorded/runs_before_the_state_redesign.json holds, for three fixed-seed CPU runs on the generated
stand-in data (conftest.write_synthetic_cifar), every epoch's metrics and every step's LR as the code of that
commit wrote them. Float sums depend on the CPU's vector instructions and the number of threads, so runs are
compared bit for bit only where both match the machine the numbers were recorded on.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

RECORDED = json.loads((Path(__file__).parent / "recorded" / "runs_before_the_state_redesign.json").read_text())
SAME_MACHINE_KIND = (
    torch.backends.cpu.get_cpu_capability() == RECORDED["cpu_capability"]
    and torch.get_num_threads() == RECORDED["threads"]
)
same_machine_kind = pytest.mark.skipif(
    not SAME_MACHINE_KIND, reason="recorded on another kind of CPU (vector instructions or threads differ)"
)


def recorded_command(root: Path, name: str, out: Path) -> list[str]:
    """The command that produced the recorded run `name`, writing into `out` this time."""
    args = [f"data.root={root}", *RECORDED["common"], *RECORDED["runs"][name]["overrides"], f"hydra.run.dir={out}"]
    return [sys.executable, "-m", "resnet9.train", *args]


def assert_as_recorded(run: dict, name: str) -> None:
    """Every epoch's numbers and every step's LR equal those recorded before the redesign."""
    recorded = RECORDED["runs"][name]
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "ema")
    assert [{key: row[key] for key in keys} for row in run["epochs"]] == recorded["epochs"]
    assert run["lr_per_step"] == recorded["lr_per_step"]
    assert (run["lr_min"], run["lr_max"]) == (recorded["lr_min"], recorded["lr_max"])
