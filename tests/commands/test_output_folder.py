"""An output folder that cannot be written: one line and exit 2, before any work, and nothing lost mid-run."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_train import small_run

QUICK = ("logger=none", "optimizer.lr=0.1", "scheduler.lr_min=0.01")


def test_a_folder_below_a_file_is_refused_for_runs_and_sweeps(run_cli, cifar_root, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go")
    run = run_cli("resnet9.train", *small_run(cifar_root, *QUICK), f"hydra.run.dir={blocker}/run")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: cannot write the output folder {blocker}/run (Not a directory); choose a writable one, "
        f"e.g. hydra.run.dir=/tmp/resnet9"
    ]
    sweep = run_cli("resnet9.train", "--multirun", *small_run(cifar_root, *QUICK), "seed=0,1",
                    f"hydra.sweep.dir={blocker}/sweep")  # fmt: skip
    assert sweep.returncode == 2
    assert sweep.stderr.strip().splitlines() == [
        f"error: cannot write the output folder {blocker}/sweep (Not a directory); choose a writable one, "
        f"e.g. hydra.sweep.dir=/tmp/resnet9"
    ]
    assert blocker.read_text() == "a file where the output folder should go"


def read_only_command(folder, command: list[str]) -> tuple[list[str], str]:
    """`command` run where `folder` is read-only, and the reason the OS will give: by permissions for a normal
    user; for root (whom permissions do not stop) inside a private mount namespace that remounts it read-only."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command, "Permission denied"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("running as root without user namespaces: no way to make a folder read-only here")
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" "{folder}" && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, "sh", *command], "Read-only file system"


def test_a_read_only_folder_is_refused_in_one_line(cifar_root, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    command = [sys.executable, "-m", "resnet9.train", *small_run(cifar_root, *QUICK), f"hydra.run.dir={folder}/run"]
    env = {**os.environ, "RESNET9_CACHE": str(tmp_path / "cache")}
    try:
        command, reason = read_only_command(folder, command)
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write the output folder {folder}/run ({reason}); choose a writable one, "
        f"e.g. hydra.run.dir=/tmp/resnet9"
    ]
    assert list(folder.iterdir()) == []


def limit_file_size(max_bytes: int):
    """For a child process: files may grow to `max_bytes`, then writes fail as on a full disk (EFBIG; the
    signal that would kill the process is ignored, as a full disk sends none)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def run_in(out: Path, cifar_root: Path, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "resnet9.train", *small_run(cifar_root, *QUICK), f"hydra.run.dir={out}"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, **popen)


@pytest.mark.parametrize(
    ("name", "start"),
    [("last.pt", "error: {out}/last.pt is not a file"), ("metrics.json", "error: cannot write {out}/metrics.json")],
)
def test_a_folder_where_a_runs_file_goes_is_refused_before_training(cifar_root, tmp_path, name, start):
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    result = run_in(out, cifar_root)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(start.format(out=out)), line
    if name == "last.pt":  # the job's short record says how it ended
        assert line.endswith("remove it or run elsewhere")
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "failed" and metrics["ended_in"] == "setup" and metrics["epochs"] == []


def test_a_checkpoint_write_failing_mid_run_ends_in_one_line_naming_it(cifar_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    result = run_in(out, cifar_root, preexec_fn=limit_file_size(150_000))  # last.pt needs ~900 kB
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (  # torch's serializer fails in its own words (RuntimeError): told as a write failure
        f"error: cannot write {out}/last.pt (the write failed: is the disk full?); free space or fix the folder's "
        f"permissions, then rerun the same folder to resume"
    )
    metrics = json.loads((out / "metrics.json").read_text())  # a small file still fits: it ends in a status
    assert metrics["status"] == "failed" and metrics["error"] == line.removeprefix("error: ")
    assert (out / "model_summary.txt").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert not list(out.glob(".last.pt-*"))  # no temporary file left behind


@pytest.mark.slow  # (make test-full; make test stays under 10 minutes on 2 cores)
def test_a_rerun_refused_before_training_leaves_the_folder_as_its_run_wrote_it(cifar_root, tmp_path):
    """Hydra rewrites .hydra/ before the job starts; a refused resume puts the earlier run's files back."""
    out = tmp_path / "run"
    assert run_in(out, cifar_root).returncode == 0
    written = sorted([*(out / ".hydra").glob("*.yaml"), out / "metrics.json", out / "last.pt"])
    before = {path: path.read_bytes() for path in written}
    command = [sys.executable, "-m", "resnet9.train", *small_run(cifar_root, *QUICK), "label_smoothing=0.1",
               f"hydra.run.dir={out}"]  # fmt: skip
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and f"error: cannot resume from {out}/last.pt" in refused.stderr
    assert len(before) == 5 and {path: path.read_bytes() for path in written} == before
