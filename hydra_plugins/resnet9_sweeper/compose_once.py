"""`hydra/sweeper=compose_once` (resnet9's default): Hydra's basic sweeper, composing each job's config once.

Hydra's basic sweeper composes every job's config twice: once to check the whole batch before any job runs
(a bad override fails at once, not after hours of earlier jobs), and again when the launcher starts the job.
A composition cost about 0.05 s per job on a 2-core CPU (benchmarks/sweep.py, side by side), an eighth of
what a sweep job costs there beyond its training.
This sweeper keeps the check, extends it with the task's own (`check`: resnet9's schema and `_target_`
signatures, so a bad value in any job ends the sweep before the first trains), and hands the checked
composition to the launcher, which then composes only
what it was not given (a job launched in another process, such as the joblib launcher's, composes there).
Sweeping itself (grids, ranges, batches) is the basic sweeper's, unchanged.
"""

# No `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where a
# dataclass with string annotations cannot be built.
import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, open_dict


@dataclass
class ComposeOnceSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.resnet9_sweeper.compose_once.ComposeOnceSweeper"
    # A function (dotted name) that checks each job's composed config as its task will, raising on a bad one;
    # resnet9's grid option names resnet9.training.config.schema.validate. None: composition is the only check.
    check: Optional[str] = None  # noqa: UP045 (OmegaConf reads Optional, not X | None, in a dataclass)


ConfigStore.instance().store(
    group="hydra/sweeper", name="compose_once", node=ComposeOnceSweeperConf, provider="resnet9"
)


def _hydras_own_loader(loader: Any) -> Any:
    return loader


def _validate_job(check: Callable[[DictConfig], Any], number: int, overrides: Sequence[str], composed: DictConfig):
    """A job's config through the task's own check (resnet9's schema and target checks): a bad value in job 57
    of 100 ends the sweep before job 0 trains, in one line naming the job."""
    job = copy.deepcopy(composed)
    with open_dict(job):
        del job["hydra"]
    try:
        check(job)
    except CompactHydraException as err:  # resnet9's ConfigError is one
        raise type(err)(f"job {number} ({' '.join(overrides) or 'no overrides'}): {err}") from None


class CheckedCompositions:
    """Hydra's config loader, which also hands out the compositions the sweeper checked, each once.

    A launcher changes the config it is given (the job's number and id), so a kept composition is given out
    once; asked again for the same overrides, the loader composes anew. Sent to another process, it is
    Hydra's own loader again: compositions kept here are of no use there."""

    def __init__(self, loader: Any, check: Callable[[DictConfig], Any] | None = None) -> None:
        self.loader, self.job_check = loader, check
        self.kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def check(self, master_config: DictConfig, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of `batch` and validate it as its task will (raising on the first that fails, before
        any job trains), and keep the results for the launch."""
        self.kept = {}
        for number, overrides in enumerate(batch):
            composed = self.loader.load_sweep_config(master_config, list(overrides))
            if self.job_check is not None:
                _validate_job(self.job_check, number, overrides, composed)
            self.kept[(id(master_config), tuple(overrides))] = composed

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        kept = self.kept.pop((id(master_config), tuple(sweep_overrides)), None)
        return kept if kept is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:  # everything else: Hydra's loader
        return getattr(self.__dict__["loader"], name)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _hydras_own_loader, (self.loader,)


class ComposeOnceSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict | None = None, check: str | None = None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.job_check = check

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        check = get_method(self.job_check) if self.job_check else None
        loader = CheckedCompositions(hydra_context.config_loader, check)
        super().setup(
            hydra_context=dataclasses.replace(hydra_context, config_loader=loader),
            task_function=task_function,
            config=config,
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        self.hydra_context.config_loader.check(self.config, batch)
