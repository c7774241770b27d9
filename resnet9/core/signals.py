"""The stop signals, handled in one way everywhere: install a handler, and give the previous ones back after.

SIGTERM and SIGINT ask for a stop (`scancel`, Ctrl-C, `scontrol requeue`, a pre-emption); SIGUSR2 is SLURM's warning
before a time limit or a pre-emption (`sbatch --signal=USR2@<s>`, which submitit asks for, or `scancel --signal=USR2`).
Three parts of a run handle them, one after another: a job before training (end at once: nothing to save),
training (`lifecycle.SignalStop`: stop at the next step, save, exit 128 + the signal) and a sweep between its jobs
(`report.SweepSummary`: write the summary, say how to resume). Each installs its handler through `Handlers` and
restores what was there before, so the process's own handlers survive a run or a sweep.

Inside a submitit job the process's own SIGUSR2 handler is submitit's, which checkpoints the job and requeues it
(`scontrol requeue`), then exits. Called in the middle of a step it would exit there, so ours takes the signal,
the run stops at a step and saves, and only then `pass_on` hands the signal to submitit's (`requeuer`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from resnet9.core import slurm

REQUEUE_SIGNAL = signal.SIGUSR2  # SLURM's (and submitit's) warning before a time limit or a pre-emption
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, REQUEUE_SIGNAL)

_installed: list[Handlers] = []  # ours, not yet restored, outermost first: the first one's `previous` are the process's


class Handlers:
    """`handler` for the stop signals until `restore()`. Outside the main thread (some launchers run jobs
    in threads) Python cannot handle signals: then nothing is installed, and nothing restored."""

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.previous: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread
            self.previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
            _installed.append(self)

    def restore(self) -> None:
        with contextlib.suppress(ValueError):
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
        if self in _installed:
            _installed.remove(self)
        self.previous = {}


@contextlib.contextmanager
def handled(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """`handler` for the stop signals inside the block; the previous handlers after it, however it ends."""
    installed = Handlers(handler)
    try:
        yield
    finally:
        installed.restore()


def process_handler(signum: int) -> Any:
    """The handler the process had for `signum` before any of ours (what acts on it once ours are restored)."""
    return _installed[0].previous.get(signum) if _installed else signal.getsignal(signum)


def requeuer() -> Callable[[int, Any], Any] | None:
    """The process's own SIGUSR2 handler, if it has one: in a submitit job, submitit's, which requeues the job."""
    handler = process_handler(REQUEUE_SIGNAL)
    return handler if callable(handler) else None


def requeued_after(signum: int) -> bool:
    """Does the job go back to the queue after this stop, to resume from its last.pt? After SIGUSR2 when a
    requeuer takes it on; after SIGTERM when SLURM itself is requeuing the job (`scontrol requeue`, a
    pre-emption that requeues)."""
    if signum == REQUEUE_SIGNAL:
        return requeuer() is not None
    return signum == signal.SIGTERM and slurm.requeue_underway()


def pass_on(signum: int) -> None:
    """Hand a stop signal the run has dealt with (stopped at a step, saved) to the process's own handler for it,
    when that is a requeuer: submitit's checkpoints the job, requeues it and exits (SystemExit), or raises why it
    would not (e.g. submitit's UncompletedJobError after `max_num_timeout` time limits). Call it after every
    handler of ours is restored."""
    handler = requeuer() if signum == REQUEUE_SIGNAL else None
    if handler is not None:
        handler(signum, None)
