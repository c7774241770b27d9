"""On a real SLURM cluster (one node on localhost: `bash tests/services/slurm.sh start`, or `make test-full`):
sweeps under `hydra/launcher=slurm`, a time limit, `scontrol requeue`, `scancel --signal=USR2`, `scancel`, and
`srun -n2`. The tests fail, not skip, when the cluster is not up.

Every SLURM job costs ~15 s of start-up and a requeue ~35 s more (SLURM holds a requeued job until its launch
credential expires: 30 s here), so the sweeps the selected tests need all start together, when the first test
asks for its own, and each test then reads its sweep's outcome. Jobs train with one thread each (results are
reproducible for a given number of threads) on the `synthetic_root` stand-in data, and an interrupted job must end
bit for bit like an uninterrupted job of the same setting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO
from test_resume import assert_same_run

pytestmark = pytest.mark.slurm

# A few seconds of training: `scontrol requeue`, `scancel` and the USR2 come after epoch 1, well before the end.
SHORT = ["data.limit_train=1000", "epochs=4"]
# Long enough (~40 s on one core) that SLURM's check of the time limits, every 30 s, comes during training.
LONG = ["data.limit_train=4000", "epochs=12"]
LAUNCHER = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
]  # fmt: skip
SIGNAL_DELAY_S = 90  # the time-limit test's: a 2-minute limit then warns (USR2) at once, and leaves 60 s or more
TIMEOUT_S = 400  # any one sweep, requeues included


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def require_cluster() -> None:
    try:
        states = slurm("sinfo", "-h", "-o", "%T")
        slurm("sacct", "-n", "-X", "-S", "now")
    except (OSError, subprocess.SubprocessError) as err:
        pytest.fail(f"the SLURM test cluster does not answer ({err}); start it: bash tests/services/slurm.sh start")
    if not re.fullmatch(r"((idle|mixed|allocated|completing)\n?)+", states):  # (a node not responding has a *)
        pytest.fail(f"the SLURM test cluster has no node ready ({states}); bash tests/services/slurm.sh start")


class Sweep:
    """`python -m resnet9.train --multirun hydra/launcher=slurm ...` into its own folder, in the background; a
    thread keeps the first record of the `watched` job with each status (a requeued job's record is soon its
    rerun's)."""

    started: list[Sweep] = []

    def __init__(self, folder: Path, root: Path, *overrides: str, watched: int = 0) -> None:
        self.dir, self.folder, self.seen, self.watched = folder / "sweep", folder, {}, watched
        Sweep.started.append(self)
        common = [f"data.root={root}", "data.limit_test=200", "data.num_workers=0", "batch_size=40",
                  "model.width=0.125", "scheduler.peak_epoch=1", "optimizer.lr=0.05", "scheduler.lr_min=0.005",
                  "logger=none", "progress=false", "device=cpu"]  # fmt: skip
        command = [sys.executable, "-m", "resnet9.train", "--multirun", *LAUNCHER, *common, *overrides,
                   f"hydra.sweep.dir={self.dir}"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "RESNET9_CACHE": str(folder / "cache")}  # fmt: skip
        with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while self.process.poll() is None:
            record = self.record()
            self.seen.setdefault(record.get("status"), record)
            time.sleep(0.05)

    def record(self, job: int | None = None) -> dict:
        try:
            return json.loads((self.dir / str(self.watched if job is None else job) / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                stderr = (self.folder / "stderr").read_text()[-2000:]
                raise AssertionError(f"{what}: never happened; the sweep's stderr: {stderr}")
            time.sleep(0.1)

    def job_id(self) -> str:
        """The SLURM id of the sweep's only job, from submitit's folder for it (an array's would be <id>_<job>)."""

        def folders() -> list[Path]:
            return [path for path in (self.dir / ".submitit").glob("[0-9]*") if path.is_dir()]

        self.wait_until("the job's submission", lambda: bool(folders()))
        (folder,) = folders()
        return folder.name

    def stop(self) -> None:
        """A sweep a failed test left running: end it and cancel its jobs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for folder in (self.dir / ".submitit").glob("[0-9]*"):
            subprocess.run(["scancel", folder.name], capture_output=True, timeout=30)

    def finish(self) -> dict:
        """How the sweep ended: its exit status, output, folder, job 0's first record of each status and what job
        0 wrote on stderr under SLURM, all its runs together."""
        self.process.wait(timeout=TIMEOUT_S)
        job_log = "".join(path.read_text() for path in sorted((self.dir / ".submitit").glob("*/*_0_log.err")))
        return {"returncode": self.process.returncode, "stdout": (self.folder / "stdout").read_text(),
                "stderr": (self.folder / "stderr").read_text(), "sweep": self.dir, "seen": self.seen,
                "job_log": job_log}  # fmt: skip


def interrupted_after_epoch_1(sweep: Sweep, *interrupt: str) -> dict:
    """`interrupt` (a command; the SLURM job's id appended) once the watched job has recorded epoch 1."""
    job = sweep.job_id()
    sweep.wait_until("epoch 1", lambda: len(sweep.record().get("epochs", [])) >= 1)
    slurm(*interrupt, job)
    return sweep.finish()


def at_a_time_limit(sweep: Sweep) -> dict:
    """The job's time limit shortened to 2 minutes once it trains (SLURM warns it, SIGUSR2, at its next check of the
    limits, within 30 s), and lengthened again once it is back in the queue, so that its rerun is not warned."""
    job = sweep.job_id()
    sweep.wait_until("training", lambda: sweep.record().get("status") == "running")
    slurm("scontrol", "update", f"JobId={job}", "TimeLimit=2")
    sweep.wait_until("the requeue at the time limit", lambda: "requeued" in sweep.seen)
    slurm("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    return sweep.finish()


def scenario(name: str, folder: Path, root: Path) -> dict:
    """One sweep of the module, start to end."""
    if name == "short":  # uninterrupted: the report's sweep, and the reference for the short interruptions
        return Sweep(folder, root, *SHORT, "seed=0,1", "logger=wandb").finish()
    if name == "long":  # uninterrupted: the reference for the time limit
        return Sweep(folder, root, *LONG, "seed=0").finish()
    if name == "time_limit":
        return at_a_time_limit(Sweep(folder, root, *LONG, "seed=0", f"hydra.launcher.signal_delay_s={SIGNAL_DELAY_S}"))
    if name == "sweep_interrupted":
        return sweep_interrupted(Sweep(folder, root, *SHORT, "seed=0"))
    if name == "packed_usr2":  # both seeds in one SLURM task, warned while the second trains
        packed = Sweep(folder, root, *SHORT, "seed=0,1", "logger=wandb", "hydra.launcher.jobs_per_task=2", watched=1)
        return interrupted_after_epoch_1(packed, "scancel", "--signal=USR2")
    if name == "usr2_declined":  # no requeue left: submitit's requeuer declines
        return interrupted_after_epoch_1(Sweep(folder, root, *SHORT, "seed=0", "hydra.launcher.max_num_timeout=0"),
                                         "scancel", "--signal=USR2")  # fmt: skip
    interrupt = {"scontrol_requeue": ["scontrol", "requeue"], "usr2": ["scancel", "--signal=USR2"],
                 "scancel": ["scancel"]}[name]  # fmt: skip
    return interrupted_after_epoch_1(Sweep(folder, root, *SHORT, "seed=0"), *interrupt)


def sweep_interrupted(sweep: Sweep) -> dict:
    """Ctrl-C to the sweep's own process while its job trains on the cluster; the job goes on to its end."""
    sweep.job_id()
    sweep.wait_until("epoch 1", lambda: len(sweep.record().get("epochs", [])) >= 1)
    sweep.process.send_signal(signal.SIGINT)
    ended = sweep.finish()
    deadline = time.monotonic() + TIMEOUT_S
    while sweep.record().get("status") != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
    return ended


NEEDS = {  # the sweeps each test reads
    "test_a_sweep_runs_as_slurm_jobs_and_the_report_reads_it": ("short",),
    "test_a_job_at_its_time_limit_is_warned_requeued_and_ends_as_if_uninterrupted": ("long", "time_limit"),
    "test_scontrol_requeue_resumes_exactly": ("short", "scontrol_requeue"),
    "test_scancel_signal_usr2_resumes_exactly": ("short", "usr2"),
    "test_jobs_packed_in_one_task_share_its_process_and_resume_exactly_after_a_warning": ("short", "packed_usr2"),
    "test_scancel_ends_the_sweep_in_one_line_with_a_nonzero_status": ("scancel",),
    "test_a_job_out_of_requeues_is_interrupted_and_says_how_to_resume": ("usr2_declined",),
    "test_ctrl_c_to_the_sweep_leaves_its_slurm_jobs_running_and_says_so": ("sweep_interrupted",),
}


@pytest.fixture(scope="module")
def sweeps(request, synthetic_root, tmp_path_factory) -> dict[str, Future]:
    """The sweeps the selected tests read, started together, each to be awaited by the tests that read it; at the
    end, any still running is killed and its jobs cancelled."""
    require_cluster()
    selected = {item.name for item in request.session.items}
    names = sorted({name for test, needs in NEEDS.items() if test in selected for name in needs})
    pool = ThreadPoolExecutor(max_workers=len(names))
    futures = {name: pool.submit(scenario, name, tmp_path_factory.mktemp(name), synthetic_root) for name in names}
    yield futures
    for sweep in Sweep.started:
        sweep.stop()
    pool.shutdown(wait=False, cancel_futures=True)


def outcome(sweeps: dict[str, Future], name: str) -> dict:
    return sweeps[name].result(timeout=TIMEOUT_S)


def metrics(result: dict, job: int = 0) -> dict:
    return json.loads((result["sweep"] / str(job) / "metrics.json").read_text())


def test_a_sweep_runs_as_slurm_jobs_and_the_report_reads_it(sweeps):
    short = outcome(sweeps, "short")
    assert short["returncode"] == 0, short["stderr"][-3000:]
    assert [metrics(short, job)["status"] for job in (0, 1)] == ["completed", "completed"]
    summary = json.loads((short["sweep"] / "summary.json").read_text())
    assert [(row["jobs"], row["n"], row["failed"]) for row in summary] == [(2, 2, 0)]  # seeds: one setting
    assert "Sweep summary" in short["stdout"]
    report = subprocess.run([sys.executable, "-m", "resnet9.report", str(short["sweep"]), "--tracker", "none"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert report.returncode == 0 and "| (all jobs) |" in report.stdout, report.stderr
    for job in (0, 1):  # W&B offline, in each job's folder, for `wandb sync` later
        assert list((short["sweep"] / str(job) / "wandb").glob("offline-run-*/run-*.wandb")), job


def assert_requeued_and_resumed_exactly(result: dict, signal: int, reference: dict, job: int = 0) -> None:
    assert result["returncode"] == 0, result["stderr"][-3000:]
    assert "failed" not in result["seen"] and "interrupted" not in result["seen"]
    stopped = result["seen"]["requeued"]  # waiting to resume
    step = int(re.fullmatch(rf"stopped by signal {signal} after step (\d+)", stopped["stopped"]).group(1))
    resumed = metrics(result, job)
    assert resumed["resumed_from_step"] == step + 1  # from last.pt, at the step where it stopped
    assert_same_run(resumed, reference)  # ...and ends bit for bit like the uninterrupted job
    said = r"(SLURM requeues|saved for submitit to requeue) the job, which (then )?resumes from"
    assert re.search(said, result["job_log"])  # the job's own line
    assert "resume the sweep by rerunning" not in result["job_log"] + result["stderr"]  # nothing to do by hand


def test_a_job_at_its_time_limit_is_warned_requeued_and_ends_as_if_uninterrupted(sweeps):
    long = outcome(sweeps, "long")
    assert long["returncode"] == 0, long["stderr"][-3000:]
    limited = outcome(sweeps, "time_limit")
    assert_requeued_and_resumed_exactly(limited, 12, metrics(long))  # SIGUSR2, from SLURM
    assert re.search(r"Caught signal SIGUSR2 on \S+: this job is timed-out", limited["job_log"])  # submitit took it
    assert "DUE TO JOB REQUEUE" in limited["job_log"]  # ...and requeued the job (max_num_timeout > 0)


def test_scontrol_requeue_resumes_exactly(sweeps):
    reference = metrics(outcome(sweeps, "short"))
    assert_requeued_and_resumed_exactly(outcome(sweeps, "scontrol_requeue"), 15, reference)  # SLURM's SIGTERM


def test_scancel_signal_usr2_resumes_exactly(sweeps):
    reference = metrics(outcome(sweeps, "short"))
    assert_requeued_and_resumed_exactly(outcome(sweeps, "usr2"), 12, reference)


def test_jobs_packed_in_one_task_share_its_process_and_resume_exactly_after_a_warning(sweeps):
    """hydra.launcher.jobs_per_task=2: seeds 0 and 1 in one SLURM task, one after another in its process; a SIGUSR2
    while seed 1 trains requeues the task: seed 0, complete, ends at once, seed 1 resumes where it stopped."""
    short, packed = outcome(sweeps, "short"), outcome(sweeps, "packed_usr2")
    tasks = [path.name for path in (packed["sweep"] / ".submitit").glob("[0-9]*")]
    assert len(tasks) == 1, tasks  # one SLURM job (a pack of two: one task) ran both
    assert_requeued_and_resumed_exactly(packed, 12, metrics(short, 1), job=1)
    assert_same_run(metrics(packed, 0), metrics(short, 0))  # the first job: as in a sweep of one job per task
    assert metrics(packed, 0)["status"] == "completed" and "resumed_from_step" not in metrics(packed, 0)
    for job in (0, 1):  # each job its own folder, record and W&B run
        assert list((packed["sweep"] / str(job) / "wandb").glob("offline-run-*")), job
    assert "Sweep summary" in packed["stdout"]


def test_scancel_ends_the_sweep_in_one_line_with_a_nonzero_status(sweeps):
    cancelled = outcome(sweeps, "scancel")
    assert cancelled["returncode"] == 128 + 15
    assert "Traceback" not in cancelled["stderr"], cancelled["stderr"][-3000:]
    (line,) = [line for line in cancelled["stderr"].splitlines() if line.startswith("error:")]
    assert re.match(r"error: the cluster's job \d+ \(log in .*\) ended without a result \(CANCELLED", line), line
    assert f"resume the sweep by rerunning the same command with hydra.sweep.dir={cancelled['sweep']}" in line
    record = metrics(cancelled)
    assert record["status"] == "interrupted" and record["stopped"].startswith("stopped by signal 15 after step")
    assert "job 0 (no overrides): interrupted: stopped by signal 15 after step" in cancelled["stdout"]  # summary
    assert "resume the sweep by rerunning" in cancelled["job_log"]  # the job's own line says so too


def test_a_job_out_of_requeues_is_interrupted_and_says_how_to_resume(sweeps):
    """hydra.launcher.max_num_timeout=0 (submitit's own default): the warning's requeue is declined."""
    declined = outcome(sweeps, "usr2_declined")
    assert declined["returncode"] == 1 and "Traceback" not in declined["stderr"]
    (line,) = [line for line in declined["stderr"].splitlines() if line.startswith("error:")]
    assert "ended without a result (FAILED)" in line and "resume the sweep by rerunning" in line
    record = metrics(declined)
    assert record["status"] == "interrupted"
    assert re.fullmatch(
        r"stopped by signal 12 after step \d+; not requeued: .*timed-out too many times.*", record["stopped"]
    )
    assert "not requeued (" in declined["job_log"] and "resume the sweep by rerunning" in declined["job_log"]


def test_ctrl_c_to_the_sweep_leaves_its_slurm_jobs_running_and_says_so(sweeps):
    stopped = outcome(sweeps, "sweep_interrupted")
    assert stopped["returncode"] == 128 + signal.SIGINT
    (line,) = [line for line in stopped["stderr"].splitlines() if not line.startswith("[")]
    assert line.startswith("stopped by signal 2; the sweep's SLURM jobs go on without it (squeue; scancel stops them)")
    assert line.endswith(f"resume the sweep by rerunning the same command with hydra.sweep.dir={stopped['sweep']}")
    assert metrics(stopped)["status"] == "completed"  # the job went on, and ended


def test_srun_two_tasks_without_torchrun_is_refused_in_one_line(synthetic_root, tmp_path):
    require_cluster()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["srun", "-n2", "--oversubscribe", sys.executable, "-m", "resnet9.train",
                             f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: srun started 2 tasks of this command without torchrun")
    assert not (tmp_path / "run").exists()


def test_srun_torchrun_trains_one_data_parallel_job_into_one_folder(synthetic_root, tmp_path):
    """docs/cluster.md's data-parallel command, one srun task starting torchrun's two processes (gloo on CPU here):
    one job, in one folder, written by rank 0."""
    require_cluster()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "RESNET9_CACHE": str(tmp_path / "cache")}  # fmt: skip
    out = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(["srun", "-n1", "-c2", str(torchrun), "--standalone", "--nproc_per_node=2", "-m",
                             "resnet9.train", "device=cpu", f"data.root={synthetic_root}", "data.limit_train=640",
                             "data.limit_test=200", "data.num_workers=0", "batch_size=64", "model.width=0.125",
                             "epochs=2", "scheduler.peak_epoch=1", "optimizer.lr=0.1", "scheduler.lr_min=0.01",
                             "progress=false", f"hydra.run.dir={out}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "completed" and record["processes"] == 2
    assert record["steps_per_epoch"] == 10  # the global batch of 64, split over the two processes
    assert len(list(out.glob("wandb/offline-run-*"))) == 1 and (out / "train.rank1.log").is_file()
