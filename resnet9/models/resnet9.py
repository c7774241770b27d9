"""The custom ResNet ("ResNet-9") of David Page's DAWNBench entry, for CIFAR-10's 32x32 images (and any other size).

    prep    Conv3x3(64)-BN-ReLU                                   32x32
    layer1  X = Conv3x3(128)-MaxPool2-BN-ReLU, out = X + Res(X)   16x16
    layer2  Conv3x3(256)-MaxPool2-BN-ReLU                          8x8
    layer3  X = Conv3x3(512)-MaxPool2-BN-ReLU, out = X + Res(X)   4x4
    head    global MaxPool (MaxPool4 at 32 px) - flatten - FC(512 -> 10)

where Res(X) = Conv-BN-ReLU-Conv-BN-ReLU at the same width. The head's pool spans the whole last map, so any
image of at least 8x8 pixels works (a 64x64 image leaves an 8x8 map, 28x28 a 3x3 one); `in_channels` is 1
for grey images, 3 for RGB. Convolutions carry no bias (each is followed
by BatchNorm, whose shift makes a bias redundant); the FC layer has one. At width 1.0 this is 6,573,130
parameters.

The logits are multiplied by a constant `logit_scale` (default 0.125, as in Page's network): max-pooled
features make the raw FC outputs large, and an untrained network would start far from the uniform
prediction (loss ~2.9 instead of ln 10 = 2.30) and learn slower. It has no parameters and does not change
the architecture; `logit_scale=1` gives the plain FC output.

`forward` returns logits, because cross-entropy on logits is the numerically stable way to train (it fuses
log-softmax into the loss). The mission's final SoftMax lives in `predict_proba`, for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """Conv3x3 (stride 1, pad 1, no bias) [-> MaxPool2] -> BatchNorm -> ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResidualLayer(nn.Module):
    """X = conv_bn(pool); out = X + [conv_bn -> conv_bn](X)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_bn(c_in, c_out, pool=True)
        self.res = nn.Sequential(conv_bn(c_out, c_out), conv_bn(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x)


class GlobalMaxPool(nn.Module):
    """The maximum of each channel's whole map, as `max_pool2d` with a window the size of the map: at 32 px input
    the map is 4x4 and this is the very MaxPool2d(4) of Page's network, the same kernel (bit for bit, its ties
    and backward included: tested); a larger image's larger map is still pooled to 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=x.shape[-2:])


class ResNet9(nn.Module):
    """The mission's network. `width` scales every channel count (1.0 = the exact network); `in_channels`: the
    images' channels (3 RGB, 1 grey)."""

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, logit_scale: float = 0.125, in_channels: int = 3
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"model.width must be > 0, got {width}")
        c64, c128, c256, c512 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.prep = conv_bn(in_channels, c64)
        self.layer1 = ResidualLayer(c64, c128)
        self.layer2 = conv_bn(c128, c256, pool=True)
        self.layer3 = ResidualLayer(c256, c512)
        self.pool = GlobalMaxPool()
        self.fc = nn.Linear(c512, num_classes)
        self.logit_scale = logit_scale
        self.width = width
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images, H and W >= 8 -> (N, num_classes) logits."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale

    def reset_parameters(self) -> None:
        """Draw every weight again and reset BatchNorm's statistics, in place.

        Modules are visited in the order they were built, so on the CPU and after the same seed this gives the
        weights of a network constructed anew. On a GPU it draws from the GPU's generator, not the CPU's a new
        network is drawn from: sweep jobs that reuse a network copy a new one's weights instead (`build.model`).
        """
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: the SoftMax at the end of the mission's network."""
        return F.softmax(self(x).float(), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
