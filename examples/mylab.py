"""A researcher's own parts for resnet9: a model, a schedule, a data set and a callback.

Each is plain Python; a YAML file in conf/ names it with `_target_`, and resnet9 builds it. Run from this folder:

    PYTHONPATH=. resnet9-train --config-dir conf model=tiny scheduler=step data=cats_dogs callbacks=grad_norm
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnet9.data.datasets import ImageData, cifar10


class TinyNet(nn.Module):
    """Two convolutions and a linear head: a model of your own (any nn.Module taking (N, 3, 32, 32) images).
    `width` scales its 32 and 64 channels, as model.width does ResNet9's."""

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        width = max(1, round(32 * width))
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
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


class GradNorm:
    """A callback of your own: the L2 norm of the last step's gradients, added to each epoch's row (it then lands
    in metrics.json, W&B and the console). Any of the hooks will do (resnet9.training.callbacks lists them);
    deriving from resnet9.training.callbacks.Callback is not needed."""

    def on_epoch_end(self, state: Any, row: dict[str, Any], result: Any) -> None:
        grads = [p.grad.detach().float().norm() for p in state.model.parameters() if p.grad is not None]
        row["grad_norm"] = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
