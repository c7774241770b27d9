import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resnet9.core.errors import ConfigError
from resnet9.training.engine.schedule import one_cycle, piecewise_linear, warmup_cosine

LR_MIN, LR_MAX, EPOCHS, STEPS = 0.04, 0.4, 24, 97  # 50,000 images at batch 512 with drop_last


def lrs_per_step(**kwargs) -> np.ndarray:
    """The LR each training batch sees under One Cycle, from an optimizer set to another LR (it sets its own)."""
    return lrs_of(one_cycle, start_lr=123.0, **kwargs)


def test_one_cycle_from_lrmin_to_lrmax_at_end_of_epoch_5_and_back_to_lrmin():
    lrs = lrs_per_step()
    assert len(lrs) == 2328
    assert lrs[0] == pytest.approx(LR_MIN)
    peak = int(np.argmax(lrs))
    assert peak == 5 * STEPS - 1  # the last batch of epoch 5
    assert lrs[peak] == pytest.approx(LR_MAX)
    assert lrs[-1] == pytest.approx(LR_MIN)  # no annihilation below LRMIN
    assert lrs.min() == pytest.approx(LR_MIN)


@pytest.mark.parametrize("epochs, steps, peak_step", [(24, 97, 484), (2, 97, 39), (8, 10, 16)])
def test_the_peak_follows_the_runs_length_unless_given(epochs, steps, peak_step):
    """auto: 5/24 of the run (the mission's epoch 5 of 24), so `epochs=N` alone trains a full cycle."""
    lrs = lrs_per_step(epochs=epochs, steps_per_epoch=steps)
    assert int(np.argmax(lrs)) == peak_step == round(epochs * steps * 5 / 24) - 1
    assert lrs[peak_step] == pytest.approx(LR_MAX) and lrs[-1] == pytest.approx(LR_MIN)
    assert int(np.argmax(lrs_per_step(epochs=epochs, steps_per_epoch=steps, peak_epoch=1))) == steps - 1


def test_linear_in_both_phases():
    lrs = lrs_per_step()
    peak = 5 * STEPS - 1
    up, down = np.diff(lrs[: peak + 1]), np.diff(lrs[peak:])
    assert np.allclose(up, (LR_MAX - LR_MIN) / peak)
    assert np.allclose(down, -(LR_MAX - LR_MIN) / (len(lrs) - 1 - peak))


def test_momentum_is_left_alone_unless_cycled():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1.0, momentum=0.9, nesterov=True)
    one_cycle(optimizer, LR_MIN, LR_MAX, EPOCHS, STEPS)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    one_cycle(optimizer, LR_MIN, LR_MAX, EPOCHS, STEPS, cycle_momentum=True)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.95)


def test_config_builds_the_same_schedule():
    partial = instantiate(OmegaConf.load("conf/scheduler/onecycle.yaml"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = partial(optimizer, lr_min=LR_MIN, lr_max=LR_MAX, epochs=EPOCHS, steps_per_epoch=STEPS)
    assert scheduler.total_steps == EPOCHS * STEPS
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR_MIN)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"peak_epoch": 24}, ConfigError, "peak at step 2327 of a 2328-step run"),
        ({"peak_epoch": 0}, ConfigError, "not strictly inside it"),
        # a fractional peak that rounds to the very first step of a short run
        ({"peak_epoch": 0.01}, ConfigError, "scheduler.peak_epoch=0.01 puts the LR peak at step 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        lrs_per_step(**kwargs)


def lrs_of(schedule, start_lr: float = LR_MAX, **kwargs) -> np.ndarray:
    """The LR of every batch of a schedule built as the trainer builds it (the optimizer at `start_lr`: LRMAX),
    stepping once per batch as the trainer does, also after the very last batch (which must not raise)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=start_lr, momentum=0.9, nesterov=True)
    args = dict(lr_min=LR_MIN, lr_max=LR_MAX, epochs=EPOCHS, steps_per_epoch=STEPS) | kwargs
    scheduler = schedule(optimizer, **args)
    seen = []
    for _ in range(args["epochs"] * args["steps_per_epoch"]):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(seen)


def test_pages_piecewise_schedule_rises_to_lrmax_at_epoch_5_and_falls_to_zero():
    lrs = lrs_of(piecewise_linear, peak_epoch=5)
    epochs = np.arange(len(lrs)) / STEPS  # each batch's start, in epochs
    assert lrs[0] == pytest.approx(LR_MIN) and lrs.max() == pytest.approx(LR_MAX, rel=1e-3)
    assert lrs[5 * STEPS] == pytest.approx(LR_MAX)  # the first batch of epoch 6 starts at the peak
    assert np.allclose(lrs, np.interp(epochs, [0, 5, 24], [LR_MIN, LR_MAX, 0.0]))  # Page's knots, linear between
    assert lrs[-1] == pytest.approx(LR_MAX / 19 / STEPS, rel=1e-6)  # one batch short of zero
    ends_at_lrmin = lrs_of(piecewise_linear, final_lr=None)
    assert ends_at_lrmin.min() == pytest.approx(LR_MIN) and ends_at_lrmin[-1] > LR_MIN


def test_warmup_cosine_rises_linearly_then_falls_as_a_half_cosine_to_lrmin():
    lrs = lrs_of(warmup_cosine, warmup_epochs=2)
    warm = 2 * STEPS
    assert lrs[0] == pytest.approx(LR_MIN) and lrs[warm] == pytest.approx(LR_MAX) and lrs[-1] == pytest.approx(LR_MIN)
    assert np.allclose(np.diff(lrs[:warm]), (LR_MAX - LR_MIN) / warm)
    middle = warm + (len(lrs) - 1 - warm) // 2
    assert lrs[middle] == pytest.approx((LR_MIN + LR_MAX) / 2, rel=1e-2)
    assert (np.diff(lrs[warm:]) <= 1e-12).all()


@pytest.mark.parametrize(
    "schedule, kwargs, fragment",
    [(piecewise_linear, {"peak_epoch": 30}, "scheduler.peak_epoch=30 must lie inside the run"),
     (warmup_cosine, {"warmup_epochs": 24}, "scheduler.warmup_epochs=24 must lie in 0..epochs=24")],
)  # fmt: skip
def test_a_schedule_outside_the_run_is_one_line(schedule, kwargs, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        lrs_of(schedule, **kwargs)
