"""What SLURM says about the job this process runs in (nothing outside a SLURM job)."""

from __future__ import annotations

import os
import re
import subprocess

QUERY_TIMEOUT_S = 10  # a stopped job has KillWait (30 s by default) before SIGKILL: the query must not use it up


def requeue_underway() -> bool:
    """Is SLURM requeuing this job (`scontrol requeue`, a pre-emption that requeues) rather than ending it
    (`scancel`, a time limit)? Both send SIGTERM; a requeue counts one more restart at once, before the signal,
    so the job's `Restarts` is ahead of the SLURM_RESTART_COUNT this run started with. False outside SLURM or when
    scontrol does not answer: then the job is taken to be ending, and the resume advice is printed."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    restarts = re.search(r"\bRestarts=(\d+)", shown)
    started_as = os.environ.get("SLURM_RESTART_COUNT", "0")
    return restarts is not None and started_as.isdigit() and int(restarts.group(1)) > int(started_as)
