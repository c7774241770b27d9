"""What a SLURM sweep job costs beyond its training, against a local sweep's: the basic launcher (every job in
the sweep's own process), `hydra/launcher=slurm` with one job per SLURM task, and with `jobs_per_task` jobs per
task (several jobs sharing one task's process, data and model, as the local sweep does).

    bash tests/services/slurm.sh start      # a one-node cluster on localhost (or run on a real one's login node)
    python benchmarks/slurm_sweep.py         # 8 jobs of a width-0.125 model, W&B offline
    python benchmarks/slurm_sweep.py --jobs 16 --jobs-per-task 4 hydra.launcher.partition=gpu device=cuda

Each variant runs `python -m resnet9.train --multirun` over 1 seed and over N seeds with the same small settings
as benchmarks/sweep.py, its SLURM tasks one at a time (`array_parallelism=1`, so that no job's start-up hides
behind another's training), and reads every job's metrics.json:

    per-job overhead = (wall of the N-job sweep - wall of the 1-job sweep) / (N - 1) - train+eval per job

what each further job costs beyond its own training and evaluation: for SLURM its scheduling, a new process, its
imports, the data read and the cache looked up, unless the job shares a task with the jobs before it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from sweep import REPO, sweep  # benchmarks/sweep.py: one --multirun, timed, its jobs' records read

SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=1"]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument(
        "--jobs-per-task", type=int, default=8, help="the packed variant's hydra.launcher.jobs_per_task"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--images", type=int, default=1000, help="training images per job (data.limit_train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job, e.g. device=cpu")
    return parser.parse_args()


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "basic launcher (one process)": [],
        "SLURM, 1 job per task": [*SLURM, "hydra.launcher.jobs_per_task=1"],
        f"SLURM, {args.jobs_per_task} jobs per task": [*SLURM, f"hydra.launcher.jobs_per_task={args.jobs_per_task}"],
    }


def measure(args: argparse.Namespace, folder: Path, launcher: list[str]) -> dict[str, float]:
    one = sweep(REPO, 1, args, folder / "one", *launcher)
    many = sweep(REPO, args.jobs, args, folder / "many", *launcher)
    overhead = (many["wall"] - one["wall"]) / (args.jobs - 1) - many["train_eval"]
    return {"one": one["wall"], "many": many["wall"], "train_eval": many["train_eval"], "overhead": overhead}


def main() -> None:
    args = parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants(args)}
    with tempfile.TemporaryDirectory(dir=REPO.parent) as scratch:  # (beside the checkout: SLURM's nodes see it)
        for repeat in range(args.repeats):
            for index, (name, launcher) in enumerate(variants(args).items()):
                results[name].append(measure(args, Path(scratch) / f"v{index}-{repeat}", launcher))
                print(f"  {name}, round {repeat + 1}: {results[name][-1]['overhead']:.2f} s/job", flush=True)
    print(f"\n{args.jobs}-job sweep, width {args.width}, {args.images:,} images x {args.epochs} epochs per job, "
          f"W&B offline, SLURM tasks one at a time, median of {args.repeats}\n")  # fmt: skip
    print(f"| launcher | 1-job sweep (s) | {args.jobs}-job sweep (s) | train+eval per job (s) | per-job overhead (s) |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        one, many, te, overhead = (statistics.median(r[k] for r in rounds) for k in ("one", "many", "train_eval",
                                                                                     "overhead"))  # fmt: skip
        print(f"| {name} | {one:.1f} | {many:.1f} | {te:.2f} | {overhead:.2f} |")


if __name__ == "__main__":
    main()
