"""Sweeps through Hydra's existing launchers: joblib (parallel, local) and submitit (SLURM; tested locally)."""

import json
import os

import pytest
from test_train import small_run


def sweep_results(sweep) -> list[dict]:
    return [json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")]


@pytest.mark.slow
def test_submitit_local_runs_both_jobs_of_a_sweep(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "resnet9.train", "--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
        *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5", "logger=none", "optimizer.lr=0.1",
                   "scheduler.lr_min=0.01"),
        "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["status"] for m in sweep_results(sweep)] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir()  # submitit's own job records: the same path a SLURM sweep takes
    assert json.loads((sweep / "summary.json").read_text())[0]["jobs"] == 2


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_and_matches_the_basic_launcher_at_equal_threads(run_cli, cifar_root, tmp_path):
    common = [*small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5", "logger=none", "optimizer.lr=0.1",
                         "scheduler.lr_min=0.01"), "seed=0,1"]  # fmt: skip
    # Results are reproducible for a given number of threads (it sets the order of float sums); pin it, since
    # joblib would otherwise give each parallel job a share of the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        parallel = run_cli("resnet9.train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common,
                           f"hydra.sweep.dir={tmp_path}/joblib")  # fmt: skip
        serial = run_cli("resnet9.train", "--multirun", *common, f"hydra.sweep.dir={tmp_path}/basic")
    finally:
        del os.environ["OMP_NUM_THREADS"]
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert serial.returncode == 0, serial.stderr[-3000:]
    joblib_runs, basic_runs = sweep_results(tmp_path / "joblib"), sweep_results(tmp_path / "basic")
    assert [m["status"] for m in joblib_runs] == ["completed", "completed"]
    accuracies = [[[row["test_acc"] for row in m["epochs"]] for m in runs] for runs in (joblib_runs, basic_runs)]
    assert accuracies[0] == accuracies[1]


def test_the_trainers_functions_pickle_by_value_as_submitit_and_joblib_send_them():
    """Launchers in other processes pickle resnet9.train's functions by value (it runs as __main__); cloudpickle
    then takes along every loaded submodule of a module the function uses whose name is also an attribute the
    function reads (`torch.classes` for `.classes`, `torch.distributed` for `.distributed`), and some of those
    cannot be pickled."""
    import runpy

    import cloudpickle
    from conftest import REPO

    trainer = runpy.run_path(str(REPO / "resnet9" / "train.py"), run_name="launched")
    for value in trainer.values():
        if callable(value) and getattr(value, "__module__", None) == "launched":
            cloudpickle.dumps(value)  # raises TypeError where a function cannot travel


def test_the_slurm_launcher_refuses_fewer_than_one_job_per_task_in_one_line(run_cli, cifar_root, tmp_path):
    """hydra.launcher.jobs_per_task (conf/hydra/launcher/slurm.yaml) is checked before anything is submitted (the
    packed sweeps themselves run on the test cluster: tests/commands/test_slurm.py)."""
    result = run_cli("resnet9.train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.jobs_per_task=0",
                     f"data.root={cifar_root}", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: hydra.launcher.jobs_per_task=0: give 1 (one SLURM task per job) or more (that many jobs one after "
        "another in each task)"
    )
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing submitted
