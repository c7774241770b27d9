"""An Optuna search's database as each process of the search holds it: the part of search.py that needs Optuna
and SQLAlchemy (the `search` extra), imported only where a search runs.

- One storage per process and URL (`cached`): the sweeper, every trial it runs in its own process, and the report
  share one engine and its connection pool; `close_all` disposes of them when the sweep ends, and at the process's
  exit (atexit) in a launcher's worker. A storage per trial would keep its connections until the process ended,
  and a PostgreSQL server allows 100 in all.
- Every call rides out an outage (`RetryingStorage`): a call that fails because the database does not answer is
  tried again, with back-off, until the database has been silent for `retry_s` in this process; then the call
  ends in one line (`StudyUnavailable`), and so does every later call that finds it still silent.
- A URL whose driver is not installed is one line naming the package to install.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from resnet9.core.errors import UsageError, first_line

log = logging.getLogger(__name__)
OPEN_ATTEMPTS = 3
SQLITE_TIMEOUT_S = 60  # workers sharing one SQLite file wait for its lock this long, not fail at once
CONNECT_TIMEOUT_S = 10  # a server that does not answer a new connection at all (a lost network): give up on it
FIRST_WAIT_S, LONGEST_WAIT_S = 0.5, 2.0  # the back-off between tries of a call: doubles from the first to the longest
# What to install for a URL's driver (SQLAlchemy's name for it); another driver: the module that failed to import
DRIVERS = {
    "psycopg": "'psycopg[binary]' (or resnet9[search])",
    "psycopg2": "psycopg2-binary (or write postgresql:// for psycopg 3, in resnet9[search])",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
}


class StudyUnavailable(UsageError):
    """The study's database did not answer for the whole retry budget. The trials under way are left running in the
    study; a rerun of the same command after the database is back continues the study."""


def cached(url: str, shown: str, heartbeat_s: int | None, retry_s: float) -> RetryingStorage:
    """The storage on `url` for this process (made on first use). `shown`: the URL as messages may show it.
    `heartbeat_s` (the sweeper's): its trials' heartbeats and when a silent one is stale; `retry_s`: the budget."""
    key = (os.getpid(), url)  # (a forked child makes its own: its parent's connections are not its to use)
    with _lock:
        storage = _storages.get(key)
        if storage is None:
            storage = _storages[key] = _open(url, shown, heartbeat_s)
            _close_at_exit()
        if heartbeat_s:  # the sweeper's settings win over a job's or the report's first open in this process
            storage.heartbeat_interval, storage.grace_period = heartbeat_s, 2 * heartbeat_s
        storage.retry_s, storage.shown = retry_s, shown
        return storage


def close_all() -> None:
    """Every storage of this process closed: its sessions ended, its engine's connections given back to the server."""
    with _lock:
        storages = [storage for (pid, _), storage in _storages.items() if pid == os.getpid()]
        _storages.clear()
    for storage in storages:
        try:
            storage.remove_session()
            storage.engine.dispose()
        except Exception as err:  # a database already gone: nothing of ours is left to close
            log.debug("closing the study's database: %s", err)


_storages: dict[tuple[int, str], RetryingStorage] = {}
_lock = threading.Lock()
_registered = []


def _close_at_exit() -> None:
    if not _registered:
        atexit.register(close_all)
        _registered.append(True)


def _open(url: str, shown: str, heartbeat_s: int | None) -> RetryingStorage:
    """A new storage on `url` (its tables created on first use), or a one-line UsageError before any trial trains."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:  # a pooled connection the server dropped (a restart) is found out and replaced before it is used
        engine = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":  # (pg_stat_activity names the process that holds a connection)
        name = f"resnet9 search {os.getpid()}"
        engine["connect_args"] = {"application_name": name, "connect_timeout": CONNECT_TIMEOUT_S}
    beat = {"heartbeat_interval": heartbeat_s, "grace_period": 2 * heartbeat_s} if heartbeat_s else {}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the heartbeat is experimental in Optuna, and the way to mark stale trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RetryingStorage(url, engine_kwargs=engine, **beat)
        except ImportError as err:  # no point in trying again
            module = getattr(err.__cause__, "name", None) or parsed.get_driver_name()
            package = DRIVERS.get(parsed.get_driver_name(), module)
            raise UsageError(
                f"cannot open the study's database hydra.sweeper.storage={shown}: its driver is not installed; "
                f"pip install {package}"
            ) from None
        except Exception as err:  # unreachable server, unwritable file, not a study database, or a race
            problem = err  # (workers started together both create the tables: one of them may lose once)
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
    raise UsageError(
        f"cannot open the study's database hydra.sweeper.storage={shown} ({_first_line(problem)[:300]}); "
        f"check the URL and that its server answers"
    )


class RetryingStorage(RDBStorage):
    """Optuna's RDB storage whose every call (the base classes' methods: ask, tell, report, should_prune's reads,
    heartbeats, ...) is tried again while the database does not answer, for up to `retry_s` (`_retrying`).

    Optuna wraps it in its own cache of finished trials, as any RDBStorage. A write whose commit reached the
    database but whose answer was lost is tried again too: for a trial's state Optuna then says it is finished."""

    retry_s: float = 60.0
    shown: str = ""


def unanswered(err: BaseException) -> bool:
    """The database did not answer (refused, dropped, shut down, locked), as opposed to a request it refused."""
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
    if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, sa_exc.OperationalError | sa_exc.InterfaceError)


class _Silence:
    """Since when this process's database calls have found the database silent (None: it answers)."""

    since: float | None = None


_inside = threading.local()  # a retried call that calls another: only the outer one retries (one budget)


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "active", False):
            return method(self, *args, **kwargs)
        _inside.active = True
        try:
            return _with_retries(self, method, args, kwargs)
        finally:
            _inside.active = False

    return call


def _with_retries(storage: RetryingStorage, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    wait = FIRST_WAIT_S
    while True:
        try:
            result = method(storage, *args, **kwargs)
        except Exception as err:
            if not unanswered(err):
                raise
            now = time.monotonic()
            if _Silence.since is None:
                _Silence.since = now
                log.warning("the study's database %s does not answer (%s); trying again for up to %.0f s",
                            storage.shown, _first_line(err), storage.retry_s)  # fmt: skip
            left = _Silence.since + storage.retry_s - now
            if left <= 0:
                raise StudyUnavailable(
                    f"the study's database {storage.shown} did not answer for {storage.retry_s:.0f} s "
                    f"({_first_line(err)[:200]}); when it is back, run the same command again: the study continues "
                    f"(its trials under way count as running until 2 x hydra.sweeper.heartbeat_s have passed)"
                ) from None
            time.sleep(min(wait, left))
            wait = min(2 * wait, LONGEST_WAIT_S)
            continue
        if _Silence.since is not None:
            log.warning("the study's database %s answers again", storage.shown)
            _Silence.since = None
        return result


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) and err.__cause__ else err
    orig = getattr(cause, "orig", None)  # SQLAlchemy's wrapper around the driver's error: the driver's own words
    return first_line(orig if orig is not None else cause)


# The storage interface's calls that go to the database: all but these, which answer from the object itself (one
# of them succeeding would say nothing of the database, yet end the silence and start a new budget)
OFFLINE = {
    "check_trial_is_updatable", "get_failed_trial_callback", "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback", "remove_session",
}  # fmt: skip
# ...and the RDB storage's own methods that Optuna's cache in front of it calls instead of the public ones (asking
# for a trial, setting its parameters, reading the study's trials: what `ask` and the pruner's check do)
CACHE_CALLS = {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id"}
RETRIED = sorted(
    {
        name
        for base in (BaseStorage, BaseHeartbeat)
        for name, _ in inspect.getmembers(base, inspect.isfunction)
        if not name.startswith("__") and name not in OFFLINE
    }
    | {name for name in CACHE_CALLS if callable(getattr(RDBStorage, name, None))}
)
for _name in RETRIED:
    setattr(RetryingStorage, _name, _retrying(getattr(RDBStorage, _name)))
