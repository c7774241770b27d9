"""What pruning buys an Optuna search: the same search with the median pruner and without, side by side.

    python benchmarks/search_pruning.py                      # 20 trials of a width-0.125 model, 4 epochs each
    python benchmarks/search_pruning.py --trials 40 device=cuda

Each variant runs `python -m resnet9.train --multirun hparams_search=optuna` into a fresh folder with the same
sampler seed and settings (W&B off). They run at the same time, one CPU thread each (OMP_NUM_THREADS=1), after
a one-trial warm-up that fills the cache both use (the converted data, the range test): on a machine others
share, both meet the same load, and one thread cannot spin-wait CPU time away. The table gives each one's
wall time, CPU time, epochs trained, trials completed / pruned, and the best final test accuracy it found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"median pruner (default)": [], "no pruning": ["hydra.sweeper.pruner=none"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--images", type=int, default=2000, help="training images per trial (data.limit_train)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial, e.g. device=cuda")
    return parser.parse_args()


def command(args: argparse.Namespace, folder: Path, variant: list[str], trials: int | None = None) -> list[str]:
    return [
        sys.executable, "-m", "resnet9.train", "--multirun", "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials or args.trials}", f"data.root={args.data_root}",
        f"data.limit_train={args.images}", "data.limit_test=1000", "data.num_workers=0", f"epochs={args.epochs}",
        f"scheduler.peak_epoch={args.epochs / 4}", "batch_size=100", f"model.width={args.width}", "logger=none",
        "progress=false", f"hydra.sweep.dir={folder}",
        *variant, *args.overrides,
    ]  # fmt: skip


def side_by_side(args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """Both searches at once, one CPU thread each: on a machine others share, both meet the same load. Each
    one's wall time and CPU time (user + system, from its own process's exit)."""
    env = {**os.environ, "RESNET9_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}  # the cache: warmed once
    subprocess.run(command(args, tmp / "warm-up", [], trials=1), cwd=REPO, env=env, capture_output=True, check=True)
    started, running = time.perf_counter(), {}
    for i, (name, variant) in enumerate(VARIANTS.items()):
        folder = tmp / str(i)
        process = subprocess.Popen(command(args, folder, variant), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)  # fmt: skip
        running[process.pid] = (name, folder, process)
    results = {}
    while running:
        pid, status, usage = os.wait4(-1, 0)
        name, folder, process = running.pop(pid)
        if status != 0:
            sys.exit(f"the search {name} failed:\n{process.stderr.read().decode()[-3000:]}")
        wall, cpu = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
        results[name] = {"wall_s": wall, "cpu_s": cpu, **outcome(folder)}
    return {name: results[name] for name in VARIANTS}


def outcome(folder: Path) -> dict:
    jobs = [json.loads(path.read_text()) for path in folder.glob("*/metrics.json")]
    completed = [job for job in jobs if job["status"] == "completed"]
    return {
        "epochs": sum(len(job["epochs"]) for job in jobs),
        "completed": len(completed),
        "pruned": sum(job["status"] == "pruned" for job in jobs),
        "best": max((job["final_test_acc"] for job in completed), default=float("nan")),
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = side_by_side(args, Path(tmp))
    print(f"{args.trials} trials, width {args.width}, {args.images} images, {args.epochs} epochs per trial\n")
    print("| search | wall time (s) | CPU time (s) | epochs trained | completed | pruned | best final test acc (%) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}", r["epochs"], r["completed"], r["pruned"]]
        print(f"| {name} | " + " | ".join(map(str, cells)) + f" | {100 * r['best']:.2f} |")


if __name__ == "__main__":
    main()
