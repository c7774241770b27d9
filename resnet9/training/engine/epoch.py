"""One epoch, start to row: its training steps (or the rest of an epoch a stop cut short), their sums over the
processes read from the device once, evaluation, and the row every recorder reads.

The row's keys are declared once, in `EpochRow`; metrics.json, W&B and the console take them from the row, and a
callback may add keys of its own to the dict the trainer hands on (the console gives those a line of their own).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from resnet9.training.engine import distributed
from resnet9.training.engine.cuda_graph import CapturedStep
from resnet9.training.engine.loop import (
    Batches,
    EpochResult,
    EpochSums,
    StepSettings,
    StopFlag,
    evaluate,
    train_one_epoch,
)
from resnet9.training.engine.state import TrainState


@dataclass
class EpochRow:
    """An epoch as the run's record keeps it (metrics.json's `epochs`, W&B's `epoch/*`, the console's line)."""

    epoch: int
    train_loss: float  # the mean over the epoch's steps, summed over the processes
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float  # the LR of the epoch's last step
    ema: bool  # evaluated with the weight average (ema.decay > 0, from ema.start_epoch)
    train_time_s: float
    epoch_time_s: float  # training and evaluation
    images_per_s: float  # trained in this process, in this epoch
    mfu: float | None = None  # CUDA, a card of known peak: the model FLOPs utilisation

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if row["mfu"] is None:  # (absent, not null: a CPU run's record has no MFU)
            del row["mfu"]
        return row


TRAINERS_KEYS = frozenset(field.name for field in fields(EpochRow))


@dataclass
class Epochs:
    """What every epoch of a run uses: the config, the state, the model as trained (DDP, compiled: it shares its
    parameters with `state.model`), the test batches, the stop flag and the captured CUDA-graph step, if any."""

    cfg: DictConfig
    state: TrainState
    trained: torch.nn.Module
    settings: StepSettings
    test_batches: Batches
    stop: StopFlag
    captured: CapturedStep | None = None

    def run(self, epoch: int) -> tuple[dict[str, Any], EpochResult] | None:
        """Train, evaluate: the epoch's row and its numbers on rank 0; None on the others, which only train."""
        state, clock, started = self.state, self.state.record.clock, time.perf_counter()
        steps_before = len(state.epoch_sums.lrs) if state.epoch_sums is not None else 0  # an epoch a stop cut short
        with clock.phase("train"):
            result = self._train(epoch)
        train_time = time.perf_counter() - started
        if not distributed.world().is_main:
            return None
        with clock.phase("eval"):
            test_loss, test_acc = evaluate(state.evaluated_model(), self.test_batches, self.settings, self.cfg.eval_tta)
        images_per_s = (len(result.lrs) - steps_before) * self.cfg.batch_size / train_time
        averaged = state.averaging(epoch) is not None
        row = EpochRow(
            epoch, result.loss, result.accuracy, test_loss, test_acc, result.lrs[-1], averaged, train_time,
            time.perf_counter() - started, images_per_s, self._mfu(images_per_s),
        )  # fmt: skip
        return row.as_dict(), result

    def _mfu(self, images_per_s: float) -> float | None:
        record = self.state.record
        if not record.get("peak_flops"):
            return None
        return images_per_s * record["flops_per_image"] / record["peak_flops"]

    def _train(self, epoch: int) -> EpochResult:
        """The epoch's training steps (or the rest of one a stop interrupted), read once at its end."""
        state = self.state
        first_step = (epoch - 1) * len(state.loader)
        # Without a bar the loop gets the loader itself: a bar reads the device every log_every steps, nothing else
        batches = state.loader
        if self.cfg.progress and distributed.world().is_main:
            batches = tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        if state.epoch_sums is None:  # else: resuming this epoch where a stop left it
            state.epoch_sums = EpochSums.start(self.settings.device)
        train_one_epoch(
            self.trained, batches, state.optimizer, state.scheduler, self.settings, state.epoch_sums, first_step,
            ema=state.averaging(epoch), stop=self.stop, scaler=state.scaler, graph_step=self.captured,
        )  # fmt: skip
        result = distributed.sum_epoch(state.epoch_sums).read(first_step)
        if state.epoch_sums.first_step_s is not None:  # the run's very first step (with compile=true: compilation)
            state.record.update(first_step_s=state.epoch_sums.first_step_s)
        distributed.check_replicas_in_sync(state.model)
        state.epoch, state.epoch_sums = epoch, None
        return result
