"""SIGTERM/SIGINT/SIGUSR2: every part of a run installs its handler through resnet9/core/signals.py and gives back
the process's own handlers when it ends, however it ends; SIGUSR2 goes on to the process's own handler (submitit's
requeuer) once the run has saved."""

import json
import os
import signal

import pytest

from resnet9.core import signals, slurm
from resnet9.training.engine.lifecycle import SignalStop, job_record
from resnet9.training.engine.loop import StopRequested


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
        assert current() == [ours] * len(signals.STOP_SIGNALS)
        raise RuntimeError("the block failed")
    assert current() == [own_handler] * len(signals.STOP_SIGNALS)


def test_training_and_setup_give_the_handlers_back(process_handlers, tmp_path):
    stop = SignalStop()
    stop.on_run_start(state=None)
    signal.raise_signal(signal.SIGTERM)  # training: the flag is set, nothing dies
    assert stop.flag.signal == signal.SIGTERM and current()[0] is not own_handler
    stop.on_run_end(state=None, status="interrupted")
    assert current() == [own_handler] * len(signals.STOP_SIGNALS)

    with pytest.raises(ValueError), job_record(tmp_path, lambda: {}, []):  # setup, failing
        assert current()[0] is not own_handler
        raise ValueError("bad setup")
    assert current() == [own_handler] * len(signals.STOP_SIGNALS)
    assert (tmp_path / "metrics.json").is_file()  # and the job left its record


def test_sigusr2_stops_the_run_and_goes_on_to_the_requeuer_only_after_ours_are_restored():
    """As in a submitit job: the process's own SIGUSR2 handler requeues the job and exits; called mid-step it would
    exit there, so it is called only once the run has stopped, saved and given the handlers back."""
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # (submitit's requeuer)
    try:
        with pytest.raises(StopRequested) as stopped, signals.handled(lambda signum, frame: None):  # job_record's
            stop = SignalStop()
            stop.on_run_start(state=None)
            signal.raise_signal(signal.SIGUSR2)  # the warning before a time limit
            assert stop.flag.signal == signal.SIGUSR2 and calls == []  # a flag for the loop, not the requeuer yet
            assert signals.requeued_after(signal.SIGUSR2)  # so the record says "requeued"
            stop.on_run_end(state=None, status="requeued")
            raise StopRequested(stop.flag.signal, step=7)
        signals.pass_on(stopped.value.signal)  # the command's last act
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)
    # no requeuer (a plain process, or SIGUSR2 from kill): a stop like SIGTERM's, and nothing to pass on
    assert not signals.requeued_after(signal.SIGUSR2) and signals.requeuer() is None
    signals.pass_on(signal.SIGUSR2)


def test_sigterm_counts_as_requeued_only_while_slurm_requeues_the_job(tmp_path, monkeypatch):
    """`scontrol requeue` and `scancel` both send SIGTERM; only a requeue has counted one more restart by then."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\necho JobId=$4 JobState=COMPLETING Requeue=1 Restarts=$RESTARTS BatchFlag=1\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not slurm.requeue_underway()  # not a SLURM job: never asks
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for restarts, started_as, requeuing in (("0", None, False), ("1", None, True), ("1", "1", False), ("3", "2", True)):
        monkeypatch.setenv("RESTARTS", restarts)
        if started_as is not None:
            monkeypatch.setenv("SLURM_RESTART_COUNT", started_as)
        assert signals.requeued_after(signal.SIGTERM) is requeuing, (restarts, started_as)
    assert not signals.requeued_after(signal.SIGINT)  # Ctrl-C: never a requeue


@pytest.mark.parametrize("requeue_went_through", [True, False])
def test_a_requeue_whose_command_slurm_stopped_is_still_a_requeue(requeue_went_through, tmp_path, monkeypatch, capsys):
    """submitit's requeuer runs `scontrol requeue`; SLURM, requeuing, stops the job's step and may stop that command
    with it (CalledProcessError, died with SIGTERM). If SLURM has counted the restart, the job is requeued after all:
    its record stays `requeued` and its line says it resumes; else it was declined: `interrupted`, how to resume."""
    import subprocess

    import resnet9.train as trainer

    (tmp_path / "metrics.json").write_text(json.dumps({"status": "requeued", "stopped": "stopped by signal 12"}))

    def requeuer(signum):
        raise subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "186"])

    monkeypatch.setattr(signals, "pass_on", requeuer)
    monkeypatch.setattr(slurm, "requeue_underway", lambda: requeue_went_through)
    stopped = StopRequested(signal.SIGUSR2, step=25)
    stopped.requeued = True
    with pytest.raises(SystemExit) as ended:
        trainer._end_stopped(stopped, tmp_path)
    assert ended.value.code == 128 + signal.SIGUSR2
    record, said = json.loads((tmp_path / "metrics.json").read_text()), capsys.readouterr().err
    if requeue_went_through:
        assert record["status"] == "requeued" and "SLURM requeues the job, which resumes from" in said
    else:
        assert record["status"] == "interrupted" and "; not requeued: CalledProcessError" in record["stopped"]
        assert "resume by rerunning" in said
