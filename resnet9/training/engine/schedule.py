"""The LR schedules of the `scheduler` group, and when a schedule steps.

The interface (a user's own schedule follows it): a function or class called as
`schedule(optimizer, lr_min=..., lr_max=..., epochs=..., steps_per_epoch=..., **its own YAML keys)` that returns
a torch LR scheduler. LRMIN and LRMAX are the range test's (or the numbers given), and the optimizer starts at
LRMAX; the schedule sets step 0's LR itself. The trainer passes only the arguments the callable takes, so any
torch scheduler class works as it is (`_target_: torch.optim.lr_scheduler.StepLR`): it starts from the
optimizer's LR, LRMAX, and a key may take LRMIN or LRMAX by interpolation (`eta_min: ${.lr_min}`,
`max_lr: ${optimizer.lr}`), which hold the derived numbers when the schedule is built.

`interval` (`step`, the default, or `epoch`) says when it steps: after every batch, or after every epoch's
evaluation; ReduceLROnPlateau steps on the epoch row's `monitor` key (default `test_loss`) after every epoch.

`one_cycle` is the mission's: LRMIN -> LRMAX -> LRMIN, linear.

Built on torch's OneCycleLR (two-phase, linear): `div_factor = LRMAX / LRMIN` makes step 0 start at LRMIN
and `final_div_factor = 1` makes the last step end at LRMIN again — no annihilation below LRMIN.
The peak is the last batch of epoch `peak_epoch` (1-based): with 97 steps per epoch and peak_epoch=5 the
LR reaches LRMAX at step 484 of 0..2327 and falls linearly back to LRMIN at step 2327.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from resnet9.core.errors import ConfigError

PEAK_SHARE = 5 / 24  # the mission's peak: the end of epoch 5 of 24


def one_cycle(
    optimizer: Optimizer,
    lr_min: float,
    lr_max: float,
    epochs: int,
    steps_per_epoch: int,
    peak_epoch: float | str = "auto",
    cycle_momentum: bool = False,
) -> OneCycleLR:
    """OneCycleLR from LRMIN at step 0 to LRMAX at the end of `peak_epoch` and back to LRMIN at the end.

    `peak_epoch="auto"`: the mission's proportion, 5 of 24 epochs, of however many epochs the run has (so
    `epochs=N` alone gives a sensible schedule; with 24 epochs the peak is exactly the end of epoch 5).

    `cycle_momentum=False` keeps the optimizer's own momentum (Page's recipe: fixed 0.9); True lets
    OneCycleLR cycle it 0.95 -> 0.85 -> 0.95 against the LR.
    """
    total_steps = epochs * steps_per_epoch
    given = peak_epoch
    if peak_epoch == "auto":
        peak_epoch, given = epochs * PEAK_SHARE, f"auto (epoch {epochs * PEAK_SHARE:.3g})"
    peak_step = round(peak_epoch * steps_per_epoch) - 1  # last batch of the peak epoch
    if not 0 < peak_step < total_steps - 1:  # too few steps to rise and fall (a bad config, so one line)
        raise ConfigError(
            f"scheduler.peak_epoch={given} puts the LR peak at step {peak_step} of a {total_steps}-step run "
            f"({steps_per_epoch} per epoch), not strictly inside it; train more steps (epochs, data.limit_train) "
            f"or move the peak"
        )
    return OneCycleLR(
        optimizer,
        max_lr=lr_max,
        total_steps=total_steps,
        # OneCycleLR ends its warm-up phase at step pct_start * total_steps - 1.
        pct_start=(peak_step + 1) / total_steps,
        anneal_strategy="linear",
        three_phase=False,
        div_factor=lr_max / lr_min,
        final_div_factor=1.0,
        cycle_momentum=cycle_momentum,
    )


def _peak(peak_epoch: float | str, epochs: int) -> float:
    return epochs * PEAK_SHARE if peak_epoch == "auto" else float(peak_epoch)


def _relative(optimizer: Optimizer, lr_max: float, lr_at_step: object) -> LambdaLR:
    """A LambdaLR whose factor turns the optimizer's LR (LRMAX) into `lr_at_step(step)`."""
    for group in optimizer.param_groups:
        group["lr"] = lr_max  # LambdaLR multiplies the LR each group starts with
    return LambdaLR(optimizer, lambda step: lr_at_step(step) / lr_max)


def piecewise_linear(
    optimizer: Optimizer,
    lr_min: float,
    lr_max: float,
    epochs: int,
    steps_per_epoch: int,
    peak_epoch: float | str = "auto",
    final_lr: float | None = 0.0,
) -> LambdaLR:
    """Page's schedule: linear from LRMIN at step 0 to LRMAX at the end of `peak_epoch`, then linear to
    `final_lr` (0: Page's annihilation; None: LRMIN) at the end of the run, read at each batch's start (in epochs)."""
    peak = _peak(peak_epoch, epochs)
    if not 0 < peak < epochs:
        raise ConfigError(f"scheduler.peak_epoch={peak_epoch} must lie inside the run (0 < peak < epochs={epochs})")
    end = lr_min if final_lr is None else final_lr
    knots, values = [0.0, peak, float(epochs)], [lr_min, lr_max, end]
    return _relative(optimizer, lr_max, lambda step: float(np.interp(step / steps_per_epoch, knots, values)))


def warmup_cosine(
    optimizer: Optimizer,
    lr_min: float,
    lr_max: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 2.0,
) -> LambdaLR:
    """Linear warm-up from LRMIN to LRMAX over `warmup_epochs`, then a half cosine back to LRMIN at the end."""
    if not 0 <= warmup_epochs < epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup_epochs} must lie in 0..epochs={epochs} (exclusive); e.g. "
            f"scheduler.warmup_epochs={max(epochs // 12, 1)}"
        )
    warm, total = warmup_epochs * steps_per_epoch, epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return lr_min + (lr_max - lr_min) * step / warm
        done = (step - warm) / max(total - 1 - warm, 1)  # 0 at the end of warm-up, 1 at the last step
        return lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    return _relative(optimizer, lr_max, lr_at)


def monitored(row: dict[str, Any], key: str, setting: str) -> float:
    """The epoch row's number at `key` (what a schedule or a callback monitors), or one line naming the setting and
    the keys it could name."""
    value = row.get(key)
    if not isinstance(value, int | float):
        numbers = ", ".join(name for name, number in row.items() if isinstance(number, int | float))
        raise ConfigError(f"{setting}={key} is not a number of the epoch's row; choose one of {numbers}")
    return value


class Stepped:
    """A schedule and when it steps: `step()` after every batch (the training loop calls it, as it would a torch
    scheduler's), `after_epoch(row)` once the epoch is evaluated (the trainer calls it). Its state is the
    schedule's own, so checkpoints hold what they always held."""

    def __init__(self, schedule: LRScheduler, interval: str = "step", monitor: str = "test_loss") -> None:
        self.schedule, self.monitor = schedule, monitor
        self.on_plateau = isinstance(schedule, ReduceLROnPlateau)
        if self.on_plateau and interval == "step":
            raise ConfigError(
                "scheduler: ReduceLROnPlateau steps on a monitored value after each epoch; set "
                "scheduler.interval=epoch (and scheduler.monitor, e.g. test_loss)"
            )
        self.per_batch = interval == "step"

    def step(self) -> None:
        if self.per_batch:
            self.schedule.step()

    def after_epoch(self, row: dict[str, Any]) -> None:
        if self.per_batch:
            return
        if not self.on_plateau:
            self.schedule.step()
        else:
            self.schedule.step(monitored(row, self.monitor, "scheduler.monitor"))

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
