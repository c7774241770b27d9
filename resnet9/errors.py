"""The error types and the one way a command ends on them: a single line on stderr and a non-zero exit.

Every command (train, lr_find, summary, evaluate, predict, report) and the output-folder check end through
`exit_with`, so a user always sees `error: <what was wrong>; <how to fix it>` and never a traceback for a
mistake they can fix. The errors derive from Hydra's `CompactHydraException`: inside a `--multirun` Hydra
marks the job failed, runs the others, and prints the message without a traceback at the end.
"""

from __future__ import annotations

import contextlib
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


def exit_with(message: str, status: int = USAGE_EXIT) -> NoReturn:
    """The one exit path: `message` as one line on stderr, then exit with `status`."""
    print(message, file=sys.stderr)
    sys.exit(status)


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
            raise
        exit_with(f"error: {err}")
