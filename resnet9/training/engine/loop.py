"""The steps themselves: one epoch of training, and evaluation. Used by the trainer, the benchmark and evaluate.

Both run on whatever yields (images, labels) batches: an augment.DeviceLoader, an AlbumentationsLoader, a
DataLoader or a list. Nothing here knows about checkpoints, trackers or processes: `train_one_epoch` fills an
`EpochSums` on the device, and the trainer decides what to do with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from resnet9.core.errors import TrainingDiverged

# A DataLoader (albumentations engine) or an augment.DeviceLoader: both yield (images, labels) batches.
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class StopRequested(Exception):
    """A stop was asked for (SIGTERM/SIGINT/SIGUSR2); raised at the next step boundary, a safe point. `requeued`:
    whether the job goes back to the queue and resumes by itself (None until the run records how it ended)."""

    def __init__(self, signal: int, step: int | None = None) -> None:
        super().__init__(f"stopped by signal {signal}" + (f" after step {step}" if step is not None else ""))
        self.signal = signal
        self.requeued: bool | None = None


@dataclass
class StopFlag:
    """Set from a signal handler; the loop checks it after every step."""

    signal: int | None = None


@dataclass
class EpochResult:
    """An epoch's numbers, read from the device once: mean loss and accuracy, and every step's loss and LR."""

    loss: float
    accuracy: float
    step_losses: list[float]
    lrs: list[float]


@dataclass
class EpochSums:
    """An epoch's running numbers, kept on the device while it runs; part of the training state, so that a
    stop mid-epoch saves them and the resumed run carries on with the same sums."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    step_losses: list[torch.Tensor] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    first_step_s: float | None = None  # the run's very first step (with compile=true: the compilation)

    @classmethod
    def start(cls, device: torch.device) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so that torch.load(weights_only=True) reads it back."""
        losses = torch.stack(self.step_losses).float().cpu() if self.step_losses else torch.zeros(0)
        return {
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "step_losses": losses,
            "lrs": list(self.lrs),
            "first_step_s": self.first_step_s,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochSums:
        return cls(
            state["loss_sum"].to(device),
            state["correct"].to(device),
            state["seen"],
            list(state["step_losses"].to(device)),
            list(state["lrs"]),
            state["first_step_s"],
        )

    def read(self, first_step: int) -> EpochResult:
        """The epoch's one read from the device; a non-finite step loss stops training with its step and LR."""
        losses = torch.stack(self.step_losses).float().tolist()
        for i, step_loss in enumerate(losses):
            _stop_if_diverged(step_loss, first_step + i, self.lrs[i])
        return EpochResult(self.loss_sum.item() / self.seen, self.correct.item() / self.seen, losses, self.lrs)


@dataclass(frozen=True)
class StepSettings:
    """How each batch is computed: where, in which layout and precision, with which loss."""

    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    autocast_dtype: torch.dtype | None = None  # bf16 or fp16 under autocast; None = fp32 throughout
    label_smoothing: float = 0.0
    log_every: int = 10

    def autocast(self, cache_enabled: bool = True) -> torch.autocast:
        # Under autocast, convolutions and matmuls run in bf16 while BatchNorm keeps fp32 statistics.
        # `cache_enabled=False` for a CUDA graph's capture: it must not keep tensors cast outside the graph.
        dtype = self.autocast_dtype or torch.bfloat16
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: StepSettings,
    sums: EpochSums | None = None,
    first_step: int = 0,
    ema: AveragedModel | None = None,
    stop: StopFlag | None = None,
    scaler: torch.amp.GradScaler | None = None,
    graph_step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EpochSums:
    """One pass over the training batches; the scheduler steps after every batch. Returns the epoch's sums.

    Nothing is read back from the device inside the epoch: loss and accuracy accumulate there and every
    step's loss is kept there (`EpochSums.read` reads them once, afterwards). Only a progress bar (when
    `batches` is one) reads its running numbers every `log_every` steps. The run's very first step (step 0)
    is timed on its own. `sums` continues an epoch that a stop interrupted (its loader skips the steps
    already done); a stop raises StopRequested after the step, with `sums` holding every step done.
    `graph_step(images, labels) -> (logits, loss)` replaces the eager step (cuda_graph.CapturedStep, a CUDA graph).
    """
    model.train()
    device = settings.device
    sums = sums if sums is not None else EpochSums.start(device)
    started = time.perf_counter()
    for images, labels in batches:
        step = first_step + len(sums.lrs)
        images = images.to(device, non_blocking=True).contiguous(memory_format=settings.memory_format)
        labels = labels.to(device, non_blocking=True)
        sums.lrs.append(optimizer.param_groups[0]["lr"])
        if graph_step is None:
            logits, loss = _train_step(model, images, labels, optimizer, settings, scaler)
        else:
            logits, loss = graph_step(images, labels)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        sums.step_losses.append(loss.detach())
        sums.loss_sum += loss.detach() * len(labels)
        sums.correct += (logits.argmax(1) == labels).sum()
        sums.seen += len(labels)
        if stop is not None and stop.signal is not None:
            raise StopRequested(stop.signal, step)
        if step == 0:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sums.first_step_s = time.perf_counter() - started
        if hasattr(batches, "set_postfix") and len(sums.lrs) % settings.log_every == 0:
            _show_progress(batches, sums, step)
    return sums


def _train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and the optimizer's step on one batch: (logits, loss), left on the device."""
    with settings.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: the loss scaled up for the backward pass, the gradients unscaled before the step
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped (and the scale lowered) when the gradients overflowed
        scaler.update()
    return logits, loss


def warm_up(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    train_batch: int,
    eval_batches: list[int],
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> None:
    """One training step at the training batch's shape and one evaluation at each evaluation shape, on random
    throwaway images of `input_shape` (channels, height, width: the data set's): cuDNN autotunes its kernels (and
    torch.compile compiles) before the first epoch is timed. Run it inside `TrainState.untouched()`, which undoes
    the step."""
    labels = torch.randint(0, 10, (train_batch,), device=settings.device)
    model.train()
    images = _throwaway_images(train_batch, settings, input_shape)
    _train_step(model, images, labels, optimizer, settings, scaler=None)
    optimizer.zero_grad(set_to_none=True)
    for size in dict.fromkeys(eval_batches):  # each shape once
        predict(model, [(_throwaway_images(size, settings, input_shape), labels[:0])], settings)
    if settings.device.type == "cuda":
        torch.cuda.synchronize(settings.device)


def _throwaway_images(n: int, settings: StepSettings, input_shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(n, *input_shape, device=settings.device).contiguous(memory_format=settings.memory_format)


def _show_progress(bar: Any, sums: EpochSums, step: int) -> None:
    running_loss = sums.loss_sum.item() / sums.seen
    _stop_if_diverged(running_loss, step, sums.lrs[-1])
    bar.set_postfix(
        loss=f"{running_loss:.3f}",
        acc=f"{100 * sums.correct.item() / sums.seen:.1f}%",
        lr=f"{sums.lrs[-1]:.3g}",
    )


def _stop_if_diverged(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(loss, step, lr)


@torch.no_grad()
def predict(
    model: nn.Module, batches: Batches, settings: StepSettings, tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for every item of `batches`, in order, as fp32 tensors on the device.

    `tta=True` scores each image by the mean logits of the image and its mirror image (flip test-time
    augmentation); the training augmentation flips, so both views are in-distribution.
    """
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in batches:
        images = images.to(settings.device, non_blocking=True).contiguous(memory_format=settings.memory_format)
        with settings.autocast():
            logits = model(images).float()
            if tta:
                logits = (logits + model(images.flip(3)).float()) / 2
        all_logits.append(logits)
        all_labels.append(labels.to(settings.device, non_blocking=True))
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model: nn.Module, batches: Batches, settings: StepSettings, tta: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (0..1) over every item of `batches`."""
    logits, labels = predict(model, batches, settings, tta)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).sum().item() / len(labels)
