"""`hydra/sweeper=compose_once` (resnet9's default): Hydra's basic sweeper, composing each job's config once.

Hydra's basic sweeper composes every job's config twice: once to check the whole batch before any job runs
(a bad override fails at once, not after hours of earlier jobs), and again when the launcher starts the job.
A composition cost about 0.05 s per job on a 2-core CPU (benchmarks/sweep.py, side by side), an eighth of
what a sweep job costs there beyond its training.
This sweeper keeps the check and hands the checked composition to the launcher, which then composes only
what it was not given (a job launched in another process, such as the joblib launcher's, composes there).
Sweeping itself (grids, ranges, batches) is the basic sweeper's, unchanged.
"""

# No `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where a
# dataclass with string annotations cannot be built.
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ComposeOnceSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.resnet9_sweeper.compose_once.ComposeOnceSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="compose_once", node=ComposeOnceSweeperConf, provider="resnet9"
)


def _plain(loader: Any) -> Any:
    return loader


class CheckedCompositions:
    """Hydra's config loader, which also hands out the compositions the sweeper checked, each once.

    A launcher changes the config it is given (the job's number and id), so a kept composition is given out
    once; asked again for the same overrides, the loader composes anew. Sent to another process, it is
    Hydra's own loader again: compositions kept here are of no use there."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def check(self, master_config: DictConfig, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of `batch` (raising on the first that fails) and keep the results for the launch."""
        self.kept = {
            (id(master_config), tuple(overrides)): self.loader.load_sweep_config(master_config, list(overrides))
            for overrides in batch
        }

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        kept = self.kept.pop((id(master_config), tuple(sweep_overrides)), None)
        return kept if kept is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:  # everything else: Hydra's loader
        return getattr(self.__dict__["loader"], name)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _plain, (self.loader,)


class ComposeOnceSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        loader = CheckedCompositions(hydra_context.config_loader)
        super().setup(
            hydra_context=dataclasses.replace(hydra_context, config_loader=loader),
            task_function=task_function,
            config=config,
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        self.hydra_context.config_loader.check(self.config, batch)
