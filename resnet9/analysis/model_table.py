"""The model as a torchinfo table: layers, output shapes, parameters (model_summary.txt, `resnet9-summary`)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchinfo import summary


def describe(model: nn.Module) -> str:
    """The table for one 3x32x32 image, computed on a CPU copy in eval mode: the model itself is untouched
    (no BatchNorm statistics updated, no random numbers drawn)."""
    probe = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    stats = summary(
        probe,
        input_data=torch.zeros(1, 3, 32, 32),
        col_names=("output_size", "num_params", "kernel_size"),
        depth=4,
        mode="eval",
        verbose=0,
    )
    return str(stats)
