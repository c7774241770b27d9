"""hparams_search=optuna: a search for LRMIN/LRMAX around the derived values, on an Optuna study in a database
(by default <sweep folder>/study.db) that a rerun continues, several workers share, a pruner trims, and the report
and optuna-dashboard show."""

import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from test_train import small_run, wandb_run_files
from wandb_records import read_run

from hydra_plugins.resnet9_sweeper.optuna_sweeper import OptunaSweeper, search_space
from resnet9.core.errors import UsageError
from resnet9.training.sweeps import search, study_storage
from resnet9.training.sweeps.study_sampler import TrialSeededSampler, trial_seed

REPO = Path(__file__).resolve().parents[2]


def tiny(root: Path, *extra: str) -> list[str]:
    """Trials of a second or two on a 2-core CPU: fixed LRs (no range test; the multipliers Optuna draws have no
    effect, the search's machinery is what is tested), 200 images, 2 epochs (pruning can act after the first)."""
    return [
        f"data.root={root}", "data.limit_train=200", "data.limit_test=100", "data.num_workers=0", "epochs=2",
        "scheduler.peak_epoch=1", "batch_size=40", "model.width=0.125", "optimizer.lr=0.1", "scheduler.lr_min=0.01",
        "progress=false", *extra,
    ]  # fmt: skip


def study_trials(sweep: Path) -> dict[int, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="lr_range", storage=f"sqlite:///{sweep / 'study.db'}")
    return {trial.number: trial for trial in study.get_trials()}


def test_an_optuna_search_of_three_trials_runs_and_the_report_and_wandb_cover_it(run_cli, synthetic_root, tmp_path):
    sweep = tmp_path / "search"
    # (sampler seed 1: its first three trials draw LRMIN below LRMAX; seed 0's third draws LRMIN 19 x its LRMAX and
    # fails, as the default space allows -- a failure this test does not look for)
    result = run_cli(
        "resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1", *small_run(synthetic_root, "epochs=1", "scheduler.peak_epoch=0.5"),
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    described = json.loads((sweep / "sweep.json").read_text())
    assert described["varies"] == ["lr_finder.max_scale", "lr_finder.min_scale"]
    assert described["study"] == {"storage": f"sqlite:///{sweep.resolve() / 'study.db'}", "name": "lr_range"}
    jobs = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(3)]
    assert [job["status"] for job in jobs] == ["completed"] * 3
    assert [job["optuna_trial"] for job in jobs] == [0, 1, 2]  # each trial in the folder named after it
    finder = json.loads((sweep / "0" / "lr_finder.json").read_text())
    trials = study_trials(sweep)
    for n, job in enumerate(jobs):  # each trial scales the one derived pair by its own two multipliers
        scales = dict(o.split("=") for o in job["overrides"] if o.startswith("lr_finder."))
        assert job["lr_max"] == finder["lr_max"] * float(scales["lr_finder.max_scale"])
        assert job["lr_min"] == finder["lr_min"] * float(scales["lr_finder.min_scale"])
        assert 0.25 <= float(scales["lr_finder.max_scale"]) <= 4 and 0.1 <= float(scales["lr_finder.min_scale"]) <= 10
        # the study holds what the job returned and what it reported after each epoch
        assert trials[n].state == TrialState.COMPLETE and trials[n].value == job["final_test_acc"]
        assert trials[n].intermediate_values == {1: job["epochs"][0]["test_acc"]}

    rows = json.loads((sweep / "summary.json").read_text())  # one setting per trial
    assert len(rows) == 3 and all(row["n"] == 1 and row["setting"].startswith("lr_finder.max_scale=") for row in rows)
    best = max(job["final_test_acc"] for job in jobs)
    assert f"Best value: {best}" in result.stdout + result.stderr  # optuna maximised what the jobs returned
    best_trial = max(range(3), key=lambda n: jobs[n]["final_test_acc"])
    study_md = (sweep / "study.md").read_text()  # the report's view of the study, also printed at the end
    assert f"best: trial {best_trial}, value {best:.4f}" in study_md and study_md in result.stdout
    assert [
        line.split(" | ")[1] for line in study_md.splitlines() if line.startswith("| ") and "trial" not in line
    ] == ["complete"] * 3
    assert "parameter importances: lr_finder." in study_md
    assert "ExperimentalWarning" not in result.stderr  # Optuna's note on the heartbeat we use on purpose
    runs = [read_run(wandb_run_files(sweep / str(n))[0])["run"] for n in range(3)]
    for run, row in zip(runs, rows, strict=True):  # named after the trial's multipliers, 4 digits each
        max_scale, min_scale = (float(part.split("=")[1]) for part in row["setting"].split())
        assert run.display_name == f"lr_finder.max_scale={max_scale:.4g} lr_finder.min_scale={min_scale:.4g}"
        assert run.run_group.endswith(row["setting"]) and run.job_type == "train"


def test_pruned_trials_are_recorded_as_pruned_in_metrics_the_study_the_report_and_wandb(
    run_cli, synthetic_root, tmp_path
):
    """A pruner that prunes every trial after its first epoch (accuracy below 101 %): both trials end there."""
    sweep = tmp_path / "search"
    result = run_cli(
        "resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.pruner=null", "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01}",
        *tiny(synthetic_root), f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for n in range(2):
        job = json.loads((sweep / str(n) / "metrics.json").read_text())
        assert (job["status"], job["pruned_at_epoch"], len(job["epochs"])) == ("pruned", 1, 1)
        assert job["stopped"].startswith(f"trial {n} pruned after epoch 1")
        summary = read_run(wandb_run_files(sweep / str(n))[0])["summary"]
        assert (summary["status"], summary["pruned_at_epoch"]) == ("pruned", 1)
    assert [trial.state for trial in study_trials(sweep).values()] == [TrialState.PRUNED] * 2
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(row["jobs"], row["failed"], row["pruned"], row["n"]) for row in rows] == [(1, 0, 1, 0)] * 2
    header = next(line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| setting"))
    assert [cell.strip() for cell in header.split("|")][1:6] == ["setting", "jobs", "failed", "pruned", "n"]
    assert not [line for line in result.stdout.splitlines() if line.startswith("job ")]  # no failure lines
    assert (sweep / "study.md").read_text().count("| pruned |") == 2


@pytest.mark.slow
def test_a_search_killed_with_sigkill_resumes_its_study_without_repeating_done_trials(
    run_cli, synthetic_root, tmp_path
):
    sweep = tmp_path / "search"
    args = [
        "resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.heartbeat_s=1", "hydra.sweeper.pruner=none", *tiny(synthetic_root, "logger=none"),
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "RESNET9_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # kill -9 while trial 1 trains (its metrics.json says running), trial 0 done
        deadline = time.monotonic() + 240
        while not (sweep / "1" / "metrics.json").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (sweep / "1" / "metrics.json").is_file(), "trial 1 never started"
    done_before = (sweep / "0" / "metrics.json").read_bytes()
    time.sleep(2.5)  # past the heartbeat's grace period (2 x heartbeat_s): trial 1 is stale

    result = run_cli(*args)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    trials = study_trials(sweep)
    assert {n: t.state for n, t in trials.items()} == {
        0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE, 3: TrialState.COMPLETE
    }  # fmt: skip
    assert (sweep / "0" / "metrics.json").read_bytes() == done_before  # trial 0 was not trained again
    killed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert killed["status"] == "failed" and killed["error"].startswith("killed")
    assert len({tuple(sorted(trials[n].params.items())) for n in (0, 2, 3)}) == 3  # the rerun drew new values
    assert [row["failed"] for row in json.loads((sweep / "summary.json").read_text())].count(1) == 1


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_train_different_trials_and_reach_n_trials(synthetic_root, tmp_path):
    """The same command twice at once, the sampler's seed the default (0) in both: different trials, and different
    values (each trial's sampler is seeded from the seed and the trial's number; one seed for both drew alike)."""
    sweep = tmp_path / "search"
    env = {**os.environ, "WANDB_MODE": "offline", "RESNET9_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=none",
              *tiny(synthetic_root, "logger=none"), f"hydra.sweep.dir={sweep}"]  # fmt: skip
    workers = [
        subprocess.Popen([sys.executable, "-m", "resnet9.train", *common], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [worker.communicate(timeout=400)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trained = [{n for n in range(8) if f"results in {sweep}/{n}\n" in output} for output in outputs]
    assert trained[0] and trained[1] and not trained[0] & trained[1]  # both worked, never on the same trial
    assert trained[0] | trained[1] == {0, 1, 2, 3}
    states = [trial.state for trial in study_trials(sweep).values()]
    assert states.count(TrialState.COMPLETE) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.FAIL}
    done = [trial for trial in study_trials(sweep).values() if trial.state == TrialState.COMPLETE]
    assert len({tuple(sorted(trial.params.items())) for trial in done}) == 4


def test_each_trial_draws_from_its_own_seed_so_workers_differ_and_a_search_repeats():
    """Two workers (two study objects, two samplers of seed 0) asking one study in turn draw different values; a
    second search with the same seed draws, trial by trial, what the first drew."""
    space = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0.1, 10, log=True)}

    def sampler() -> TrialSeededSampler:
        return TrialSeededSampler(lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=2), 0)

    def search(workers: int) -> list[dict]:
        storage = optuna.storages.InMemoryStorage()
        studies = [optuna.create_study(study_name="s", storage=storage, sampler=sampler(), load_if_exists=True)
                   for _ in range(workers)]  # fmt: skip
        for n in range(4):  # (past TPE's 2 random start-up trials: its model draws per trial too)
            study = studies[n % workers]
            trial = study.ask(space)
            study.tell(trial, trial.params["x"])
        return [trial.params for trial in studies[0].get_trials()]

    together = search(workers=2)
    assert len({tuple(params.items()) for params in together}) == 4
    assert search(workers=1) == search(workers=1) == together  # whoever asks, trial n draws the same
    assert trial_seed(0, 1) != trial_seed(1, 0)  # (seed + number would give seed 1's trial 0 seed 0's trial 1's)


def test_every_call_optunas_cache_makes_to_the_database_is_one_that_rides_out_an_outage():
    """Optuna puts a cache in front of an RDB storage, and it calls some of the storage's own methods (`_get_trials`,
    `_create_new_trial`, ...): each must be one of those retried, or one that does not go to the database."""
    from optuna.storages import _cached_storage

    called = set(re.findall(r"self\._backend\.(\w+)", inspect.getsource(_cached_storage)))
    assert called and called <= set(study_storage.RETRIED) | study_storage.OFFLINE


def test_a_missing_driver_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # (as if not installed: importing it fails)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(UsageError) as missing:
        search.open_storage("postgresql://u:secret@127.0.0.1:1/db")
    assert str(missing.value) == (
        "cannot open the study's database hydra.sweeper.storage=postgresql://u:***@127.0.0.1:1/db: its driver is not "
        "installed; pip install 'psycopg[binary]' (or resnet9[search])"
    )
    with pytest.raises(UsageError, match=r"its driver is not installed; pip install psycopg2-binary \(or write "):
        search.open_storage("postgresql+psycopg2://u@127.0.0.1:1/db")


@pytest.mark.slow
def test_the_same_command_again_continues_the_study_in_the_default_folder(synthetic_root, tmp_path):
    """No hydra.sweep.dir: a search's folder is multirun/optuna/<study name> (its study.db inside), so a second
    invocation from the same folder continues the study; naming that folder as hydra.sweep.dir does too."""
    env = {**os.environ, "WANDB_MODE": "offline", "RESNET9_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "resnet9.train", "--multirun", "hparams_search=optuna",
               "hydra.sweeper.pruner=none", *tiny(synthetic_root, "logger=none")]  # fmt: skip
    folder = tmp_path / "multirun" / "optuna" / "lr_range"
    for n_trials, where in ((1, []), (2, []), (3, [f"hydra.sweep.dir={folder}"])):
        result = subprocess.run([*command, f"hydra.sweeper.n_trials={n_trials}", *where], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=400)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Optuna study lr_range in sqlite:///{folder}/study.db: {n_trials - 1} of {n_trials} trials" in (
            result.stdout + result.stderr
        )
    assert [trial.state for trial in study_trials(folder).values()] == [TrialState.COMPLETE] * 3
    assert sorted(path.parent.name for path in folder.glob("*/metrics.json")) == ["0", "1", "2"]
    assert [path.name for path in (tmp_path / "multirun").iterdir()] == ["optuna"]  # no dated folder beside it


def test_a_worker_holds_one_storage_per_database_and_gives_it_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = search.open_storage(url, heartbeat_s=5)
    assert search.open_storage(url) is first  # a job in the sweeper's process, the report: the same one
    assert first.heartbeat_interval == 5 and search.open_storage(f"sqlite:///{tmp_path / 'other.db'}") is not first
    closed, dispose = [], first.engine.dispose
    first.engine.dispose = lambda: closed.append(True) or dispose()  # (the engine's connections given back)
    search.close_storages()
    assert closed == [True] and search.open_storage(url) is not first
    search.close_storages()


def test_a_password_in_the_storage_url_is_masked_in_what_hydra_writes_and_kept_for_the_jobs(monkeypatch):
    """The sweeper's setup, on the config Hydra composed for `--multirun ... hydra.sweeper.storage=<URL with a
    password>`: the password leaves the config, its overrides and sys.argv, and stays in RESNET9_STORAGE_PASSWORD,
    where the jobs and the report find it (a URL written down with `***` connects with it)."""
    url = "postgresql://ann:s3cr%40t@db.example:5432/studies"
    monkeypatch.setattr(sys, "argv", ["resnet9/train.py", "--multirun", f"hydra.sweeper.storage={url}", "seed=1"])
    monkeypatch.delenv(search.PASSWORD_ENV, raising=False)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=["hparams_search=optuna", f"hydra.sweeper.storage={url}"],
                         return_hydra_config=True)  # fmt: skip
    config.hydra.overrides.hydra = [f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=2"]
    OptunaSweeper()._keep_password_off_disk(config)
    masked = "postgresql://ann:***@db.example:5432/studies"
    assert config.hydra.sweeper.storage == masked
    assert list(config.hydra.overrides.hydra) == [f"hydra.sweeper.storage='{masked}'", "hydra.sweeper.n_trials=2"]
    assert sys.argv[2] == f"hydra.sweeper.storage='{masked}'" and "s3cr" not in " ".join(sys.argv)
    assert os.environ[search.PASSWORD_ENV] == "s3cr@t"
    assert search.connect_url(masked) == url  # the jobs' and the report's connection: the password back in place
    monkeypatch.delenv(search.PASSWORD_ENV)
    assert search.connect_url(masked) == "postgresql://ann@db.example:5432/studies"  # libpq: PGPASSWORD, ~/.pgpass
    assert search.hide_password("sqlite:////tmp/study.db") == ("sqlite:////tmp/study.db", None)


def test_a_bad_storage_url_is_one_line_before_any_trial(run_cli, synthetic_root, tmp_path):
    sweep = tmp_path / "search"
    result = run_cli("resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.storage=not-a-url",
                     *tiny(synthetic_root, "logger=none"), f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: hydra.sweeper.storage=not-a-url is not a database URL; give an SQLAlchemy URL")
    assert not list(sweep.glob("*/metrics.json"))
    # unreachable: a file in a folder that does not exist; a server whose driver is not installed
    with pytest.raises(UsageError, match=r"^cannot open the study's database .*/no/such/folder/s.db \(.*\); check"):
        search.open_storage(f"sqlite:///{tmp_path}/no/such/folder/s.db")
    with pytest.raises(UsageError, match=r"^cannot open .*postgresql://u:\*\*\*@127.0.0.1:1/db \(.*\); check"):
        search.open_storage("postgresql://u:secret@127.0.0.1:1/db")  # (the password never shown)


def test_the_search_space_comes_from_hydras_override_grammar():
    params = {"lr_finder.max_scale": "tag(log, interval(0.25, 4.0))", "epochs": "range(2, 9, 3)"}
    space, fixed = search_space(params, ["seed=0,1", "+label_smoothing=choice(0.1, 0.2)", "batch_size=64"])
    assert space == {
        "lr_finder.max_scale": FloatDistribution(0.25, 4.0, log=True),
        "epochs": IntDistribution(2, 8, step=3),
        "seed": CategoricalDistribution(["0", "1"]),
        "+label_smoothing": CategoricalDistribution(["0.1", "0.2"]),
    }
    assert fixed == ["batch_size=64"]
    assert search_space({"x": "tag(int, interval(1, 5))"}, [])[0] == {"x": IntDistribution(1, 5)}
    assert OverridesParser.create().parse_override("x=1").is_sweep_override() is False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_optuna_dashboard_answers_on_localhost_with_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="lr_range", storage=search.open_storage(url), direction="maximize")
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 2), n_trials=2)
    port = free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline and dashboard.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.loads(answer.read())
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "optuna-dashboard never answered"
        (listed,) = studies["study_summaries"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{listed['study_id']}", timeout=5) as answer:
            detail = json.loads(answer.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as answer:
            page = answer.read().decode()
    finally:
        dashboard.kill()
        dashboard.wait()
    assert listed["study_name"] == "lr_range"
    assert [trial["values"] for trial in detail["trials"]][0] == [1.0] and len(detail["trials"]) == 2
    assert "<html" in page.lower()


def test_importances_wait_for_two_completed_trials(tmp_path):
    """With one trial Optuna splits the importance evenly (0.50, 0.50): a number that says nothing."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"a": 1.0, "b": 2.0})
    study.optimize(lambda trial: trial.suggest_float("a", 0, 4) + trial.suggest_float("b", 0, 4), n_trials=1)
    assert search._importances(study, 1) == "none yet (1 completed trial; they need two or more)"
    study.optimize(lambda trial: trial.suggest_float("a", 0, 4) + trial.suggest_float("b", 0, 4), n_trials=4)
    assert search._importances(study, 5).startswith(("a ", "b "))
