"""`hydra/launcher=slurm`: Hydra's submitit SLURM launcher, and `jobs_per_task` to run several sweep jobs in one
SLURM task.

A SLURM job pays for a new process before it trains: the scheduler's pass, Python's imports, the data read from
disk, a range-test cache looked up, a model compiled (about 15 s on the test cluster), where the next job of a
local sweep pays a fraction of a second (resnet9/core/jobcache.py). With `jobs_per_task: k`, the sweep's jobs go
to SLURM k at a time: each array task runs its k jobs one after another in one process, as Hydra's basic launcher
does, so they share what jobcache keeps. Each job keeps its own folder, metrics.json, last.pt and W&B run.

A task that SLURM warns (SIGUSR2 at the time limit or a pre-emption) is requeued whole: the job that was training
resumes from its last.pt, and the jobs before it, already complete, end at once (a completed run trains no
further). A task cancelled or failed takes the jobs it had not yet run with it; rerunning the sweep runs them.
"""

# No `from __future__ import annotations`: Hydra imports plugin modules before they are in sys.modules, where a
# dataclass with string annotations cannot be built. submitit is imported only when a sweep launches.
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from resnet9.core.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class PackedSlurmConf(SlurmQueueConf):
    """submitit_slurm's settings and `jobs_per_task` (conf/hydra/launcher/slurm.yaml sets resnet9's defaults)."""

    _target_: str = "hydra_plugins.resnet9_launcher.packed_slurm.PackedSlurmLauncher"
    jobs_per_task: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="packed_slurm", node=PackedSlurmConf, provider="resnet9")


class PackedSlurmLauncher(SlurmLauncher):
    """submitit's SLURM launcher; with `jobs_per_task` > 1 one array task runs that many jobs in one process."""

    def __init__(self, jobs_per_task: int = 1, **params: Any) -> None:
        if jobs_per_task < 1:
            raise UsageError(
                f"hydra.launcher.jobs_per_task={jobs_per_task}: give 1 (one SLURM task per job) or more (that "
                f"many jobs one after another in each task)"
            )
        super().__init__(**params)
        self.jobs_per_task = jobs_per_task

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.jobs_per_task == 1:
            return super().launch(job_overrides, initial_job_idx)
        assert self.config is not None
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._job(list(overrides), initial_job_idx + n) for n, overrides in enumerate(job_overrides)]
        packs = [
            JobsInOneTask(self, jobs[at : at + self.jobs_per_task]) for at in range(0, len(jobs), self.jobs_per_task)
        ]
        executor = self._executor()
        with executor.batch():  # one SLURM array, a task per pack
            tasks = [executor.submit(pack) for pack in packs]
        return [result for task in tasks for result in task.results()[0]]

    def _job(self, overrides: list[str], number: int) -> tuple:
        """The arguments of one job, as the base launcher gives them to `__call__`."""
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        return overrides, "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()

    def _executor(self) -> Any:
        """A submitit SLURM executor with this launcher's settings, as the base launcher makes one: submitit's own
        names for the generic settings, `slurm_<name>` for the others."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        max_num_timeout = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{name if name in generic else f"slurm_{name}": v for name, v in params.items()})
        return executor


class JobsInOneTask:
    """The sweep jobs one SLURM task runs, one after another in its process; requeued whole (`checkpoint`)."""

    def __init__(self, launcher: PackedSlurmLauncher, jobs: list[tuple]) -> None:
        self.launcher, self.jobs = launcher, jobs

    def __call__(self) -> list[JobReturn]:
        return [self.launcher(*job) for job in self.jobs]

    def checkpoint(self) -> Any:
        """What submitit requeues on SIGUSR2: the same jobs; those already complete end at once when it reruns."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)
