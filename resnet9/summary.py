"""The model summary: a torchinfo table of layers, output shapes and parameters.

    python -m resnet9.summary                 # the configured model (6,573,130 parameters at width 1.0)
    python -m resnet9.summary model.width=0.25

Every training run also saves it as `model_summary.txt` in its output folder.
"""

from __future__ import annotations

import copy

import hydra
import torch
from omegaconf import DictConfig
from torch import nn
from torchinfo import summary

from resnet9 import build, distributed, schema
from resnet9.errors import exit_on_usage_error, hydra_errors_in_one_line


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


def main() -> None:
    """`python -m resnet9.summary [model.width=...]`: the torchinfo table of the configured model."""
    distributed.register_resolvers()
    with hydra_errors_in_one_line():
        _hydra_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="summary")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_usage_error():
        schema.validate(cfg)
        print(describe(build.built(cfg.model)))


if __name__ == "__main__":
    main()
