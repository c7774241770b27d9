"""SIGTERM/SIGINT: every part of a run installs its handler through resnet9/core/signals.py and gives back the
process's own handlers when it ends, however it ends."""

import signal

import pytest

from resnet9.core import signals
from resnet9.training.listeners import SignalStop, job_record


def own_handler(signum, frame):  # the handlers a process had before resnet9 ran in it
    pass


@pytest.fixture
def process_handlers():
    before = {sig: signal.signal(sig, own_handler) for sig in signals.STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def current() -> list:
    return [signal.getsignal(sig) for sig in signals.STOP_SIGNALS]


def test_a_handler_is_ours_inside_and_the_processs_after_even_on_an_error(process_handlers):
    def ours(signum, frame):
        pass

    with pytest.raises(RuntimeError), signals.handled(ours):
        assert current() == [ours, ours]
        raise RuntimeError("the block failed")
    assert current() == [own_handler, own_handler]


def test_training_and_setup_give_the_handlers_back(process_handlers, tmp_path):
    stop = SignalStop()
    stop.on_run_start(state=None)
    signal.raise_signal(signal.SIGTERM)  # training: the flag is set, nothing dies
    assert stop.flag.signal == signal.SIGTERM and current()[0] is not own_handler
    stop.on_run_end(state=None, status="interrupted")
    assert current() == [own_handler, own_handler]

    with pytest.raises(ValueError), job_record(tmp_path, lambda: {}, []):  # setup, failing
        assert current()[0] is not own_handler
        raise ValueError("bad setup")
    assert current() == [own_handler, own_handler]
    assert (tmp_path / "metrics.json").is_file()  # and the job left its record
