"""hparams_search=optuna with its trials as SLURM jobs (`hydra/launcher=slurm`) and its study on PostgreSQL: two
workers, as on two login nodes, share the study; one is lost (kill -9 of its process and of its SLURM job, as when
its machine goes down) while its trial trains; the same command again fails the lost trial and completes the
study. Needs both services (`make test-full` starts them); fails, not skips, when either does not answer."""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_search import REPO
from test_search_postgres import environment, search_command, start, study_trials
from test_slurm import LAUNCHER, require_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.postgres]

HEARTBEAT_S = 3  # a lost worker's trial is stale 6 s after its last beat
TIMEOUT_S = 400


def status(record: Path) -> str | None:
    try:
        return json.loads(record.read_text()).get("status")
    except (OSError, ValueError):
        return None


def first_trial_training(sweep: Path, worker: subprocess.Popen) -> Path:
    """The folder of `sweep`'s first trial once its SLURM job trains (its metrics.json says running)."""
    deadline = time.monotonic() + TIMEOUT_S
    while worker.poll() is None and time.monotonic() < deadline:
        training = [record.parent for record in sweep.glob("*/metrics.json") if status(record) == "running"]
        if training:
            return training[0]
        time.sleep(0.1)
    raise AssertionError(f"no trial of {sweep} started training; the worker's stderr: {worker.stderr.read()[-2000:]}")


def lose(worker: subprocess.Popen, sweep: Path) -> None:
    """kill -9 of the worker's process group and of its SLURM jobs: nothing of it is left to tell the study."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    for job in (sweep / ".submitit").glob("[0-9]*"):
        subprocess.run(["scancel", "--signal=KILL", "--full", job.name.split("_")[0]], capture_output=True, timeout=30)


def test_two_workers_share_a_study_through_slurm_and_a_lost_one_is_replaced_on_the_rerun(synthetic_root, tmp_path):
    require_cluster()
    study_name, env = f"t{uuid.uuid4().hex[:10]}", environment(tmp_path)
    commands = [
        search_command(tmp_path / name, study_name, synthetic_root, "hydra.sweeper.n_trials=4", "logger=none",
                       f"hydra.sweeper.heartbeat_s={HEARTBEAT_S}", *LAUNCHER)
        for name in ("lost", "kept")
    ]  # fmt: skip
    lost = subprocess.Popen(commands[0], cwd=REPO, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    kept = start(commands[1], env)
    try:
        killed_trial = first_trial_training(tmp_path / "lost", lost)
    finally:
        lose(lost, tmp_path / "lost")
    kept_out, kept_err = kept.communicate(timeout=TIMEOUT_S)
    assert kept.returncode == 0, kept_err[-3000:]
    time.sleep(2 * HEARTBEAT_S + 1)  # the lost trial's heartbeat is stale by now

    rerun = subprocess.run(commands[0], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = study_trials(study_name)
    done = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(done) == 4  # n_trials reached, over both workers and the rerun
    assert len({tuple(sorted(trial.params.items())) for trial in done}) == 4  # distinct draws
    folders = {trial.user_attrs["job_dir"] for trial in done}
    assert any("/kept/" in f for f in folders) and any("/lost/" in f for f in folders), folders  # both trained
    killed = [trial for trial in trials if trial.user_attrs.get("job_dir") == str(killed_trial)]
    assert [trial.state for trial in killed] == [TrialState.FAIL]
    # its record: ended by SLURM's SIGTERM to the job's step, or, when the KILL came first, marked by the rerun
    record = json.loads((killed_trial / "metrics.json").read_text())
    said = record.get("stopped") or record.get("error") or ""
    assert (record["status"], said.split(" ")[0]) in {("interrupted", "stopped"), ("failed", "killed:")}, record
    logs = rerun.stdout + rerun.stderr + kept_out + kept_err
    assert "was killed (no heartbeat): failed; a new trial takes its place" in logs
