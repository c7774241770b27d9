"""A researcher's own parts for resnet9: a model, a schedule, data sets and a callback.

Each is plain Python; a YAML file in conf/ names it with `_target_`, and resnet9 builds it. Run from this folder:

    PYTHONPATH=. resnet9-train --config-dir conf model=tiny scheduler=step data=cats_dogs callbacks=grad_norm
    PYTHONPATH=. resnet9-train --config-dir conf data=upscaled64     # 64x64 RGB images
    PYTHONPATH=. resnet9-train --config-dir conf data=grey28         # 28x28 grey images, one channel
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnet9.data.datasets import ImageData, cifar10


class TinyNet(nn.Module):
    """Two convolutions and a linear head: a model of your own (any nn.Module taking (N, C, H, W) images; its
    config gives it the data set's channels). `width` scales its 32 and 64 channels, as model.width does
    ResNet9's; its global pooling takes any image size."""

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        width = max(1, round(32 * width))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def step_decay(
    optimizer: torch.optim.Optimizer,
    lr_min: float,
    lr_max: float,
    epochs: int,
    steps_per_epoch: int,
    drop_every: int = 2,
    factor: float = 0.5,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule of your own: resnet9 passes the derived LRMIN/LRMAX, the steps per epoch and the epochs.

    Starts at LRMAX (where the optimizer starts), multiplies it by `factor` every `drop_every` epochs, never
    below LRMIN; stepped once per batch.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(factor ** (step // (drop_every * steps_per_epoch)), lr_min / lr_max)
    )


def cats_dogs(
    root: str | Path, download: bool = True, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """A data set of your own: CIFAR-10's cats (0) and dogs (1) only, a two-class task."""
    full = cifar10(root, download, limit_train, limit_test)

    def pick(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(labels, (3, 5))
        return images[keep], (labels[keep] == 5).astype(np.int64)

    return ImageData(*pick(full.train_images, full.train_labels), *pick(full.test_images, full.test_labels),
                     classes=("cat", "dog"))  # fmt: skip


def upscaled64(
    root: str | Path, download: bool = True, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """A data set at another size: CIFAR-10 with every pixel repeated 2x2, 64x64x3 images (Tiny-ImageNet's
    size; the mean and std stay CIFAR-10's)."""
    full = cifar10(root, download, limit_train, limit_test)

    def upscaled(images: np.ndarray) -> np.ndarray:
        return images.repeat(2, axis=1).repeat(2, axis=2)

    return replace(full, train_images=upscaled(full.train_images), test_images=upscaled(full.test_images))


def grey28(
    root: str | Path, download: bool = True, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """A one-channel data set: CIFAR-10's central 28x28 pixels in grey (MNIST's size), (N, 28, 28, 1) images."""
    full = cifar10(root, download, limit_train, limit_test)

    def grey(images: np.ndarray) -> np.ndarray:
        # Pillow's luma in its own fixed-point arithmetic: resnet9-predict turns a colour photo grey with Pillow
        red, green, blue = (images[:, 2:30, 2:30, i].astype(np.uint32) for i in range(3))
        return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]

    return replace(full, train_images=grey(full.train_images), test_images=grey(full.test_images))


class GradNorm:
    """A callback of your own: the L2 norm of the last step's gradients, added to each epoch's row (it then lands
    in metrics.json, W&B and the console). Any of the hooks will do (resnet9.training.recording.callbacks lists them);
    deriving from resnet9.training.recording.callbacks.Callback is not needed."""

    def on_epoch_end(self, state: Any, row: dict[str, Any], result: Any) -> None:
        grads = [p.grad.detach().float().norm() for p in state.model.parameters() if p.grad is not None]
        row["grad_norm"] = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
