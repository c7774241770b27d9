"""The error types and the one way a command ends on them: a single line on stderr and a non-zero exit.

Every command (train, lr_find, summary, evaluate, predict, report) and the output-folder check end through
`exit_with`, so a user always sees `error: <what was wrong>; <how to fix it>` and never a traceback for a
mistake they can fix. The errors derive from Hydra's `CompactHydraException`: inside a `--multirun` Hydra
marks the job failed, runs the others, and prints the message without a traceback at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

USAGE_EXIT = 2  # the exit status of every one-line error, as argparse and Hydra use for bad usage


class UsageError(CompactHydraException):
    """Something the user can fix (config, data, files, environment). Its message is one line."""


class ConfigError(UsageError):
    """A config value out of range, of the wrong type, or inconsistent with another."""


class DataError(UsageError):
    """Missing, unreadable or malformed CIFAR-10 data."""


class TrainingDiverged(UsageError):
    """The training loss became inf or nan: the LRs are too high for this setup (the likeliest real failure)."""

    def __init__(self, loss: float, step: int, lr: float) -> None:
        super().__init__(
            f"training diverged: the loss became {loss} at step {step} (LR {lr:.4g}); lower the peak LR, "
            f"e.g. lr_finder.scale=0.5 or lr_finder.max_divisor=2, or give optimizer.lr and scheduler.lr_min"
        )


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
    try:
        yield
    except UsageError as err:
        if in_multirun():
            to_log_files(f"error: {err}")
            raise
        exit_with(f"error: {err}")
