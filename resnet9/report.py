"""The sweep report: a table with mean ± std over seeds and a figure of every job's test accuracy.

Single runs of this recipe vary between seeds (0.1 to 0.8 points on an H100, see the README), so one run says
little; a sweep over seeds says more. After every job of a `--multirun` the callback (registered in
conf/config.yaml) reads each job's metrics.json, groups the jobs by the overrides that differ between them
(the seed excepted: seeds are what is averaged over) and writes into the sweep folder:
  summary.md / summary.json   jobs, failures, mean ± std of final and best test accuracy, LRMIN, LRMAX, time
  test_accuracy.png           test accuracy per epoch of every job, one colour per setting
When the sweep ends, the same table and figure go to W&B (logger=wandb) as a run of its own in the sweep's
group. For any sweep folder, later:

    python -m resnet9.report multirun/2026-11-26/14-00-00
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from resnet9 import build, plots, tracking
from resnet9.errors import exit_with

NUMBERS = ("final_test_acc", "best_test_acc", "lr_min", "lr_max", "train_time_s")


def _varying(jobs: list[dict[str, Any]]) -> set[str]:
    """The overridden keys whose values differ between jobs, except the seed: they define the settings."""
    values: dict[str, list[str]] = {}
    for overrides in (job.get("overrides", []) for job in jobs):
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, []).append(value)
    # A key varies if it takes several values, or is overridden in some jobs only.
    return {key for key, seen in values.items() if key != "seed" and (len(set(seen)) > 1 or len(seen) < len(jobs))}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load_jobs(sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every job's metrics.json, grouped by setting (the swept overrides but the seed), in job order."""
    jobs = []
    for path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = json.loads(path.read_text())
        job["job"] = path.parent.name
        jobs.append(job)
    swept = _varying(jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        setting = " ".join(sorted(o for o in job.get("overrides", []) if o.partition("=")[0] in swept))
        groups.setdefault(setting or "(all jobs)", []).append(job)
    return groups


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per setting: job count, failures, and mean ± std of each number over its completed jobs."""
    return _summarize_groups(load_jobs(sweep_dir))


def _summarize_groups(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for setting, runs in groups.items():
        done = [m for m in runs if m.get("status") == "completed"]
        row: dict[str, Any] = {"setting": setting, "jobs": len(runs), "failed": len(runs) - len(done)}
        if done:
            for key in NUMBERS:
                row[key], row[key + "_std"] = _mean_std([m[key] for m in done])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | jobs | failed | final test acc (%) | best test acc (%) | LRMIN | LRMAX | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "final_test_acc" in row:
            final = f"{100 * row['final_test_acc']:.2f} ± {100 * row['final_test_acc_std']:.2f}"
            best = f"{100 * row['best_test_acc']:.2f} ± {100 * row['best_test_acc_std']:.2f}"
            lrs = f"{row['lr_min']:.4g} | {row['lr_max']:.4g}"
            time_s = f"{row['train_time_s']:.1f} ± {row['train_time_s_std']:.1f}"
        else:
            final = best = time_s = "—"
            lrs = "— | —"
        lines.append(f"| {row['setting']} | {row['jobs']} | {row['failed']} | {final} | {best} | {lrs} | {time_s} |")
    return "\n".join(lines)


def write_report(sweep_dir: Path) -> tuple[list[dict[str, Any]], str]:
    groups = load_jobs(sweep_dir)  # read every job's metrics.json once, for the table and the figure
    rows = _summarize_groups(groups)
    table = format_table(rows)
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    (sweep_dir / "summary.md").write_text(
        f"# Sweep {sweep_dir}\n\nmean ± std over seeds\n\n{table}\n\n![test accuracy](test_accuracy.png)\n"
    )
    plots.sweep_accuracy(
        groups, sweep_dir / "test_accuracy.png", title=f"Test accuracy of every job in {sweep_dir.name}"
    )
    return rows, table


def log_to_tracker(sweep_dir: Path, rows: list[dict[str, Any]], logger_cfg: DictConfig) -> None:
    """The report as a run of its own in the sweep's group, with the table, the figure and summary keys."""
    group = logger_cfg.get("group") or tracking.sweep_group(sweep_dir)
    tracker = build.tracker(logger_cfg, config={"sweep_dir": str(sweep_dir)}, dir=sweep_dir, name="report", group=group)
    try:
        tracker.log_table("sweep/summary", rows, step=0)  # same step as the figure: one row in W&B
        tracker.log_images({"sweep/test_accuracy": sweep_dir / "test_accuracy.png"}, step=0)
        tracker.summary({f"{row['setting']}/final_test_acc_mean": row.get("final_test_acc") for row in rows})
    finally:
        tracker.finish()


class SweepSummary(Callback):
    """Hydra callback: keep the sweep folder's report current after each job; log it to W&B at the end.

    Rewriting after every job (failed ones included) matters: when a job fails, Hydra re-raises its error
    once the batch has run, before `on_multirun_end` — the report must already be there.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_report(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows, table = write_report(sweep_dir)
        print(f"\nSweep summary (mean ± std over seeds), also in {sweep_dir / 'summary.md'}:\n{table}")
        log_to_tracker(sweep_dir, rows, config.logger)


def main(argv: list[str] | None = None) -> None:
    """`python -m resnet9.report <sweep folder>`: rewrite and print the report of a sweep folder made earlier."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        exit_with("usage: python -m resnet9.report <sweep folder, e.g. multirun/2026-11-26/14-00-00>")
    print(write_report(Path(args[0]))[1])


if __name__ == "__main__":
    main()
