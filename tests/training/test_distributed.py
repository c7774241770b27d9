"""Data-parallel training under torchrun (gloo on CPU): the ranks stay equal and split the global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from ddp_worker import GLOBAL_BATCH, LR, synthetic_images
from hydra import compose, initialize_config_dir
from test_resume import assert_same_run, metrics

from resnet9.core.errors import ConfigError
from resnet9.data import augment
from resnet9.models.resnet9 import ResNet9
from resnet9.training.config import schema
from resnet9.training.engine import distributed

WORKER = REPO / "tests" / "ddp_worker.py"


def torchrun_command(*args: str, cwd: Path, processes: int = 2) -> dict:
    """Popen arguments that launch `processes` CPU processes the way a user would, one thread each."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "RESNET9_CACHE": str(cwd / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    return {"args": command, "cwd": cwd, "env": env}


def torchrun(*args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(**torchrun_command(*args, cwd=cwd, processes=processes), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_two_ranks_hold_the_same_weights_after_a_step_and_split_the_global_batch(tmp_path):
    result = torchrun(str(WORKER), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    names = list(ranks[0]["after"])

    # Each rank began from its own random weights; after one step both hold identical ones, which moved.
    assert not torch.equal(ranks[0]["initial"][names[0]], ranks[1]["initial"][names[0]])
    for name in names:
        assert torch.equal(ranks[0]["after"][name], ranks[1]["after"][name]), name
    assert not torch.equal(ranks[0]["after"][names[0]], ranks[0]["initial"][names[0]])

    # Together the two slices are exactly the global batch one process would have drawn (same augmentations).
    images, labels = synthetic_images(4 * GLOBAL_BATCH)
    single = augment.DeviceLoader(images, labels, GLOBAL_BATCH, torch.device("cpu"), train=True, pad=4, flip=True,
                                  cutout=8, seed=0)  # fmt: skip
    whole_images, whole_labels = next(iter(single))
    assert torch.equal(torch.cat([ranks[0]["images"], ranks[1]["images"]]), whole_images)
    assert torch.equal(torch.cat([ranks[0]["labels"], ranks[1]["labels"]]), whole_labels)

    # The step is plain SGD on the mean of the two ranks' gradients, each from rank 0's starting weights
    # and its own slice (BatchNorm normalises per rank): recompute it in this process.
    gradients = []
    for rank in ranks:
        model = ResNet9(width=0.125)
        model.load_state_dict(ranks[0]["initial"], strict=False)  # BN buffers start at their defaults anyway
        F.cross_entropy(model(rank["images"]), rank["labels"]).backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    for name in names:
        expected = ranks[0]["initial"][name] - LR * (gradients[0][name] + gradients[1][name]) / 2
        torch.testing.assert_close(ranks[0]["after"][name], expected, rtol=1e-4, atol=1e-6)

    # Loss and accuracy are over the whole global batch, the same on both ranks.
    assert ranks[0]["loss"] == ranks[1]["loss"] and ranks[0]["accuracy"] == ranks[1]["accuracy"]
    # A rank that drifts (rank 1 nudged one weight) is caught, on every rank.
    assert ranks[0]["out_of_sync_detected"] and ranks[1]["out_of_sync_detected"]


def four_epochs(cifar_root: Path) -> list[str]:
    return ["-m", "resnet9.train", "device=cpu", f"data.root={cifar_root}", "data.limit_train=640",
            "data.limit_test=200", "batch_size=64", "model.width=0.125", "epochs=4", "scheduler.peak_epoch=1",
            "optimizer.lr=0.1", "scheduler.lr_min=0.01", "progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(cifar_root, tmp_path_factory) -> Path:
    """One torchrun job of two processes, run through, in the default output folder (W&B offline)."""
    cwd = tmp_path_factory.mktemp("torchrun")
    result = torchrun(*four_epochs(cifar_root), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(cwd.glob("outputs/*/*"))
    assert len(runs) == 1, runs  # both ranks resolved the same folder (rank 0's launch time)
    return runs[0]


def test_torchrun_trains_one_job_into_one_folder_written_by_rank_zero(straight_run):
    run = straight_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["processes"] == 2
    # batch_size is global: 640 images / 64 = 10 steps per epoch, whatever the number of processes
    assert metrics["steps_per_epoch"] == 10 and len(metrics["lr_per_step"]) == 40
    assert len(metrics["epochs"]) == 4 and 0 <= metrics["final_test_acc"] <= 1
    assert (run / "last.pt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert len(list(run.glob("wandb/offline-run-*"))) == 1  # one W&B run per job, from rank 0
    assert (run / "train.log").read_text().count("final test accuracy") == 1
    assert "INFO" not in (run / "train.rank1.log").read_text()  # rank 1 only warns


@pytest.mark.slow
def test_sigterm_to_torchrun_keeps_the_last_epoch_and_a_rerun_resumes_exactly(cifar_root, tmp_path, straight_run):
    train = [*four_epochs(cifar_root), "logger=none"]
    out = tmp_path / "run"
    process = subprocess.Popen(**torchrun_command(*train, f"hydra.run.dir={out}", cwd=tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ((out / "metrics.json").exists() and metrics(out)["epochs"]):  # rank 0 recorded epoch 1
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
    assert process.wait(timeout=120) != 0
    stopped = metrics(out)
    assert stopped["status"] == "interrupted" and 1 <= len(stopped["epochs"]) < 4, (
        stopped["status"],
        stopped.get("error"),
        process.stderr.read()[-3000:],
    )

    resumed = torchrun(*train, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(out)["resumed_from_epoch"] == len(stopped["epochs"]) + 1
    assert_same_run(metrics(out), metrics(straight_run))  # (W&B there, none here: the numbers are the same)


def test_the_global_batch_must_split_evenly_over_the_processes():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["batch_size=512"])
    with pytest.raises(ConfigError) as error:
        schema.validate(cfg, processes=3)
    assert str(error.value) == (
        "batch_size=512 (the global batch) does not split evenly over 3 torchrun processes; "
        "use a multiple of 3, e.g. batch_size=510"
    )


def test_device_loader_ranks_see_the_single_process_epoch_between_them():
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 100)

    def epochs(rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = augment.DeviceLoader(images, labels, 24, torch.device("cpu"), train=True, pad=4, flip=True,
                                      cutout=8, seed=3, rank=rank, world_size=world_size)  # fmt: skip
        return [batch for _ in range(2) for batch in loader]  # two epochs: permutations and draws carry on

    single, halves = epochs(0, 1), [epochs(0, 2), epochs(1, 2)]
    assert len(single) == len(halves[0]) == 2 * (100 // 24)
    for whole, first, second in zip(single, *halves, strict=True):
        assert first[0].shape[0] == second[0].shape[0] == 12
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])


def test_albumentations_loader_ranks_split_the_same_shuffled_batches():
    rng = np.random.default_rng(2)
    images, labels = rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8), np.arange(90)  # label = index
    spec = augment.Augmentation(engine="albumentations")

    def label_batches(rank: int, world_size: int) -> list[torch.Tensor]:
        loader = spec.train_loader(images, labels, 30, torch.device("cpu"), seed=5, rank=rank, world_size=world_size)
        return [batch_labels for _, batch_labels in loader]

    single, halves = label_batches(0, 1), [label_batches(0, 3), label_batches(1, 3), label_batches(2, 3)]
    assert len(single) == 3
    for whole, *parts in zip(single, *halves, strict=True):
        assert [len(part) for part in parts] == [10, 10, 10]
        assert torch.equal(torch.cat(parts), whole)


def test_srun_tasks_without_torchrun_are_refused_in_one_line_by_the_first_task(run_cli, tmp_path, monkeypatch):
    """`srun -n2 python -m resnet9.train` would train two whole copies into one folder: refused before any work,
    task 0 saying why and how (srun ... torchrun), the other task without a word."""
    slurm_step = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"}
    for key, value in slurm_step.items():
        monkeypatch.setenv(key, value)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    refused = run_cli("resnet9.train", f"hydra.run.dir={tmp_path / 'run'}")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: srun started 2 tasks of this command without torchrun: each would train the whole")
    assert "srun --ntasks-per-node=1 torchrun --nproc_per_node=<GPUs per node> -m resnet9.train" in line
    assert not (tmp_path / "run").exists()  # nothing written

    monkeypatch.setenv("SLURM_PROCID", "1")  # the other task: the same refusal, silently
    with pytest.raises(SystemExit) as ended:
        distributed.refuse_copies_without_torchrun()
    assert ended.value.code == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # each task with a torchrun of its own: still two copies
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(SystemExit):
        distributed.refuse_copies_without_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "8")  # one torchrun per node, joined into one world: fine
    distributed.refuse_copies_without_torchrun()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")  # sbatch -n2's batch script itself (SLURM_NTASKS=2, no step): one copy
    distributed.refuse_copies_without_torchrun()
