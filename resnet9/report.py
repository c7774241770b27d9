"""The sweep report: one row per setting with n, mean ± std and a 95 % interval over seeds, and a figure.

Single runs of this recipe vary between seeds (0.1 to 0.8 points on an H100, see the README), so one run says
little; a sweep over seeds says more. A setting is a combination of values of the keys the sweep varies
(sweep.json), the seed excepted: seeds are what is averaged over. After every job of a `--multirun` the
callback (registered in conf/config.yaml) rewrites, in the sweep folder:
  summary.md / summary.json   per setting: jobs, failures (trials an Optuna search pruned counted apart), the
                              metric's mean ± std and 95 % interval (t), the best test accuracy over epochs
                              (chosen on the test set, so optimistic), LRMIN, LRMAX, training time
  test_accuracy.png           test accuracy per epoch of every job, a mean ± std band per setting
  study.md                    an Optuna search's study: best trial, every trial's state and value, importances
When the sweep ends, the table and figure also go to W&B as a run of its own (job type `report`). For any
sweep folder, later, with options:

    python -m resnet9.report multirun/2026-11-26/14-00-00 [--by KEY ...] [--metric best_test_acc] [--csv]

`--by optimizer.lr` writes summary_by_optimizer.lr.md / .json and test_accuracy_by_optimizer.lr.png beside
the sweep's own summary, which it leaves as it was.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.report --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked(None)

import argparse
import contextlib
import csv
import io
import json
import math
import re
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from tabulate import tabulate

from resnet9 import cli
from resnet9.analysis import plots
from resnet9.core import files, signals
from resnet9.core.errors import ConfigError, TrialPruned, UsageError, exit_on_usage_error, exit_with, first_line
from resnet9.training.config import schema
from resnet9.training.engine import lifecycle
from resnet9.training.engine.state import METRICS_FORMAT
from resnet9.training.recording import tracking
from resnet9.training.sweeps import search, sweep

NUMBERS = ("final_test_acc", "best_test_acc", "lr_min", "lr_max", "train_time_s")
LABELS = {
    "final_test_acc": "final test acc (%)",
    "best_test_acc": "best test acc over epochs (%; chosen on the test set)",
    "lr_min": "LRMIN",
    "lr_max": "LRMAX",
    "train_time_s": "train time (s)",
}


class EpochRow(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    epoch: int
    test_acc: float


class JobRecord(BaseModel):
    """What the report reads of a job's metrics.json (a file from disk: checked, never trusted)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    format: int = 1  # (metrics.json of resnet9 0.1.0 has no format key)
    status: str = "unknown"
    error: str | None = None
    overrides: list[str] = []
    epochs: list[EpochRow] = []
    config: dict | None = None
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    lr_min: float | None = None
    lr_max: float | None = None
    train_time_s: float | None = None

    @field_validator("format")
    @classmethod
    def _known(cls, found: int) -> int:
        if found > METRICS_FORMAT:
            raise ValueError(
                f"written by a newer resnet9 (metrics format {found}; this one reads up to {METRICS_FORMAT}); "
                f"upgrade resnet9 to report on it"
            )
        return found


def load_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job Hydra launched into `sweep_dir`, in job order, each with its folder name as `job`.

    A job is a folder with a metrics.json or Hydra's .hydra/ record. One whose metrics.json is missing (a job
    killed outright) or unreadable still counts, as failed, with what was wrong as its error."""
    folders = {path.parent for pattern in ("*/metrics.json", "*/.hydra") for path in sweep_dir.glob(pattern)}
    return [_job(folder) for folder in sorted(folders, key=lambda p: (len(p.name), p.name))]


def _job(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    try:
        record = JobRecord.model_validate(json.loads(path.read_bytes())).model_dump(exclude_none=True)
    except FileNotFoundError:
        record = {"status": "no record", "error": "it left no metrics.json (killed?)", "overrides": _overrides(folder)}
    except (OSError, ValueError, RecursionError) as err:  # ValueError: not JSON, or not a job record (ValidationError)
        reason = err.strerror if isinstance(err, OSError) else _first_problem(err)
        record = {"status": "unreadable", "error": f"its metrics.json is unreadable ({reason})"}
        record["overrides"] = _overrides(folder)
    return {**record, "job": folder.name}


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        problem = err.errors()[0]
        if problem["type"] == "value_error":  # one of ours: its message says it all
            return str(problem["ctx"]["error"])
        return f"{'.'.join(map(str, problem['loc'])) or 'the file'}: {problem['msg']}"
    return first_line(err, "not JSON", 100)


def _overrides(folder: Path) -> list[str]:
    """A job's overrides from Hydra's record of it (YAML, read safely), or none."""
    try:
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [item for item in overrides if isinstance(item, str)] if isinstance(overrides, list) else []


def swept_keys(sweep_dir: Path, jobs: list[dict[str, Any]]) -> set[str]:
    """The keys the sweep varies (sweep.json); for a sweep from before sweep.json, those whose values differ."""
    description = sweep.read(sweep_dir)
    if description is not None:
        return set(description["varies"])
    return sweep.keys_that_differ([job.get("overrides", []) for job in jobs])


def group_jobs(sweep_dir: Path, jobs: list[dict[str, Any]], by: list[str] | None = None) -> dict[str, list[dict]]:
    """Jobs by setting: the values of `by`, else of every key the sweep varies (the seed excepted)."""
    keys = set(by) if by else swept_keys(sweep_dir, jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(sweep.setting(job.get("overrides", []), keys) or "(all jobs)", []).append(job)
    return groups


def summarize(groups: dict[str, list[dict[str, Any]]], metric: str = "final_test_acc") -> list[dict[str, Any]]:
    """One row per setting: jobs, failures, n (completed), and mean, std and 95 % interval of each number."""
    rows = []
    for setting, runs in groups.items():
        done = [job for job in runs if job.get("status") == "completed"]
        pruned = sum(job.get("status") == "pruned" for job in runs)  # a search's pruner stopped it: not a failure
        failed = len(runs) - len(done) - pruned
        row: dict[str, Any] = {"setting": setting, "jobs": len(runs), "failed": failed, "n": len(done)}
        row |= {"pruned": pruned} if pruned else {}
        for key in dict.fromkeys((metric, *NUMBERS)):
            values = [job[key] for job in done if isinstance(job.get(key), int | float)]
            if values:
                row[key], row[f"{key}_std"], row[f"{key}_ci95"] = _mean_std_interval(values, BOUNDS.get(key, (0, None)))
        rows.append(row)
    return rows


# What each number can be: its 95 % interval is clipped to that range (accuracies are fractions; LRs and times
# are positive). A t-interval from 2 or 3 seeds is wide, and unclipped it claimed accuracies below 0 or above 100 %.
BOUNDS: dict[str, tuple[float, float | None]] = {"final_test_acc": (0.0, 1.0), "best_test_acc": (0.0, 1.0)}


def _mean_std_interval(
    values: list[float], bounds: tuple[float, float | None] = (0.0, None)
) -> tuple[float, float | None, list[float] | None]:
    """Mean, standard deviation and the 95 % t-interval of the mean, clipped to `bounds` (no spread from a
    single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy import stats  # 0.8 s of imports, paid only where a spread is computed

    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    low, high = bounds
    return mean, std, [max(mean - half, low), mean + half if high is None else min(mean + half, high)]


def _number(key: str, value: float) -> str:
    if key.startswith("lr_"):
        return f"{value:.4g}"
    return f"{100 * value:.2f}" if key.endswith("_acc") else f"{value:.1f}"


def _cell(row: dict[str, Any], key: str, interval: bool = False) -> str:
    """mean ± std (the mean alone for one job), or the 95 % interval; "—" where there is nothing to show."""
    if key not in row:
        return "—"
    if interval:
        bounds = row[f"{key}_ci95"]
        return f"{_number(key, bounds[0])} – {_number(key, bounds[1])}" if bounds else "—"
    std = row[f"{key}_std"]
    if std is None or key.startswith("lr_"):  # every seed of a setting shares one range test: no LR spread
        return _number(key, row[key])
    return f"{_number(key, row[key])} ± {_number(key, std)}"


def format_table(rows: list[dict[str, Any]], metric: str = "final_test_acc", as_csv: bool = False) -> str:
    """Markdown: setting, jobs, failed, n, the metric (mean ± std, 95 % interval), then the others. CSV: the
    same rows as plain numbers for a spreadsheet or pandas (`_csv`)."""
    others = [key for key in NUMBERS if key != metric]
    if as_csv:
        return _csv(rows, [metric, *others])
    headers = ["setting", "jobs", "failed", "n", LABELS.get(metric, metric), "95% interval", *map(LABELS.get, others)]
    table = [
        [row["setting"], row["jobs"], row["failed"], row["n"], _cell(row, metric), _cell(row, metric, interval=True)]
        + [_cell(row, key) for key in others]
        for row in rows
    ]
    if any(row.get("pruned") for row in rows):  # an Optuna search's: pruned trials, apart from the failed ones
        headers.insert(3, "pruned")
        for cells, row in zip(table, rows, strict=True):
            cells.insert(3, row.get("pruned", 0))
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _csv(rows: list[dict[str, Any]], numbers: list[str]) -> str:
    """One column per number: the mean, its std and 95 % interval apart (accuracies as fractions, as in
    summary.json); empty where there is none."""
    columns = ["setting", "jobs", "failed", "n"]
    columns += [f"{key}{part}" for key in numbers for part in ("", "_std", "_ci95_low", "_ci95_high")]
    columns += ["pruned"] if any(row.get("pruned") for row in rows) else []
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_flat(row) for row in rows)
    return text.getvalue()


def write_report(
    sweep_dir: Path,
    by: list[str] | None = None,
    metric: str = "final_test_acc",
    figure: str = "now",
    jobs: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """summary.json, summary.md and test_accuracy.png (`figure`: "now", "background" or "none"), from `jobs`
    (default: read from the folder); regrouped `by` keys, under names of their own (`output_names`)."""
    jobs = load_jobs(sweep_dir) if jobs is None else jobs
    groups = group_jobs(sweep_dir, jobs, by)
    rows = summarize(groups, metric)
    table = format_table(rows, metric)
    summary, figure_name = output_names(by)
    files.write_json(sweep_dir / f"{summary}.json", rows)
    intro = f"# Sweep {sweep_dir}\n\nper setting: mean ± std and the 95 % interval of the mean over its seeds"
    files.write_text(sweep_dir / f"{summary}.md", f"{intro}\n\n{table}\n\n![test accuracy]({figure_name})\n")
    draw = (plots.sweep_accuracy, groups, sweep_dir / figure_name, f"Test accuracy, {sweep_dir.name}")
    if figure == "now":
        draw[0](*draw[1:])
    elif figure == "background":
        plots.in_background(*draw)
    return rows, table


def output_names(by: list[str] | None = None) -> tuple[str, str]:
    """The summary's file stem and the figure's name: the sweep's own, or apart for a regrouping (`--by`), which
    must not overwrite the sweep's own summary."""
    if not by:
        return "summary", "test_accuracy.png"
    suffix = "_by_" + "_".join(key.replace("/", "-") for key in by)
    return f"summary{suffix}", f"test_accuracy{suffix}.png"


def log_to_tracker(
    sweep_dir: Path, rows: list[dict[str, Any]], logger_cfg: DictConfig | dict, by: list[str] | None = None
) -> None:
    """The report as a W&B run of its own (job type `report`, in the sweep's folder `report/`)."""
    sweep_name = sweep.sweep_id(sweep_dir)
    (sweep_dir / "report").mkdir(exist_ok=True)
    tracker = tracking.start(
        logger_cfg, config={"sweep": sweep_name}, dir=sweep_dir / "report", name="report",
        group=sweep_name, tags=[sweep_name], job_type="report",
    )  # fmt: skip
    try:
        tracker.log_table("sweep/summary", [_flat(row) for row in rows], step=0)
        tracker.log_images({"sweep/test_accuracy": sweep_dir / output_names(by)[1]}, step=0)
        tracker.summary({f"{row['setting']}/final_test_acc_mean": row.get("final_test_acc") for row in rows})
    finally:
        tracker.finish()


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A W&B table takes scalars: the interval as two columns."""
    flat = {key: value for key, value in row.items() if not key.endswith("_ci95")}
    for key, value in row.items():
        if key.endswith("_ci95"):
            flat[key + "_low"], flat[key + "_high"] = value if value else (None, None)
    return flat


class SweepSummary(Callback):
    """Hydra callback: describe the sweep when it starts (sweep.json), keep its report current after each job,
    and end it: the final table, a line per failed job, the figure, the report in W&B.

    Rewriting the table after every job (failed ones included) matters: when a job fails, Hydra re-raises its
    error once the batch has run and skips `on_multirun_end`; a signal skips it too. The command then calls
    `end_unfinished_sweep` on its way out, so every ending gets the final summary. Until then the figure is
    drawn once at the end; only after a failure is it redrawn after every job, on the figure thread.
    """

    unfinished: SweepSummary | None = None  # the sweep under way in this process, until its end is written

    def __init__(self) -> None:
        self.failure_seen, self.config, self.handlers = False, None, None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep.write(Path(config.hydra.sweep.dir), config)
        except UsageError as err:  # (Hydra turns a callback's exceptions into warnings and goes on: exit here)
            exit_with(f"error: {err}")
        self.config, SweepSummary.unfinished = config, self
        # between jobs (a job's own stop is `SignalStop`'s, and it hands these back when it ends): the summary,
        # how to resume, 128 + the signal -- not a silent exit
        self.handlers = signals.Handlers(self.stop_between_jobs)

    def stop_between_jobs(self, signum: int, _frame: Any) -> None:
        end_unfinished_sweep()
        sweep_dir = self.config.hydra.sweep.dir
        rerun = f"resume the sweep by rerunning the same command with hydra.sweep.dir={sweep_dir}"
        # under hydra/launcher=slurm the jobs run on the cluster, not in this process: they go on without it
        if str(OmegaConf.select(self.config, "hydra.launcher._target_", default="")).endswith("SlurmLauncher"):
            message = f"stopped by signal {signum}; the sweep's SLURM jobs go on without it (squeue; scancel stops "
            exit_with(message + f"them); once none is left in squeue, {rerun}", 128 + signum)
        exit_with(f"stopped by signal {signum} between jobs; {rerun}", 128 + signum)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        # (a trial an Optuna search pruned ends on TrialPruned: Hydra's FAILED, but no failure to redraw for)
        pruned = isinstance(getattr(job_return, "_return_value", None), TrialPruned)
        self.failure_seen |= getattr(job_return, "status", None) == JobStatus.FAILED and not pruned
        write_report(Path(config.hydra.sweep.dir), figure="background" if self.failure_seen else "none")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.end()

    def end(self) -> None:
        SweepSummary.unfinished = None
        if self.handlers is not None:  # the process's own handlers, as before the sweep
            self.handlers.restore()
        self.handlers = None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        jobs = load_jobs(sweep_dir) if sweep_dir.is_dir() else []
        if not jobs:
            return
        plots.wait_for_figures()
        rows, table = write_report(sweep_dir, jobs=jobs)
        print(f"\nSweep summary (mean ± std and 95 % interval over seeds), also in {sweep_dir / 'summary.md'}:")
        print(table)
        for line in failure_lines(sweep_dir, jobs):
            print(line)
        study = study_report(sweep_dir)
        if study is not None:
            print(f"\n{study}")
        log_to_tracker(sweep_dir, rows, self.config.logger)


def failure_lines(sweep_dir: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """One line per job that did not complete: its folder, its values of the swept keys, its status and error."""
    keys = swept_keys(sweep_dir, jobs)
    return [
        f"job {job['job']} ({sweep.setting(job['overrides'], keys, with_seed=True) or 'no overrides'}): "
        f"{job['status']}: {job.get('error') or job.get('stopped') or 'no reason recorded'}"
        for job in jobs
        if job["status"] not in ("completed", "pruned")
    ]


def study_report(sweep_dir: Path) -> str | None:
    """An Optuna search's study (sweep.json names it) as study.md: best trial, every trial's state, value and
    parameters, the parameters' importances; None for other sweeps."""
    study = (sweep.read(sweep_dir) or {}).get("study")
    if not isinstance(study, dict) or not all(isinstance(study.get(key), str) for key in ("storage", "name")):
        return None
    try:
        text = search.describe_study(study["storage"], study["name"])
    except Exception as err:  # the database gone or unreachable: the rest of the report still stands
        return f"(study {study['name']}: {lifecycle.one_line(err)})"
    files.write_text(sweep_dir / "study.md", text)
    return text


def end_unfinished_sweep() -> None:
    """The final summary of a sweep that Hydra left without its end (a failed job, a signal)."""
    if SweepSummary.unfinished is not None:
        SweepSummary.unfinished.end()


@contextlib.contextmanager
def cluster_job_errors_in_one_line() -> Iterator[None]:
    """Around a sweep: a submitit job that ended without a result (`scancel`, a node lost, a requeue declined)
    raises submitit's UncompletedJobError in the sweep's process, its message the job's whole stderr; the sweep
    then ends with its summary (which has the job's own line), one line naming the job and where its log is, and
    exit status 128 + SIGTERM for a cancelled job (1 otherwise)."""
    try:
        yield
    except Exception as err:
        if not type(err).__module__.startswith("submitit."):
            raise
        sweep_dir = SweepSummary.unfinished.config.hydra.sweep.dir if SweepSummary.unfinished else None
        end_unfinished_sweep()
        job, state = _job_and_state(str(err))
        resume = (  # (its other jobs may still run: a rerun meanwhile would start them twice)
            f"; once none of its jobs is left in squeue, resume the sweep by rerunning the same command with "
            f"hydra.sweep.dir={sweep_dir}"
            if sweep_dir
            else ""
        )
        status = 128 + signal.SIGTERM if state.startswith("CANCELLED") else 1
        exit_with(f"error: the cluster's job {job} ended without a result ({state}){resume}", status)


def _job_and_state(message: str) -> tuple[str, str]:
    """submitit's job id, log folder and final state out of its UncompletedJobError message (several lines: the
    id, the result's path, the state, then the job's stderr)."""
    job = re.search(r"Job (\S+) \(task: \d+\) with path (\S+)", message)
    state = re.search(r"\(state: ([^)]*)\)", message)
    where = f"{job.group(1)} (log in {Path(job.group(2)).parent})" if job else "of the sweep"
    if state is None:  # the job failed outside resnet9's task (e.g. in submitit's own code): its last line
        lines = [line for line in message.splitlines() if line.strip()]
        return where, first_line(lines[-1] if lines else "", "no reason given", 200)
    return where, state.group(1)


def check_sweep_folder(folder: Path) -> None:
    """A one-line UsageError unless `folder` holds a sweep's jobs (<folder>/<job>/metrics.json)."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; pass a sweep folder, e.g. multirun/<date>/<time>")
    if not any(folder.glob("*/metrics.json")) and not any(folder.glob("*/.hydra")):
        what = "a single run's folder" if (folder / "metrics.json").is_file() else "not a sweep folder"
        raise UsageError(
            f"{folder} is {what} (no <job>/metrics.json inside); pass a sweep folder, e.g. multirun/<date>/<time>"
        )
    if not (folder / "multirun.yaml").is_file() and not (folder / sweep.FILE).is_file():  # e.g. outputs/<date>/
        raise UsageError(
            f"{folder} holds runs but is no sweep's folder (no multirun.yaml or {sweep.FILE}): their settings were "
            f"never compared as one sweep; pass a sweep folder, e.g. multirun/<date>/<time>"
        )


def check_keys(by: list[str], jobs: list[dict[str, Any]]) -> None:
    """`--by` names keys that some job of the sweep sets, never the seed (a setting's seeds are averaged)."""
    given = {sweep.key_and_value(override)[0] for job in jobs for override in job.get("overrides", [])}
    for key in by:
        if key == sweep.SEED:
            raise UsageError("--by seed: a setting's seeds are what the report averages over; --by takes another key")
        if key not in given:
            keys = ", ".join(sorted(given - {sweep.SEED})) or "none"
            raise UsageError(f"--by {key}: no job of this sweep sets it; its jobs set {keys}")


def _logger_of(sweep_dir: Path, choice: str) -> dict | None:
    """The W&B settings the sweep's jobs used (validated: only our trackers), `choice`=none for none."""
    if choice == "none":
        return None
    jobs = load_jobs(sweep_dir)
    saved = next((job["config"]["logger"] for job in jobs if isinstance(job.get("config"), dict)), None)
    try:
        logger = schema.validate_logger(saved) if saved is not None else None
    except ConfigError:
        return None
    return logger.model_dump(by_alias=True) if logger is not None else None


def main(argv: list[str] | None = None) -> None:
    """`python -m resnet9.report <sweep folder> [--by KEY ...] [--metric NAME] [--csv] [--tracker none]`."""
    parser = argparse.ArgumentParser(prog="python -m resnet9.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a sweep folder, e.g. multirun/2026-11-26/14-00-00")
    parser.add_argument("--version", action="version", version=cli.version_line())
    parser.add_argument("--by", action="append", metavar="KEY", help="group by this key only (repeatable)")
    parser.add_argument("--metric", default="final_test_acc", choices=NUMBERS, help="the number summarised first")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    parser.add_argument("--tracker", default="auto", choices=("auto", "none"),
                        help="auto: log the report to W&B again if the jobs used it")  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_usage_error():
        check_sweep_folder(args.folder)
        jobs = load_jobs(args.folder)
        check_keys(args.by or [], jobs)
        rows, table = write_report(args.folder, args.by, args.metric, jobs=jobs)
    print(format_table(rows, args.metric, as_csv=True) if args.csv else table, end="" if args.csv else "\n")
    for line in [] if args.csv else failure_lines(args.folder, jobs):
        print(line)
    study = None if args.csv else study_report(args.folder)
    if study is not None:
        print(f"\n{study}", end="")
    logger = _logger_of(args.folder, args.tracker)
    if logger is not None and logger["_target_"].endswith("WandbTracker"):
        log_to_tracker(args.folder, rows, logger, args.by)


if __name__ == "__main__":
    main()
