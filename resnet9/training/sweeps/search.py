"""hparams_search=optuna, what the trainer and the report share with the sweeper (hydra_plugins/resnet9_sweeper/
optuna_sweeper.py): where the study lives, how to open it, the pruner, a job's trial, and the study as text.

The study lives in a database: `hydra.sweeper.storage` (any SQLAlchemy URL, e.g. postgresql://user@host/db for
workers on several machines), by default `sqlite:///<sweep folder>/study.db`, where the sweep folder of a search is
multirun/optuna/<study name> unless hydra.sweep.dir says otherwise: the same command again finds its study. A
password in the URL is never written down: files hold the URL with `***` in its place (`hide_password`), and the
sweeper keeps the password in RESNET9_STORAGE_PASSWORD for its own process and its jobs' (`connect_url`).
The sweeper asks the study for a trial and launches a job with `hydra.sweeper.trial=<its number>`; the job's
`TrialReporter` reports the test accuracy after every epoch and ends the job when the pruner says so
(metrics.json: "status": "pruned").

Optuna is the `search` extra, not the core install (the GPU carry skips it): imported only where a search needs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resnet9.core.errors import TrialPruned, UsageError
from resnet9.training.engine.lifecycle import Listener, one_line
from resnet9.training.engine.loop import EpochResult
from resnet9.training.engine.state import TrainState

log = logging.getLogger(__name__)
SQLITE_FILE = "study.db"
MASK = "***"  # a password as every file the search writes shows it
PASSWORD_ENV = "RESNET9_STORAGE_PASSWORD"  # where the sweeper keeps a password given in the URL, for it and its jobs
RETRY_S = 60  # how long a call waits for a database that does not answer (hydra.sweeper.storage_retry_s)


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


def hide_password(url: str) -> tuple[str, str | None]:
    """`url` as files may hold it (its password masked) and the password it held (None: none, or masked already)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: nothing to hide (opening it says what is wrong)
        return url, None
    if parsed.password is None or parsed.password == MASK:
        return url, None
    return parsed.render_as_string(hide_password=True), str(parsed.password)


def connect_url(url: str) -> str:
    """The URL to connect with. A masked password (`***`: the sweeper writes URLs down so) is the one the sweeper
    keeps in RESNET9_STORAGE_PASSWORD for itself and its jobs; without that variable it is left out, and the driver
    looks for one itself (libpq, PostgreSQL's: PGPASSWORD, then ~/.pgpass)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password != MASK:
        return url
    # (`_replace`, the URL being a named tuple: `set(password=None)` would keep the mask)
    return parsed._replace(password=os.environ.get(PASSWORD_ENV)).render_as_string(hide_password=False)


def open_storage(url: str, heartbeat_s: int | None = None, retry_s: float | None = None) -> Any:
    """Optuna's storage on `url`, one per process and URL (resnet9/training/sweeps/study_storage.py), or a one-line
    UsageError before any trial trains. Its calls ride out a database that does not answer for up to `retry_s`.

    `heartbeat_s`: the sweeper's storage records a heartbeat for its running trials; a trial whose heartbeat
    stopped for 2 x that (its process was killed) is stale, and the next sweeper marks it failed."""
    from sqlalchemy.exc import ArgumentError

    try:
        real = connect_url(url)
    except ArgumentError:
        raise UsageError(
            f"hydra.sweeper.storage={url} is not a database URL; give an SQLAlchemy URL such as "
            f"sqlite:///study.db or postgresql://user@host/database, or null for <sweep folder>/{SQLITE_FILE}"
        ) from None
    from resnet9.training.sweeps import study_storage

    return study_storage.cached(real, shown_url(url), heartbeat_s, RETRY_S if retry_s is None else retry_s)


def close_storages() -> None:
    """The storages this process opened, closed (their connections given back): the sweeper's end."""
    from resnet9.training.sweeps import study_storage

    study_storage.close_all()


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
    url = storage_url(sweeper.storage, Path(hydra_cfg.sweep.dir))
    storage = open_storage(url, heartbeat_s=sweeper.get("heartbeat_s"), retry_s=sweeper.get("storage_retry_s"))
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
