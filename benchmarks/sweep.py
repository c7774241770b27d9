"""What a sweep costs beyond its training: per-job overhead, and the sweep's wall time against separate runs.

    python benchmarks/sweep.py                           # 6 jobs of a width-0.125 model, W&B offline
    python benchmarks/sweep.py --baseline ../old-checkout  # and the same sweeps with another checkout's code
    python benchmarks/sweep.py --jobs 15 --parallel 3 device=cuda   # on a GPU: also 3 jobs sharing it at once

For each variant (this checkout, and each --baseline: a checkout of another commit, run with this
environment's packages), it runs `python -m resnet9.train --multirun seed=0` (one job) and
`seed=0,...,N-1` (N jobs) with the same small settings and fixed LRs (no range test), and reads every job's
metrics.json. Then

    per-job overhead = (wall of the N-job sweep - wall of the 1-job sweep) / (N - 1) - train+eval per job

i.e. what each further job of a sweep costs beyond its own training and evaluation (its setup, W&B, files,
figures, Hydra's work), with the process start taken out; "N x 1-job" is what N separate runs would take.
Variants run interleaved, `--repeats` times; each cell is the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--images", type=int, default=1000, help="training images per job (data.limit_train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--parallel", type=int, default=0, help="also run the N-job sweep K jobs at a time (joblib; e.g. on one GPU)"
    )
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("--baseline", action="append", default=[], type=Path, help="another checkout to compare")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job, e.g. device=cuda")
    return parser.parse_args()


def sweep(checkout: Path, seeds: int, args: argparse.Namespace, folder: Path, *launcher: str) -> dict:
    """Run one --multirun over `seeds` seeds with `checkout`'s code; its wall time and per-job seconds."""
    command = [
        sys.executable, "-m", "resnet9.train", "--multirun", f"data.root={args.data_root}",
        f"data.limit_train={args.images}", "data.limit_test=500", "data.num_workers=0", f"epochs={args.epochs}",
        f"scheduler.peak_epoch={args.epochs / 2}", "batch_size=100", f"model.width={args.width}", "optimizer.lr=0.1",
        "scheduler.lr_min=0.01", "progress=false", f"seed={','.join(map(str, range(seeds)))}",
        f"hydra.sweep.dir={folder}", *launcher, *args.overrides,
    ]  # fmt: skip
    path = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])  # checkout first
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "RESNET9_CACHE": str(folder.parent / "cache")}  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:  # what went wrong, from the sweep's own output, not just its exit status
        sys.exit(f"error: the sweep in {folder} ended with status {result.returncode}:\n{result.stderr[-3000:]}")
    jobs = [json.loads(path.read_text()) for path in folder.glob("*/metrics.json")]
    assert len(jobs) == seeds and all(job["status"] == "completed" for job in jobs), folder
    train_eval = [sum(row["epoch_time_s"] for row in job["epochs"]) for job in jobs]
    later = [job["timings"] for job in jobs if "timings" in job and "seed=0" not in job["overrides"]]
    inside = {key: statistics.fmean(t[key] for t in later) for key in ("setup_s", "write_s")} if later else {}
    return {"wall": wall, "train_eval": statistics.fmean(train_eval), **inside}


def measure(name: str, checkout: Path, args: argparse.Namespace, scratch: Path, repeat: int) -> dict:
    one = sweep(checkout, 1, args, scratch / f"{name}-{repeat}-one")
    many = sweep(checkout, args.jobs, args, scratch / f"{name}-{repeat}-many")
    overhead = (many["wall"] - one["wall"]) / (args.jobs - 1) - many["train_eval"]
    print(f"  {name}, round {repeat + 1}: 1 job {one['wall']:.1f} s, {args.jobs} jobs {many['wall']:.1f} s, "
          f"overhead {overhead:.2f} s/job", flush=True)  # fmt: skip
    return {"one": one["wall"], "many": many["wall"], "train_eval": many["train_eval"], "overhead": overhead,
            "setup_s": many.get("setup_s", float("nan")), "write_s": many.get("write_s", float("nan"))}  # fmt: skip


def concurrent(args: argparse.Namespace, scratch: Path, one_at_a_time: float) -> None:
    """The N-job sweep run K jobs at a time (joblib), against one at a time (this checkout's N-job sweep, timed
    above): wall time and images/s over all jobs."""
    images = args.jobs * args.images * args.epochs
    launcher = ("hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.parallel}")
    together = sweep(REPO, args.jobs, args, scratch / "concurrent", *launcher)["wall"]
    print(f"\n| {args.jobs}-job sweep | wall (s) | training images/s, all jobs |\n|---|---|---|")
    for label, wall in (("one at a time", one_at_a_time), (f"{args.parallel} at a time (joblib)", together)):
        print(f"| {label} | {wall:.1f} | {images / wall:,.0f} |")


def main() -> None:
    args = parse_args()
    variants = {"this checkout": REPO, **{f"baseline {path}": path.resolve() for path in args.baseline}}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for index, (name, checkout) in enumerate(variants.items()):
                results[name].append(measure(f"v{index}", checkout, args, Path(scratch), repeat))
        print(f"\n{args.jobs}-job sweep, width {args.width}, {args.images:,} images x {args.epochs} epochs per job, "
              f"W&B offline, median of {args.repeats}\n")  # fmt: skip
        table(args, results)
        if args.parallel:
            concurrent(args, Path(scratch), statistics.median(r["many"] for r in results["this checkout"]))


def table(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    print(
        f"| code | 1-job sweep (s) | {args.jobs}-job sweep (s) | {args.jobs} x 1-job (s) | "
        "train+eval per job (s) | per-job overhead (s) |\n|---|---|---|---|---|---|"
    )
    for name, rounds in results.items():
        one, many, te, overhead = (statistics.median(r[k] for r in rounds) for k in ("one", "many", "train_eval",
                                                                                     "overhead"))  # fmt: skip
        print(f"| {name} | {one:.1f} | {many:.1f} | {args.jobs * one:.1f} | {te:.2f} | {overhead:.2f} |")
    for name, rounds in results.items():
        setup, write = (statistics.median(r[k] for r in rounds) for k in ("setup_s", "write_s"))
        if setup == setup:  # recorded (metrics.json "timings"): the overhead inside the job itself
            print(
                f"\n{name}: inside each job after the first, setup {setup:.2f} s and writing {write:.2f} s "
                "(metrics.json timings); the rest is Hydra's per-job work and figures drawn beside training"
            )


if __name__ == "__main__":
    main()
