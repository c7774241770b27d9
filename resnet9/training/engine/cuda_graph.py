"""`cuda_graph=true`: the whole training step — forward, loss, backward, the fused optimizer's update — captured
once as a CUDA graph and replayed for every batch.

Eagerly, each step launches about 180 kernels from Python; on a fast card the GPU waits on those launches.
A replayed graph launches them all at once. What a graph needs, and how this step gives it:
- fixed shapes and addresses: each batch is copied into the same input tensors (the training loader drops
  the last partial batch, so every batch has one shape), and outputs land in the same output tensors;
- no host values inside: the LR is a one-element device tensor that the step fills from the schedule before
  each replay (the fused SGD kernel reads it there, as float32: the one number that differs from the eager
  step, which hands the kernel the schedule's float64, a relative 6e-8 at most); the schedule, the
  checkpoints and the records keep the plain numbers in `optimizer.param_groups`;
- state that exists before the capture: SGD's momentum buffers start as zeros, which is exactly SGD's
  first step (buffer = 0.9 * 0 + gradient) when dampening is 0; the captured update then never takes
  the "first step" branch;
- warm-up outside the graph: two steps on throwaway data on a side stream (cuDNN's autotuning, the
  autograd engine's set-up), undone in place so that the tensors the graph reads stay the same objects.

The eager step (`loop._train_step`) stays the reference: on a GPU the captured step is tested to give its
loss and weights within a tolerance. Where capture is impossible (a CPU, an optimizer other than fused SGD,
fp16 loss scaling, data parallelism, a failed capture) `capture_step` says why in one line and the run goes
on eagerly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resnet9.core.errors import first_line
from resnet9.training.engine.loop import StepSettings
from resnet9.training.engine.state import capture_rng, restore_rng

log = logging.getLogger(__name__)


class CapturedStep:
    """One training step as a CUDA graph: `step(images, labels)` -> (logits, loss), like the eager step, for
    batches of `batch` images of `input_shape` (channels, height, width: the data set's)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: StepSettings,
        batch: int,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        device = settings.device
        self.images = torch.zeros(batch, *input_shape, device=device).contiguous(memory_format=settings.memory_format)
        self.labels = torch.zeros(batch, dtype=torch.long, device=device)
        self.lrs = [torch.zeros((), device=device) for _ in optimizer.param_groups]
        self.hyperparameters = _captured_hyperparameters(optimizer)
        model.train()  # BatchNorm as in training: the warm-up's evaluation left the model in eval mode
        start_momentum(optimizer)
        with untouched_in_place(model, optimizer):  # the warm-up steps leave no trace
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.images.normal_()
                    self.labels.random_(0, 10)
                    self.optimizer.zero_grad(set_to_none=True)
                    self._body()
            torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients, and rewrites them
        with torch.cuda.graph(self.graph):
            self.logits, self.loss = self._body()

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`loop._train_step` without zero_grad (the graph overwrites the gradients) and without the autocast
        cache (a graph must not keep tensors cast outside it), with the LRs read from the device."""
        with self.settings.autocast(cache_enabled=False):
            logits = self.model(self.images)
            loss = F.cross_entropy(logits, self.labels, label_smoothing=self.settings.label_smoothing)
        loss.backward()
        with lrs_on_device(self.optimizer, self.lrs):
            self.optimizer.step()
        return logits, loss

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay on this batch at the schedule's current LR. The loss is a copy (the next replay overwrites
        the graph's own); the logits are the graph's, to be used before the next step."""
        if _captured_hyperparameters(self.optimizer) != self.hyperparameters or not self.model.training:
            raise RuntimeError("the captured step's optimizer settings or training mode changed after capture")
        for lr, group in zip(self.lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()
        return self.logits, self.loss.clone()


def capture_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    batch: int,
    scaler: torch.amp.GradScaler | None = None,
    parallel: bool = False,
    cycles_momentum: bool = False,
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> CapturedStep | None:
    """The captured step for images of `input_shape` (channels, height, width), or None (with one line saying
    why) where the run must step eagerly."""
    reason = why_not_captured(optimizer, settings, scaler, parallel, cycles_momentum)
    if reason is None:
        try:
            return CapturedStep(model, optimizer, settings, batch, input_shape)
        except Exception as err:  # e.g. an operation a graph cannot hold
            reason = f"the capture failed ({first_line(err, limit=200)})"
    log.warning("cuda_graph=true: %s; training steps run eagerly", reason)
    return None


def why_not_captured(
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None,
    parallel: bool,
    cycles_momentum: bool = False,
) -> str | None:
    """What rules a captured step out here, in words, or None when nothing does. The graph holds every
    optimizer setting but the LR as a constant, so a schedule that changes another one rules it out."""
    groups = optimizer.param_groups
    if settings.device.type != "cuda":
        return f"a CUDA graph needs a CUDA device, this run is on {settings.device.type}"
    if not isinstance(optimizer, torch.optim.SGD) or not all(group.get("fused") for group in groups):
        return f"only the fused SGD update is captured (optimizer=sgd on CUDA), not {type(optimizer).__name__}"
    if any(group["dampening"] != 0 for group in groups):
        return "SGD with dampening != 0 has a first step that a captured update cannot take"
    if scaler is not None:
        return "fp16 loss scaling decides on the host whether to step (use precision=bf16 or fp32)"
    if parallel:
        return "data parallelism (torchrun) is not captured"
    if cycles_momentum:
        return "scheduler.cycle_momentum=true changes the momentum every step, which a graph holds fixed"
    return None


def _captured_hyperparameters(optimizer: torch.optim.Optimizer) -> list[tuple]:
    """What a captured update holds fixed, per parameter group (all but the LR)."""
    keys = ("momentum", "weight_decay", "nesterov", "dampening", "maximize")
    return [tuple(group[key] for key in keys) for group in optimizer.param_groups]


def start_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers for parameters that have none yet: with dampening 0 the next update is exactly
    SGD's first step, and the buffers exist before a graph is captured."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for param in group["params"]:
            state = optimizer.state[param]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@contextlib.contextmanager
def lrs_on_device(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]) -> Iterator[None]:
    """The optimizer reads its LRs from `lrs` (device tensors) inside the block; the numbers come back after."""
    numbers = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    try:
        yield
    finally:
        for group, number in zip(optimizer.param_groups, numbers, strict=True):
            group["lr"] = number


@contextlib.contextmanager
def untouched_in_place(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Like `TrainState.untouched`, but copying the old values back into the same tensors (weights, buffers,
    optimizer state, gradients dropped) instead of new ones: a graph captured afterwards reads those tensors."""
    tensors = [*model.state_dict().values()]
    tensors += [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    saved = [tensor.clone() for tensor in tensors]
    device = next(model.parameters()).device
    rng = capture_rng(device)
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved, strict=True):
                tensor.copy_(value)
        optimizer.zero_grad(set_to_none=True)
        restore_rng(rng, device)
