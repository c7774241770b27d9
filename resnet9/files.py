"""Writing results safely: atomic replacement of every file a run rewrites, and a writable output folder.

A run rewrites metrics.json and last.pt after every epoch. Each write goes to a temporary file in the same
folder and is then renamed over the old one, so a reader (a resume, a sweep report, a user) never sees half
a file, and a failed write (disk full, permissions, a folder in the way) leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resnet9.errors import UsageError, exit_with


def replace_atomically(path: Path, write: Callable[[str], Any]) -> None:
    """`write(temporary path)`, then rename it to `path`; one-line UsageError if any of it fails.

    Rerunning the same folder then resumes from the last checkpoint that was written.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise UsageError(
            f"cannot write {path} ({err.strerror or type(err).__name__}); free space or fix the folder's "
            f"permissions, then rerun the same folder to resume"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    replace_atomically(path, write)


def save_torch(path: Path, obj: Any) -> None:
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def ensure_writable(folder: str | Path, key: str) -> None:
    """Create `folder` if needed and write a probe file there; a UsageError naming `key` if either fails."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"cannot write the output folder {folder} ({reason}); choose a writable one, e.g. {key}=/tmp/resnet9"
        ) from None


class WritableOutput(Callback):
    """Hydra callback: refuse an output folder that cannot be written, in one line, before anything runs.

    Hydra creates the folder itself (and its log file) before the job starts; without this check a
    read-only or blocked location would end in a traceback from inside Hydra. Hydra turns a callback's
    exceptions into warnings, so this one ends the command itself.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        try:
            ensure_writable(folder, key)
        except UsageError as err:
            exit_with(f"error: {err}")
