"""What the console commands answer without training: Hydra's questions from the configs alone (torch never
imported), and `--multirun` under torchrun refused before any job trains."""

import json
import os
import subprocess
import sys

from conftest import REPO

# The console command `resnet9-train` (resnet9.cli.train) asked four questions in one process; each answer as
# printed, and whether anything imported torch.
ASK = """
import contextlib, io, json, sys
from resnet9 import cli

answers = {}
for argv in (["--info"], ["--cfg", "job"], ["-sc", "query=bash"], ["--help"]):
    sys.argv, printed = ["resnet9-train", *argv], io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            cli.train()
        except SystemExit as answered:
            answers[argv[0]] = [answered.code, printed.getvalue()]
print(json.dumps({"answers": answers, "torch": "torch" in sys.modules}))
"""


def test_info_cfg_completion_and_help_are_answered_from_the_configs_without_importing_torch():
    env = {**os.environ, "COMP_LINE": "resnet9-train epo"}  # what bash gives a completion query: a key begun
    result = subprocess.run([sys.executable, "-c", ASK], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    answers = found["answers"]
    assert sorted(answers) == ["--cfg", "--help", "--info", "-sc"] and all(code == 0 for code, _ in answers.values())
    assert "Config search path" in answers["--info"][1] and "Defaults Tree" in answers["--info"][1]
    assert "epochs: 24" in answers["--cfg"][1] and "lr_finder:" in answers["--cfg"][1]
    assert answers["-sc"][1].split() == ["epochs="]
    assert answers["--help"][1].startswith("resnet9-train: train the mission's ResNet-9")
    assert found["torch"] is False


def test_the_help_shows_the_main_keys_values_from_the_configs_and_the_overrides():
    """conf/config.yaml's help names its main keys only (`${shown:epochs,...}`): the values come from the composed
    config, so a changed default or an experiment's changes show without the help restating them."""
    ask = [sys.executable, "-m", "resnet9.train"]
    plain = subprocess.run([*ask, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    quick = subprocess.run([*ask, "experiment=quick_cpu", "seed=3", "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert plain.returncode == quick.returncode == 0, plain.stderr + quick.stderr
    for shown in ("epochs=24", "batch_size=512", "optimizer.lr=auto", "data.limit_train=null", "compile=false"):
        assert f" {shown} " in f" {plain.stdout.replace(chr(10), ' ')} ", shown
    for shown in ("epochs=4", "seed=3", "optimizer.lr=0.2", "data.limit_train=5000"):  # the experiment's, the override
        assert f" {shown} " in f" {quick.stdout.replace(chr(10), ' ')} ", shown
    template = (REPO / "conf" / "config.yaml").read_text().split("Main keys", 1)[1].split("Every key", 1)[0]
    assert "=" not in template.replace("${shown:", "")  # no value written in the help itself


# `python -m resnet9.train` as the first process of a two-process torchrun job would start it (torchrun's
# environment), without joining a process group: the refusal comes before anything would need one.
UNDER_TORCHRUN = """
import sys
from resnet9.training.engine import distributed
distributed.init = distributed.world  # (no process group to join: the other process never starts)
import resnet9.train as trainer
sys.argv = ["resnet9.train", *sys.argv[1:]]
trainer.main()
"""


def test_multirun_under_torchrun_is_refused_before_any_job_trains(synthetic_root, tmp_path):
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "RESNET9_CACHE": str(tmp_path / "cache")}
    sweep = tmp_path / "sweep"
    overrides = ["--multirun", "seed=0", f"data.root={synthetic_root}", "data.limit_train=400", "logger=none",
                 "model.width=0.0625", "batch_size=40", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    result = subprocess.run([sys.executable, "-c", UNDER_TORCHRUN, *overrides], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    refusal = "--multirun under torchrun is not supported; start one torchrun per job instead"
    assert result.returncode != 0 and refusal in result.stderr
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert (record["status"], record["error"], record["ended_in"]) == ("failed", refusal, "setup")
    assert not (sweep / "0" / "last.pt").exists() and record["epochs"] == []
