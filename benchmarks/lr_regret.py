"""The range-test rule's regret: how much accuracy the derived LRMIN/LRMAX lose against the best of a grid.

    python benchmarks/lr_regret.py                                   # CPU scale (see the defaults below)
    python benchmarks/lr_regret.py --widths 0.125 0.25 0.5 1 --batches 128 512 --optimizers sgd adam \\
        --images 50000 --test-images 10000 --epochs 24 --seeds 3 -- device=cuda      # a GPU, full size

For every setting (width x batch size x optimizer), in this one process: the range test (a fresh one, cached
only within this benchmark), training with the derived pair, and training with each hand-set pair of the grid
(peak P, LRMIN = P / --min-divisor), every one with the same seeds. Printed per setting: the derived pair,
the best grid pair, and the regret = best grid accuracy - derived accuracy (means over seeds), with the
seeds' spread. Arguments after `--` are Hydra overrides for every run (e.g. `-- lr_finder.max_divisor=2` to
try another rule).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from tabulate import tabulate

from resnet9 import jobcache, plots
from resnet9.train import train

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25])
    parser.add_argument("--batches", type=int, nargs="+", default=[128])
    parser.add_argument("--optimizers", nargs="+", default=["sgd"], choices=("sgd", "adam"))
    parser.add_argument("--images", type=int, default=4000, help="training images (a class-balanced subset)")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--peaks", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.8],
                        help="the grid's LRMAX values (for Adam, scale them down, e.g. 0.0005 ... 0.008)")  # fmt: skip
    parser.add_argument("--min-divisor", type=float, default=20.0, help="the grid's LRMIN = peak / this")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. device=cuda")
    return parser.parse_args()


def accuracy(args: argparse.Namespace, setting: list[str], lrs: list[str], seed: int, folder: Path) -> float:
    """One training run's final test accuracy (%) in this process (the data and device copies are shared)."""
    overrides = [
        f"data.root={args.data_root}", f"data.limit_train={args.images}", f"data.limit_test={args.test_images}",
        f"epochs={args.epochs}", f"seed={seed}", "logger=none", "progress=false", "checkpoint=false",
        f"lr_finder.cache_dir={folder / 'cache'}", *setting, *lrs, *args.overrides,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    out = Path(tempfile.mkdtemp(dir=folder))
    return 100 * train(cfg, out)


def measure(args: argparse.Namespace, setting: list[str], folder: Path) -> dict:
    """The derived pair's accuracy and every grid pair's, over the seeds, for one setting."""
    seeds = range(args.seeds)
    derived = [accuracy(args, setting, [], seed, folder) for seed in seeds]  # optimizer.lr=auto: the range test
    record = next(folder.glob("*/metrics.json"))  # the first run's record names the derived pair
    pair = json.loads(record.read_text())
    grid = {}
    for peak in args.peaks:
        lrs = [f"optimizer.lr={peak}", f"scheduler.lr_min={peak / args.min_divisor}"]
        grid[peak] = [accuracy(args, setting, lrs, seed, folder) for seed in seeds]
    best = max(grid, key=lambda peak: statistics.fmean(grid[peak]))
    return {"derived": (pair["lr_min"], pair["lr_max"]), "derived_acc": derived, "best_peak": best, "grid": grid}


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def main() -> None:
    args = parse_args()
    rows = []
    for width in args.widths:
        for batch in args.batches:
            for optimizer in args.optimizers:
                setting = [f"model.width={width}", f"batch_size={batch}", f"optimizer={optimizer}"]
                with tempfile.TemporaryDirectory() as tmp:
                    result = measure(args, setting, Path(tmp))
                    plots.wait_for_figures()  # each run's curves.png, drawn beside the next run
                best = result["grid"][result["best_peak"]]
                regret = statistics.fmean(best) - statistics.fmean(result["derived_acc"])
                lr_min, lr_max = result["derived"]
                rows.append([" ".join(setting), f"{lr_min:.3g} / {lr_max:.3g}", spread(result["derived_acc"]),
                             f"{result['best_peak'] / args.min_divisor:.3g} / {result['best_peak']:.3g}",
                             spread(best), f"{regret:.2f}"])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
        jobcache.shared.clear()  # the next width: free the compiled models and summaries of this one
    print(f"\n{args.images} training / {args.test_images} test images, {args.epochs} epochs, {args.seeds} seeds; "
          f"grid peaks {args.peaks}, LRMIN = peak / {args.min_divisor:g}\n")  # fmt: skip
    headers = ["setting", "derived LRMIN / LRMAX", "derived acc (%)", "best grid pair", "best grid acc (%)",
               "regret (points)"]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    regrets = [float(row[-1]) for row in rows]
    print(f"\nmean regret {statistics.fmean(regrets):.2f} points, worst {max(regrets):.2f}")


if __name__ == "__main__":
    main()
