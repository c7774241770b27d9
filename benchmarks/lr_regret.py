"""The range-test rules' regret: how much accuracy each rule's LRMIN/LRMAX lose against the best of a grid.

    python benchmarks/lr_regret.py                     # CPU scale: the settings below, every rule (~75 min)
    python benchmarks/lr_regret.py --rules lowest fall_end --settings "model.width=0.125" --seeds 3
    python benchmarks/lr_regret.py --settings "model.width=1 batch_size=512" "model.width=0.5 batch_size=512" \\
        --images 50000 --test-images 10000 --epochs 24 --seeds 3 -- device=cuda             # a GPU, full size
    python benchmarks/lr_regret.py --settings "model.width=1 batch_size=512 data.limit_train=16000 precision=bf16" \\
        --rules steepest lowest fall_end --grid 0.1 0.2 0.4 0.8 --test-images 5000 -- device=cpu      # full width, CPU

For every setting (Hydra overrides on top of the base: batch 128, --images training images, --epochs), in
this one process: the range test (once: every rule reads the same curve; or once per --test-seeds, whose
noise then counts too), training with each rule's pair (`lr_finder.rule=...`; a pair read twice trains once),
and training with each hand-set pair of the grid (peak P, LRMIN = P / --min-divisor; or the grid an earlier
run recorded, --grid-from), all with the same seeds. Printed: per setting and rule the derived pair,
its accuracy, the best grid pair's, and the regret = best grid accuracy - derived accuracy (means over
seeds); then per rule the mean and worst regret. `--out FILE` keeps it all as JSON, curves included.
Arguments after `--` are Hydra overrides for every run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from tabulate import tabulate

from resnet9.analysis import plots
from resnet9.core import jobcache
from resnet9.train import train
from resnet9.training.lr import rules as lr_rules

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [  # what researchers change first: width, batch size, optimizer, data size
    "model.width=0.125",
    "model.width=0.25",
    "model.width=0.5",
    "model.width=0.25 data.limit_train=2000",
    # batch 512 on 4x the images: the same 124 steps as batch 128 on 4,000 (on 4,000 images batch 512 takes
    # 28 steps, and one grid pair's two seeds ended 11 points apart)
    "model.width=0.125 batch_size=512 data.limit_train=16000",
    "model.width=0.25 optimizer=adam",
]
GRID = {"sgd": [0.05, 0.1, 0.2, 0.4, 0.8, 1.6], "adam": [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=SETTINGS, help="each a string of Hydra overrides")
    parser.add_argument("--rules", nargs="+", default=list(lr_rules.RULES), choices=list(lr_rules.RULES))
    parser.add_argument("--batch", type=int, default=128, help="the base batch size (a setting may change it)")
    parser.add_argument("--images", type=int, default=4000, help="training images (a class-balanced subset)")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--test-seeds", type=int, default=1,
                        help="range tests per setting (lr_finder.seed=0,1,...): each rule trains with each test's "
                             "pair, so the regret includes the test's own noise")  # fmt: skip
    parser.add_argument("--grid", type=float, nargs="+", help=f"the grid's peaks (default by optimizer: {GRID})")
    parser.add_argument("--min-divisor", type=float, default=20.0, help="the grid's LRMIN = peak / this")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("--out", type=Path, help="write every number (and each setting's curve) here as JSON")
    parser.add_argument("--grid-from", type=Path, nargs="+", default=[],
                        help="take each setting's grid from these --out files where they measured it with the same "
                             "base and at least as many seeds (training is deterministic on one machine): a new "
                             "rule is measured in a quarter of the time")  # fmt: skip
    parser.add_argument("--from", dest="saved", type=Path, nargs="+",
                        help="train nothing: print the tables of files written by --out")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. device=cuda")
    return parser.parse_args()


class Setting:
    """One setting's runs, in one scratch folder whose range-test cache every run of it shares."""

    def __init__(self, args: argparse.Namespace, overrides: str, folder: Path, grid: dict | None = None) -> None:
        self.args, self.overrides, self.folder, self.recorded_grid = args, overrides.split(), folder, grid

    def accuracies(self, lrs: list[str]) -> tuple[list[float], Path]:
        """Final test accuracy (%) per seed for these LR overrides, and the first run's folder."""
        folders = [Path(tempfile.mkdtemp(dir=self.folder)) for _ in range(self.args.seeds)]
        accs = [100 * train(self.config(seed, lrs), out) for seed, out in enumerate(folders)]
        return accs, folders[0]

    def config(self, seed: int, lrs: list[str]):  # noqa: ANN201 (a DictConfig)
        a = self.args
        overrides = [
            f"data.root={a.data_root}", f"data.limit_train={a.images}", f"data.limit_test={a.test_images}",
            f"batch_size={a.batch}", f"epochs={a.epochs}", f"seed={seed}", "logger=none", "progress=false",
            "checkpoint=false", f"lr_finder.cache_dir={self.folder / 'cache'}", *self.overrides, *lrs, *a.overrides,
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    def pair(self, curve: dict, rule: str) -> list[float]:
        """The pair `rule` reads off a recorded curve, read as this setting's runs read it."""
        found = lr_rules.read(curve, self.config(0, [f"lr_finder.rule={rule}"]).lr_finder)
        return [found.lr_min, found.lr_max]

    @staticmethod
    def same(pair: list[float], other: list[float]) -> bool:
        return all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(pair, other, strict=True))

    def measure(self) -> dict:
        """Every rule's pairs (one per range-test seed) and accuracies, and every grid pair's, over the seeds."""
        rules: dict[str, dict] = {rule: {"tests": []} for rule in self.args.rules}
        trained: list[tuple[list[float], list[float]]] = []  # (pair, accuracies): a pair read twice trains once
        curves = []
        for test_seed in range(self.args.test_seeds):
            curve = None
            for rule in self.args.rules:
                pair = self.pair(curve, rule) if curve else None
                accs = next((a for p, a in trained if pair and self.same(p, pair)), None)
                if accs is None:  # optimizer.lr=auto: the pair this rule reads off this test's curve
                    accs, first = self.accuracies([f"lr_finder.rule={rule}", f"lr_finder.seed={test_seed}"])
                    found = json.loads((first / "lr_finder.json").read_text())
                    pair, curve = [found["lr_min"], found["lr_max"]], curve or found["history"]
                    trained.append((pair, accs))
                rules[rule]["tests"].append({"seed": test_seed, "pair": pair, "acc": accs})
            curves.append(curve)
        for found in rules.values():  # the first test's pair; the accuracies of every test's runs
            found.update(pair=found["tests"][0]["pair"], acc=[acc for test in found["tests"] for acc in test["acc"]])
        optimizer = next((o.split("=")[1] for o in self.overrides if o.startswith("optimizer=")), "sgd")
        grid = self.recorded_grid or {}
        if grid:
            print(f"{' '.join(self.overrides)}: the grid as recorded (--grid-from), not trained again", flush=True)
        for peak in [] if grid else self.args.grid or GRID[optimizer]:
            lrs = [f"optimizer.lr={peak}", f"scheduler.lr_min={peak / self.args.min_divisor}"]
            grid[peak] = self.accuracies(lrs)[0]
        best = max(grid, key=lambda peak: statistics.fmean(grid[peak]))
        edge = best in (min(grid), max(grid))  # the grid may not reach the best pair: the regret is a floor
        return {"rules": rules, "grid": grid, "best_peak": best, "best_at_grid_edge": edge, "curve": curves[0],
                "other_test_curves": curves[1:]}  # fmt: skip


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def regret(result: dict, rule: str) -> float:
    best = statistics.fmean(result["grid"][result["best_peak"]])
    return best - statistics.fmean(result["rules"][rule]["acc"])


def lr_maxes(found: dict) -> str:
    """The rule's LRMAX, or the range of its LRMAXes over several range tests (--test-seeds)."""
    lrs = [test["pair"][1] for test in found.get("tests", [])] or [found["pair"][1]]
    return f"{min(lrs):.3g}" if len(set(lrs)) == 1 else f"{min(lrs):.3g}-{max(lrs):.3g} over {len(lrs)} tests"


def tables(args: argparse.Namespace, results: dict[str, dict]) -> tuple[str, str]:
    """Per setting: the best grid pair and each rule's regret with its LRMAX; then per rule over the settings."""
    rows = []
    for setting, result in results.items():
        best = result["best_peak"]
        edge = " (grid edge)" if result["best_at_grid_edge"] else ""
        cells = [setting, f"{best / args.min_divisor:.3g} / {best:.3g}{edge}: {spread(result['grid'][best])}"]
        for rule in args.rules:
            found = result["rules"][rule]
            cells.append(f"{regret(result, rule):.2f} ({lr_maxes(found)}: {spread(found['acc'])})")
        rows.append(cells)
    headers = ["setting", "best grid LRMIN / LRMAX: acc (%)", *(f"{rule}: regret (LRMAX: acc)" for rule in args.rules)]
    per_setting = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    summary = []
    for rule in args.rules:
        regrets = [regret(result, rule) for result in results.values()]
        summary.append([rule, f"{statistics.fmean(regrets):.2f}", f"{max(regrets):.2f}", sum(r > 3 for r in regrets)])
    headers = ["rule", "mean regret", "worst regret", "settings > 3 points"]
    return per_setting, tabulate(summary, headers=headers, tablefmt="github", disable_numparse=True)


def from_files(args: argparse.Namespace) -> dict[str, dict]:
    """The settings of earlier --out files, and (in args) the rules every one of them measured."""
    results: dict[str, dict] = {}
    for path in args.saved:
        saved = json.loads(path.read_text())
        for setting, result in saved["results"].items():  # JSON keeps the grid's peaks as strings
            results[setting] = {**result, "grid": {float(peak): accs for peak, accs in result["grid"].items()}}
        for key in ("batch", "images", "test_images", "epochs", "seeds"):  # printed as "a or b" where files differ
            known = str(getattr(args, key)).split(" or ") if path != args.saved[0] else []
            setattr(args, key, " or ".join(dict.fromkeys([*known, str(saved["args"][key])])))
        args.min_divisor = saved["args"]["min_divisor"]
    args.rules = [rule for rule in lr_rules.RULES if all(rule in result["rules"] for result in results.values())]
    return results


BASE = ("batch", "images", "test_images", "epochs", "min_divisor", "data_root", "overrides")


def grid_key(setting: str) -> str:
    """What a setting's grid depends on: its overrides but the range test's (the grid's LRs are hand-set), so
    `"model.width=0.25 lr_finder.num_iter=300"` is measured against the grid of `"model.width=0.25"`."""
    return " ".join(o for o in setting.split() if not o.startswith("lr_finder."))


def recorded_grids(args: argparse.Namespace) -> dict[str, dict]:
    """Per setting, the grid an earlier --out file measured with this base and at least this many seeds (the
    first seeds' accuracies: the same runs as this benchmark's)."""
    grids: dict[str, dict] = {}
    for path in args.grid_from:
        saved = json.loads(path.read_text())
        if any(saved["args"][key] != vars(args)[key] for key in BASE) or saved["args"]["seeds"] < args.seeds:
            print(f"{path}: another base or fewer seeds; its grids are not reused", flush=True)
            continue
        for setting, result in saved["results"].items():
            grid = {float(peak): accs[: args.seeds] for peak, accs in result["grid"].items()}
            if args.grid is None or sorted(grid) == sorted(args.grid):
                grids[grid_key(setting)] = grid
    return grids


def main() -> None:
    args = parse_args()
    results = from_files(args) if args.saved else {}
    grids = recorded_grids(args)
    for setting in [] if args.saved else args.settings:
        with tempfile.TemporaryDirectory() as tmp:
            results[setting] = Setting(args, setting, Path(tmp), grids.get(grid_key(setting))).measure()
            plots.wait_for_figures()  # each run's figures, drawn beside the next run, before the folder goes
        jobcache.shared.clear()  # the next setting: free the compiled models and summaries of this one
        print(f"{setting}: " + ", ".join(f"{rule} {regret(results[setting], rule):.2f}" for rule in args.rules),
              flush=True)  # fmt: skip
        if args.out:  # after every setting: a long run that stops keeps what it measured
            paths = {"out": str(args.out), "grid_from": [str(path) for path in args.grid_from]}
            args.out.write_text(json.dumps({"args": {**vars(args), **paths}, "results": results}))
    per_setting, summary = tables(args, results)
    print(f"\nbase: batch {args.batch}, {args.images} training / {args.test_images} test images, {args.epochs} "
          f"epochs, {args.seeds} seeds; grid LRMIN = peak / {args.min_divisor:g}; regret in points\n")  # fmt: skip
    print(per_setting, summary, sep="\n\n")


if __name__ == "__main__":
    main()
