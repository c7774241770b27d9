"""The Optuna sweeper's steps one at a time, on an SQLite study: the pruner setting, how a trial's end is told to
the study (a diverged trial fails and the search goes on), a batch a signal ends, and the trials per batch."""

import signal
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.resnet9_sweeper.optuna_sweeper import OptunaSweeper, counts, search_space
from resnet9.core.errors import TrainingDiverged, UsageError
from resnet9.training.engine.loop import StopRequested
from resnet9.training.sweeps import search

CONF = Path(__file__).resolve().parents[2] / "conf"


def sweeper_settings(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True)
    return OmegaConf.create(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True))


@pytest.fixture
def sweeper(tmp_path):
    """resnet9's sweeper with the default search settings, on a new study in an SQLite file, launching nothing."""
    made = OptunaSweeper()
    made.settings = sweeper_settings()
    made.storage = search.open_storage(search.storage_url(None, tmp_path), heartbeat_s=made.settings.heartbeat_s)
    made.study = optuna.create_study(study_name="lr_range", storage=made.storage, direction="maximize")
    made.study_id = made.storage.get_study_id_from_name("lr_range")
    made.space = search_space(OmegaConf.to_container(made.settings.params), [])[0]
    yield made
    search.close_storages()


def test_pruner_none_switches_pruning_off():
    assert isinstance(search.make_pruner(sweeper_settings().pruner), optuna.pruners.MedianPruner)
    for pruner in (sweeper_settings("hydra.sweeper.pruner=none").pruner, None):
        assert isinstance(search.make_pruner(pruner), optuna.pruners.NopPruner)


def ended(status: JobStatus, value) -> JobReturn:
    return JobReturn(status=status, _return_value=value)


def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on_up_to_max_failure_rate(sweeper):
    study, settings = sweeper.study, sweeper.settings
    diverged = study.ask(sweeper.space)
    sweeper._tell(study, diverged, ended(JobStatus.FAILED, TrainingDiverged(float("nan"), 12, 3.0)))
    trial = study.trials[diverged.number]
    assert trial.state == optuna.trial.TrialState.FAIL and counts(trial)  # a failure of training, counted
    assert trial.user_attrs["note"].startswith("training diverged: the loss became nan at step 12")
    sweeper._check_failures(study)  # one of n_trials: the search goes on...
    allowed = int(settings.max_failure_rate * settings.n_trials)
    for _ in range(allowed):
        sweeper._tell(study, study.ask(sweeper.space), ended(JobStatus.FAILED, TrainingDiverged(float("inf"), 0, 9.0)))
    with pytest.raises(UsageError, match="max_failure_rate"):  # ...until more than max_failure_rate have failed
        sweeper._check_failures(study)


def test_a_completed_trial_is_told_its_value(sweeper):
    trial = sweeper.study.ask(sweeper.space)
    sweeper._tell(sweeper.study, trial, ended(JobStatus.COMPLETED, 0.625))
    assert sweeper.study.trials[trial.number].value == 0.625


@pytest.mark.parametrize("stop", [StopRequested(signal.SIGTERM), StopRequested(signal.SIGINT), KeyboardInterrupt()])
def test_a_signal_marks_the_trials_in_flight_failed_at_once_and_not_counted(sweeper, tmp_path, stop):
    batch = [sweeper.study.ask(sweeper.space) for _ in range(2)]
    with pytest.raises(type(stop)), sweeper._given_back_if_not_run(sweeper.study, batch):
        raise stop
    trials = [sweeper.study.trials[trial.number] for trial in batch]
    assert all(t.state == optuna.trial.TrialState.FAIL and not counts(t) for t in trials)
    assert all(t.user_attrs["note"] == f"not finished: {type(stop).__name__}" for t in trials)
    sweeper.settings.n_trials = 2  # the two in flight do not fill the study: a rerun asks for two new trials
    assert [trial.number for trial in sweeper._ask(sweeper.study, sweeper.space, tmp_path)] == [2]


def test_n_jobs_is_the_number_of_trials_handed_to_the_launcher_at_once(sweeper, tmp_path):
    sweeper.settings.n_jobs, sweeper.settings.n_trials = 2, 3
    batches = []
    while batch := sweeper._ask(sweeper.study, sweeper.space, tmp_path):
        batches.append([trial.number for trial in batch])
        for trial in batch:
            sweeper._tell(sweeper.study, trial, ended(JobStatus.COMPLETED, 0.5))
    assert batches == [[0, 1], [2]]  # two at a time, and no trial beyond n_trials
