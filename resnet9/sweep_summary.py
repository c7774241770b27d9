"""Mean ± std over seeds for a finished sweep: a Hydra callback and a command.

Single runs of this recipe vary by about 0.15% in test accuracy, so one run says little; a sweep over seeds
says more. After every `--multirun` the callback (registered in conf/config.yaml) reads each job's
metrics.json, groups the jobs whose overrides are equal apart from `seed=`, and writes `summary.md` and
`summary.json` into the sweep folder, printing the table too. The same for any sweep folder, later:

    python -m resnet9.sweep_summary multirun/2026-11-26/14-00-00
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _varying(jobs: list[dict[str, Any]]) -> set[str]:
    """The overridden keys whose values differ between jobs, except the seed: they define the settings."""
    values: dict[str, list[str]] = {}
    for overrides in (job.get("overrides", []) for job in jobs):
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, []).append(value)
    # A key varies if it takes several values, or is overridden in some jobs only.
    return {key for key, seen in values.items() if key != "seed" and (len(set(seen)) > 1 or len(seen) < len(jobs))}


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per setting: job count, failures, mean ± std of final/best test accuracy and training time.

    A setting is the jobs' values of the swept keys (seed excluded, so seeds are what is averaged over).
    """
    jobs = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/metrics.json"))]
    swept = _varying(jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        setting = " ".join(sorted(o for o in job.get("overrides", []) if o.partition("=")[0] in swept))
        groups.setdefault(setting or "(all jobs)", []).append(job)
    rows = []
    for setting, runs in groups.items():
        done = [m for m in runs if m.get("status") == "completed"]
        row: dict[str, Any] = {"setting": setting, "jobs": len(runs), "failed": len(runs) - len(done)}
        if done:
            for key in ("final_test_acc", "best_test_acc", "train_time_s"):
                row[key], row[key + "_std"] = _mean_std([m[key] for m in done])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | jobs | failed | final test acc (%) | best test acc (%) | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "final_test_acc" in row:
            final = f"{100 * row['final_test_acc']:.2f} ± {100 * row['final_test_acc_std']:.2f}"
            best = f"{100 * row['best_test_acc']:.2f} ± {100 * row['best_test_acc_std']:.2f}"
            time_s = f"{row['train_time_s']:.1f} ± {row['train_time_s_std']:.1f}"
        else:
            final = best = time_s = "—"
        lines.append(f"| {row['setting']} | {row['jobs']} | {row['failed']} | {final} | {best} | {time_s} |")
    return "\n".join(lines)


def write_summary(sweep_dir: Path) -> str:
    rows = summarize(sweep_dir)
    table = format_table(rows)
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir}\n\nmean ± std over seeds\n\n{table}\n")
    return table


class SweepSummary(Callback):
    """Hydra callback: keep the sweep folder's summary current after each job, print it at the end.

    Rewriting after every job (failed ones included) matters: when a job fails, Hydra re-raises its error
    once the batch has run, before `on_multirun_end` — the summary must already be there.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(f"\nSweep summary (mean ± std over seeds), also in {sweep_dir / 'summary.md'}:")
            print(write_summary(sweep_dir))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print(
            "usage: python -m resnet9.sweep_summary <sweep folder, e.g. multirun/2026-11-26/14-00-00>", file=sys.stderr
        )
        sys.exit(2)
    print(write_summary(Path(sys.argv[1])))
