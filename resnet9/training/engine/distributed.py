"""Data-parallel training over the processes torchrun starts (DistributedDataParallel).

    torchrun --standalone --nproc_per_node=8 -m resnet9.train [overrides]

Each process trains a replica of the model on its own device; after every backward DDP averages the
gradients across processes (NCCL moves CUDA tensors, gloo moves CPU tensors), so the replicas stay equal.

What N processes mean for a run:
- `batch_size` is the *global* batch (512 by default, the mission's). Every process draws the same shuffled
  global batches and the same augmentation draws, and trains on its own batch_size/N slice of each. So the
  steps per epoch, the One Cycle schedule and the images of each step are the same for any N; only
  BatchNorm statistics are per process (over batch_size/N images), as in plain DDP.
- Rank 0 alone runs the LR range test (the others receive its LRs), evaluates, and writes: one output
  folder, metrics.json, checkpoints, figures, one W&B run. Training loss/accuracy are averaged over all ranks.
  The other ranks log only warnings, each to <job>.rank<N>.log in the same folder.
- All ranks use one output folder: `launch_time` (conf/config.yaml's run folder) gives them rank 0's clock.

Without torchrun (no WORLD_SIZE in the environment) all of this reduces to a single process, rank 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from resnet9.core.errors import USAGE_EXIT, exit_with
from resnet9.training.engine.loop import EpochSums

# Rank 0's range test (≈ 10 min at full width on a small CPU) and its evaluations keep the others waiting
# in a collective; torchrun ends the whole job if any process dies, so a long timeout never hides a crash.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job, as torchrun's environment says."""

    rank: int = 0
    local_rank: int = 0  # index of this process on its machine: which GPU it uses
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def refuse_copies_without_torchrun() -> None:
    """`srun -n2 python -m resnet9.train` starts two whole copies of the command, each training the job alone into
    one output folder (neither knows of the other): refuse it in one line, from SLURM's first task only (the
    others leave without a word), before anything is written. srun names its tasks in SLURM_STEP_NUM_TASKS
    (sbatch's batch script, one process, has SLURM_NTASKS but no step); torchrun's processes know their world
    (WORLD_SIZE), which must then take in every task of the step."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if not tasks.isdigit() or int(tasks) <= 1 or world().size >= int(tasks):
        return
    if os.environ.get("SLURM_PROCID", "0") != "0":
        sys.exit(USAGE_EXIT)
    alone = "without torchrun" if "WORLD_SIZE" not in os.environ else f"each in a torchrun world of {world().size}"
    exit_with(
        f"error: srun started {tasks} tasks of this command {alone}: each would train the whole job alone, into one "
        f"output folder; let torchrun start the processes, one srun task per node: srun --ntasks-per-node=1 torchrun "
        f"--nproc_per_node=<GPUs per node> -m resnet9.train ... (docs/cluster.md#data-parallel-srun-and-torchrun)"
    )


def is_active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


_launch_time: datetime | None = None


def init() -> World:
    """Join torchrun's process group (no-op for a single process) and agree on one launch time.

    Called before Hydra composes the config, whose output folder is named after `launch_time`.
    """
    global _launch_time
    here = world()
    _launch_time = datetime.now()
    if here.is_parallel and not dist.is_initialized():
        # One group, two backends: collectives on CPU tensors go through gloo, on CUDA tensors through NCCL.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        _launch_time = broadcast(_launch_time)
    return here


def broadcast(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank; the value itself without a process group."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_epoch(sums: EpochSums) -> EpochSums:
    """The epoch's numbers over every rank's slice (one all-reduce); `sums` itself for a single process.

    Step losses are averaged over the ranks (each is a mean over its slice); loss sums, correct counts and
    the number of images seen add up.
    """
    if not is_active():
        return sums
    world_size = dist.get_world_size()
    totals = torch.cat(
        [
            torch.stack(sums.step_losses).float() / world_size,
            torch.stack([sums.loss_sum, sums.correct.float()]),
        ]
    )
    dist.all_reduce(totals)
    return replace(
        sums,
        loss_sum=totals[-2],
        correct=totals[-1].long(),
        seen=sums.seen * world_size,
        step_losses=list(totals[:-2]),
    )


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download), the others after it is done."""
    if is_active() and dist.get_rank() != 0:
        dist.barrier()
    yield
    if is_active() and dist.get_rank() == 0:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when there are several processes (it broadcasts rank 0's weights)."""
    if not is_active():
        return model
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def check_replicas_in_sync(model: nn.Module) -> None:
    """Raise if the processes' weights differ: each compares its per-tensor sums with every other's.

    DDP keeps replicas equal by construction (same start, same averaged gradients, same update); this
    catches the ways to break that (a rank skipping a step, a different schedule) at the epoch they happen.
    """
    if not is_active():
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"DDP replicas out of sync: ranks {differing} hold other weights than rank 0")


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _launch_time_resolver(pattern: str) -> str:
    global _launch_time
    if _launch_time is None:  # a command that did not call init(): fix the time at its first use
        _launch_time = datetime.now()
    return _launch_time.strftime(pattern)


def register_resolvers() -> None:
    """The resolvers conf/config.yaml names its output folders with, so that every rank resolves the same one.

    Every command that composes conf/config.yaml calls this before Hydra starts.
    """
    resolvers = {
        "launch_time": _launch_time_resolver,
        "main_rank_only": lambda value: value if world().is_main else None,
        "rank_suffix": lambda: "" if world().is_main else f".rank{world().rank}",
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
