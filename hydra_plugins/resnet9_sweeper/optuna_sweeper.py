"""`hydra/sweeper=resnet9_optuna` (what `hparams_search=optuna` selects): a current Optuna behind Hydra's
`--multirun`, on Optuna's ask-and-tell and whatever Hydra launcher the sweep uses.

Hydra's own optuna sweeper (hydra-optuna-sweeper 1.3.0, the last release) holds Optuna at 2.10.1, whose RDB
storage fails with SQLAlchemy 2: no study could outlive its process. This one is small and ours:

- the study lives in a database (`storage`, default `sqlite:///<sweep folder>/study.db`;
  resnet9/training/sweeps/search.py), and a search's sweep folder is multirun/optuna/<study name>
  (conf/hparams_search/optuna.yaml): the same command again finds its study;
- a password in `storage` is never written down: the sweeper keeps it in its environment for itself and its jobs,
  and masks it (`***`) in the config, the overrides and the command line before Hydra or W&B records them;
- each process holds one storage (one engine and its connections) and closes it at the end; every call to the
  database rides out an outage of up to `storage_retry_s`, and a longer one ends the search in one line, its trials
  left to the next invocation (resnet9/training/sweeps/study_storage.py);
- with a fixed sampler seed, each trial's sampler is seeded from (seed, trial number): workers started together
  draw different values, and one worker's search is reproducible (resnet9/training/sweeps/study_sampler.py);
- `n_trials` is the study's total: a rerun of the same command, or another worker started on the same storage,
  asks for trials only until the study holds `n_trials` that are done, pruned, failed in training or running;
- every trial runs in the folder named after its number (`<sweep folder>/<trial>`), so workers never collide;
- while a batch runs, the sweeper records a heartbeat for its trials; a trial whose process was killed stops
  beating and the next sweeper marks it failed (its metrics.json says so) and asks for a new one in its place;
- the job reports its test accuracy per epoch (`hydra.sweeper.trial` tells it its trial) and the pruner may end
  it: Optuna records the trial as pruned, not failed.

The search space is Hydra's override grammar, in `params` or on the command line: `tag(log, interval(a, b))`
(float; `tag(int, ...)` for integers), `range(a, b[, step])`, `choice(a, b)` or `a,b`.
"""

# No `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where a
# dataclass with string annotations cannot be built. Optuna is imported only when a search runs: Hydra imports
# every plugin module at start, and the core install (the GPU carry) has no Optuna.
import contextlib
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf reads the dataclass's annotations)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.resnet9_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "lr_range"
    storage: Optional[str] = None  # noqa: UP045  an SQLAlchemy URL; null: sqlite:///<sweep folder>/study.db
    n_trials: int = 20  # the study's total, over every invocation and worker
    n_jobs: int = 1  # trials per batch handed to the launcher (joblib, submitit: run at once)
    max_failure_rate: float = 0.5  # of n_trials failed in training, above which the search stops
    heartbeat_s: int = 60  # a trial without a heartbeat for 2 x this is taken for killed
    storage_retry_s: int = 60  # a database that does not answer is tried again this long, then the search stops
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006
    trial: Optional[int] = None  # noqa: UP045  set by the sweeper for each job: the trial the job reports to


ConfigStore.instance().store(group="hydra/sweeper", name="resnet9_optuna", node=OptunaSweeperConf, provider="resnet9")

# What counts towards n_trials: a failed trial only when it failed in training (user attr), not one whose process
# was killed (replaced) nor one asked for after the study was full (never run).
COUNTED_ATTR = "counted"


def distribution(override: Override) -> Any:
    """An Optuna distribution from one sweep override."""
    import optuna.distributions as dist

    value, tags = override.value(), getattr(override.value(), "tags", set())
    if isinstance(value, IntervalSweep):
        if "int" in tags:
            return dist.IntDistribution(int(value.start), int(value.end), log="log" in tags)
        return dist.FloatDistribution(value.start, value.end, log="log" in tags)
    if isinstance(value, RangeSweep) and all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
        last = value.start + (len(range(value.start, value.stop, value.step)) - 1) * value.step
        return dist.IntDistribution(value.start, last, step=value.step, log="log" in tags)
    if isinstance(value, ChoiceSweep | RangeSweep):
        return dist.CategoricalDistribution(list(override.sweep_string_iterator()))
    raise ValueError(f"{override.input_line}: not a search dimension")


def search_space(params: dict[str, str], arguments: list[str]) -> "tuple[dict[str, Any], list[str]]":
    """`params` and the command line's sweep overrides as distributions; the other overrides as they are."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()] + list(arguments))
    space, fixed = {}, []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def as_override(key: str, value: Any) -> str:
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def counts(trial: Any) -> bool:
    from optuna.trial import TrialState

    running = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return trial.state in running or (trial.state == TrialState.FAIL and trial.user_attrs.get(COUNTED_ATTR, False))


@contextlib.contextmanager
def heartbeats(storage: Any, trial_ids: Sequence[int], interval_s: float) -> Iterator[None]:
    """A heartbeat for each running trial of this process, every `interval_s`, while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as err:  # a locked or lost database: the next beat tries again
                    log.warning("could not record a heartbeat: %s", err)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, **_instantiated: Any) -> None:
        # Hydra builds the sampler and pruner it finds in the settings; the sweeper reads the settings themselves
        # in `setup` (the sampler's seed moves on per invocation, and every job builds the pruner again)
        self.settings: Any = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
        self.storage: Any = None
        self.study_id: int | None = None
        self.masked_storage: str | None = None  # hydra.sweeper.storage with its password masked, when it had one

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self._keep_password_off_disk(config)  # before the launcher takes the config: jobs are composed from it
        self.config, self.hydra_context, self.settings = config, hydra_context, config.hydra.sweeper
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from resnet9.core.errors import exit_with
        from resnet9.training.sweeps import search
        from resnet9.training.sweeps.study_storage import StudyUnavailable

        space, fixed = self._check_settings(arguments)
        # Optuna's heartbeat is meant for Study.optimize; this sweeper beats for its trials itself (`heartbeats`)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        # (a password given in a config file rather than on the command line: each job's config masks it too)
        masked = [f"hydra.sweeper.storage='{self.masked_storage}'"] if self.masked_storage else []
        try:
            study = self._open_study(search.storage_url(self.settings.storage, sweep_dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            self._fail_killed_trials(study)
            returns = []
            while batch := self._ask(study, space, sweep_dir):
                jobs = [
                    [*fixed, *(as_override(key, value) for key, value in trial.params.items()), *masked,
                     f"hydra.sweeper.trial={trial.number}", f"hydra.sweep.subdir={trial.number}"]
                    for trial in batch
                ]  # fmt: skip
                with self._given_back_if_not_run(study, batch):
                    self.validate_batch_is_legal(jobs)
                    with heartbeats(self.storage, [self._trial_id(t.number) for t in batch], self.settings.heartbeat_s):
                        results = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
                for trial, result in zip(batch, results, strict=True):
                    self._tell(study, trial, result)
                returns.append(results)
                self._check_failures(study)
            self._log_best(study)
        except StudyUnavailable as err:  # one line, not Hydra's report of an error (the message and a hint)
            exit_with(f"error: {err}")
        finally:  # this process's connections given back (the report opens its own at the end)
            search.close_storages()
        return returns

    def _keep_password_off_disk(self, config: DictConfig) -> None:
        """A password in hydra.sweeper.storage: kept in this process's environment (RESNET9_STORAGE_PASSWORD, which
        jobs inherit in this process or a launcher's), and masked (`***`) in the config, its overrides (each job's
        config is composed from them) and the command line as this process shows it (W&B records it), before Hydra
        writes multirun.yaml and each job's .hydra/. (A URL without one: libpq reads PGPASSWORD or ~/.pgpass.)"""
        from resnet9.training.sweeps import search

        storage = config.hydra.sweeper.storage
        masked, password = search.hide_password(storage) if isinstance(storage, str) else (storage, None)
        if password is None:
            return
        os.environ[search.PASSWORD_ENV] = password
        self.masked_storage = masked

        def without_password(line: str) -> str:
            key = line.partition("=")[0]
            if key.lstrip("+~") == "hydra.sweeper.storage":
                return f"{key}='{masked}'"
            return line.replace(storage, masked)

        with read_write(config), open_dict(config):
            config.hydra.sweeper.storage = masked
            config.hydra.overrides.hydra = [without_password(line) for line in config.hydra.overrides.hydra]
        sys.argv = [without_password(arg) for arg in sys.argv]

    @contextlib.contextmanager
    def _given_back_if_not_run(self, study: Any, batch: list[Any]) -> Iterator[None]:
        """A batch that ends without results (a job that cannot be composed, a signal): its trials failed and not
        counted, so that a rerun asks for others at once instead of waiting for their heartbeat to go stale."""
        try:
            yield
        except BaseException as err:
            for trial in batch:
                with contextlib.suppress(Exception):
                    trial.set_user_attr("note", f"not finished: {type(err).__name__}")
                    study.tell(trial, state=optuna_state("FAIL"))
            raise

    def _check_settings(self, arguments: list[str]) -> "tuple[dict[str, Any], list[str]]":
        """Every setting checked before the study opens: one line naming what is wrong (resnet9.core.errors)."""
        from resnet9.core.errors import UsageError
        from resnet9.training.sweeps import search

        settings = self.settings
        if settings.direction not in ("maximize", "minimize"):
            raise UsageError(f"hydra.sweeper.direction={settings.direction}: give maximize or minimize")
        for key in ("n_trials", "n_jobs", "heartbeat_s", "storage_retry_s"):
            if not isinstance(settings[key], int) or settings[key] < 1:
                raise UsageError(f"hydra.sweeper.{key}={settings[key]}: give a whole number >= 1")
        if not 0 <= settings.max_failure_rate <= 1:
            raise UsageError(f"hydra.sweeper.max_failure_rate={settings.max_failure_rate}: give a fraction, 0 to 1")
        search.make_pruner(settings.pruner)  # (raises on a bad one)
        try:
            space, fixed = search_space(OmegaConf.to_container(settings.params or {}), arguments)
        except ValueError as err:
            hint = "give tag(log, interval(a, b)), range(a, b) or choice(a, b)"
            raise UsageError(f"hydra.sweeper.params: {err}; {hint}") from None
        if not space:
            raise UsageError("nothing to search: give hydra.sweeper.params or a sweep on the command line (a=1,2)")
        return space, fixed

    def _open_study(self, url: str) -> Any:
        """The study on `url`, created or joined (another worker's, an earlier invocation's)."""
        import optuna

        from resnet9.training.sweeps import search

        self.storage = search.open_storage(
            url, heartbeat_s=self.settings.heartbeat_s, retry_s=self.settings.storage_retry_s
        )
        study = optuna.create_study(
            study_name=self.settings.study_name, storage=self.storage, sampler=self._sampler(),
            pruner=search.make_pruner(self.settings.pruner), direction=self.settings.direction, load_if_exists=True,
        )  # fmt: skip
        self.study_id = self.storage.get_study_id_from_name(self.settings.study_name)
        done = sum(counts(trial) for trial in study.get_trials(deepcopy=False))
        log.info("Optuna study %s in %s: %d of %d trials", study.study_name, search.shown_url(url), done,
                 self.settings.n_trials)  # fmt: skip
        return study

    def _sampler(self) -> Any:
        """The sampler. With a seed: a new one for each trial, seeded from (seed, trial number), so that workers
        started together draw different values and one worker's search repeats
        (resnet9/training/sweeps/study_sampler.py).
        Without (`seed: null`): one for this invocation, seeded at random by Optuna."""
        from hydra.utils import instantiate

        spec = self.settings.sampler
        if not spec:
            return None
        seed = spec.get("seed")
        if seed is None:
            return instantiate(spec)
        from resnet9.training.sweeps.study_sampler import TrialSeededSampler

        return TrialSeededSampler(lambda trial_seed: instantiate(spec, seed=trial_seed), seed)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _fail_killed_trials(self, study: Any) -> None:
        """Trials whose heartbeat stopped (their process was killed): failed, not counted, their folder told."""
        import optuna
        from optuna.trial import TrialState

        from resnet9.core import files

        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():  # experimental since Optuna 2.9, and the one public way to do this
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            record_path = Path(trial.user_attrs.get("job_dir", "/nonexistent")) / "metrics.json"
            if trial.number not in running or not record_path.is_file():
                continue
            log.warning("trial %d was killed (no heartbeat): failed; a new trial takes its place", trial.number)
            with contextlib.suppress(OSError, ValueError):  # a record we cannot read: the report says so itself
                record = json.loads(record_path.read_text())
                if isinstance(record, dict) and record.get("status") == "running":
                    record.update(status="failed", error="killed: its search process stopped; a new trial replaced it")
                    files.write_json(record_path, record)

    def _ask(self, study: Any, space: dict[str, Any], sweep_dir: Path) -> list[Any]:
        """Up to n_jobs new trials, none beyond the study's n_trials (counted over every worker)."""
        batch = []
        while len(batch) < self.settings.n_jobs:
            if sum(counts(t) for t in study.get_trials(deepcopy=False)) >= self.settings.n_trials:
                break
            trial = study.ask(space)
            self.storage.record_heartbeat(self._trial_id(trial.number))  # stale from now on if this process dies
            ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t)]
            if len(ahead) >= self.settings.n_trials:  # another worker filled the study meanwhile: never run it
                trial.set_user_attr("note", "not run: the study already had n_trials")
                study.tell(trial, state=optuna_state("FAIL"))
                break
            trial.set_user_attr("job_dir", str((sweep_dir / str(trial.number)).resolve()))
            batch.append(trial)
        return batch

    def _tell(self, study: Any, trial: Any, result: JobReturn) -> None:
        """The job's result to the study: its value, pruned, or failed (counted: a failure of training)."""
        import math

        from resnet9.core.errors import TrialPruned
        from resnet9.training.sweeps.study_storage import StudyUnavailable

        error = result._return_value if result.status == JobStatus.FAILED else None  # (not raised again here)
        if isinstance(error, TrialPruned):
            study.tell(trial, state=optuna_state("PRUNED"))
            return
        if isinstance(error, StudyUnavailable):  # not the trial's failure: another trial takes its place, if the
            trial.set_user_attr("note", "not finished: its database did not answer")  # database answers by now
            study.tell(trial, state=optuna_state("FAIL"))
            return
        value = result._return_value if error is None else None
        if isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, float(value))
            return
        reason = str(error).splitlines()[0][:200] if error is not None else f"the job returned {value!r}"
        trial.set_user_attr(COUNTED_ATTR, True)
        trial.set_user_attr("note", reason)
        study.tell(trial, state=optuna_state("FAIL"))
        log.warning("trial %d failed: %s", trial.number, reason)

    def _check_failures(self, study: Any) -> None:
        from optuna.trial import TrialState

        from resnet9.core.errors import UsageError

        failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if counts(t)]
        if len(failed) > self.settings.max_failure_rate * self.settings.n_trials:
            raise UsageError(
                f"{len(failed)} of the study's {self.settings.n_trials} trials failed in training, more than "
                f"hydra.sweeper.max_failure_rate={self.settings.max_failure_rate} allows; see their metrics.json"
            )

    def _log_best(self, study: Any) -> None:
        from optuna.trial import TrialState

        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.info(f"Best parameters: {study.best_params}")
            log.info(f"Best value: {study.best_value}")


def optuna_state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
