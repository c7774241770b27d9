"""Every complete training run under a device_check.sh output folder, one row each, in a Markdown table.

    python benchmarks/device_summary.py .device/out

Rows: the runs of `runs/` (the throughput, compile and old-path stages) and the jobs of each sweep (`rules/`,
`graph/`, ...), named by folder and by the overrides that set them apart. A sweep's first job also reports the
seconds from its process's start (the `process_started` stamp device_check.sh leaves) to its metrics.json's
last write: a fresh process's first run, setup, range test (where one ran) and all. Runs that did not
complete are listed with their status and error.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

HEADER = (
    "| run | final test acc (%) | train time (s) | first step (s) | with evaluation (s) | LRMIN | LRMAX "
    "| epoch 1 (s) | median epoch (s) | warm-up (s) | process start to end (s) | precision | CUDA graph (capture s) |"
)


def run_name(path: Path, metrics: dict, root: Path, shared: set[str]) -> str:
    """The run's folder and the overrides that set it apart (those every run has are left out)."""
    folder = path.parent.relative_to(root).as_posix()
    own = [o for o in metrics.get("overrides", []) if o not in shared]
    return f"{folder} ({' '.join(own)})" if own else folder


def since_process_start(path: Path) -> float:
    """For a sweep's job 0: seconds from the sweep process's start to the job's last write; NaN otherwise."""
    stamp = path.parent.parent / "process_started"
    if path.parent.name != "0" or not stamp.is_file():
        return math.nan
    try:
        return path.stat().st_mtime - float(stamp.read_text())
    except ValueError:
        return math.nan


def captured(metrics: dict) -> str:
    """Whether cuda_graph=true captured the step (a failed capture trains eagerly, with one warning line)."""
    if "cuda_graph" not in metrics:
        return "—"
    return f"{'yes' if metrics['cuda_graph'] else 'no, eager'} ({metrics.get('capture_s', math.nan):.1f})"


def row(path: Path, metrics: dict, root: Path, shared: set[str]) -> str:
    epochs = [epoch["train_time_s"] for epoch in metrics["epochs"]]
    cells = [
        run_name(path, metrics, root, shared),
        f"{100 * metrics['final_test_acc']:.2f}",
        f"{metrics['train_time_s']:.2f}",
        f"{metrics.get('first_step_s', math.nan):.2f}",
        f"{sum(epoch['epoch_time_s'] for epoch in metrics['epochs']):.2f}",
        f"{metrics['lr_min']:.4g}",
        f"{metrics['lr_max']:.4g}",
        f"{epochs[0]:.2f}",
        f"{statistics.median(epochs):.2f}",
        f"{metrics.get('timings', {}).get('warmup_s', 0.0):.2f}",
        f"{since_process_start(path):.1f}",
        str(metrics.get("precision", "")),
        captured(metrics),
    ]
    return "| " + " | ".join(cells) + " |"


def main(root: Path) -> None:
    complete, unfinished = [], []
    for path in sorted(root.glob("*/*/metrics.json"), key=lambda p: p.parent.relative_to(root).as_posix()):
        where = path.parent.relative_to(root)
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            unfinished.append(f"{where}: unreadable metrics.json ({err})")
            continue
        if isinstance(metrics, dict) and metrics.get("status") == "completed":
            complete.append((path, metrics))
        else:
            status = metrics.get("status") if isinstance(metrics, dict) else "not a run record"
            unfinished.append(f"{where}: {status} {metrics.get('error', '') if isinstance(metrics, dict) else ''}")
    shared = set.intersection(*(set(m.get("overrides", [])) for _, m in complete)) if len(complete) > 1 else set()
    rows = []
    for path, metrics in complete:
        try:
            rows.append(row(path, metrics, root, shared))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            unfinished.append(f"{path.parent.relative_to(root)}: metrics.json lacks what a row needs ({err!r})")
    print("\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *rows]) if rows else "no complete run")
    for line in unfinished:
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".device/out"))
