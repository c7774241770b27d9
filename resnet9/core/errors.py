"""The error types and the one way a command ends on them: a single line on stderr and a non-zero exit.

Every command (train, lr_find, summary, evaluate, predict, report) and the output-folder check end through
`exit_with`, so a user always sees `error: <what was wrong>; <how to fix it>` and never a traceback for a
mistake they can fix. The errors derive from Hydra's `CompactHydraException`: inside a `--multirun` Hydra
marks the job failed, runs the others, and the message ends the command as one line. Hydra's own errors (a
misspelt key or option, an override it cannot parse) end the same way (`hydra_errors_in_one_line`).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode

USAGE_EXIT = 2  # the exit status of every one-line error, as argparse and Hydra use for bad usage


class UsageError(CompactHydraException):
    """Something the user can fix (config, data, files, environment). Its message is one line."""


class ConfigError(UsageError):
    """A config value out of range, of the wrong type, or inconsistent with another."""


class DataError(UsageError):
    """Missing, unreadable or malformed data: data set files, or what a data set function returned."""


class TrainingDiverged(UsageError):
    """The training loss became inf or nan: the LRs are too high for this setup (the likeliest real failure)."""

    def __init__(self, loss: float, step: int, lr: float) -> None:
        super().__init__(
            f"training diverged: the loss became {loss} at step {step} (LR {lr:.4g}); lower the peak LR, "
            f"e.g. lr_finder.scale=0.5 or lr_finder.max_divisor=2, or give optimizer.lr and scheduler.lr_min"
        )


def first_line(err: BaseException | str, otherwise: str | None = None, limit: int | None = None) -> str:
    """An error's first line, as our one-line messages quote it: its message's first line, else `otherwise`
    (default: the error's type name), cut to `limit` characters."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else (otherwise or type(err).__name__)
    return line[:limit] if limit else line


class TrialPruned(Exception):
    """A search's pruner ended this trial after an epoch: its accuracy fell behind the other trials' at that epoch.
    A result of the search (metrics.json "status": "pruned"), not a failure; the sweeper tells the study so."""

    status = "pruned"

    def __init__(self, trial: int, epoch: int, test_acc: float) -> None:
        super().__init__(f"trial {trial} pruned after epoch {epoch} (test accuracy {100 * test_acc:.2f}%)")
        self.trial, self.epoch, self.test_acc = trial, epoch, test_acc

    def __reduce__(self) -> tuple:  # (a joblib or submitit launcher sends it back to the sweeper's process)
        return TrialPruned, (self.trial, self.epoch, self.test_acc)


def exit_with(message: str, status: int = USAGE_EXIT) -> NoReturn:
    """The one exit path: `message` as one line on stderr, then exit with `status`."""
    print(message, file=sys.stderr)
    to_log_files(message)
    sys.exit(status)


def to_log_files(message: str) -> None:
    """The line into the run's log files too (Hydra's <output>/train.log): a failed run's log says why."""
    record = logging.LogRecord("resnet9", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextlib.contextmanager
def exit_on_usage_error() -> Iterator[None]:
    """A command ends on a UsageError with `error: <message>` and exit status 2.

    In a multirun the error propagates instead: Hydra marks that job failed, runs the others, and reports
    the failure once the sweep is done.
    """
    _task_started()
    try:
        yield
    except UsageError as err:
        if in_multirun():
            to_log_files(f"error: {err}")
            raise
        exit_with(f"error: {err}")


@contextlib.contextmanager
def hydra_errors_in_one_line() -> Iterator[None]:
    """Around a command's Hydra entry point: a composition error (a typo'd key or option, a bad override) ends
    like every other mistake, in one line with the fix, instead of Hydra's several (`Key 'epoch' is not in
    struct / full_key: epoch / object_type=dict`, or the config search path).

    Hydra reports its errors itself unless HYDRA_FULL_ERROR=1, which makes it raise them: set here until the
    task starts (`exit_on_usage_error` hands it back), so composition errors reach this handler while the task's
    own failures are reported as Hydra does (a traceback trimmed to the task's frames). A user's own
    HYDRA_FULL_ERROR=1 keeps Hydra's full report of everything.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    os.environ.update({"HYDRA_FULL_ERROR": "1", OURS: "1"})
    try:
        yield
    except CompactHydraException as err:  # composition, the override grammar, a callback's check before the task
        exit_with(f"error: {_hydra_error_line(err)}")
    finally:
        _task_started()


# Beside HYDRA_FULL_ERROR=1 when hydra_errors_in_one_line set it (not the user): in the environment, where Hydra
# reads the mode, so that a task started in another thread or process (a launcher's) hands it back too.
OURS = "RESNET9_SET_HYDRA_FULL_ERROR"


def _task_started() -> None:
    if os.environ.pop(OURS, None) is not None:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def _hydra_error_line(err: CompactHydraException) -> str:
    cause = err.__cause__
    if isinstance(cause, UsageError):  # a plugin's own check, e.g. of a launcher setting, already says it all
        return str(cause)
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group = re.search(r"Available options in '([^']+)'", str(err))  # (an option may hold a slash)
        group = group.group(1) if group else err.missing_cfg_file.rsplit("/", 1)[0]
        option = err.missing_cfg_file.removeprefix(f"{group}/")
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(err.options)}"
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if full_key and hasattr(parent, "keys") and "To append" in str(err):
        key = str(getattr(cause, "key", full_key))
        close = difflib.get_close_matches(key, [str(k) for k in parent.keys()], n=1)
        prefix = full_key[: len(full_key) - len(key)]
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        target = parent.get("_target_") if "_target_" in parent else None
        if target is not None and "." in full_key and not close:  # which option lacks it (a sweep over models)
            hint = f" of {full_key.split('.')[0]} {target}{hint}"
            return (
                f"{full_key} is not a setting{hint}; keys differ between options (a sweep over several "
                f"varies only the keys they share: docs/sweeps.md#options-with-their-own-keys)"
            )
        return f"{full_key} is not a setting{hint}; --cfg job prints every setting with its value"
    lines = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"bad override: {lines}" if isinstance(err, OverrideParseException) else lines
