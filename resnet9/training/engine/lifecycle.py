"""A run's life as the trainer tells it: the listener interface, `notifying` around the epochs, and the job's
record however it ends.

The trainer calls, in list order: `on_run_start` before the first epoch, `on_epoch_end` after each evaluated
epoch, `on_stop` when a signal stopped training mid-epoch, and `on_run_end` with the final status
(completed, failed, interrupted, requeued -- stopped, and going back to the cluster's queue to resume by itself --,
or pruned by a search) however the run ends. `notifying` wraps the epochs and turns what happened into that
status; `job_record` leaves a metrics.json even for a job that ends before its run record exists; `SignalStop`
turns the stop signals into a flag the loop checks after every step. What listens is above: the recorders
(training/recording/), a search's pruning (training/sweeps/search.py), a user's callbacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from resnet9.core import files, signals
from resnet9.core.errors import TrialPruned, UsageError, first_line
from resnet9.training.engine import distributed
from resnet9.training.engine.loop import EpochResult, StopFlag, StopRequested
from resnet9.training.engine.state import TrainState

log = logging.getLogger(__name__)


class Listener:
    """The hooks, all optional."""

    def on_run_start(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        pass

    def on_stop(self, state: TrainState) -> None:
        pass

    def on_run_end(self, state: TrainState, status: str) -> None:
        pass


@contextlib.contextmanager
def notifying(listeners: list[Listener], state: TrainState, stop: StopFlag) -> Iterator[None]:
    """Run the block (the epochs) between `on_run_start` and `on_run_end`, recording how it ended.

    Listeners' time counts as the job's setup (at the start) and as writing (at the end).
    """
    clock, status = state.record.clock, "failed"
    try:
        with clock.phase("setup"):
            for listener in listeners:
                listener.on_run_start(state)
        yield
        status = "completed"
    except TrialPruned as pruned:  # a search's pruner ended it: a result of the search, not a failure
        status = pruned.status
        state.record.update(stopped=str(pruned))
        raise
    except StopRequested as stop_request:
        status = stop_status(stop_request)
        state.record.update(stopped=str(stop_request))
        with clock.phase("write"):
            for listener in listeners:
                listener.on_stop(state)
        raise
    except BaseException as err:
        if stop.signal is not None and distributed.is_active():  # under torchrun a stopped rank can leave
            status = "interrupted"  # another inside a collective: the error it gets there is the stop's doing
            raise StopRequested(stop.signal) from err
        state.record.update(error=one_line(err))
        raise
    finally:
        state.record.update(status=status)
        with clock.phase("write"):
            _tell_run_end(listeners, state, status)


def _tell_run_end(listeners: list[Listener], state: TrainState, status: str) -> None:
    """Every listener hears the end, even when an earlier one fails (a full disk): the first failure is raised
    after all have been told, unless the run had already failed, whose own error then stays the one reported."""
    failures = []
    # SignalStop last: its handlers stay until every other listener has ended (a signal then waits its turn)
    for listener in sorted(listeners, key=lambda listener: isinstance(listener, SignalStop)):
        try:
            listener.on_run_end(state, status)
        except Exception as err:
            failures.append(err)
            log.warning("while ending the run: %s", one_line(err))
    if failures and status == "completed":
        raise failures[0]


@contextlib.contextmanager
def job_record(out_dir: Path, config: Callable[[], dict[str, Any]], overrides: list[str]) -> Iterator[None]:
    """Every job leaves a metrics.json, even one that ends before its run record exists (a bad value, unreadable
    data, a signal during setup): then a short one, with the final status, the error line and the overrides, so
    that a sweep's report counts the job under its setting. A stop signal before training ends the job at
    once (nothing to save yet); from the first epoch on, `SignalStop` takes over."""
    path = out_dir / "metrics.json"
    # a resumed run's record is its own: a failure before it resumes leaves it as it was (not so a setup failure's)
    existed = path.exists() and not _setup_record(path)

    def stop_now(signum: int, _frame: Any) -> None:
        raise StopRequested(signum)

    try:
        with signals.handled(stop_now):
            yield
    except BaseException as err:
        if isinstance(err, StopRequested):  # (a stop in setup is decided here; one in training already was)
            stop_status(err)
        files.put_back_earlier_record(out_dir)  # refused before it trained: .hydra/ describes the earlier run again
        ours_to_write = not path.exists() or _setup_record(path)  # (not if the run's own record began meanwhile)
        if not existed and ours_to_write and not isinstance(err, SystemExit):
            if isinstance(err, StopRequested | KeyboardInterrupt):
                status = stop_status(err) if isinstance(err, StopRequested) else "interrupted"
                record = {"status": status, "stopped": one_line(err)}
            else:
                record = {"status": "failed", "error": one_line(err)}
            record |= {"ended_in": "setup", "overrides": overrides}
            with contextlib.suppress(Exception):  # the record must never hide the error itself
                files.write_json(path, {**record, "config": config(), "epochs": []})
        raise


def stop_status(stop: StopRequested) -> str:
    """How a stopped job is recorded: `requeued` when it goes back to the queue and resumes from last.pt by itself
    (SIGUSR2 with submitit's requeuer behind it, or SIGTERM from SLURM requeuing the job), else `interrupted` (a
    rerun resumes it). Decided once, when the run stops; `stop.requeued` carries it to the command's last line."""
    if stop.requeued is None:
        stop.requeued = signals.requeued_after(stop.signal)
    return "requeued" if stop.requeued else "interrupted"


def not_requeued(out_dir: Path, reason: str | None = None) -> None:
    """A job whose record says `requeued` that nothing will requeue after all (submitit's requeuer declined: the
    job reached its time limit `max_num_timeout` times; or a later stop, during a resumed run's setup, that no
    requeue follows) is `interrupted` again, with the reason, so that the sweep's summary says so."""
    path = out_dir / "metrics.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):  # the record must never hide the stop itself
        record = json.loads(path.read_text())
        if record.get("status") != "requeued":
            return
        stopped = record.get("stopped", "stopped") + (f"; not requeued: {reason}" if reason else "")
        files.write_json(path, {**record, "status": "interrupted", "stopped": stopped})


def _setup_record(path: Path) -> bool:
    """Is this metrics.json the short record of a job that ended before training (job_record's)?"""
    try:
        return json.loads(path.read_text()).get("ended_in") == "setup"
    except (OSError, ValueError, AttributeError):
        return False


def one_line(err: BaseException) -> str:
    """An error as metrics.json and the sweep's summary show it: our own errors' message, else type: message."""
    text = str(err) if isinstance(err, UsageError | StopRequested) else f"{type(err).__name__}: {err}"
    return first_line(text, type(err).__name__)


class SignalStop(Listener):
    """SIGTERM/SIGINT/SIGUSR2 set `flag` instead of killing the process; the previous handlers come back at the end.

    The loop checks the flag after every step, a safe point: the run then saves what it can and exits with
    128 + the signal number. Without a main thread (some launchers) there are no handlers and no flag.
    """

    def __init__(self) -> None:
        self.flag = StopFlag()
        self.handlers: signals.Handlers | None = None

    def on_run_start(self, state: TrainState) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            self.flag.signal = signum

        self.handlers = signals.Handlers(request_stop)

    def on_run_end(self, state: TrainState, status: str) -> None:
        if self.handlers is not None:
            self.handlers.restore()
