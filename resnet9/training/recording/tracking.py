"""The experiment tracker: W&B, or none. (metrics.json and the checkpoint are written by listeners.py.)

Trackers share one small interface — `log`, `log_images`, `summary`, `finish` — so the trainer never knows
which one it talks to. `WandbTracker` imports wandb only when it is chosen (`logger=wandb`, the default);
`NullTracker` (`logger=none`) does nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from resnet9 import __version__
from resnet9.core.errors import UsageError, first_line
from resnet9.training.sweeps import sweep

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code a run trains with, for its records (metrics.json, the W&B config): the installed package's
    version, and where it runs from a git checkout, the commit and whether the tree had uncommitted changes."""
    found: dict[str, Any] = {"package": __version__}
    checkout = Path(__file__).resolve().parents[3]
    git = ["git", "-C", str(checkout)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=10)  # fmt: skip
            found |= {"commit": commit.stdout.strip(), "dirty": bool(changes.stdout.strip())}
    except (OSError, subprocess.SubprocessError):  # no git here, or a checkout too slow to ask: the version says it
        pass
    return found


def start(logger_cfg: DictConfig, **run: object) -> Tracker:
    """The experiment tracker of the `logger` group (W&B or none) for one run (config, dir, name, group, run_id)."""
    return instantiate(logger_cfg, _convert_="all")(**run)


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_images(self, images: dict[str, Path], step: int) -> None: ...

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int | None = None) -> None: ...

    def log_checkpoint_file(self, path: Path) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None: ...


@dataclass(frozen=True)
class RunIdentity:
    """How a run shows up in W&B: its name, its group, its tags, and what goes into its config about the sweep."""

    name: str
    group: str | None = None
    tags: tuple[str, ...] = ()
    sweep: dict[str, str] | None = None


def run_identity(group: str | None = None) -> RunIdentity:
    """A single run: named after its overrides. A sweep's job: named after the values of the keys the sweep
    varies (`lr_finder.scale=0.5 seed=1`), in the group of its setting (those values but the seed), tagged
    with the sweep's id. `group` (logger.group) overrides the group."""
    if not HydraConfig.initialized():
        return RunIdentity("run", group)
    hydra_cfg = HydraConfig.get()
    overrides = sweep.task_overrides(hydra_cfg)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return RunIdentity(hydra_cfg.job.override_dirname or "defaults", group)
    sweep_dir = Path(hydra_cfg.sweep.dir)
    description = sweep.read(sweep_dir) or {
        "id": sweep.sweep_id(sweep_dir),
        "varies": [o.partition("=")[0] for o in overrides],
    }
    name = sweep.setting(overrides, description["varies"], with_seed=True, short=True) or f"job {hydra_cfg.job.num}"
    setting = sweep.setting(overrides, description["varies"])
    if group is None:
        group = f"{description['id']}: {setting}" if setting else description["id"]
    return RunIdentity(name, group, (description["id"],), {"id": description["id"], "setting": setting or "(all jobs)"})


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

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        pass

    def log_checkpoint_file(self, path: Path) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        pass


class WandbTracker:
    """One W&B run per job: the config at init, per-step and per-epoch metrics, figures, tables, summary numbers.

    Offline mode writes `<dir>/wandb/offline-run-*/run-*.wandb`, uploaded later with `wandb sync`. It needs
    no network and no login, so it never prompts or waits. A training run (`job_type="train"`) charts its
    epoch metrics against the epoch (`epoch/epoch`) and keeps both the last and the highest test accuracy
    in its summary. `system_metrics`: W&B's charts of CPU/GPU use (the trainer passes `logger.system_metrics`,
    whose `auto` means on for CUDA runs and off on a CPU, where the sampler competes with training for cores).
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
        job_type: str = "train",
        log_checkpoint: bool = False,
        system_metrics: bool | str = False,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise UsageError("logger=wandb but wandb is not installed; pip install wandb, or use logger=none") from None
        self._wandb, self.log_checkpoint = wandb, log_checkpoint
        _list_packages_once(wandb)
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                mode=mode,
                group=group,
                name=name,
                tags=list(tags),
                config=readable(config),
                dir=str(dir),
                job_type=job_type,
                id=run_id,  # a resumed training continues its own W&B run
                resume="allow" if run_id else None,
                # console="off": the progress bar stays ours; W&B records metrics, not terminal output.
                # x_disable_stats: W&B's sampler of CPU/GPU use runs beside training; see `system_metrics`.
                settings=wandb.Settings(
                    console="off", silent=True, init_timeout=60, x_disable_stats=not system_metrics
                ),
            )
        except Exception as err:  # e.g. online mode without login or network
            reason = first_line(err)
            raise UsageError(
                f"W&B could not start a run in {mode} mode ({reason}); use logger.mode=offline or logger=none"
            ) from None
        if job_type == "train":
            self.run.define_metric("epoch/epoch")
            self.run.define_metric("epoch/*", step_metric="epoch/epoch")
            for summary in ("max", "last"):
                self.run.define_metric("epoch/test_acc", step_metric="epoch/epoch", summary=summary)
        if mode == "offline":
            log.info("W&B offline run in %s; upload later with: wandb sync %s", self.run.dir, Path(self.run.dir).parent)

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        self.run.log({key: self._wandb.Image(str(path)) for key, path in images.items()}, step=step)

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        columns, data = _table(rows)
        self.run.log({key: self._wandb.Table(columns=columns, data=data)}, step=step)

    def log_checkpoint_file(self, path: Path) -> None:
        """The checkpoint as a W&B model artifact, when `logger.log_checkpoint=true` (a copy of last.pt per run)."""
        if self.log_checkpoint:
            artifact = self._wandb.Artifact(f"checkpoint-{self.run.id}", type="model")
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is not None:
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        """`preempted`: stopped by a signal, resumable: W&B shows it pre-empted, not failed."""
        if preempted:
            self.run.mark_preempting()
        self.run.finish(exit_code=exit_code)


def _list_packages_once(wandb: Any) -> None:
    """Each W&B run records the installed packages (its requirements.txt) by reading every package's metadata:
    0.2 s per run on a small CPU, and the same list for every job of a sweep. This process reads it once."""
    listing = getattr(wandb.util, "working_set", None)  # what wandb.init calls (wandb 0.31); else leave it be
    if listing is None or getattr(listing, "read_once", False):
        return
    packages: list[Any] = []

    def working_set() -> list[Any]:
        if not packages:
            packages.extend(listing())
        return packages

    working_set.read_once, working_set.original = True, listing  # type: ignore[attr-defined]
    wandb.util.working_set = working_set


def check_login(logger_cfg: Any) -> None:
    """Before any work: W&B in online mode needs a login, which would otherwise fail only after the data load
    and the range test. Looks for the key (environment, ~/.netrc, W&B settings) without network or prompt."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbTracker") or logger_cfg.get("mode") != "online":
        return
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):  # W&B itself will not go online
        return
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise UsageError(
            "logger.mode=online but W&B has no login here; run `wandb login` (or set WANDB_API_KEY), or use "
            "logger.mode=offline (upload later with wandb sync) or logger=none"
        )


def readable(config: Any) -> Any:
    """The config without Hydra's `_target_`/`_partial_` keys: what a person compares runs by in W&B."""
    if isinstance(config, dict):
        return {key: readable(value) for key, value in config.items() if not str(key).startswith("_")}
    return config
