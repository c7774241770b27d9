"""The One Cycle schedule of the mission: LRMIN -> LRMAX -> LRMIN, linear, stepped once per batch.

Built on torch's OneCycleLR (two-phase, linear): `div_factor = LRMAX / LRMIN` makes step 0 start at LRMIN
and `final_div_factor = 1` makes the last step end at LRMIN again — no annihilation below LRMIN.
The peak is the last batch of epoch `peak_epoch` (1-based): with 97 steps per epoch and peak_epoch=5 the
LR reaches LRMAX at step 484 of 0..2327 and falls linearly back to LRMIN at step 2327.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from resnet9.errors import ConfigError

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
