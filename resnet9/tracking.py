"""Where results go: metrics.json and the checkpoint (always, written atomically) and an experiment tracker.

Trackers share one small interface — `log`, `log_images`, `summary`, `finish` — so the trainer never knows
which one it talks to. `WandbTracker` imports wandb only when it is chosen (`logger=wandb`, the default);
`NullTracker` (`logger=none`) does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resnet9.config import UsageError

log = logging.getLogger(__name__)


def _replace_atomically(path: Path, write: Any) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file.

    A failure (disk full, permissions, a folder in the way) leaves the previous file as it was and ends the
    run with one line; rerunning the same folder then resumes from the last checkpoint that was written.
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


class WritableOutput(Callback):
    """Hydra callback: refuse an output folder that cannot be written, in one line, before anything runs.

    Hydra creates the folder itself (and its log file) before the job starts; without this check a
    read-only or blocked location would end in a traceback from inside Hydra. Hydra turns a callback's
    exceptions into warnings, so this one prints its line and exits (status 2) itself.
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
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


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


def write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    _replace_atomically(path, write)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _replace_atomically(path, lambda tmp: torch.save(state, tmp))


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of all runs of one sweep, after its folder: multirun/<date>/<time> -> sweep-<date>_<time>."""
    return f"sweep-{sweep_dir.parent.name}_{sweep_dir.name}"


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, [[row.get(column) for column in columns] for row in rows]


class NullTracker:
    """logger=none: metrics stay in metrics.json only."""

    def __init__(self, **_: Any) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, images: dict[str, Path], step: int) -> None:
        pass

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """One W&B run per job: resolved config at init, per-step and per-epoch metrics, plots, summary numbers.

    Offline mode writes `<dir>/wandb/offline-run-*/run-*.wandb`, uploaded later with `wandb sync`. It needs
    no network and no login, so it never prompts or waits.
    """

    def __init__(
        self,
        project: str,
        mode: str,
        config: dict[str, Any],
        dir: Path,
        name: str | None = None,
        group: str | None = None,
        entity: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        run_id: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise UsageError("logger=wandb but wandb is not installed; pip install wandb, or use logger=none") from None
        self._wandb = wandb
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                mode=mode,
                group=group,
                name=name,
                tags=list(tags),
                config=config,
                dir=str(dir),
                job_type="train",
                id=run_id,  # a resumed training continues its own W&B run
                resume="allow" if run_id else None,
                # console="off": the progress bar stays ours; W&B records metrics, not terminal output.
                settings=wandb.Settings(console="off", silent=True, init_timeout=60),
            )
        except Exception as err:  # e.g. online mode without login or network
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise UsageError(
                f"W&B could not start a run in {mode} mode ({reason}); use logger.mode=offline or logger=none"
            ) from None
        if mode == "offline":
            log.info("W&B offline run in %s; upload later with: wandb sync %s", self.run.dir, Path(self.run.dir).parent)

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        self.run.log({key: self._wandb.Image(str(path)) for key, path in images.items()}, step=step)

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int) -> None:
        columns, data = _table(rows)
        self.run.log({key: self._wandb.Table(columns=columns, data=data)}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is not None:
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
