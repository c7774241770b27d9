"""hydra/sweeper=compose_once (hparams_search=grid, the default): each job's config composed once, not twice,
and every job still checked before the first one runs."""

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]

# The project's own config and sweeper, with a task that records what each job was given instead of training;
# every composition Hydra does is counted.
APP = """
import json, sys
from pathlib import Path
import hydra
from resnet9.training.engine import distributed
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.hydra_config import HydraConfig

LOG = sys.argv.pop(1)
compose = ConfigLoaderImpl.load_sweep_config
def counted(self, *args, **kwargs):
    with open(LOG, "a") as file:
        file.write("composed\\n")
    return compose(self, *args, **kwargs)
ConfigLoaderImpl.load_sweep_config = counted

@hydra.main(version_base="1.3", config_path="pkg://resnet9.conf", config_name="config")
def task(cfg):
    with open(LOG, "a") as file:
        file.write(json.dumps({"num": HydraConfig.get().job.num, "seed": cfg.seed, "lr": cfg.optimizer.lr}) + "\\n")

distributed.register_resolvers()  # what resnet9.train's main does first (the log file's name)
task()
"""


def sweep(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, int, list[dict]]:
    """Run APP as a --multirun; the number of compositions and each job's record."""
    app, log = tmp_path / "app.py", tmp_path / "log.txt"
    app.write_text(APP)
    command = [sys.executable, str(app), str(log), "--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = log.read_text().splitlines() if log.exists() else []
    jobs = [json.loads(line) for line in lines if line != "composed"]
    return result, lines.count("composed"), jobs


def sweeper_of(*overrides: str) -> str:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra.sweeper._target_


def test_grid_sweeps_use_the_compose_once_sweeper_and_optuna_replaces_it():
    assert sweeper_of().endswith("compose_once.ComposeOnceSweeper")
    assert sweeper_of("hparams_search=optuna") == "hydra_plugins.resnet9_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper_of("~hparams_search").endswith("basic_sweeper.BasicSweeper")


def test_each_job_is_composed_once_and_gets_its_own_values(tmp_path):
    result, compositions, jobs = sweep(tmp_path, "seed=0,1,2", "optimizer.lr=0.1,0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted((job["seed"], job["lr"]) for job in jobs) == [(s, lr) for s in (0, 1, 2) for lr in (0.1, 0.2)]
    assert [job["num"] for job in jobs] == list(range(6))  # the launcher still numbers the configs it is given
    assert compositions == 6  # Hydra's basic sweeper: 12 (a check of the batch, then one per launch)


def test_a_job_that_cannot_be_composed_stops_the_sweep_before_any_job_runs(tmp_path):
    result, _, jobs = sweep(tmp_path, "seed=0,1", "optimizer=sgd,no_such_optimizer")
    assert result.returncode != 0 and "no_such_optimizer" in result.stderr
    assert jobs == []


def test_a_bad_value_in_any_job_ends_the_sweep_in_one_line_before_the_first_job_trains(run_cli, tmp_path):
    """The real command: job 2's value passes Hydra's composition but not the schema; job 0 and 1 never start."""
    result = run_cli("resnet9.train", "--multirun", "optimizer.lr=0.1,0.2,abc", "data.root=nowhere",
                     f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: job 2 (optimizer.lr=abc data.root=nowhere): optimizer.lr must be a number > 0 or 'auto', got 'abc'; "
        "e.g. optimizer.lr=0.4"
    ]
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))  # no job started


def test_a_launcher_in_other_processes_composes_there(tmp_path):
    """The joblib launcher sends the loader to its workers: Hydra's own loader travels, and each job composes."""
    result, compositions, jobs = sweep(tmp_path, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(job["seed"] for job in jobs) == [0, 1]
    assert compositions == 2  # the check, in this process (the workers compose their jobs uncounted)
