"""hparams_search=optuna on a real PostgreSQL server, the one `bash tests/services/postgres.sh start` runs (CI and
`make test-full` start it; these tests fail, not skip, when it does not answer).

What they keep: postgresql:// opens with psycopg 3; a password given in the URL reaches no file of the sweep; a
worker holds a few connections, not one more per trial, and none once it ended; workers started together draw
different values; an outage of a few seconds is ridden out, and a longer one ends the search in one line with the
study left for a rerun to complete.

RESNET9_PG_URL (default postgresql://resnet9@127.0.0.1:5432/resnet9, the script's) names the database, without its
password; RESNET9_PG_PASSWORD (default the script's) is the password."""

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from test_search import REPO, tiny

from resnet9.training.sweeps import search

pytestmark = pytest.mark.postgres

URL = os.environ.get("RESNET9_PG_URL", "postgresql://resnet9@127.0.0.1:5432/resnet9")
PASSWORD = os.environ.get("RESNET9_PG_PASSWORD", "resnet9-test-only")
SCRIPT = REPO / "tests" / "services" / "postgres.sh"
OURS = "resnet9 search %"  # the application_name of the search's connections (resnet9/training/sweeps/study_storage.py)


def with_password(url: str = URL) -> str:
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def connect() -> psycopg.Connection:
    parsed = make_url(URL)
    return psycopg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, dbname=parsed.database,
        password=PASSWORD, connect_timeout=5, autocommit=True,
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def server() -> None:
    """The server answers, or every test here fails saying how to start it."""
    try:
        with connect() as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at {URL} does not answer ({str(err).strip().splitlines()[0]}); start it: "
                    f"bash tests/services/postgres.sh start", pytrace=False)  # fmt: skip


def server_script(action: str) -> None:
    """Stop or start the server (as an outage would), through the script that runs it: its port from URL."""
    env = {**os.environ, "RESNET9_PG_PORT": str(make_url(URL).port or 5432), "RESNET9_PG_PASSWORD": PASSWORD}
    subprocess.run(["bash", str(SCRIPT), action], env=env, check=True, capture_output=True, timeout=90)


def our_connections() -> int:
    with connect() as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
            (make_url(URL).database, OURS),
        ).fetchone()
    return row[0]


def study_trials(study_name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(with_password())
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def search_command(sweep: Path, study_name: str, root: Path, *extra: str, storage: str = URL) -> list[str]:
    return [
        sys.executable, "-m", "resnet9.train", "--multirun", "hparams_search=optuna", f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.storage={storage}", "hydra.sweeper.pruner=none",
        *tiny(root), *extra,
    ]  # fmt: skip


def environment(tmp_path: Path, password: str | None = "PGPASSWORD") -> dict[str, str]:
    """The search's environment; the password where libpq looks for it: PGPASSWORD, a password file (PGPASSFILE,
    ~/.pgpass by default), or nowhere (None: only the URL may give it)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RESNET9_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    for name in ("PGPASSWORD", "PGPASSFILE", "RESNET9_STORAGE_PASSWORD"):
        env.pop(name, None)
    if password == "PGPASSWORD":
        env["PGPASSWORD"] = PASSWORD
    elif password == "PGPASSFILE":
        parsed = make_url(URL)
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"{parsed.host}:{parsed.port or 5432}:{parsed.database}:{parsed.username}:{PASSWORD}\n")
        passfile.chmod(0o600)  # (libpq ignores a password file others may read)
        env["PGPASSFILE"] = str(passfile)
    return env


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.is_file(), f"{path} never appeared"


def test_a_password_in_the_url_reaches_no_file_and_a_worker_holds_few_connections(synthetic_root, tmp_path):
    """Six trials in one process, W&B offline, the password only in hydra.sweeper.storage (no PGPASSWORD): every
    file under the sweep folder is searched for it; the server is asked for the search's connections meanwhile."""
    sweep, study_name = tmp_path / "search", f"t{uuid.uuid4().hex[:10]}"
    command = search_command(sweep, study_name, synthetic_root, "hydra.sweeper.n_trials=6", storage=with_password())
    assert make_url(URL).get_driver_name() == "psycopg"  # what postgresql:// opens with (SQLAlchemy 2.1)
    counts, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            counts.append(our_connections())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = start(command, environment(tmp_path, password=None))
        out, err = result.communicate(timeout=400)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, err[-3000:]
    # later, in a shell that gives the password as libpq reads it: the report opens the study sweep.json names
    later = subprocess.run([sys.executable, "-m", "resnet9.report", str(sweep), "--tracker", "none"], cwd=REPO,
                           env=environment(tmp_path), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert later.returncode == 0 and f"## Optuna study `{study_name}`" in later.stdout, later.stderr[-2000:]
    deadline = time.monotonic() + 10  # (the server counts a connection until its backend has exited)
    while our_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_connections() == 0
    assert 1 <= max(counts) <= 3, counts  # (one storage per process: was one more per trial, 10 after 8 trials)
    assert [trial.state for trial in study_trials(study_name)] == [TrialState.COMPLETE] * 6
    written = [path for path in sweep.rglob("*") if path.is_file()]
    assert {"multirun.yaml", "sweep.json", "study.md", "hydra.yaml", "config.yaml", "overrides.yaml",
            "metrics.json", "train.log"} <= {path.name for path in written}  # fmt: skip
    assert any(path.suffix == ".wandb" for path in written)
    leaks = [str(path) for path in written if PASSWORD.encode() in path.read_bytes()]
    assert leaks == [] and PASSWORD not in out + err + later.stdout + later.stderr
    assert "postgresql://resnet9:***@" in (sweep / "multirun.yaml").read_text()
    assert "6 trials" in (sweep / "study.md").read_text()  # the report reached the study through the masked URL


def test_trials_in_a_launchers_own_processes_reach_the_study_with_a_password_given_in_the_url(synthetic_root, tmp_path):
    """hydra/launcher=joblib runs two trials at once in its worker processes, which compose their configs from the
    masked one: they connect with the password the sweeper keeps for them, and report every epoch."""
    sweep, study_name = tmp_path / "search", f"t{uuid.uuid4().hex[:10]}"
    command = search_command(sweep, study_name, synthetic_root, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "logger=none",
                             storage=with_password())  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=environment(tmp_path, password=None), capture_output=True,
                            text=True, timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trials = study_trials(study_name)
    assert [(trial.state, sorted(trial.intermediate_values)) for trial in trials] == [(TrialState.COMPLETE, [1, 2])] * 2
    assert [str(path) for path in sweep.rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()] == []


def test_two_workers_started_together_draw_different_values(synthetic_root, tmp_path):
    """The same command (sampler seed 0, the default) in two processes at once, each with its own sweep folder as
    on two machines, the password in a password file (~/.pgpass's format): different trials, different values,
    the study's total reached."""
    study_name = f"t{uuid.uuid4().hex[:10]}"
    env = environment(tmp_path, password="PGPASSFILE")
    commands = [search_command(tmp_path / f"worker{n}", study_name, synthetic_root, "hydra.sweeper.n_trials=4",
                               "logger=none") for n in (0, 1)]  # fmt: skip
    workers = [start(command, env) for command in commands]
    outputs = [worker.communicate(timeout=400) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    trained = [{path.parent.name for path in (tmp_path / f"worker{n}").glob("*/metrics.json")} for n in (0, 1)]
    assert trained[0] and trained[1] and not trained[0] & trained[1]
    trials = [trial for trial in study_trials(study_name) if trial.state == TrialState.COMPLETE]
    assert len(trials) == 4
    assert len({tuple(sorted(trial.params.items())) for trial in trials}) == 4  # (equal seeds drew equal values)


def test_each_call_a_search_makes_waits_through_a_short_outage(monkeypatch):
    """Each call the sweeper and a trial make (ask, report, the pruner's check, heartbeat, tell), made while the
    server is down, waits until it is back 2 s later and then succeeds."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    storage = search.open_storage(URL, retry_s=30)
    study = optuna.create_study(study_name=f"t{uuid.uuid4().hex[:10]}", storage=storage, direction="maximize")
    space = {"x": FloatDistribution(0, 1)}
    trial = study.ask(space)
    calls = {
        "ask": lambda: study.ask(space),
        "report": lambda: trial.report(0.5, 1),
        "should_prune": trial.should_prune,
        "heartbeat": lambda: storage.record_heartbeat(trial._trial_id),
        "tell": lambda: study.tell(trial, 0.5),
    }
    waited = {}
    try:
        for name, call in calls.items():
            server_script("stop")
            back = threading.Timer(2, server_script, ["start"])
            back.start()
            begun = time.monotonic()
            call()
            waited[name] = time.monotonic() - begun
            back.join()
    finally:
        server_script("start")
        search.close_storages()
    assert all(seconds > 1 for seconds in waited.values()), waited  # (each met the outage, and outlived it)
    assert [t.state for t in study_trials(study.study_name)] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_an_outage_of_a_few_seconds_during_a_search_is_ridden_out(synthetic_root, tmp_path):
    """The server stopped (pg_ctl stop -m fast) for 5 s while trial 1 trains: the search completes, no trial fails."""
    sweep, study_name = tmp_path / "search", f"t{uuid.uuid4().hex[:10]}"
    search = start(search_command(sweep, study_name, synthetic_root, "hydra.sweeper.n_trials=4", "logger=none"),
                   environment(tmp_path))  # fmt: skip
    try:
        wait_for(sweep / "1" / "metrics.json", search)
        server_script("stop")
        time.sleep(5)
    finally:
        server_script("start")
    out, err = search.communicate(timeout=400)
    assert search.returncode == 0, err[-3000:]
    assert "does not answer" in out + err and "answers again" in out + err  # the outage was met, and outlived
    assert [trial.state for trial in study_trials(study_name)] == [TrialState.COMPLETE] * 4


def test_a_longer_outage_ends_in_one_line_and_a_rerun_completes_the_study(synthetic_root, tmp_path):
    """The server stopped for longer than hydra.sweeper.storage_retry_s=3 while trial 1 trains: one line, a
    non-zero exit, no traceback; restarted, the same command again completes the study."""
    sweep, study_name = tmp_path / "search", f"t{uuid.uuid4().hex[:10]}"
    command = search_command(sweep, study_name, synthetic_root, "hydra.sweeper.n_trials=3", "logger=none",
                             "hydra.sweeper.storage_retry_s=3", "hydra.sweeper.heartbeat_s=1")  # fmt: skip
    search = start(command, environment(tmp_path))
    try:
        wait_for(sweep / "1" / "metrics.json", search)
        server_script("stop")
        out, err = search.communicate(timeout=120)
    finally:
        server_script("start")
    assert search.returncode == 2  # (every one-line error's status)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "did not answer" in line]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err[-3000:]
    assert "did not answer for 3 s" in lines[0] and "run the same command again" in lines[0]
    time.sleep(2.5)  # the interrupted trial's heartbeat (1 s) goes stale after 2 s: it no longer counts as running

    rerun = subprocess.run(command, cwd=REPO, env=environment(tmp_path), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    states = [trial.state for trial in study_trials(study_name)]
    assert states.count(TrialState.COMPLETE) == 3 and set(states) <= {TrialState.COMPLETE, TrialState.FAIL}
