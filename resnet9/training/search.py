"""hparams_search=optuna, what the trainer and the report share with the sweeper (hydra_plugins/resnet9_sweeper/
optuna_sweeper.py): where the study lives, how to open it, the pruner, a job's trial, and the study as text.

The study lives in a database: `hydra.sweeper.storage` (any SQLAlchemy URL, e.g. postgresql://user@host/db for
workers on several machines), by default `sqlite:///<sweep folder>/study.db`. The sweeper asks the study for a
trial and launches a job with `hydra.sweeper.trial=<its number>`; the job's `TrialReporter` reports the test
accuracy after every epoch and ends the job when the pruner says so (metrics.json: "status": "pruned").

Optuna is the `search` extra, not the core install (the GPU carry skips it): imported only where a search needs it.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resnet9.core.errors import TrialPruned, UsageError
from resnet9.training.listeners import Listener, one_line
from resnet9.training.loop import EpochResult
from resnet9.training.state import TrainState

log = logging.getLogger("resnet9.training.search")
SQLITE_FILE = "study.db"
OPEN_ATTEMPTS = 3
SQLITE_TIMEOUT_S = 60  # workers sharing one SQLite file wait for its lock this long, not fail at once


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's database: `storage` as given, or an SQLite file in the sweep folder."""
    return storage or f"sqlite:///{(Path(sweep_dir) / SQLITE_FILE).resolve()}"


def shown_url(url: str) -> str:
    """`url` with its password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, heartbeat_s: int | None = None) -> Any:
    """Optuna's RDB storage on `url` (created on first use), or a one-line UsageError before any trial trains.

    `heartbeat_s`: the sweeper's storage records a heartbeat for its running trials; a trial whose heartbeat
    stopped for 2 x that (its process was killed) is stale, and the next sweeper marks it failed."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise UsageError(
            f"hydra.sweeper.storage={url} is not a database URL; give an SQLAlchemy URL such as "
            f"sqlite:///study.db or postgresql://user:password@host/database, or null for <sweep folder>/{SQLITE_FILE}"
        ) from None
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if backend == "sqlite" else {"pool_pre_ping": True}
    beat = {"heartbeat_interval": heartbeat_s, "grace_period": 2 * heartbeat_s} if heartbeat_s else {}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the heartbeat is experimental in Optuna, and the way to mark stale trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
        except ImportError as err:  # the URL's driver (psycopg2 for postgresql://): no point in trying again
            problem = err
            break
        except Exception as err:  # unreachable server, unwritable file, not a study database, or a race
            problem = err  # (workers started together both create the tables: one of them may lose once)
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
    raise UsageError(
        f"cannot open the study's database hydra.sweeper.storage={shown_url(url)} ({one_line(problem)[:300]}); "
        f"check the URL, that its server answers and that its driver is installed"
    )


def make_pruner(spec: Any) -> Any:
    """`hydra.sweeper.pruner`: a `_target_` config (default: optuna.pruners.MedianPruner), or none/null for none."""
    import optuna
    from hydra.utils import instantiate

    if spec is None or spec == "none":
        return optuna.pruners.NopPruner()
    if isinstance(spec, DictConfig | dict) and "_target_" in spec:
        return instantiate(spec)
    raise UsageError(
        f"hydra.sweeper.pruner={spec} is not a pruner; give none, or a config with _target_ such as "
        f"optuna.pruners.MedianPruner (see conf/hparams_search/optuna.yaml)"
    )


class TrialReporter(Listener):
    """The job's trial: its test accuracy after every epoch goes to the study, and when the pruner says the trial
    falls behind the others at that epoch, training ends there (`TrialPruned`: a result, not a failure)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_run_start(self, state: TrainState) -> None:
        state.record.update(optuna_trial=self.trial.number)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        self.trial.report(row["test_acc"], row["epoch"])
        if row["epoch"] < state.record["config"]["epochs"] and self.trial.should_prune():
            state.record.update(pruned_at_epoch=row["epoch"])
            raise TrialPruned(self.trial.number, row["epoch"], row["test_acc"])


def trial_listeners() -> list[Listener]:
    """A `TrialReporter` for a job the Optuna sweeper launched (it sets hydra.sweeper.trial); else none."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    number = hydra_cfg.sweeper.get("trial")
    if number is None:
        return []
    import optuna

    sweeper = hydra_cfg.sweeper
    storage = open_storage(storage_url(sweeper.storage, Path(hydra_cfg.sweep.dir)))
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=make_pruner(sweeper.pruner))
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return [TrialReporter(optuna.trial.Trial(study, trial_id))]


def describe_study(url: str, name: str) -> str:
    """The study as Markdown: its best trial, every trial's state, value and parameters, and the parameters'
    importances (Optuna's fANOVA over the completed trials)."""
    try:
        import optuna
    except ImportError:
        return f"(study {name}: install the search extra to read it)"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    lines = [f"## Optuna study `{name}` ({shown_url(url)}): {len(trials)} trials", ""]
    done = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if done:
        best = study.best_trial
        values = " ".join(f"{key}={best.params[key]:.4g}" for key in keys if key in best.params)
        lines += [f"best: trial {best.number}, value {best.value:.4f} ({values})", ""]
    lines += ["| trial | state | value | epochs reported | " + " | ".join(keys) + " |"]
    lines += ["|" + "---|" * (4 + len(keys))]
    for trial in trials:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        params = " | ".join(_param(trial.params.get(key)) for key in keys)
        state = trial.state.name.lower() + (f" ({trial.user_attrs['note']})" if "note" in trial.user_attrs else "")
        lines.append(f"| {trial.number} | {state} | {value} | {len(trial.intermediate_values)} | {params} |")
    lines += ["", f"parameter importances: {_importances(study, len(done))}"]
    return "\n".join(lines) + "\n"


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _importances(study: Any, completed: int) -> str:
    import optuna

    if completed < 2:  # Optuna would split the importance evenly: a number that means nothing yet
        return f"none yet ({completed} completed trial{'s' * (completed != 1)}; they need two or more)"
    try:
        importances = optuna.importance.get_param_importances(study)
    except Exception as err:  # a parameter that never varied, or another reason fANOVA cannot say
        return f"none yet ({completed} completed trials; {one_line(err)[:120]})"
    return ", ".join(f"{key} {value:.2f}" for key, value in importances.items())
