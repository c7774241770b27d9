"""The model as a torchinfo table (model_summary.txt, `resnet9-summary`), and its training FLOPs per image with the
model FLOPs utilisation they give on a GPU."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchinfo import summary

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of cards by the name torch gives them, for the model FLOPs utilisation
# (MFU = FLOPs trained per second / peak). From the makers' data sheets, SXM/PCIe as named; other cards: no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
              "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "V100": 125e12, "T4": 65e12}  # fmt: skip


def describe(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> str:
    """The table for one image of `input_shape` (channels, height, width), computed on a CPU copy in eval mode:
    the model itself is untouched (no BatchNorm statistics updated, no random numbers drawn)."""
    probe = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    stats = summary(
        probe,
        input_data=torch.zeros(1, *input_shape),
        col_names=("output_size", "num_params", "kernel_size"),
        depth=4,
        mode="eval",
        verbose=0,
    )
    return str(stats)


def training_flops_per_image(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> float:
    """FLOPs of one training step per image of `input_shape` (channels, height, width; forward and backward),
    counted by torch's FlopCounterMode on a CPU copy (the model itself is untouched)."""
    probe = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format).train()
    images = torch.zeros(2, *input_shape)  # two: BatchNorm needs more than one value per channel in training
    with FlopCounterMode(display=False) as counter:
        probe(images).float().sum().backward()
    return counter.get_total_flops() / len(images)


def peak_flops(device_name: str) -> float | None:
    """The card's dense bf16/fp16 peak, by the longest name of PEAK_FLOPS in torch's name for it."""
    matches = [name for name in PEAK_FLOPS if name in device_name]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None
