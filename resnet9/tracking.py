"""The experiment tracker: W&B, or none. (metrics.json and the checkpoint are written by listeners.py.)

Trackers share one small interface — `log`, `log_images`, `summary`, `finish` — so the trainer never knows
which one it talks to. `WandbTracker` imports wandb only when it is chosen (`logger=wandb`, the default);
`NullTracker` (`logger=none`) does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from resnet9.errors import UsageError

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_images(self, images: dict[str, Path], step: int) -> None: ...

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of all runs of one sweep, after its folder: multirun/<date>/<time> -> sweep-<date>_<time>."""
    return f"sweep-{sweep_dir.parent.name}_{sweep_dir.name}"


def run_name_and_group(group: str | None) -> tuple[str, str | None]:
    """Name a run after its overrides; put every job of one sweep into one group (W&B compares groups)."""
    if not HydraConfig.initialized():
        return "run", group
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "defaults"
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = sweep_group(Path(hydra_cfg.sweep.dir))
    return name, group


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
