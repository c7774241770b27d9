"""hparams_search=optuna: a search for LRMIN/LRMAX around the derived values, on an Optuna study in a database
(by default <sweep folder>/study.db) that a rerun continues, several workers share, a pruner trims, and the report
and optuna-dashboard show."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from test_train import small_run, wandb_run_files
from wandb_records import read_run

from hydra_plugins.resnet9_sweeper.optuna_sweeper import search_space
from resnet9.core.errors import UsageError
from resnet9.training import search

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
    result = run_cli(
        "resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
        *small_run(synthetic_root, "epochs=1", "scheduler.peak_epoch=0.5"), f"hydra.sweep.dir={sweep}",
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


def test_two_processes_on_one_sqlite_study_train_different_trials_and_reach_n_trials(synthetic_root, tmp_path):
    sweep = tmp_path / "search"
    env = {**os.environ, "WANDB_MODE": "offline", "RESNET9_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=none",
              *tiny(synthetic_root, "logger=none"), f"hydra.sweep.dir={sweep}"]  # fmt: skip
    workers = [  # one sampler seed each: started together, the same seed would draw the same first values
        subprocess.Popen([sys.executable, "-m", "resnet9.train", *common, f"hydra.sweeper.sampler.seed={seed}"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in (1, 2)
    ]  # fmt: skip
    outputs = [worker.communicate(timeout=400)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trained = [{n for n in range(8) if f"results in {sweep}/{n}\n" in output} for output in outputs]
    assert trained[0] and trained[1] and not trained[0] & trained[1]  # both worked, never on the same trial
    assert trained[0] | trained[1] == {0, 1, 2, 3}
    states = [trial.state for trial in study_trials(sweep).values()]
    assert states.count(TrialState.COMPLETE) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.FAIL}


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
