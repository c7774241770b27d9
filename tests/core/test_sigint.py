"""SIGINT (Ctrl-C) does what SIGTERM does: during setup the job ends at once with its record; in training the run
stops at the next step, saves last.pt at that step and records `interrupted`. (The exit status, 128 + the signal,
follows from the stop's signal: tests/commands/test_resume.py runs the command to its end under SIGTERM.)"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import resnet9.train as trainer
from resnet9.training.engine import epoch as engine_epoch
from resnet9.training.engine.lifecycle import job_record
from resnet9.training.engine.loop import StopRequested

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def ctrl_c_caught():
    """The process's own SIGINT handler while the test runs: it counts the presses that reach it (instead of
    pytest's KeyboardInterrupt, which would end the whole session) and is restored after."""
    reached = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: reached.append(signum))
    yield reached
    signal.signal(signal.SIGINT, previous)


def test_sigint_during_setup_ends_the_job_with_its_record(tmp_path, ctrl_c_caught):
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(StopRequested) as stopped, job_record(tmp_path, lambda: {"epochs": 3}, ["seed=3"]):
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during setup: nothing to save
        time.sleep(5)
    assert stopped.value.signal == signal.SIGINT and ctrl_c_caught == []
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["status"], record["stopped"], record["ended_in"]) == ("interrupted", "stopped by signal 2", "setup")
    assert signal.getsignal(signal.SIGINT) is handler  # the process's own handler is back


def test_sigint_in_training_stops_at_the_next_step_and_saves_it(synthetic_root, tmp_path, monkeypatch, ctrl_c_caught):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"data.root={synthetic_root}", "data.limit_train=400", "data.limit_test=300", "batch_size=40",
            "model.width=0.0625", "epochs=2", "optimizer.lr=0.1", "scheduler.lr_min=0.01", "logger=none",
            "progress=false", "device=cpu",
        ])  # fmt: skip
    real, steps = engine_epoch.train_one_epoch, []

    def pressed_as_step_3_starts(model, batches, *args, **kwargs):
        def counted():
            for batch in batches:
                steps.append(1)
                if len(steps) == 3:
                    signal.raise_signal(signal.SIGINT)
                yield batch

        return real(model, counted(), *args, **kwargs)

    monkeypatch.setattr(engine_epoch, "train_one_epoch", pressed_as_step_3_starts)
    with pytest.raises(StopRequested) as stopped:
        trainer.train(cfg, tmp_path)
    assert (stopped.value.signal, str(stopped.value), ctrl_c_caught) == (2, "stopped by signal 2 after step 2", [])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["stopped"] == "stopped by signal 2 after step 2"
    assert record["epochs"] == []  # stopped in epoch 1, after its third step
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["train_state"]["progress"]
    assert len(saved["lrs"]) == 3  # last.pt holds the three steps done: none is redone
