"""SIGTERM/SIGINT, handled in one way everywhere: install a handler, and give the previous ones back after.

Three parts of a run handle the stop signals, one after another: a job before training (end at once: nothing to
save), training (`listeners.SignalStop`: stop at the next step, save, exit 128 + the signal) and a sweep between
its jobs (`report.SweepSummary`: write the summary, say how to resume). Each installs its handler through
`Handlers` and restores what was there before, so the process's own handlers survive a run or a sweep.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Handlers:
    """`handler` for SIGTERM and SIGINT until `restore()`. Outside the main thread (some launchers run jobs
    in threads) Python cannot handle signals: then nothing is installed, and nothing restored."""

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.previous: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread
            self.previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        with contextlib.suppress(ValueError):
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
        self.previous = {}


@contextlib.contextmanager
def handled(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT inside the block; the previous handlers after it, however it ends."""
    installed = Handlers(handler)
    try:
        yield
    finally:
        installed.restore()
